"""``anchors``: our building blocks against public reference implementations, same shapes.

- FAVOR+: ``rpevit.attention.favor_attention`` vs performer-pytorch's ``FastAttention``
  (non-causal, its projection replaced by ours) vs exact PyTorch SDPA: fwd+bwd time and
  relative error against exact softmax (float64 reference), mean over projection draws;
- 2D RoPE: our axial ``Rope2D`` vs rotary-embedding-torch's axial frequencies (same
  frequencies ``100^(-t/(d/4))``; its interleaved pairs mapped onto our half-split pairs, so
  the outputs agree to float precision): fwd+bwd time of rotating q and k;
- ViT: our ``softmax-ape`` vs vit-pytorch's ``ViT`` at the same size: training images/s
  (forward, cross-entropy, backward, AdamW step).

A missing anchor package skips its rows with a note; the ``bench`` extra installs them.
"""

from __future__ import annotations

import importlib.util
import time
from importlib.metadata import version

import torch
import torch.nn.functional as F

from rpevit import create_model
from rpevit.attention import favor_attention, orthogonal_gaussian_projection
from rpevit.bench.anchors_render import markdown, plot
from rpevit.bench.common import (
    BenchContext,
    median,
    new_record,
    preset_settings,
    ratio,
    time_interleaved,
)
from rpevit.bench.fidelity import relative_error
from rpevit.positions import Rope2D, TokenGrid

SETTINGS = {
    "smoke": dict(tokens=[16, 64], batch_tokens=64, heads=2, head_dim=8, nb_features=8, draws=2,
                  rho=1.0,
                  vit=dict(image_size=16, patch_size=4, dim=32, depth=1, heads=2, mlp_dim=64,
                           batch=4)),
    "quick": dict(tokens=[256, 1024, 4096], batch_tokens=4096, heads=8, head_dim=32,
                  nb_features=64, draws=4, rho=1.0,
                  vit=dict(image_size=32, patch_size=4, dim=192, depth=6, heads=6, mlp_dim=384,
                           batch=64)),
    "full": dict(tokens=[256, 1024, 4096, 16384], batch_tokens=4096, heads=8, head_dim=32,
                 nb_features=64, draws=8, rho=1.0,
                 vit=dict(image_size=32, patch_size=4, dim=256, depth=6, heads=8, mlp_dim=512,
                          batch=128)),
}  # fmt: skip

#: Anchor distributions and their import names.
#: The suite reads ``markdown`` and ``plot`` from this module.
__all__ = ["markdown", "plot", "run"]

PACKAGES = {
    "performer-pytorch": "performer_pytorch",
    "rotary-embedding-torch": "rotary_embedding_torch",
    "vit-pytorch": "vit_pytorch",
}


def installed(module: str) -> bool:
    """Whether an anchor package can be imported."""
    return importlib.util.find_spec(module) is not None


def _missing(dist: str) -> str:
    return f"skipped: {dist} not installed (pip install 'efficient-rpe-vit[bench]')"


def _fwd_bwd(fn, inputs: list[torch.Tensor]):
    """Step computing ``fn(*inputs)`` and backpropagating a fixed random gradient."""
    grads = None

    def step() -> None:
        nonlocal grads
        for x in inputs:
            x.grad = None
        out = fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        if grads is None:
            grads = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, grads)

    return step


