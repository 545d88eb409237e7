"""``fidelity``: how well FAVOR+ estimates softmax attention, against the number of random
features m and the q/k norm, with and without q/k l2-normalisation; and for each position
encoding, a FAVOR+ ``Attention`` against its softmax counterpart with shared weights.

Error metric: relative Frobenius error ``|out - exact| / |exact|`` of the attention output,
averaged over independent projection draws, in float64 (so it is the estimator's error,
not rounding). The estimator's standard deviation shrinks like ``m^-1/2``; the variance grows
like ``exp(|q||k| / sqrt(d))``, so inputs are labelled by ``rho = E|q||k| / sqrt(d)``.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor

from rpevit.attention import favor_attention, orthogonal_gaussian_projection
from rpevit.bench.common import (
    BenchContext,
    fit_exponent,
    fmt,
    md_table,
    new_record,
)
from rpevit.bench.workloads import build_attention
from rpevit.positions import TokenGrid
from rpevit.registry import CORE_POSITIONS

SETTINGS = {
    "smoke": dict(head_dim=8, heads=2, tokens=16, features=[8, 32, 128], draws=2,
                  rhos=[1.0, 4.0], table_features=[8, 32],
                  module=dict(heads=2, grid=4, batch=1, features=[8, 32], draws=2)),
    "quick": dict(head_dim=32, heads=4, tokens=256, features=[16, 32, 64, 128, 256, 512, 1024],
                  draws=4, rhos=[0.5, 1.0, 2.0, 4.0, 8.0], table_features=[64, 256],
                  module=dict(heads=4, grid=8, batch=2, features=[16, 64, 256, 1024], draws=3)),
    "full": dict(head_dim=32, heads=8, tokens=1024, features=[16, 32, 64, 128, 256, 512, 1024],
                 draws=16, rhos=[0.5, 1.0, 2.0, 4.0, 8.0], table_features=[64, 256],
                 module=dict(heads=8, grid=16, batch=2,
                             features=[16, 32, 64, 128, 256, 512, 1024], draws=8)),
}  # fmt: skip

#: q/k l2-normalisation temperatures studied; 4 is ``Attention``'s initial ``tau`` (logits
#: ``tau cos(q, k)``, so ``|q||k|/sqrt(d) = tau`` exactly).
TEMPERATURES = (1.0, 4.0)

#: ``E|q||k|/sqrt(d)`` of the module study's queries and keys (qkv weights rescaled to it).
MODULE_RHO = 1.0


def relative_error(approx: Tensor, exact: Tensor) -> float:
    """``|approx - exact|_F / |exact|_F`` (computed in float64)."""
    exact = exact.double()
    return ((approx.double() - exact).norm() / exact.norm()).item()


def l2_normalise(x: Tensor, temperature: float) -> Tensor:
    """What ``Attention(qk_norm=True)`` does: unit rows scaled so ``q.k/sqrt(d) = tau cos``."""
    return F.normalize(x, dim=-1) * temperature**0.5 * x.shape[-1] ** 0.25


def favor_error(q: Tensor, k: Tensor, v: Tensor, nb_features: int, draws: int, seed: int) -> float:
    """Mean relative error of FAVOR+ against exact softmax attention over ``draws``
    independent orthogonal projections with ``nb_features`` rows."""
    exact = F.scaled_dot_product_attention(q, k, v)
    errors = []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(seed * 100_003 + draw)
        projection = orthogonal_gaussian_projection(
            nb_features, q.shape[-1], generator=generator, dtype=q.dtype
        )
        errors.append(relative_error(favor_attention(q, k, v, projection), exact))
    return sum(errors) / len(errors)


def functional_rows(s: dict, seed: int) -> list[dict]:
    """Error vs m for each rho, raw and l2-normalised q/k."""
    d, rows = s["head_dim"], []
    for rho in s["rhos"]:
        generator = torch.Generator().manual_seed(seed)
        shape = (1, s["heads"], s["tokens"], d)
        sigma = (rho / d**0.5) ** 0.5  # E|q|^2 = d sigma^2, so E|q||k|/sqrt(d) ~ rho
        q, k = (torch.randn(shape, generator=generator, dtype=torch.float64) * sigma
                for _ in range(2))  # fmt: skip
        v = torch.randn(shape, generator=generator, dtype=torch.float64)
        for tau in (None, *TEMPERATURES):
            qq, kk = (q, k) if tau is None else (l2_normalise(q, tau), l2_normalise(k, tau))
            for m in s["features"]:
                rows.append({
                    "rho": rho, "qk_norm": tau, "nb_features": m,
                    "rel_error": favor_error(qq, kk, v, m, s["draws"], seed),
                })  # fmt: skip
    return rows


def _module_pair(position: str, m: int, qk_norm: bool, c: dict, head_dim: int):
    """(softmax, favor) ``Attention`` layers with identical weights and position parameters."""
    grid = (c["grid"], c["grid"])
    exact = build_attention(f"softmax-{position}", grid, c["heads"], head_dim, qk_norm=qk_norm)
    with torch.no_grad():
        dim = c["heads"] * head_dim
        # x ~ N(0, 1): E|q|^2 = head_dim * dim * std^2 = sqrt(head_dim) * MODULE_RHO
        std = (MODULE_RHO / (head_dim**0.5 * dim)) ** 0.5
        exact.qkv.weight.normal_(0.0, std)
        if position == "rpe":
            exact.position.table.normal_(0.0, 0.5)  # a non-trivial relative bias
    favor = build_attention(f"favor-{position}", grid, c["heads"], head_dim, m, qk_norm=qk_norm)
    missing, unexpected = favor.load_state_dict(exact.state_dict(), strict=False)
    if unexpected or any(not key.startswith("kernel.") for key in missing):
        raise RuntimeError(f"softmax-{position} weights do not map onto favor-{position}")
    return exact.double().eval(), favor.double().eval()


def module_rows(s: dict, seed: int) -> list[dict]:
    """Error vs m of favor-<position> against softmax-<position>, shared weights."""
    c, d, rows = s["module"], s["head_dim"], []
    grid = TokenGrid(c["grid"], c["grid"], 1)
    x = torch.randn(
        c["batch"], grid.num_tokens, c["heads"] * d,
        generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
    )  # fmt: skip
    for position in CORE_POSITIONS:
        for qk_norm in (False, True):
            for m in c["features"]:
                torch.manual_seed(seed)
                exact_layer, favor_layer = _module_pair(position, m, qk_norm, c, d)
                with torch.no_grad():
                    exact = exact_layer(x, grid)
                    errors = []
                    for draw in range(c["draws"]):
                        generator = torch.Generator().manual_seed(seed * 100_003 + draw)
                        favor_layer.kernel.projection.copy_(
                            orthogonal_gaussian_projection(m, d, generator=generator)
                        )
                        errors.append(relative_error(favor_layer(x, grid), exact))
                rows.append({
                    "position": position, "qk_norm": qk_norm, "nb_features": m,
                    "rel_error": sum(errors) / len(errors), "rel_errors": errors,
                })  # fmt: skip
    return rows


def _curves(rows: list[dict], key_fields: tuple[str, ...]) -> dict[tuple, list[tuple]]:
    curves: dict[tuple, list[tuple]] = {}
    for r in rows:
        curves.setdefault(tuple(r[f] for f in key_fields), []).append(
            (r["nb_features"], r["rel_error"])
        )
    return curves


def _norm_label(qk_norm: float | bool | None) -> str:
    """`` l2-norm tau=T`` (functional) / `` qk_norm`` (module) / nothing."""
    if qk_norm is None or qk_norm is False:
        return ""
    return " qk_norm" if qk_norm is True else f" l2-norm tau={qk_norm:g}"


def summarise(record: dict) -> dict:
    """Fitted slope of log error vs log m per curve (m^-1/2 gives -0.5)."""
    slopes = {}
    for name, rows, fields in (
        ("functional", record["functional"], ("rho", "qk_norm")),
        ("module", record["module"], ("position", "qk_norm")),
    ):
        for key, pts in _curves(rows, fields).items():
            label = f"{name} {fields[0]}={key[0]}{_norm_label(key[1])}"
            slopes[label] = fit_exponent([m for m, _ in pts], [e for _, e in pts])
    return {"slopes": slopes}


def run(ctx: BenchContext) -> dict:
    """Functional and module fidelity studies."""
    s = SETTINGS[ctx.preset]
    start = time.perf_counter()
    record = new_record(
        ctx, "fidelity", {**s, "temperatures": TEMPERATURES, "module_rho": MODULE_RHO}
    )
    record["functional"] = functional_rows(s, ctx.seed)
    record["module"] = module_rows(s, ctx.seed)
    record["summary"] = summarise(record)
    record["seconds"] = time.perf_counter() - start
    return record


def markdown(record: dict) -> str:
    """Error vs rho at selected m (raw vs l2-normalised), module errors vs m, and slopes."""
    s = record["settings"]
    err = {(r["rho"], r["qk_norm"], r["nb_features"]): r["rel_error"] for r in record["functional"]}
    tf = s["table_features"]
    taus = [None, *s["temperatures"]]
    head = ["rho = E‖q‖‖k‖/√d"] + [
        f"{'raw' if tau is None else f'l2-norm τ={tau:g}'} m={m}" for tau in taus for m in tf
    ]
    norm_rows = [
        [fmt(rho)] + [fmt(err.get((rho, tau, m))) for tau in taus for m in tf] for rho in s["rhos"]
    ]
    mods = {(r["position"], r["qk_norm"], r["nb_features"]): r["rel_error"]
            for r in record["module"]}  # fmt: skip
    mf = s["module"]["features"]
    mod_rows = [
        [f"favor-{p} vs softmax-{p}{' (qk_norm)' if n else ''}"]
        + [fmt(mods.get((p, n, m))) for m in mf]
        for p in CORE_POSITIONS for n in (False, True)
    ]  # fmt: skip
    slopes = [[k, fmt(v, 2)] for k, v in record["summary"]["slopes"].items()]
    c = s["module"]
    return "\n".join([
        f"FAVOR+ vs exact softmax, functional (d={s['head_dim']}, N={s['tokens']}, "
        f"{s['heads']} heads, mean relative error over {s['draws']} projection draws, float64):",
        "", md_table(head, norm_rows), "",
        f"Attention modules with shared weights ({c['heads']} heads, d={s['head_dim']}, "
        f"{c['grid']}x{c['grid']} grid + CLS, E‖q‖‖k‖/√d ~ {s['module_rho']:g} without "
        f"qk_norm (with it: τ = 4); "
        f"rpe table ~ N(0, 0.5^2); {c['draws']} draws), relative error by m:", "",
        md_table(["pair"] + [f"m={m}" for m in mf], mod_rows), "",
        "Fitted slope of log(error) vs log(m) (m^-1/2 gives -0.5):", "",
        md_table(["curve", "slope"], slopes),
    ])  # fmt: skip


def plot(record: dict):
    """Error vs m (log-log) with the m^-1/2 reference line."""
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    panels = (
        (left, _curves(record["functional"], ("rho", "qk_norm")), "rho"),
        (right, _curves(record["module"], ("position", "qk_norm")), "favor vs softmax"),
    )
    for axis, curves, what in panels:
        first = None
        for (name, normed), pts in curves.items():
            ms, es = zip(*pts, strict=True)
            axis.plot(ms, es, marker="o", linestyle="--" if normed else "-",
                      label=f"{what} {name}{_norm_label(normed)}")  # fmt: skip
            first = first or (ms[0], es[0], ms[-1])
        if first:
            m0, e0, m1 = first
            axis.plot([m0, m1], [e0, e0 * (m1 / m0) ** -0.5], color="k", linestyle=":",
                      label="m^-1/2")  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("random features m")
        axis.set_ylabel("relative error vs exact softmax")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    left.set_title("FAVOR+ (functional)")
    right.set_title("Attention modules, shared weights")
    return figure
