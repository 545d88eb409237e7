"""``rpevit.create_attention``: the standalone attention layer of every registered variant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rpevit
from rpevit.layers import GridAttention
from rpevit.positions import TokenGrid

F64 = torch.float64
DIM, HEADS, GRID = 16, 2, (3, 4)


def _model(name: str, pool: str = "cls", **options):
    """A one-block ViT whose attention sees a ``GRID`` of patches (4-pixel patches)."""
    size = (GRID[0] * 4, GRID[1] * 4)
    return rpevit.create_model(
        name, image_size=size, in_chans=1, num_classes=3, patch_size=4, dim=DIM, depth=1,
        heads=HEADS, mlp_dim=8, pool=pool, **options,
    ).double().eval()  # fmt: skip


def _perturb(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Move every floating-point parameter off its initialisation (tables, biases, angles)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("name", rpevit.list_available_models())
def test_create_attention_matches_the_attention_inside_create_model(name):
    """The block's state dict loads strictly into the standalone layer, and both give the same
    outputs on the same tokens: same modules, same names, same computation."""
    torch.manual_seed(0)
    model = _model(name)
    block_attention = model.blocks[0].attn
    _perturb(block_attention)
    layer = rpevit.create_attention(name, DIM, HEADS, GRID).double().eval()
    layer.load_state_dict(block_attention.state_dict())
    x = torch.randn(2, 1 + GRID[0] * GRID[1], DIM, dtype=F64)
    with torch.no_grad():
        expected = block_attention(x, TokenGrid(*GRID, num_prefix=1))
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["softmax-rpe", "favor-string", "relu-rope", "favor-frpe"])
def test_create_attention_without_prefix_tokens_matches_a_mean_pooled_model(name):
    torch.manual_seed(0)
    model = _model(name, pool="mean", qk_norm=True)
    _perturb(model.blocks[0].attn)
    layer = rpevit.create_attention(name, DIM, HEADS, GRID, num_prefix_tokens=0, qk_norm=True)
    layer = layer.double().eval()
    layer.load_state_dict(model.blocks[0].attn.state_dict())
    x = torch.randn(2, GRID[0] * GRID[1], DIM, dtype=F64)
    with torch.no_grad():
        expected = model.blocks[0].attn(x, TokenGrid(*GRID, num_prefix=0))
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["softmax-string", "favor-rope-mixed", "relu-frpe", "softmax-rpe"])
def test_another_grid_at_call_time_equals_a_layer_built_for_that_grid(name):
    """``forward(x, grid_size=(h, w))`` is the layer built for ``h x w`` with the same parameters:
    rotations and the Fourier RPE are functions of coordinates (their parameters do not depend on
    the grid), the RPE table is the trained one with offsets clamped (``relative_table``)."""
    torch.manual_seed(0)
    layer = rpevit.create_attention(name, DIM, HEADS, GRID, num_prefix_tokens=2).double().eval()
    _perturb(layer)
    state = layer.state_dict()
    for size in [(5, 6), (2, 3)]:
        other = rpevit.create_attention(name, DIM, HEADS, size, num_prefix_tokens=2).double()
        if name.endswith("-rpe"):
            state["position.table"] = layer.position.relative_table(TokenGrid(*size))
        other.load_state_dict(state)
        x = torch.randn(2, 2 + size[0] * size[1], DIM, dtype=F64)
        with torch.no_grad():
            torch.testing.assert_close(layer(x, grid_size=size), other.eval()(x))
    assert layer.grid == TokenGrid(*GRID, num_prefix=2)  # a call does not change the layer


def test_forward_takes_a_token_grid_like_attention():
    """A full ``TokenGrid`` (e.g. with a shifted origin) is used as given."""
    layer = rpevit.create_attention("softmax-rope", DIM, HEADS, GRID).double().eval()
    x = torch.randn(1, 13, DIM, dtype=F64)
    shifted = TokenGrid(*GRID, num_prefix=1, origin=(2, -1))
    with torch.no_grad():
        expected = super(GridAttention, layer).forward(x, shifted)
        torch.testing.assert_close(layer(x, shifted), expected, rtol=0, atol=0)
        assert not torch.allclose(layer(x), expected)


def test_clear_errors_for_token_counts_and_fixed_length_kernels():
    layer = rpevit.create_attention("favor-rpe", DIM, HEADS, GRID)
    with pytest.raises(ValueError, match=r"expected tokens \[B, 1 \+ 3\*4, 16\] = \[B, 13, 16\]"):
        layer(torch.randn(2, 17, DIM))
    with pytest.raises(ValueError, match="pass grid_size"):
        layer(torch.randn(2, 13, 8))
    linformer = rpevit.create_attention("linformer-ape", DIM, HEADS, GRID, linformer_k=4)
    assert linformer(torch.randn(2, 13, DIM)).shape == (2, 13, DIM)
    assert linformer(torch.randn(2, 13, DIM), grid_size=(4, 3)).shape == (2, 13, DIM)
    with pytest.raises(ValueError, match="fixed sequence length of 13 tokens.*5x5 grid"):
        linformer(torch.randn(2, 26, DIM), grid_size=(5, 5))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="favor-rpe", pool="mean"), "pool configure the ViT backbone.*create_model"),
        (dict(ape=False, dropout=0.1), "ape, dropout configure the ViT backbone"),
        (dict(name="softmax-ape", nb_features=8), "do not apply to model 'softmax-ape'"),
        (dict(name="favor-ape", nb_features=0), "nb_features must be >= 1, got 0"),
        (dict(name="relu-ape", nb_features=4), "feature_projection='learned'"),
        (dict(name="bogus"), "unknown model 'bogus'"),
        (dict(dim=30, heads=4), "dim 30 is not divisible by heads 4"),
        (dict(heads=0), "heads must be a positive integer"),
        (dict(grid_size=(3, 0)), "grid_size must be a positive int or"),
        (dict(num_prefix_tokens=-1), "num_prefix_tokens must be >= 0"),
        (dict(num_prefix_tokens=True), r"num_prefix_tokens must be an integer >= 0, got True"),
        (dict(name="softmax-rope", dim=12, heads=2), "head dimension divisible by 4"),
    ],
)
def test_create_attention_rejects_bad_arguments_with_one_line_messages(kwargs, match):
    args = dict(name="softmax-ape", dim=DIM, heads=HEADS, grid_size=GRID)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as error:
        rpevit.create_attention(**args)
    assert "\n" not in str(error.value)


def test_layer_options_and_initialisation_follow_create_model():
    """``qk_norm`` adds the temperature; linears get the ViT initialisation (std 0.02, zero
    biases), the ReLU kernel's learned projection keeps its orthonormal blocks."""
    torch.manual_seed(0)
    layer = rpevit.create_attention(
        "relu-rope", 64, 2, 8, qk_norm=True, nb_features=64, feature_projection="learned"
    )
    assert layer.qk_log_temperature.shape == (2, 1, 1)
    assert abs(layer.qkv.weight.std().item() - 0.02) < 0.003
    assert layer.qkv.bias.abs().max() == 0 and layer.proj.bias.abs().max() == 0
    p = layer.kernel.feature_proj.weight.detach()
    torch.testing.assert_close(p[:32] @ p[:32].T, torch.eye(32), atol=1e-5, rtol=0)
    assert rpevit.create_attention("favor-ape", 64, 2, 8).kernel.nb_features == 110  # d ln d
    assert "create_attention" in rpevit.__all__


