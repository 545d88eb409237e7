"""``rpevit bench``: every benchmark runs at tiny sizes and writes well-formed outputs; the
fidelity and scaling-fit computations are checked on cases with known answers."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from rpevit.bench import BENCHMARKS, selected_benchmarks
from rpevit.bench import anchors as anchors_bench
from rpevit.bench.common import crossover, fit_exponent
from rpevit.bench.fidelity import favor_error, l2_normalise, relative_error
from rpevit.cli.bench import add_bench_arguments, run_bench

MODELS = "softmax-ape,softmax-rpe,favor-ape,favor-rpe,relu-rope"


@pytest.fixture
def threads():
    """Benchmarks set the torch thread count; restore it for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(name: str, out, *extra: str, models: str = MODELS) -> dict:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    argv = [name, "--smoke", "--out", str(out), "--threads", "1", "--models", models, *extra]
    assert run_bench(parser.parse_args(argv)) == 0
    for suffix in ("md", "png"):
        assert (out / f"{name}.{suffix}").stat().st_size > 0
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / f"{name}.md").read_text()
    assert markdown.startswith(f"# rpevit bench {name}") and "| --: |" in markdown
    assert not list(out.glob(".*.tmp")) and not list(out.glob(f".{name}*"))  # atomic writes
    record = json.loads((out / f"{name}.json").read_text())
    assert record["benchmark"] == name and record["preset"] == "smoke"
    assert record["machine"]["cpu_count"] >= 1 and record["machine"]["torch"]
    assert record["arguments"]["smoke"] and record["command"] and record["summary"]
    return record


def test_layer_writes_outputs_with_memory(tmp_path, threads):
    record = run("layer", tmp_path, models="favor-ape,favor-rpe")
    timed = [r for r in record["rows"] if "time_ms" in r]
    labels = {r["label"] for r in timed}
    assert labels == {"favor-ape", "favor-rpe", "favor-rpe[fft]"}
    assert all(r["time_ms"] > 0 and len(r["times_s"]) >= 1 for r in timed)
    assert all(r["peak_mib"] is not None and r["peak_mib"] >= 0 for r in timed)
    assert set(record["summary"]) >= {"favor_rpe_vs_ape", "fft_vs_quadratic"}


def test_scaling_writes_outputs(tmp_path, threads):
    record = run("scaling", tmp_path, "--no-memory")
    assert {r["tokens"] for r in record["rows"]} == {16, 64}
    assert all(
        r["train_ms_per_image"] > 0 and r["forward_ms_per_image"] > 0 for r in record["rows"]
    )
    assert "crossover_vs_softmax" in record["summary"]["per_variant"]["favor-ape"]


def test_anchors_without_anchor_packages(tmp_path, threads, monkeypatch):
    monkeypatch.setattr(anchors_bench, "installed", lambda module: False)
    record = run("anchors", tmp_path)
    notes = [r for r in record["favor"] + record["rope"] + record["vit"] if "note" in r]
    assert len(notes) == 2 + 2 + 1 and all("not installed" in r["note"] for r in notes)
    ours = [r for r in record["favor"] if r["impl"] == "ours favor_attention"]
    assert all(0 < r["rel_error"] < 10 for r in ours)
    assert record["summary"]["vit_target_pass"] is None


def test_fidelity_writes_outputs(tmp_path, threads):
    record = run("fidelity", tmp_path)
    assert {r["position"] for r in record["module"]} == {"ape", "rpe", "string", "rope"}
    assert all(r["rel_error"] > 0 for r in record["functional"] + record["module"])


def test_ceiling_writes_outputs(tmp_path, threads):
    record = run("ceiling", tmp_path)
    assert record["summary"]["peak_matmul_gflops"] > 0
    assert all(0 < r["mfu"] and r["forward_flops_per_image"] > 0 for r in record["models"])


def test_data_writes_outputs(tmp_path, threads):
    record = run("data", tmp_path)
    measured = [r for r in record["rows"] if "images_per_second" in r]
    assert all(r["images_per_second"] > 0 and r["images"] <= 1024 for r in measured)
    assert {r["dataset"] for r in record["rows"]} == {"cifar10", "mnist"}


