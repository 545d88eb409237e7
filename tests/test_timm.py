"""``rpevit.integrations.timm.convert_vit``: a timm ViT becomes a Performer ViT on its weights."""

from __future__ import annotations

import copy
import importlib
import sys

import pytest
import torch
from torch import nn

timm_vit = pytest.importorskip("timm.models.vision_transformer")

from rpevit.integrations.timm import ConvertedAttention, convert_vit  # noqa: E402
from rpevit.positions import TokenGrid  # noqa: E402

F64 = torch.float64


def _vit(img_size=32, **kwargs) -> nn.Module:
    """A small timm ViT (8x8 patches of 4 pixels by default), every parameter moved off its
    initialisation (biases, norms, tokens) so that no weight can go missing unseen."""
    torch.manual_seed(0)
    options = dict(patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    model = timm_vit.VisionTransformer(img_size=img_size, **{**options, **kwargs})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _converted(model: nn.Module, name: str, **options) -> nn.Module:
    return convert_vit(copy.deepcopy(model), name, **options).eval()


CONFIGS = {
    "default": {},
    "registers": dict(reg_tokens=4),
    "registers-no-cls": dict(reg_tokens=2, class_token=False, global_pool="avg"),
    "no-prefix": dict(class_token=False, global_pool="avg"),
    "qk-norm": dict(qk_norm=True),
    "no-qkv-bias": dict(qkv_bias=False),
    "no-embed-class": dict(no_embed_class=True, reg_tokens=1),
    "non-square": dict(img_size=(24, 40), patch_size=8),
    "res-post-block": dict(block_fn=timm_vit.ResPostBlock),
    "proj-dropout": dict(proj_drop_rate=0.1),
    "layer-scale": dict(init_values=0.1),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_softmax_ape_reproduces_the_timm_model(config):
    """Same weights, same exact attention: the converted model computes timm's function, and
    timm's state dict loads into it, only the new kernel/position state missing."""
    model = _vit(**CONFIGS[config])
    converted = _converted(model, "softmax-ape")
    size = model.patch_embed.img_size
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(converted(images), model(images), rtol=1e-5, atol=1e-5)
    assert all(isinstance(b.attn, ConvertedAttention) for b in converted.blocks)
    grid = converted.blocks[0].attn.grid
    assert (grid.height, grid.width, grid.num_prefix) == (
        *model.patch_embed.grid_size,
        model.num_prefix_tokens,
    )
    fresh = _converted(_vit(**CONFIGS[config]), "favor-rpe")
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected
    assert {key.split(".attn.")[1].split(".")[0] for key in missing} == {"position", "kernel"}


def test_dynamic_image_size_follows_each_input_grid():
    model = _vit(dynamic_img_size=True)
    exact, rope = _converted(model, "softmax-ape"), _converted(model, "favor-rope")
    for size in [(32, 32), (40, 24), (16, 48)]:
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(exact(images), model(images), rtol=1e-5, atol=1e-5)
            assert torch.isfinite(rope(images)).all()
        grid = rope.blocks[1].attn.grid
        assert (grid.height, grid.width) == (size[0] // 4, size[1] // 4)


def _features_error(model, converted, images) -> float:
    """Error of the converted model's final tokens, relative to what attention adds to them."""
    without = copy.deepcopy(model)
    with torch.no_grad():
        for block in without.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
        exact = model.forward_features(images)
        scale = (exact - without.forward_features(images)).norm()
        return ((converted.forward_features(images) - exact).norm() / scale).item()


def test_favor_ape_converges_to_the_timm_model_as_features_grow():
    """FAVOR+ estimates timm's softmax on the same weights (small q/k norms): the error falls
    like m^-1/2, 16 -> 256 -> 4096 features, averaged over three feature draws."""
    model = _vit()
    images = torch.randn(2, 3, 32, 32)
    errors = []
    for m in (16, 256, 4096):
        trials = []
        for seed in range(3):
            torch.manual_seed(seed)
            trials.append(
                _features_error(model, _converted(model, "favor-ape", nb_features=m), images)
            )
        errors.append(sum(trials) / len(trials))
    assert errors[0] > 2 * errors[1] > 4 * errors[2], errors
    assert errors[0] / errors[2] > 6 and errors[2] < 0.05, errors


def _probe_weights(layer: ConvertedAttention) -> torch.Tensor:
    """Attention weights ``A [h, N, N]`` of ``layer`` from position alone: q = k = 0, v = the
    one-hot input token, output projection the identity."""
    dim, heads = layer.qkv.in_features, layer.heads
    n = layer.grid.num_tokens
    layer = layer.double()
    with torch.no_grad():
        layer.qkv.weight.zero_()
        layer.qkv.bias.zero_()
        layer.qkv.weight[2 * dim :] = torch.eye(dim, dtype=F64)
        layer.proj.weight.copy_(torch.eye(dim, dtype=F64))
        layer.proj.bias.zero_()
        x = torch.eye(n, dtype=F64).repeat(1, heads)[None, :, :dim]
        return layer(x)[0].reshape(n, heads, -1)[..., :n].transpose(0, 1)


@pytest.mark.parametrize("name", ["softmax-rpe", "favor-rpe", "relu-rpe", "favor-frpe"])
def test_relative_weights_of_a_converted_model_depend_only_on_offsets(name):
    """With register tokens before the patches: ``A_ij / A_i,0`` (weight 1 to a prefix token)
    is ``exp(b(r_j - r_i))``, equal for equal offsets on a 3x5 grid (RPE: the table entry).
    Head width 18 = token count, so that one-hot values read the weights off the output."""
    model = _vit(img_size=(12, 20), reg_tokens=2, embed_dim=36, num_heads=2)
    layer = _converted(model, name).blocks[1].attn
    with torch.no_grad():
        for p in layer.position.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    prefix, (height, width) = 3, (3, 5)
    assert layer.grid == TokenGrid(height, width, prefix)
    a = _probe_weights(layer)
    log_weights = (a / a[:, :, :1]).log()
    torch.testing.assert_close(log_weights[:, :, :prefix], torch.zeros_like(log_weights[..., :3]))
    by_offset: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i in range(height * width):
        for j in range(height * width):
            offset = (j // width - i // width, j % width - i % width)
            by_offset.setdefault(offset, []).append(log_weights[:, prefix + i, prefix + j])
    assert len(by_offset) == (2 * height - 1) * (2 * width - 1)
    for values in by_offset.values():
        torch.testing.assert_close(torch.stack(values), values[0].expand(len(values), -1))
    if name.endswith("-rpe"):
        table = layer.position.table.detach()
        for (dr, dc), values in by_offset.items():
            torch.testing.assert_close(values[0], table[:, dr + height - 1, dc + width - 1])
    levels = torch.stack([values[0] for values in by_offset.values()])
    assert levels.std(0).min() > 0.05  # the weights do vary with the offset


@pytest.mark.parametrize("name", ["softmax-string", "softmax-rope", "softmax-rope-mixed"])
def test_rotations_in_a_converted_model_are_exactly_relative(name):
    """Shifting the patch coordinates of every converted layer leaves the whole model's output
    unchanged when there are no prefix tokens (every logit is patch-to-patch, q_norm/k_norm
    included), and changes it with a class token (CLS logits see absolute phases)."""
    for config, invariant in [(dict(class_token=False, global_pool="avg", qk_norm=True), True),
                              (dict(qk_norm=True), False)]:  # fmt: skip
        model = _converted(_vit(**config), name).double()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        images = torch.randn(2, 3, 32, 32, dtype=F64)
        with torch.no_grad():
            out = model(images)
            for block in model.blocks:
                block.attn.grid = TokenGrid(8, 8, block.attn.grid.num_prefix, origin=(3, -5))
            shifted = model(images)
            for block in model.blocks:  # the same 64 patches read as another grid: power check
                block.attn.grid = TokenGrid(4, 16, block.attn.grid.num_prefix)
            rearranged = model(images)
        assert not torch.allclose(rearranged, out, rtol=1e-6, atol=1e-6)
        if invariant:
            torch.testing.assert_close(shifted, out, rtol=1e-10, atol=1e-10)
        else:
            assert not torch.allclose(shifted, out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "name,options",
    [
        ("favor-rpe", {}),
        ("relu-string", dict(qk_norm=True)),
        ("softmax-rope-mixed", {}),
        ("favor-frpe", dict(frpe_terms=2)),
        ("relu-ape", dict(feature_projection="learned", nb_features=16)),
    ],
)
def test_gradients_reach_every_new_parameter(name, options):
    model = _vit(qk_norm=True)
    old = {key for key, _ in model.named_parameters()}
    converted = convert_vit(model, name, **options).train()
    with torch.no_grad():  # generic position parameters (RPE tables and amplitudes start at 0)
        for key, p in converted.named_parameters():
            if key not in old:
                p.add_(torch.randn_like(p) * 0.1)
    # every token's features: with CLS pooling the last RPE table cannot reach the logits
    converted.forward_features(torch.randn(2, 3, 32, 32)).square().sum().backward()
    new = [(key, p) for key, p in converted.named_parameters() if key not in old]
    assert new
    for key, p in new:
        assert p.grad is not None and p.grad.abs().sum() > 0, key


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(attn_drop_rate=0.1), ValueError, "attention dropout 0.1.*attn_drop_rate=0"),
        (dict(patch_drop_rate=0.25), ValueError, "drops patch tokens.*patch_drop_rate=0"),
        (dict(scale_attn_norm=True), ValueError, "normalises the attention output"),
        (dict(block_fn=timm_vit.ParallelScalingBlock), TypeError, "ParallelScalingBlock"),
    ],
)
def test_unsupported_timm_configurations_are_refused_and_left_untouched(kwargs, error, match):
    model = _vit(**kwargs)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        convert_vit(model, "favor-rpe")
    assert not any(isinstance(m, ConvertedAttention) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_other_refusals_name_the_problem():
    with pytest.raises(TypeError, match="needs a timm VisionTransformer, got Sequential"):
        convert_vit(nn.Sequential(nn.Linear(2, 2)), "favor-rpe")
    model = _vit()
    with pytest.raises(ValueError, match="nb_features must be an integer >= 1, got 'many'"):
        convert_vit(model, "favor-rpe", nb_features="many")
    with pytest.raises(ValueError, match="pool configure the ViT backbone"):
        convert_vit(model, "favor-rpe", pool="mean")
    assert not any(isinstance(m, ConvertedAttention) for m in model.modules())
    converted = convert_vit(model, "favor-rpe")
    tokens = torch.randn(1, 65, 32)
    with pytest.raises(ValueError, match="takes no attn_mask or is_causal"):
        converted.blocks[0](tokens, attn_mask=torch.zeros(65, 65))


def test_without_timm_the_import_says_how_to_install_it(monkeypatch):
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "rpevit.integrations.timm")
    with pytest.raises(ImportError, match=r"pip install efficient-rpe-vit\[timm\]"):
        importlib.import_module("rpevit.integrations.timm")
