"""``rpevit report``: results tables and figures built from run folders alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rpevit.atomic import atomic_write, write_json_atomic
from rpevit.data import DataConfig, load_dataset
from rpevit.data.augment import normalize
from rpevit.errors import RpevitError
from rpevit.report.attention import cls_attention_map
from rpevit.report.endings import ending_rows, warning_lines
from rpevit.report.paired import comparisons, gap_closed_intervals
from rpevit.report.paired_render import statistics_markdown, write_comparisons_csv
from rpevit.report.plots import plot_curves
from rpevit.report.results_render import markdown, write_csv
from rpevit.report.runs import Run, load_runs
from rpevit.report.summary_plots import (
    plot_attention_maps,
    plot_feature_ablation,
    plot_heatmap,
    plot_resolution,
    plot_tradeoff,
)
from rpevit.report.tables import (
    ablation_rows,
    gap_closed_table,
    init_comparison,
    summarise,
    transfer_table,
)
from rpevit.runs import PREDICTIONS, RunDir
from rpevit.training.inference import load_model

#: Why a report drawn from records alone (no checkpoints) has no attention maps, and the fix.
NO_CHECKPOINTS = (
    "no checkpoint in the run folder (records only, as committed); build the report where the "
    "runs were trained to draw them"
)


def _test_image(run: Run, data_dir: str | Path | None, index: int) -> tuple[Any, Any, int]:
    """The raw test image ``index`` of the runs' data set, its normalised tensor and label."""
    stored = DataConfig.from_record(run.config)
    data = load_dataset(
        run.dataset,
        data_dir if data_dir is not None else stored.data_dir,
        split_seed=stored.split_seed,
        download=False,
        image_size=stored.image_size,
        in_chans=stored.in_chans,
    )
    if not 0 <= index < len(data.test):
        raise IndexError(f"test image {index} out of range (test split has {len(data.test)})")
    image = data.test.images[index]
    x = normalize(image.unsqueeze(0), data.spec.mean, data.spec.std)[0]
    return image, x, int(data.test.labels[index])


def attention_maps(
    runs: Sequence[Run], image: Any
) -> tuple[dict[str, np.ndarray | str], list[str]]:
    """Per model trained plainly (its lowest-seed run's best checkpoint): the last layer's CLS
    attention map, mean over heads, or a short note why there is none; plus report notes."""
    maps: dict[str, np.ndarray | str] = {}
    notes, missing = [], []
    for run in runs:
        if run.model in maps or run.variant != run.model:
            continue
        checkpoint = RunDir(run.path).checkpoint()
        if checkpoint is None:  # a record without checkpoints (e.g. a committed study record)
            maps[run.model] = "n/a: no checkpoint"
            missing.append(run.model)
            continue
        try:
            model, _ = load_model(checkpoint)
            maps[run.model] = cls_attention_map(model, image).mean(dim=0).numpy()
        except (RpevitError, TypeError, ValueError, RuntimeError, KeyError) as error:
            maps[run.model] = "n/a: " + str(error).split(";")[0][:80]
            notes.append(f"attention map of {run.model} skipped: {error}")
    if missing:
        notes.append(f"attention maps of {', '.join(missing)} not drawn: {NO_CHECKPOINTS}")
    return maps, notes


def _attention_figure(
    runs: Sequence[Run],
    out: Path,
    data_dir: str | Path | None,
    image_index: int,
    plots: list[Path | None],
    notes: list[str],
) -> None:
    """Append the attention-map figure to ``plots`` (or say in ``notes`` why there is none)."""
    try:
        raw, image, label = _test_image(runs[0], data_dir, image_index)
    except (RpevitError, OSError, IndexError) as error:
        notes.append(f"attention maps skipped: cannot load test image {image_index} ({error})")
        return
    maps, map_notes = attention_maps(runs, image)
    notes += map_notes
    plots.append(
        plot_attention_maps(
            raw.float().numpy() / 255,
            maps,
            out / "attention_maps.png",
            f"CLS attention to patches, last layer, mean over heads ({runs[0].dataset} test "
            f"image {image_index}, label {label}; best checkpoint, lowest seed)",
        )
    )