def test_all_benchmarks_are_selectable(tmp_path):
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    with pytest.raises(ValueError, match="unknown benchmark"):
        run_bench(parser.parse_args(["nope", "--smoke", "--out", str(tmp_path)]))
    assert list(BENCHMARKS) == [
        "layer", "scaling", "anchors", "fidelity", "ceiling", "training", "data"
    ]  # fmt: skip
    assert "training" not in selected_benchmarks(["all"]) == selected_benchmarks([])
    assert selected_benchmarks(["training", "layer"]) == ["layer", "training"]


def test_favor_error_is_zero_when_all_keys_are_identical():
    """Identical keys: softmax and every FAVOR+ estimate weight all values equally."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 32, 16, generator=generator, dtype=torch.float64)
    k = torch.randn(1, 2, 1, 16, generator=generator, dtype=torch.float64).expand(1, 2, 32, 16)
    v = torch.randn(1, 2, 32, 16, generator=generator, dtype=torch.float64)
    assert favor_error(q, k, v, nb_features=8, draws=3, seed=0) < 1e-12


def test_favor_error_shrinks_with_features():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 64, 16, generator=generator, dtype=torch.float64) * s
               for s in (0.5, 0.5, 1.0))  # fmt: skip
    errors = [favor_error(q, k, v, m, draws=4, seed=1) for m in (16, 128, 512)]
    assert errors[0] > errors[1] > errors[2] > 0
    assert errors[0] / errors[2] > 3  # ~ sqrt(512 / 16) = 5.7 for an m^-1/2 error


def test_relative_error_and_l2_normalise():
    x = torch.randn(3, 5, 8)
    assert relative_error(x, x) == 0.0
    assert relative_error(2 * x, x) == pytest.approx(1.0)
    scaled = l2_normalise(x, temperature=4.0)
    assert torch.allclose(scaled.norm(dim=-1), torch.full((3, 5), 2.0 * 8**0.25))


def test_fit_exponent_recovers_power_laws():
    ns = [16, 64, 256, 1024, 4096]
    assert fit_exponent(ns, [3e-6 * n**2 for n in ns]) == pytest.approx(2.0)
    assert fit_exponent(ns, [0.5 * n for n in ns]) == pytest.approx(1.0)
    assert fit_exponent([16], [1.0]) is None


def test_crossover_interpolates_between_bracketing_points():
    ns = [64, 256, 1024, 4096]
    quadratic = [n**2 for n in ns]
    linear = [256 * n for n in ns]  # equal at N = 256, faster beyond
    kind, n = crossover(ns, quadratic, [1.01 * t for t in linear])
    assert kind == "at" and 256 < n < 1024
    assert crossover(ns, quadratic, [t / 1e6 for t in quadratic]) == ("below", 64)
    assert crossover(ns, quadratic, [t * 2 for t in quadratic]) == ("never", None)
    kind, n = crossover(ns[:3], quadratic[:3], [1.01 * t for t in linear[:3]])
    assert kind == "at" and 256 < n < 1024
    kind, n = crossover(ns[:2], quadratic[:2], [4 * t for t in linear[:2]])  # equal at N = 1024
    assert kind == "extrapolated" and n == pytest.approx(1024)


def test_gpu_check_data_reads_through_the_real_loader(tmp_path):
    """The GPU check's synthetic MNIST (no download on the GPU machine): the real loader and
    split read it, and its classes are told apart by where the bright block is."""
    from rpevit.bench.gpu_check import synthetic_mnist
    from rpevit.data import load_dataset

    root = synthetic_mnist(tmp_path / "data", train=5200, test=100)
    data = load_dataset("mnist", root, download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (200, 5000, 100)
    images, labels = data.test.images[:, 0].float(), data.test.labels
    assert images.shape[1:] == (28, 28) and set(labels.tolist()) <= set(range(10))
    for image, label in zip(images, labels, strict=True):
        row, col = 2 + 8 * (int(label) // 4), 2 + 8 * (int(label) % 4)
        assert (image[row : row + 7, col : col + 7] == 255).all()
