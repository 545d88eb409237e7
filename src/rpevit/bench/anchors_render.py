"""The ``anchors`` benchmark's report: its tables, targets in words, and figure."""

from __future__ import annotations

from rpevit.bench.common import fmt, md_table, ratio, verdict


def _timing_table(rows: list[dict], ours: str, last: str) -> list[list]:
    """Table rows: implementation, N, B, ms, time relative to ``ours`` at the same N, and
    ``last`` (the skip note for an implementation that did not run)."""
    base = {(r["impl"], r["tokens"]): r.get("time_ms") for r in rows}
    return [
        [r["impl"], r["tokens"], r.get("batch", "-"), fmt(r.get("time_ms")),
         fmt(ratio(r.get("time_ms"), base.get((ours, r["tokens"]))), 2),
         fmt(r.get(last)) if "time_ms" in r else r.get("note", "-")]
        for r in rows
    ]  # fmt: skip


def markdown(record: dict) -> str:
    """Three tables and the two targets."""
    s, summary = record["settings"], record["summary"]
    favor_table = _timing_table(record["favor"], "ours favor_attention", "rel_error")
    rope_table = _timing_table(record["rope"], "ours Rope2D (axial)", "max_abs_diff")
    vbase = next(r["images_per_s"] for r in record["vit"] if r["impl"] == "ours softmax-ape")
    vit_table = [
        [r["impl"], f"{r['params']:,}" if "params" in r else "-", fmt(r.get("images_per_s")),
         fmt(ratio(r.get("images_per_s"), vbase), 2) if "images_per_s" in r else r["note"]]
        for r in record["vit"]
    ]  # fmt: skip
    v = s["vit"]
    speed = ", ".join(
        f"N={n}: {fmt(x, 2)}x ({'error <=' if summary['favor_error_not_worse'][n] else 'error >'})"
        for n, x in summary["favor_speedup_vs_fastattention"].items()
    )
    return "\n".join([
        f"FAVOR+ ({s['heads']} heads, d={s['head_dim']}, m={s['nb_features']}, identical "
        f"projection; q, k ~ N(0, sigma^2) with E|q||k|/sqrt(d) = {s['rho']:g}, v ~ N(0, 1)): "
        f"forward+backward median ms, time relative to ours, "
        f"relative error vs exact softmax (mean of {s['draws']} projection draws):", "",
        md_table(["implementation", "N", "B", "ms", "x ours", "rel. error"], favor_table), "",
        "2D axial RoPE on q and k (same frequencies), forward+backward median ms; max |diff| of "
        "the rotated q after mapping pair layouts:", "",
        md_table(["implementation", "N", "B", "ms", "x ours", "max abs diff"], rope_table), "",
        f"ViT training step (AdamW), image {v['image_size']}, patch {v['patch_size']}, dim "
        f"{v['dim']}, depth {v['depth']}, heads {v['heads']}, MLP {v['mlp_dim']}, batch "
        f"{v['batch']}:", "",
        md_table(["implementation", "parameters", "images/s", "x ours"], vit_table), "",
        "Targets:", "",
        f"- FastAttention time / ours: {speed or 'n/a'} (target >= 1.3x at N >= 1024 with "
        f"equal or lower error): {verdict(summary['favor_target_pass'])}",
        "- ours + torch.compile (with --compile), speed-up over ours / over FastAttention: "
        + (", ".join(
            f"N={n}: {fmt(x['vs_ours'], 2)}x / {fmt(x['vs_fastattention'], 2)}x"
            for n, x in summary["compiled_speedup"].items()
        ) or "not run"),
        f"- our ViT / vit-pytorch training throughput: {fmt(summary['vit_throughput_ratio'], 3)}x"
        f" (target >= 1): {verdict(summary['vit_target_pass'])}",
    ])  # fmt: skip


def plot(record: dict):
    """FAVOR+ time and error per implementation against N; ViT images/s bars."""
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    for impl in dict.fromkeys(r["impl"] for r in record["favor"]):
        pts = [(r["tokens"], r["time_ms"], r["rel_error"]) for r in record["favor"]
               if r["impl"] == impl and "time_ms" in r]  # fmt: skip
        if pts:
            ns, ts, es = zip(*pts, strict=True)
            left.plot(ns, ts, marker="o", label=impl)
            if not impl.startswith("torch SDPA"):
                middle.plot(ns, es, marker="o", label=impl)
    for axis, title in ((left, "fwd+bwd ms"), (middle, "relative error vs exact softmax")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("tokens N")
        axis.set_title(f"FAVOR+ anchors: {title}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    vit = [r for r in record["vit"] if "images_per_s" in r]
    right.bar([r["impl"] for r in vit], [r["images_per_s"] for r in vit], color=["C0", "C1"])
    right.set_title("ViT training images/s")
    return figure