@pytest.mark.parametrize(
    "name,options",
    [
        ("softmax-rpe", {}),
        ("favor-string", dict(nb_features=8)),
        ("relu-rope-mixed", dict(feature_projection="learned", qk_norm=True)),
        ("favor-frpe", dict(frpe_terms=2)),
    ],
)
def test_gradients_reach_every_layer_parameter(name, options):
    layer = rpevit.create_attention(name, DIM, HEADS, GRID, **options)
    _perturb(layer, 0.1)
    layer(torch.randn(2, 13, DIM), grid_size=(3, 4)).square().sum().backward()
    for key, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, key


@pytest.mark.parametrize("tau", [1.0, 4.0, 16.0])
def test_qk_temperature_sets_the_initial_logit_scale_of_qk_norm(tau):
    """With qk_norm the logits are tau * cos(q, k), tau starting at qk_temperature (Luo et al.'s
    normalised features: the temperature decides how peaked attention can start)."""
    layer = rpevit.create_attention("softmax-ape", 32, 2, (2, 2), qk_norm=True, qk_temperature=tau)
    q, k = (
        torch.randn(2, 2, 5, 16, dtype=torch.float64),
        torch.randn(2, 2, 5, 16, dtype=torch.float64),
    )
    qn, kn = layer.double().normalize_qk(q, k)
    logits = qn @ kn.transpose(-1, -2) / 16**0.5
    cosine = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
    torch.testing.assert_close(logits, tau * cosine)
    model = rpevit.create_model(
        "favor-rpe", image_size=8, in_chans=1, num_classes=2, patch_size=4, dim=16, depth=2,
        heads=2, mlp_dim=16, qk_norm=True, qk_temperature=tau,
    )  # fmt: skip
    for block in model.blocks:
        torch.testing.assert_close(block.attn.qk_log_temperature.exp(), torch.full((2, 1, 1), tau))


def test_qk_temperature_needs_qk_norm_and_a_positive_number():
    with pytest.raises(ValueError, match="pass qk_norm=True as well"):
        rpevit.create_attention("favor-ape", 32, 2, (2, 2), qk_temperature=2.0)
    with pytest.raises(ValueError, match="qk_temperature must be > 0, got 0"):
        rpevit.create_attention("favor-ape", 32, 2, (2, 2), qk_norm=True, qk_temperature=0)
