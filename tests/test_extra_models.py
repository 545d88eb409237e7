"""The study's further variants: EXP and learnable kernels, Linformer, RoPE modes, seed gates."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SMALL

import rpevit
from rpevit.attention import Attention, favor_feature_pair
from rpevit.attention.kernels import ExpKernel, LearnableKernel
from rpevit.positions import TokenGrid
from rpevit.positions.gates import PositionGate
from rpevit.registry import CORE_MODELS

EXTRA = [n for n in rpevit.list_available_models() if n not in CORE_MODELS]


def _make(name, **options):
    return rpevit.create_model(
        name, image_size=28, in_chans=1, num_classes=10, patch_size=4, **SMALL, **options
    )


def test_extra_variants_are_registered():
    for name in (
        "exp-ape",
        "learnable-rope",
        "linformer-ape",
        "linformer-rope",
        "favor-rope-axial",
        "favor-rope-mixed",
        "relu-irpe-gate",
        "favor-string-gate",
    ):
        assert name in EXTRA
    assert "linformer-rpe" not in rpevit.list_available_models()
    with pytest.raises(ValueError, match="unknown model 'linformer-rpe'"):
        _make("linformer-rpe")


@pytest.mark.parametrize("name", EXTRA)
def test_every_extra_variant_trains_and_is_deterministic_in_eval(name):
    model = _make(name, pool="mean")
    images = torch.randn(3, 1, 28, 28)
    logits = model(images)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    for pname, p in model.named_parameters():
        if pname.endswith(("position.frequencies", "position.phases")):
            continue  # frpe starts with zero amplitudes: df/dw = df/ds = 0 (see test_frpe.py)
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), model(images))


@pytest.mark.parametrize("kernel", [ExpKernel(), LearnableKernel(8, 16)])
def test_exp_and_learnable_features_are_positive_and_finite(kernel):
    q, k = torch.randn(2, 2, 10, 8) * 20, torch.randn(2, 2, 10, 8) * 20
    for f in kernel.feature_pair(q, k):
        assert torch.isfinite(f).all() and (f > 0).any() and (f >= 0).all()


def test_exp_kernel_is_elementwise_exp_up_to_stabiliser():
    q, k = (torch.randn(1, 1, 5, 4, dtype=torch.float64) for _ in range(2))
    qf, kf = ExpKernel().feature_pair(q, k)
    # phi(q_i)_a phi(k_j)_a = exp((q_ia + k_ja) d^-1/4) up to a per-query constant
    products = qf[..., :, None, :] * kf[..., None, :, :]
    ratio = products / torch.exp((q[..., :, None, :] + k[..., None, :, :]) * 4**-0.25)
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))


def test_learnable_kernel_starts_as_favor_and_learns_its_projection():
    kernel = LearnableKernel(8, 16)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    for ours, favor in zip(
        kernel.feature_pair(q, k),
        favor_feature_pair(q, k, kernel.feature_weight.detach()),
        strict=True,
    ):
        torch.testing.assert_close(ours, favor)
    kernel.feature_pair(q, k)[0].sum().backward()
    assert kernel.feature_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("sharing", ["none", "key-value", "layerwise"])
def test_linformer_sharing_and_fixed_length(sharing):
    model = _make("linformer-ape", linformer_k=8, linformer_sharing=sharing)
    projections = {id(m.attn.kernel.proj_k.weight) for m in model.blocks}
    has_v = [m.attn.kernel.proj_v is not None for m in model.blocks]
    assert len(projections) == (1 if sharing == "layerwise" else SMALL["depth"])
    assert all(has_v) == (sharing == "none")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="Linformer was built for 50 tokens but got 65"):
        model(torch.randn(2, 1, 32, 32))


def test_linformer_rejects_bad_options():
    with pytest.raises(ValueError, match="linformer_sharing must be 'none', 'key-value' or"):
        _make("linformer-ape", linformer_sharing="all")
    with pytest.raises(ValueError, match="linformer_k must be >= 1"):
        _make("linformer-ape", linformer_k=0)


@pytest.mark.parametrize("channels", [1, 8])
def test_gates_are_not_translation_invariant(channels):
    """Gates depend on absolute position: shifting every coordinate changes the output, unlike
    the relative encodings (whose invariance tests/test_positions.py pins)."""
    from rpevit.attention import SoftmaxKernel

    module = Attention(16, 2, SoftmaxKernel(), PositionGate(2, (6, 6), channels)).double()
    with torch.no_grad():
        module.position.gate_row.normal_()
        module.position.gate_col.normal_()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    out = module(x, TokenGrid(3, 3, 0))
    shifted = module(x, TokenGrid(3, 3, 0, origin=(2, 1)))
    assert not torch.allclose(out, shifted)


def test_rope_mixed_name_equals_rope_option():
    torch.manual_seed(3)
    a = _make("favor-rope-mixed")
    torch.manual_seed(3)
    b = _make("favor-rope", rope_mode="mixed")
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("favor-ape", {"nb_features": 24}, 24),
        ("favor-rope", {}, int(8 * math.log(8))),  # default d ln d, head dim 32 / 4 = 8
        ("learnable-rpe", {"nb_features": 12}, 12),
        ("relu-ape", {}, 8),  # identity projection: m = head dim
        ("relu-ape", {"feature_projection": "learned", "nb_features": 20}, 20),
        ("softmax-ape", {}, None),
        ("linformer-ape", {}, None),
        ("exp-ape", {}, None),
    ],
)
def test_feature_count_is_the_number_of_features_the_kernel_computes(name, options, expected):
    model = _make(name, **options)
    assert model.feature_count == expected
    if expected is not None:
        kernel = model.blocks[0].attn.kernel
        x = torch.randn(2, 4, 5, 8)
        assert all(f.shape[-1] == expected for f in kernel.feature_pair(x, x))


@pytest.mark.parametrize("name", EXTRA)
def test_every_extra_variant_changes_resolution_or_says_why_not(name):
    model = _make(name).eval()
    images = torch.randn(2, 1, 36, 36)  # 9 x 9 patches instead of the trained 7 x 7
    with torch.no_grad():
        if name.startswith("linformer"):
            with pytest.raises(ValueError, match="fixed sequence length"):
                model(images)
        else:
            logits = model(images)
            assert logits.shape == (2, 10) and torch.isfinite(logits).all()
