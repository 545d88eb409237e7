"""Model-level behaviour: registry, shapes, gradients, checkpoint transfer, precision, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL, LargestTensor
from torch.utils._python_dispatch import TorchDispatchMode

import rpevit
from rpevit.attention import FavorKernel, relu_features
from rpevit.flops import count_flops
from rpevit.positions import TokenGrid
from rpevit.registry import CORE_MODELS, KERNELS, POSITIONS

ALL = CORE_MODELS
LINEAR = [n for n in ALL if not n.startswith("softmax")]


def _make(name, image_size=28, in_chans=1, patch_size=4, **options):
    return rpevit.create_model(
        name,
        image_size=image_size,
        in_chans=in_chans,
        num_classes=10,
        patch_size=patch_size,
        **SMALL,
        **options,
    )


def test_registry_lists_the_twelve_core_variants_first():
    assert rpevit.list_available_models()[:12] == ALL
    assert sorted(ALL) == sorted(
        f"{k}-{p}" for k in ("softmax", "favor", "relu") for p in ("ape", "rpe", "string", "rope")
    )
    assert {"softmax", "favor", "relu"} <= set(KERNELS)
    assert {"ape", "rpe", "string", "rope"} <= set(POSITIONS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape,patch", [((1, 28, 28), 4), ((3, 32, 32), 4), ((3, 24, 40), 8)])
def test_forward_backward_shapes_and_every_parameter_gets_gradient(name, shape, patch):
    model = _make(name, image_size=shape[1:], in_chans=shape[0], patch_size=patch, pool="mean")
    images = torch.randn(3, *shape)
    logits = model(images)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_cls_pooling_leaves_last_layer_rpe_structurally_unused():
    """CLS has weight 1 to every token (DESIGN.md 4), so with CLS pooling the last layer's RPE
    table cannot influence the logits; every other parameter is trained."""
    model = _make("favor-rpe")
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    last = f"blocks.{SMALL['depth'] - 1}.attn.position.table"
    for pname, p in model.named_parameters():
        has_grad = p.grad is not None and p.grad.abs().sum() > 0
        assert has_grad == (pname != last), pname


def _largest_tensor(name, image_size, **options):
    model = rpevit.create_model(
        name,
        image_size=image_size,
        in_chans=3,
        num_classes=10,
        patch_size=4,
        dim=32,
        depth=1,
        heads=2,
        mlp_dim=32,
        **options,
    )
    with LargestTensor() as mode:
        model(torch.randn(1, 3, image_size, image_size)).sum().backward()
    return mode.max_numel


@pytest.mark.parametrize("name", LINEAR)
def test_linear_models_memory_is_linear_in_tokens_up_to_1024(name):
    """From 256 to 1024 tokens the largest tensor (forward and backward) grows ~4x, not 16x."""
    options = {"rpe_method": "fft"} if name.endswith("rpe") else {}
    small, large = _largest_tensor(name, 64, **options), _largest_tensor(name, 128, **options)
    assert large / small < 5, (small, large)
    assert large < 1025 * 1025 * 16  # well below the N x N scores of 2 heads x m features


def test_softmax_memory_is_quadratic_in_tokens():
    """The probe above has power: exact attention materialises its N x N scores."""
    small, large = _largest_tensor("softmax-rpe", 64), _largest_tensor("softmax-rpe", 128)
    assert large / small > 12 and large >= 1025 * 1025


@pytest.mark.parametrize("position", ["ape", "rpe", "string", "rope"])
@pytest.mark.parametrize("target", ["favor", "relu"])
def test_softmax_state_dict_loads_into_performer(position, target):
    soft = _make(f"softmax-{position}")
    perf = _make(
        f"{target}-{position}", **({"feature_projection": "learned"} if target == "relu" else {})
    )
    missing, unexpected = perf.load_state_dict(soft.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(".attn.kernel." in key for key in missing), missing
    perf_state = perf.state_dict()
    for key, value in soft.state_dict().items():
        assert torch.equal(perf_state[key], value), key


def test_eval_is_deterministic_and_training_redraws_features():
    model = _make("favor-ape", redraw_interval=1)
    images = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(images), model(images))
    model.train()
    first, second = model(images), model(images)
    assert not torch.allclose(first, second)  # redrawn projection between the two steps


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_agrees_with_fp32(name):
    model = _make(name).eval()
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 1e-2


@pytest.mark.parametrize("name", ALL)
def test_other_resolution_at_evaluation(name):
    model = _make(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 36, 36)).shape == (2, 10)


def test_ape_resize_is_identity_at_training_grid_and_smooth_elsewhere():
    model = _make("softmax-ape")
    grid = model.token_grid(28, 28)
    assert model._position_embedding(grid) is model.pos_embed
    assert model._position_embedding(model.token_grid(36, 36)).shape == (1, 81, SMALL["dim"])


def test_flops_match_analytic_count_for_softmax_ape():
    model = rpevit.create_model(
        "softmax-ape",
        image_size=28,
        in_chans=1,
        num_classes=10,
        patch_size=4,
        dim=64,
        depth=2,
        heads=4,
        mlp_dim=128,
    )
    n, t, d, m = 49, 50, 64, 128
    per_layer = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * m
    expected = 2 * n * 16 * d + 2 * per_layer + 2 * d * 10
    assert count_flops(model, (1, 28, 28)) == expected


def test_flops_count_the_fft_of_the_rpe_path():
    kwargs = dict(
        image_size=64,
        in_chans=1,
        num_classes=10,
        patch_size=4,
        dim=32,
        depth=1,
        heads=2,
        mlp_dim=32,
    )
    fft = count_flops(rpevit.create_model("relu-rpe", rpe_method="fft", **kwargs), (1, 64, 64))
    ape = count_flops(rpevit.create_model("relu-ape", **kwargs), (1, 64, 64))
    assert fft > ape * 2  # the FFT work is counted, not silently dropped


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="softmax-foo"), "unknown model 'softmax-foo'; available models: softmax-ape"),
        (dict(name="bogus"), "available models"),
        (dict(image_size=30), "not divisible by patch size 4"),
        (dict(dim=30), "dim 30 is not divisible by heads 4"),
        (dict(pool="max"), "pool must be 'cls' or 'mean'"),
        (dict(nb_features=16), "do not apply to model 'softmax-ape'"),
        (dict(name="favor-ape", nb_features=0), "nb_features must be >= 1"),
        (dict(name="favor-rope", rope_mode="spiral"), "rope_mode must be 'axial' or 'mixed'"),
        (dict(name="relu-ape", nb_features=64), "feature_projection='learned'"),
        (dict(depth=0), "depth must be a positive integer"),
        (dict(image_size=(28, 28, 3)), "image_size must be"),
    ],
)
def test_bad_configurations_raise_clear_value_errors(kwargs, match):
    args = dict(
        name="softmax-ape", image_size=28, in_chans=1, num_classes=10, patch_size=4, **SMALL
    )
    args.update(kwargs)
    name = args.pop("name")
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("'", "'")):
        rpevit.create_model(name, **args)


def test_wrong_input_shape_raises_clear_error():
    model = _make("softmax-ape")
    with pytest.raises(ValueError, match=r"expected images of shape \[B, 1, H, W\]"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        model(torch.randn(2, 1, 30, 30))


def test_cli_models_lists_every_variant(capsys):
    from rpevit.cli import main

    assert main(["models", "--dim", "32", "--depth", "1", "--heads", "2", "--mlp-dim", "32"]) == 0
    out = capsys.readouterr().out
    assert all(f"| {name} " in out for name in ALL)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rpevit.list_available_models())
    assert len({len(line) for line in table}) == 1  # columns aligned for the longest name
    assert main(["models", "--models", "nope-ape"]) == 2
    assert "unknown model 'nope-ape'" in capsys.readouterr().err


def _kernel_inputs(model, images):
    """The ``(q, k)`` the first block's attention kernel receives for ``images``."""
    captured = {}

    def hook(module, args) -> None:
        captured["qk"] = args[:2]

    handle = model.blocks[0].attn.kernel.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(images)
    handle.remove()
    return captured["qk"]


