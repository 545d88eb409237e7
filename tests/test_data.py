"""Data: file formats written here in miniature, splits, augmentation, the batch iterator."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_data_dir

from rpevit.data import (
    BatchTransform,
    EpochSampler,
    ImageDataModule,
    InMemoryLoader,
    Split,
    crop_flip,
    load_dataset,
    normalize,
    random_crop_flip,
    random_rotate,
    rotate,
    seeded_subset,
    split_indices,
    verify_checksums,
)
from rpevit.errors import ConfigError, DataCorruptError, DataNotFoundError

# --- writers for the real on-disk formats ----------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """IDX file (MNIST format): magic (0, 0, 0x08 uint8, ndim), big-endian dims, data."""
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    data += struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_mnist(root: Path, n_train: int = 40, n_test: int = 12, compress: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        write_idx(raw / name, array, compress)
    return arrays


def cifar_records(n: int, label_bytes: int, seed: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, (n, label_bytes), dtype=np.uint8)
    return (
        images,
        labels[:, -1].astype(np.int64),
        np.concatenate([labels, images.reshape(n, -1)], axis=1).tobytes(),
    )


# --- splits -----


def test_split_indices_disjoint_complete_and_seeded():
    train, val = split_indices(100, 20, seed=42)
    assert len(train) == 80 and len(val) == 20
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    again_train, again_val = split_indices(100, 20, seed=42)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, split_indices(100, 20, seed=1)[1])
    with pytest.raises(ConfigError):
        split_indices(10, 10, seed=0)


def test_seeded_subset_is_deterministic_and_bounded():
    split = Split(torch.zeros(50, 1, 2, 2, dtype=torch.uint8), torch.arange(50))
    a, b = seeded_subset(split, 10, seed=3), seeded_subset(split, 10, seed=3)
    assert len(a) == 10 and torch.equal(a.labels, b.labels)
    assert torch.equal(a.labels, a.labels.sort().values)  # original order kept
    assert seeded_subset(split, 500, seed=3) is split


def test_real_mnist_and_cifar10_splits():
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared MNIST/CIFAR-10 data not found")
    mnist = load_dataset("mnist", root)
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55_000, 5_000, 10_000)
    assert mnist.train.images.shape[1:] == (1, 28, 28) and mnist.train.images.dtype == torch.uint8
    assert mnist.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    if not (root / "cifar-10-batches-bin").is_dir():
        return
    cifar = load_dataset("cifar10", root)
    assert (len(cifar.train), len(cifar.val), len(cifar.test)) == (45_000, 5_000, 10_000)
    assert cifar.test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert cifar.spec.class_names[0] == "airplane"
    mean = cifar.train.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(cifar.spec.mean), atol=2e-3)


# --- file formats -----


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_files(tmp_path, compress):
    arrays = make_mnist(tmp_path, compress=compress)
    data = load_dataset("mnist", tmp_path, val_size=8, download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 12)
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.test.labels.dtype == torch.int64
    # train + val are exactly the official training set
    images = torch.cat([data.train.images, data.val.images])[:, 0]
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"])
    assert sorted(map(bytes, images.numpy())) == sorted(map(bytes, expected.numpy()))


def test_truncated_idx_file_is_reported(tmp_path):
    make_mnist(tmp_path, compress=False)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataCorruptError, match="train-images-idx3-ubyte is truncated"):
        load_dataset("mnist", tmp_path, val_size=8, download=False)


def test_cifar10_binary_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    batches = [cifar_records(3, 1, seed) for seed in range(6)]
    for i, (_, _, blob) in enumerate(batches[:5], 1):
        (folder / f"data_batch_{i}.bin").write_bytes(blob)
    (folder / "test_batch.bin").write_bytes(batches[5][2])
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    data = load_dataset("cifar10", tmp_path, val_size=5, download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (10, 5, 3)
    assert torch.equal(data.test.images, torch.from_numpy(batches[5][0]))
    assert data.test.labels.tolist() == batches[5][1].tolist()
    assert data.spec.class_names == tuple(f"class{i}" for i in range(10))


def test_truncated_cifar_binary_is_reported(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(cifar_records(2, 1, 0)[2])
    (folder / "data_batch_3.bin").write_bytes(cifar_records(2, 1, 0)[2][:-10])
    with pytest.raises(DataCorruptError, match="data_batch_3.bin is truncated"):
        load_dataset("cifar10", tmp_path, val_size=2, download=False)


def test_cifar10_and_cifar100_pickles(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    test_images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = test_images if name == "test_batch" else rng.integers(0, 256, (3, 3072), np.uint8)
        entry = {"data": images, "labels": [int(x) for x in rng.integers(0, 10, len(images))]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    data = load_dataset("cifar10", tmp_path, val_size=5, download=False)
    assert torch.equal(data.test.images, torch.from_numpy(test_images.reshape(4, 3, 32, 32)))
    assert data.spec.class_names == tuple("abcdefghij")

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = {"data": rng.integers(0, 256, (6, 3072), np.uint8), "fine_labels": [99, 0, 5, 7, 1, 2]}
    test = {"data": rng.integers(0, 256, (2, 3072), np.uint8), "fine_labels": [42, 3]}
    (folder / "train").write_bytes(pickle.dumps(train, protocol=2))
    (folder / "test").write_bytes(pickle.dumps(test, protocol=5))
    data = load_dataset("cifar100", tmp_path, val_size=2, download=False)
    assert data.spec.num_classes == 100 and data.test.labels.tolist() == [42, 3]
    assert sorted(torch.cat([data.train.labels, data.val.labels]).tolist()) == [0, 1, 2, 5, 7, 99]


def test_cifar_pickle_refuses_arbitrary_objects(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({"data": Path("x"), "fine_labels": [1]}))
    (folder / "test").write_bytes(pickle.dumps({"data": [], "fine_labels": []}))
    with pytest.raises(DataCorruptError, match="refusing to load"):
        load_dataset("cifar100", tmp_path, val_size=1, download=False)


def test_cifar100_binary_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    _, _, blob = cifar_records(5, 2, 0)
    (folder / "train.bin").write_bytes(blob)
    test_images, test_labels, blob = cifar_records(2, 2, 1)
    (folder / "test.bin").write_bytes(blob)
    data = load_dataset("cifar100", tmp_path, val_size=1, download=False)
    assert torch.equal(data.test.images, torch.from_numpy(test_images))
    assert data.test.labels.tolist() == test_labels.tolist()


def test_image_folder(tmp_path):
    from PIL import Image

    for split, per_class in (("train", 6), ("test", 2)):
        for c, name in enumerate(["cat", "dog", "emu"]):
            folder = tmp_path / split / name / "images"  # nested, as in Tiny ImageNet
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = np.full((12, 10, 3), 40 * c + i, dtype=np.uint8)
                Image.fromarray(image).save(folder / f"{i}.png")
    data = load_dataset("imagefolder", tmp_path, image_size=8, num_workers=2)
    assert data.spec.num_classes == 3 and data.spec.class_names == ("cat", "dog", "emu")
    assert data.train.images.shape[1:] == (3, 8, 8) and len(data.test) == 6
    assert len(data.train) + len(data.val) == 18 and len(data.val) == 1
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.test.images[2].unique().tolist() == [40]  # resized, values kept
    assert len(data.spec.mean) == 3 and all(s > 0 for s in data.spec.std)

    (tmp_path / "test").rename(tmp_path / "val")  # only val/: it becomes the test split
    assert len(load_dataset("imagefolder", tmp_path, image_size=8).test) == 6
    (tmp_path / "val").rename(tmp_path / "test")
    (tmp_path / "val" / "dog").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "val" / "dog" / "x.png")
    both = load_dataset("imagefolder", tmp_path, image_size=8)  # val/ and test/ used as they are
    assert (len(both.train), both.val.labels.tolist(), len(both.test)) == (18, [1], 6)


# --- missing data -----


def test_missing_data_says_what_to_put_where(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message
    assert "no network" in message and "MNIST/raw/" in message
    assert (
        "t10k-labels-idx1-ubyte.gz" in message and str((tmp_path / "nowhere").resolve()) in message
    )

    with pytest.raises(DataNotFoundError, match="cifar-10-batches-bin"):
        load_dataset("cifar10", tmp_path, download=False)
    with pytest.raises(DataNotFoundError, match="train/"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    make_mnist(tmp_path)
    monkeypatch.setenv("RPEVIT_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist", val_size=4, download=False).test) == 12


# --- augmentation -----


def test_rotation_by_90_degrees_is_rot90_and_matches_torchvision():
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate as tv_rotate

    x = torch.rand(2, 1, 6, 6)
    turned = rotate(x, torch.tensor([90.0, -90.0]))
    assert torch.allclose(turned[0], torch.rot90(x[0], 1, (-2, -1)), atol=1e-5)
    assert torch.allclose(turned[1], torch.rot90(x[1], -1, (-2, -1)), atol=1e-5)
    x = torch.rand(1, 3, 8, 12)
    assert torch.allclose(
        rotate(x, torch.tensor([17.0])), tv_rotate(x, 17.0, InterpolationMode.BILINEAR), atol=1e-5
    )


def test_random_rotation_is_seeded_changes_images_and_keeps_range():
    x = torch.rand(16, 1, 28, 28)
    a = random_rotate(x, 10, torch.Generator().manual_seed(0))
    b = random_rotate(x, 10, torch.Generator().manual_seed(0))
    c = random_rotate(x, 10, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and (a - x).abs().amax(dim=(1, 2, 3)).min() > 0.01
    assert a.min() >= 0 and a.max() <= 1 + 1e-6


def test_crop_flip_on_a_hand_made_image():
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    padded = F.pad(x, (1, 1, 1, 1))
    for top in range(3):
        for left in range(3):
            for flip in (False, True):
                out = crop_flip(
                    x, 1, torch.tensor([top]), torch.tensor([left]), torch.tensor([flip])
                )
                window = padded[..., top : top + 4, left : left + 4]
                assert torch.equal(out, window.flip(-1) if flip else window)
    # centre crop without flip is the identity; with flip the mirror image
    centre = crop_flip(x, 1, torch.tensor([1]), torch.tensor([1]), torch.tensor([False]))
    assert torch.equal(centre, x)
    assert crop_flip(x, 1, torch.tensor([1]), torch.tensor([1]), torch.tensor([True]))[
        0, 0, 0
    ].tolist() == [4, 3, 2, 1]


def test_random_crop_flip_is_batched_and_seeded():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, 4, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 4, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape
    # each output is one of the 9 x 9 shifted windows of its own padded input, maybe mirrored
    padded = F.pad(x, (4, 4, 4, 4))
    flips = []
    for i in range(64):
        match = [
            flip
            for t in range(9)
            for l in range(9)
            for flip in (False, True)
            if torch.equal(
                a[i],
                padded[i, :, t : t + 32, l : l + 32].flip(-1)
                if flip
                else padded[i, :, t : t + 32, l : l + 32],
            )
        ]
        assert match, f"sample {i} is not a crop of its input"
        flips.append(match[0])
    assert 10 < sum(flips) < 54  # about half are mirrored


def test_normalize_and_batch_transform():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    out = normalize(x, (0.5,), (0.5,))
    assert out.dtype == torch.float32 and out.flatten().tolist() == [-1.0, 1.0]
    transform = BatchTransform((0.5,), (0.5,), "rotate")
    assert torch.equal(transform(x), out)  # no generator: evaluation, no augmentation


# --- sampler and loader -----


def test_epoch_sampler_shards_like_distributed_sampler():
    shards = [EpochSampler(10, shuffle=True, seed=3, rank=r, world_size=3) for r in range(3)]
    indices = [s.indices().tolist() for s in shards]
    assert [len(i) for i in indices] == [4, 4, 4]  # padded to equal length
    assert set(sum(indices, [])) == set(range(10))
    shards[0].set_epoch(1)
    assert shards[0].indices().tolist() != indices[0]
    evaluation = [
        EpochSampler(10, shuffle=False, rank=r, world_size=3, even=False) for r in range(3)
    ]
    assert sorted(sum((s.indices().tolist() for s in evaluation), [])) == list(range(10))


def small_split(n: int = 50) -> Split:
    return Split(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8), torch.arange(n))


def test_loader_batches_are_seeded_and_cover_the_split():
    split = small_split()
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3, "crop_flip", padding=2)
    loader = InMemoryLoader(split, 16, transform, shuffle=True, augment=True, seed=7)
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and batches[-1][0].shape == (2, 3, 8, 8)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(50))
    again = list(InMemoryLoader(split, 16, transform, shuffle=True, augment=True, seed=7))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[1], batches[0][1])


def test_loader_resumes_mid_epoch_exactly():
    split = small_split()
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3, "crop_flip", padding=2)

    def make() -> InMemoryLoader:
        return InMemoryLoader(split, 8, transform, shuffle=True, augment=True, seed=1)

    full = make()
    full.set_epoch(2)
    reference = list(full)
    interrupted = make()
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    for _ in range(3):
        next(iterator)
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches": 3}
    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning sets the same epoch again after restoring
    rest = list(resumed)
    assert len(rest) == len(reference) - 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(rest, reference[3:], strict=True))
    resumed.set_epoch(3)  # the next epoch starts from its first batch
    assert len(list(resumed)) == len(reference)


def test_datamodule_without_trainer(tmp_path):
    make_mnist(tmp_path, n_train=30)
    dm = ImageDataModule("mnist", tmp_path, batch_size=8, download=False)
    dm.data = load_dataset("mnist", tmp_path, val_size=6, download=False)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32
    assert len(dm.val_dataloader()) == 1 and len(dm.test_dataloader()) == 2


def test_augmentation_does_not_depend_on_world_size_or_batch_size():
    # 2 ranks with batch 4 see, step by step, the samples of one process with batch 8,
    # each augmented identically: what makes DDP reproduce a single-process run.
    split = small_split(40)
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3, "crop_flip", padding=2)

    def batches(rank: int, world_size: int, batch_size: int) -> list:
        loader = InMemoryLoader(
            split, batch_size, transform, shuffle=True, augment=True, seed=5,
            rank=rank, world_size=world_size,
        )  # fmt: skip
        loader.set_epoch(3)
        return list(loader)

    single = batches(0, 1, 8)
    ranks = [batches(r, 2, 4) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 5
    for step, (images, labels) in enumerate(single):
        together = {
            int(y): x for r in ranks for x, y in zip(*r[step], strict=True)
        }  # labels are the sample indices
        assert sorted(together) == sorted(labels.tolist())
        for x, y in zip(images, labels, strict=True):
            assert torch.equal(together[int(y)], x)
    assert torch.equal(single[0][0], batches(0, 1, 8)[0][0])  # seeded: the same again
    other_epoch = InMemoryLoader(split, 8, transform, shuffle=False, augment=True, seed=5)
    assert not torch.equal(next(iter(other_epoch))[0], transform(split.images[:8]))


def test_tiny_imagenet_layout(tmp_path):
    from PIL import Image

    wnids = ["n01443537", "n01629819"]
    for c, wnid in enumerate(wnids):
        folder = tmp_path / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((16, 16, 3), 60 * c + i, np.uint8)).save(
                folder / f"{wnid}_{i}.JPEG"
            )
        (tmp_path / "train" / wnid / f"{wnid}_boxes.txt").write_text("x\t0\t0\t1\t1\n")
    val = tmp_path / "val" / "images"
    val.mkdir(parents=True)
    lines = []
    for i, c in enumerate([1, 0, 1]):
        Image.fromarray(np.full((16, 16, 3), 60 * c, np.uint8)).save(val / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[c]}\t0\t0\t15\t15")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    test = tmp_path / "test" / "images"  # unlabelled: ignored
    test.mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(test / "test_0.JPEG")
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (tmp_path / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n"
    )

    data = load_dataset("imagefolder", tmp_path, image_size=8)
    assert data.spec.num_classes == 2
    assert data.spec.class_names == ("goldfish", "European fire salamander")
    assert data.test.labels.tolist() == [1, 0, 1]  # val/ with annotations became the test split
    assert data.test.images[0].unique().tolist() == [60]
    assert len(data.train) + len(data.val) == 10  # validation split off train/

    (tmp_path / "val" / "val_annotations.txt").write_text("val_9.JPEG\tn01443537\n")
    with pytest.raises(DataCorruptError, match="val_9.JPEG does not exist"):
        load_dataset("imagefolder", tmp_path, image_size=8)


def test_published_checksums_of_the_real_data():
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared data not found")
    checked = verify_checksums("mnist", root)
    assert sorted(p.name for p in checked) == sorted(
        f"{n}.gz" for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    )  # fmt: skip
    if (root / "cifar-10-batches-bin").is_dir():
        assert len(verify_checksums("cifar10", root)) == 6
    with pytest.raises(DataNotFoundError, match="no cifar100 file with a published checksum"):
        verify_checksums("cifar100", root)