def favor_rows(s: dict, ctx: BenchContext) -> list[dict]:
    """FAVOR+ ours vs FastAttention vs SDPA at each N."""
    have = installed(PACKAGES["performer-pytorch"])
    if have:
        from performer_pytorch import FastAttention
    h, d, m = s["heads"], s["head_dim"], s["nb_features"]
    sigma = (s["rho"] / d**0.5) ** 0.5  # E|q||k|/sqrt(d) ~ rho
    compiled_favor = torch.compile(favor_attention) if ctx.compile else None
    rows = []
    for tokens in s["tokens"]:
        batch = max(1, s["batch_tokens"] // tokens)
        generator = torch.Generator().manual_seed(ctx.seed)
        q, k = (torch.randn(batch, h, tokens, d, generator=generator) * sigma for _ in range(2))
        v = torch.randn(batch, h, tokens, d, generator=generator)
        estimators = {"ours favor_attention": favor_attention}
        if ctx.compile:
            estimators["ours + torch.compile"] = compiled_favor
        if have:
            fast = FastAttention(dim_heads=d, nb_features=m, causal=False)

            def performer(q, k, v, p, fast=fast):
                fast.projection_matrix.copy_(p)
                return fast(q, k, v)

            estimators["performer-pytorch FastAttention"] = performer
        exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        errors: dict[str, list[float]] = {name: [] for name in estimators}
        with torch.no_grad():
            for draw in range(s["draws"]):
                p = orthogonal_gaussian_projection(
                    m, d, generator=torch.Generator().manual_seed(ctx.seed + 1 + draw)
                )
                for name, fn in estimators.items():
                    errors[name].append(relative_error(fn(q, k, v, p), exact))
            errors["torch SDPA (exact)"] = [
                relative_error(F.scaled_dot_product_attention(q, k, v), exact)
            ]
        p = orthogonal_gaussian_projection(m, d, generator=generator)
        fns = {
            name: (lambda q, k, v, fn=fn, p=p: fn(q, k, v, p)) for name, fn in estimators.items()
        }
        if have:
            fast.projection_matrix.copy_(p)
            fns["performer-pytorch FastAttention"] = fast  # without the per-call copy
        fns["torch SDPA (exact)"] = F.scaled_dot_product_attention
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        steps = {name: _fwd_bwd(fn, leaves) for name, fn in fns.items()}
        times = time_interleaved(steps, ctx)
        for name in fns:
            rows.append({
                "impl": name, "tokens": tokens, "batch": batch, "times_s": times[name],
                "time_ms": median(times[name]) * 1e3,
                "rel_error": sum(errors[name]) / len(errors[name]), "rel_errors": errors[name],
            })  # fmt: skip
        if not have:
            rows.append({"impl": "performer-pytorch FastAttention", "tokens": tokens,
                         "note": _missing("performer-pytorch")})  # fmt: skip
    return rows


def rope_rows(s: dict, ctx: BenchContext) -> list[dict]:
    """Axial 2D RoPE ours vs rotary-embedding-torch: agreement and fwd+bwd time at each N."""
    have = installed(PACKAGES["rotary-embedding-torch"])
    if have:
        from rotary_embedding_torch import RotaryEmbedding, apply_rotary_emb
    h, d = s["heads"], s["head_dim"]
    # Their pair i is (2i, 2i+1); ours is (i, i + d/2): theirs = ours[..., perm].
    perm = torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], dim=1).flatten()
    rows = []
    for tokens in s["tokens"]:
        side = int(tokens**0.5)
        grid = TokenGrid(side, side, 0)
        batch = max(1, s["batch_tokens"] // tokens)
        generator = torch.Generator().manual_seed(ctx.seed)
        q, k = (torch.randn(batch, h, tokens, d, generator=generator) for _ in range(2))
        rope = Rope2D(d, h, "axial", 100.0)
        fns = {"ours Rope2D (axial)": lambda q, k, rope=rope, grid=grid: rope.rotate(q, k, grid)}
        agreement = None
        if have:
            rotary = RotaryEmbedding(dim=d // 2, theta=100.0)

            def theirs(q, k, rotary=rotary, side=side):
                freqs = rotary.get_axial_freqs(side, side).reshape(side * side, d)
                return apply_rotary_emb(freqs, q), apply_rotary_emb(freqs, k)

            fns["rotary-embedding-torch (axial)"] = theirs
            with torch.no_grad():
                ours_q, _ = rope.rotate(q, k, grid)
                their_q, _ = theirs(q[..., perm], k[..., perm])
                agreement = (ours_q[..., perm] - their_q).abs().max().item()
        leaves = [x.clone().requires_grad_() for x in (q, k)]
        steps = {name: _fwd_bwd(fn, leaves) for name, fn in fns.items()}
        times = time_interleaved(steps, ctx)
        for name in fns:
            rows.append({"impl": name, "tokens": tokens, "batch": batch, "times_s": times[name],
                         "time_ms": median(times[name]) * 1e3,
                         "max_abs_diff": agreement})  # fmt: skip
        if not have:
            rows.append({"impl": "rotary-embedding-torch (axial)", "tokens": tokens,
                         "note": _missing("rotary-embedding-torch")})  # fmt: skip
    return rows


def vit_rows(s: dict, ctx: BenchContext) -> list[dict]:
    """Training images/s of our softmax-ape ViT and vit-pytorch's ViT, same size."""
    c = s["vit"]
    torch.manual_seed(ctx.seed)
    models = {
        "ours softmax-ape": create_model(
            "softmax-ape", image_size=c["image_size"], in_chans=3, num_classes=10,
            patch_size=c["patch_size"], dim=c["dim"], depth=c["depth"], heads=c["heads"],
            mlp_dim=c["mlp_dim"],
        ),
    }  # fmt: skip
    have = installed(PACKAGES["vit-pytorch"])
    if have:
        from vit_pytorch import ViT

        models["vit-pytorch ViT"] = ViT(
            image_size=c["image_size"], patch_size=c["patch_size"], num_classes=10,
            dim=c["dim"], depth=c["depth"], heads=c["heads"], mlp_dim=c["mlp_dim"],
            channels=3, dim_head=c["dim"] // c["heads"], pool="cls",
        )  # fmt: skip
    images = torch.randn(c["batch"], 3, c["image_size"], c["image_size"])
    labels = torch.randint(0, 10, (c["batch"],))
    steps = {}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

        steps[name] = step
    times = time_interleaved(steps, ctx)
    rows = [
        {"impl": name, "params": sum(p.numel() for p in models[name].parameters()),
         "times_s": times[name], "images_per_s": c["batch"] / median(times[name])}
        for name in models
    ]  # fmt: skip
    if not have:
        rows.append({"impl": "vit-pytorch ViT", "note": _missing("vit-pytorch")})
    return rows


def summarise(record: dict) -> dict:
    """Targets: FAVOR+ >= 1.3x faster than FastAttention at N >= 1024 with <= its error;
    our ViT training throughput >= vit-pytorch's."""
    fav = {(r["impl"], r["tokens"]): r for r in record["favor"] if "time_ms" in r}
    speedups, error_ok, compiled = {}, {}, {}
    for n in record["settings"]["tokens"]:
        ours = fav.get(("ours favor_attention", n))
        theirs = fav.get(("performer-pytorch FastAttention", n))
        if ours and theirs:
            speedups[n] = ratio(theirs["time_ms"], ours["time_ms"])
            error_ok[n] = ours["rel_error"] <= theirs["rel_error"] * (1 + 1e-3)
        new = fav.get(("ours + torch.compile", n))
        if new and ours:
            compiled[n] = {
                "vs_ours": ratio(ours["time_ms"], new["time_ms"]),
                "vs_fastattention": ratio(theirs["time_ms"], new["time_ms"]) if theirs else None,
            }
    large = [n for n in speedups if n >= 1024]
    vit = {r["impl"]: r.get("images_per_s") for r in record["vit"]}
    vit_ratio = ratio(vit.get("ours softmax-ape"), vit.get("vit-pytorch ViT"))
    return {
        "favor_speedup_vs_fastattention": speedups,
        "favor_error_not_worse": error_ok,
        "favor_target_pass": all(speedups[n] >= 1.3 and error_ok[n] for n in large)
        if large else None,
        "compiled_speedup": compiled,
        "vit_throughput_ratio": vit_ratio,
        "vit_target_pass": None if vit_ratio is None else vit_ratio >= 1.0,
    }  # fmt: skip


def run(ctx: BenchContext) -> dict:
    """All three anchor comparisons."""
    s = preset_settings(SETTINGS, ctx)
    start = time.perf_counter()
    versions = {dist: version(dist) for dist, module in PACKAGES.items() if installed(module)}
    record = new_record(ctx, "anchors", {**s, "anchor_versions": versions})
    record["favor"] = favor_rows(s, ctx)
    record["rope"] = rope_rows(s, ctx)
    record["vit"] = vit_rows(s, ctx)
    record["summary"] = summarise(record)
    record["seconds"] = time.perf_counter() - start
    return record