@pytest.mark.parametrize(
    "name,options",
    [
        ("relu-ape", {"feature_projection": "learned", "nb_features": 20}),
        ("learnable-ape", {"nb_features": 20}),
    ],
)
def test_backbone_init_leaves_attention_kernels_their_own_initialisation(name, options):
    """Issue 15, defect 5: the backbone's trunc-normal(0.02) overwrote the learned ReLU
    projection. Kernel tensors must be exactly as the kernel made them: orthogonal blocks."""
    model = _make(name, **options)
    kernels = [block.attn.kernel for block in model.blocks]
    before = [{k: t.clone() for k, t in kernel.state_dict().items()} for kernel in kernels]
    qkv = model.blocks[0].attn.qkv.weight.clone()
    model._init_weights()
    assert not torch.equal(model.blocks[0].attn.qkv.weight, qkv)  # the backbone did re-draw
    for kernel, state in zip(kernels, before, strict=True):
        for key, tensor in kernel.state_dict().items():
            assert torch.equal(tensor, state[key]), key
        weight = getattr(kernel, "feature_weight", None)
        weight = kernel.feature_proj.weight if weight is None else weight
        for block in weight.detach().split(SMALL["dim"] // SMALL["heads"]):
            directions = block / block.norm(dim=1, keepdim=True)
            torch.testing.assert_close(directions @ directions.T, torch.eye(len(block)))
    if name.startswith("relu"):  # unit rows: each feature is a coordinate of q d^-1/4 in a basis
        torch.testing.assert_close(weight.norm(dim=1), torch.ones(len(weight)))


def test_learned_relu_features_start_well_above_their_epsilon():
    """At init the ReLU part of the features must dominate the 1e-3 epsilon (it was ~1.3e-3,
    so attention started almost uniform)."""
    model = _make("relu-ape", feature_projection="learned", nb_features=16)
    q, _ = _kernel_inputs(model, torch.randn(4, 1, 28, 28))
    relu_part = relu_features(q, model.blocks[0].attn.kernel.feature_proj.weight, eps=0.0)
    assert relu_part.mean() > 5e-3, relu_part.mean()


class _ScalarReads(TorchDispatchMode):
    """Counts reads of a tensor's value into Python (a device-to-host sync on CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_favor_training_forward_reads_no_tensor_into_python():
    """The redraw counter lives on the Python side: no per-step ``int(tensor)`` sync."""
    model = _make("favor-ape", redraw_interval=1000).train()
    images = torch.randn(2, 1, 28, 28)
    with _ScalarReads() as reads:
        for _ in range(3):
            model(images)
    assert reads.count == 0
    assert all(block.attn.kernel.steps == 3 for block in model.blocks)


def test_favor_step_counter_is_restored_from_the_state_dict():
    grid = TokenGrid(2, 2, num_prefix=0)
    q, k, v = (torch.randn(1, 1, 4, 8) for _ in range(3))
    kernel = FavorKernel(head_dim=8, nb_features=16, redraw_interval=3)
    for _ in range(4):
        kernel(q, k, v, None, grid)
    resumed = FavorKernel(head_dim=8, nb_features=16, redraw_interval=3)
    resumed.load_state_dict(kernel.state_dict())
    assert resumed.steps == 4
    for _ in range(4):  # the redraw at step 6 happens in both
        assert torch.equal(kernel(q, k, v, None, grid), resumed(q, k, v, None, grid))
    assert torch.equal(kernel.projection, resumed.projection)


def test_checkpoints_with_the_old_steps_buffer_still_load():
    """Before the counter moved to Python it was a buffer ``...attn.kernel.steps``."""
    state = _make("favor-ape").state_dict()
    old = {}
    for key, value in state.items():
        if key.endswith(".kernel._extra_state"):
            key, value = key.removesuffix("_extra_state") + "steps", torch.tensor(5)
        old[key] = value
    model = _make("favor-ape")
    model.load_state_dict(old)  # strict
    assert all(block.attn.kernel.steps == 5 for block in model.blocks)


def test_softmax_to_favor_transfer_misses_exactly_the_kernel_state():
    """What ``load_state_dict(softmax.state_dict(), strict=False)`` reports (README, Python API)."""
    missing, unexpected = _make("favor-rpe").load_state_dict(
        _make("softmax-rpe").state_dict(), strict=False
    )
    assert unexpected == []
    assert sorted(missing) == sorted(
        f"blocks.{i}.attn.kernel.{name}"
        for i in range(SMALL["depth"])
        for name in ("feature_seed", "projection", "_extra_state")
    )


def test_study_models_are_the_core_variants_and_the_frpe_row_of_each_kernel():
    from rpevit.registry import CORE_MODELS, STUDY_MODELS

    assert STUDY_MODELS[:12] == CORE_MODELS
    assert STUDY_MODELS[12:] == ["softmax-frpe", "favor-frpe", "relu-frpe"]
    assert set(STUDY_MODELS) <= set(rpevit.list_available_models())