def build_report(
    runs_dir: str | Path | Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    image_index: int = 0,
    tuned: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``results.md``, ``results.csv``, ``comparisons.csv``, ``report.json`` and the PNG
    figures for the runs below ``runs_dir`` (one folder or several) into ``out_dir`` (default
    ``<first runs_dir>/report``); return the summary.

    With several seeds or recorded test predictions it adds the statistics section
    (:mod:`rpevit.report.paired`). Where the runs hold them, the report adds the
    random-feature ablation (variants of a model with several feature counts), from-scratch vs
    from-checkpoint (runs made with ``--init-from``) and resolution transfer (runs evaluated
    with ``--image-size``).
    ``data_dir`` (default: the runs' own) and ``image_index`` select the test image whose
    attention maps are drawn; without the data the attention figure is skipped with a note.
    ``tuned``: model options chosen per kernel by tuning, not part of a variant's name.
    """
    runs_dirs = [Path(runs_dir)] if isinstance(runs_dir, str | Path) else list(map(Path, runs_dir))
    runs, notes = load_runs(*runs_dirs, tuned=tuned)  # refuses an empty list of folders
    out = Path(out_dir) if out_dir is not None else runs_dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(runs)
    dataset = runs[0].dataset
    ablation = ablation_rows(rows)
    comparison = init_comparison(rows)
    transfer = transfer_table(runs)
    endings = ending_rows(runs)
    paired, intervals = comparisons(rows, runs), gap_closed_intervals(runs)
    statistics: list[str] = []
    has_predictions = any(RunDir(r.path).predictions_file.is_file() for r in runs)
    if any(row["runs"] > 1 for row in rows) or has_predictions:
        statistics = statistics_markdown(rows, paired, intervals)
    else:
        notes.append(
            f"no statistics section: every variant has one run and no run has {PREDICTIONS} "
            "(`rpevit evaluate RUN` writes it)"
        )

    plots = [
        plot_curves(runs, out / "curves.png"),
        plot_tradeoff(rows, out / "tradeoff.png"),
        plot_heatmap(rows, out / "accuracy_heatmap.png"),
    ]
    if ablation:
        references = [r for r in rows if r["kernel"] == "softmax" and r["init_from"] is None]
        plots.append(plot_feature_ablation(ablation, references, out / "feature_ablation.png"))
    plots.append(plot_resolution(transfer, out / "resolution_transfer.png"))
    if not any(RunDir(r.path).checkpoint() for r in runs if r.variant == r.model):
        notes.append(f"attention maps skipped: {NO_CHECKPOINTS}")
    else:
        _attention_figure(runs, out, data_dir, image_index, plots, notes)
    plots = [p for p in plots if p is not None]
    if not any(run.curves for run in runs):
        notes.append("no validation curves: no run has CSV logs with val/loss, val/acc")

    title = f"Results: {dataset}, {len(runs)} runs of {len(rows)} variants"
    with atomic_write(out / "results.md", "w") as f:
        f.write(
            markdown(
                rows,
                title,
                notes,
                [str(p) for p in plots],
                endings=endings,
                ablation=ablation,
                comparison=comparison,
                transfer=transfer,
                statistics=statistics,
            )
        )
    write_csv(rows, out / "results.csv", intervals, endings)
    write_comparisons_csv(paired, out / "comparisons.csv")
    summary = {
        "runs_dirs": [str(d) for d in runs_dirs],
        "dataset": dataset,
        "num_runs": len(runs),
        "rows": rows,
        "gap_closed": gap_closed_table(rows),
        "comparisons": paired,
        "gap_closed_intervals": intervals,
        "endings": endings,
        "warnings": warning_lines(endings, [row["variant"] for row in rows]),
        "feature_ablation": ablation,
        "init_comparison": comparison,
        "resolution_transfer": transfer,
        "notes": notes,
        "files": [
            str(out / "results.md"),
            str(out / "results.csv"),
            str(out / "comparisons.csv"),
            *map(str, plots),
        ],
    }
    write_json_atomic(out / "report.json", summary)
    return summary
