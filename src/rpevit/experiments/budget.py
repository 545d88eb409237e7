"""The budget study: the gap between softmax and the Performer kernels on CIFAR-10 after 3, 9
and 27 epochs (the ``study`` model), with every kernel tuned by one rule on the validation
split, in stages that one resumable command runs (``scripts/budget-study.sh``).

1. **Tuning** (9 epochs, seed 0, validation only). Per kernel, on ``<kernel>-ape``: the
   learning rate from :data:`LEARNING_RATES` at warm-up :data:`WARMUPS` [0], then the warm-up
   from :data:`WARMUPS` at that rate; then, at the kernel's recipe, the Fourier RPE's terms R
   (``<kernel>-frpe``) from :data:`FRPE_TERMS`, and the initial temperature of Luo et al.'s
   normalised FAVOR+ (``favor-ape`` with ``qk_norm``) from :data:`TEMPERATURES`. Rule for
   every choice: the highest final-epoch validation accuracy, ties to the earlier candidate.
   The choices and every candidate's accuracy go to ``tuning.json``.
2. **3 and 9 epochs**, seeds :data:`SEEDS`: the 15 study variants with their kernel's recipe,
   plus Luo's rows (favor-ape and favor-rpe with normalised q/k at the chosen temperature).
3. **The 27-epoch choice**, declared before its grid starts (``declared-27.json``, never
   rewritten): per kernel, the relative encoding with the highest mean final validation
   accuracy at 9 epochs.
4. **27 epochs**: per kernel APE and the declared encoding, plus Luo's favor-rpe; softmax also
   with every encoding a Performer row uses there (the declared ones and Luo's rpe), so each
   Performer row has its same-encoding reference.

Every grid keeps its finished runs' records (no checkpoints) under :data:`RECORDS`
``/<grid>/``; committed, they count as finished on any machine, so the study continues across
sessions. ``python -m rpevit.experiments.budget [--plan] [--jobs N]``
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpevit.atomic import atomic_write, write_json_atomic
from rpevit.errors import ConfigError
from rpevit.experiments.parallel import GridSpec, run_grids_parallel
from rpevit.experiments.plan import plan_grid, run_folder
from rpevit.registry import CORE_KERNELS, CORE_POSITIONS, RELATIVE_POSITIONS
from rpevit.runs import RunDir
from rpevit.training import TrainConfig

RECORDS = Path("docs/results/budget-study")
RUNS = Path("runs/budget-study")
#: the tuning seed is none of the reported :data:`SEEDS`: a reported run is then never the
#: candidate that won the tuning on its own validation score (no winner's curse in the tables)
TUNE_EPOCHS, TUNE_SEED = 9, 0
LEARNING_RATES = (1.5e-3, 3e-3, 6e-3)
WARMUPS = (0.3, 1.0)
FRPE_TERMS = (1, 2, 4)
TEMPERATURES = (2.0, 4.0, 8.0)
BUDGETS = (3, 9, 27)
SEEDS = (42, 43, 44)
RULE = (
    "highest final-epoch validation accuracy (seed 0, 9 epochs), ties to the earlier "
    "candidate; learning rate at warm-up 0.3 first, then warm-up at that rate"
)


@dataclass(frozen=True)
class Recipe:
    """A kernel's optimiser settings."""

    lr: float
    warmup_epochs: float


@dataclass(frozen=True)
class Grid:
    """One grid of the study: its name (folder below :data:`RUNS` and :data:`RECORDS`), models,
    seeds, budget, recipe and model options."""

    name: str
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    recipe: Recipe
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def spec(self, base: TrainConfig, runs: Path, records: Path) -> GridSpec:
        config = dataclasses.replace(
            base,
            epochs=self.epochs,
            lr=self.recipe.lr,
            warmup_epochs=self.recipe.warmup_epochs,
            model_options=dict(self.options),
        )
        return GridSpec(config, self.models, self.seeds, runs / self.name, records / self.name)


def _folder(records: Path, grid: Grid, model: str, seed: int) -> RunDir:
    """The records folder of one run of ``grid``."""
    return RunDir(run_folder(records / grid.name, plan_grid([model], [seed])[0]))


def final_val(records: Path, grid: Grid, model: str, seed: int) -> float | None:
    """Final-epoch validation accuracy of a finished run of ``grid`` (None: not finished)."""
    folder = _folder(records, grid, model, seed)
    metrics = folder.read_metrics(model, seed)
    if metrics is not None and metrics.last_val_accuracy is None:
        raise ConfigError(
            f"{folder.path} records no final validation accuracy (trained before it was "
            f"recorded); run `rpevit evaluate {folder.path}` where its checkpoints are"
        )
    return None if metrics is None else metrics.last_val_accuracy


def choose(scores: Sequence[tuple[Any, float | None]]) -> Any | None:
    """The candidate with the highest score, ties to the earlier one; None until all ran."""
    if not scores or any(score is None for _, score in scores):
        return None
    best = max(score for _, score in scores)
    return next(value for value, score in scores if score == best)


def _tune(name: str, model: str, recipe: Recipe, **options: Any) -> Grid:
    return Grid(f"tune/{name}", (model,), (TUNE_SEED,), TUNE_EPOCHS, recipe, options)


class Study:
    """The stages above over one records folder: which grids each needs and what was chosen."""

    def __init__(self, records: Path = RECORDS) -> None:
        self.records = records

    def _scores(self, grids: Sequence[tuple[Any, Grid]]) -> list[tuple[Any, float | None]]:
        return [(v, final_val(self.records, g, g.models[0], TUNE_SEED)) for v, g in grids]

    def lr_grids(self, kernel: str) -> list[tuple[float, Grid]]:
        model = f"{kernel}-ape"
        return [(lr, _tune(f"{model}/lr{lr:g}-wu{WARMUPS[0]:g}", model, Recipe(lr, WARMUPS[0])))
                for lr in LEARNING_RATES]  # fmt: skip

    def warmup_grids(self, kernel: str, lr: float) -> list[tuple[float, Grid]]:
        model = f"{kernel}-ape"
        return [(w, _tune(f"{model}/lr{lr:g}-wu{w:g}", model, Recipe(lr, w))) for w in WARMUPS]

    def frpe_grids(self, kernel: str, recipe: Recipe) -> list[tuple[int, Grid]]:
        model = f"{kernel}-frpe"
        return [(r, _tune(f"{model}/R{r}", model, recipe, frpe_terms=r)) for r in FRPE_TERMS]

    def luo_grids(self, recipe: Recipe) -> list[tuple[float, Grid]]:
        return [(t, _tune(f"favor-ape-qknorm/t{t:g}", "favor-ape", recipe, qk_norm=True,
                          qk_temperature=t)) for t in TEMPERATURES]  # fmt: skip

    def tuning(self) -> tuple[list[Grid], dict[str, Any] | None]:
        """The tuning grids still to run (their next stage only), and the choices once made."""
        pending: list[Grid] = []
        recipes = {}
        for kernel in CORE_KERNELS:
            lr = choose(self._scores(self.lr_grids(kernel)))
            if lr is None:
                pending += [g for _, g in self.lr_grids(kernel)]
                continue
            warmup = choose(self._scores(self.warmup_grids(kernel, lr)))
            if warmup is None:
                pending += [g for _, g in self.warmup_grids(kernel, lr)]
            else:
                recipes[kernel] = Recipe(lr, warmup)
        if len(recipes) < len(CORE_KERNELS):
            return pending, None
        terms = {k: choose(self._scores(self.frpe_grids(k, r))) for k, r in recipes.items()}
        temperature = choose(self._scores(self.luo_grids(recipes["favor"])))
        if temperature is None or None in terms.values():
            pending = [g for k, r in recipes.items() for _, g in self.frpe_grids(k, r)]
            return pending + [g for _, g in self.luo_grids(recipes["favor"])], None
        candidates = {
            g.name: score
            for k, r in recipes.items()
            for grids in (self.lr_grids(k), self.warmup_grids(k, r.lr), self.frpe_grids(k, r))
            for (_, g), (_, score) in zip(grids, self._scores(grids), strict=True)
        }
        luo = self.luo_grids(recipes["favor"])
        candidates |= {g.name: s for (_, g), (_, s) in zip(luo, self._scores(luo), strict=True)}
        choices = {
            "rule": RULE,
            "kernels": {
                k: {**dataclasses.asdict(r), "frpe_terms": terms[k]} for k, r in recipes.items()
            },  # fmt: skip
            "luo_qk_temperature": temperature,
            "final_val_accuracy": dict(sorted(candidates.items())),
        }
        return [], choices

    def tuning_markdown(self, choices: Mapping[str, Any]) -> str:
        """``tuning.md``: per kernel and setting, every candidate's final validation accuracy
        with the chosen one in bold, and the rule."""
        scores = choices["final_val_accuracy"]

        def cells(grids: Sequence[tuple[Any, Grid]], chosen: Any) -> str:
            return ", ".join(
                f"**{value:g}: {100 * scores[g.name]:.2f}**" if value == chosen
                else f"{value:g}: {100 * scores[g.name]:.2f}"
                for value, g in grids
            )  # fmt: skip

        rows, grids = [], {}
        for kernel, chosen in choices["kernels"].items():
            lr, warmup = chosen["lr"], chosen["warmup_epochs"]
            rates, warmups = self.lr_grids(kernel), self.warmup_grids(kernel, lr)
            terms = self.frpe_grids(kernel, Recipe(lr, warmup))
            grids |= {grid.name: grid for _, grid in (*rates, *warmups, *terms)}
            rows += [
                f"| {kernel} | learning rate (warm-up {WARMUPS[0]:g}) | {cells(rates, lr)} |",
                f"| {kernel} | warm-up epochs (lr {lr:g}) | {cells(warmups, warmup)} |",
                f"| {kernel} | frpe terms R | {cells(terms, chosen['frpe_terms'])} |",
            ]
        favor = choices["kernels"]["favor"]
        luo = self.luo_grids(Recipe(favor["lr"], favor["warmup_epochs"]))
        rows.append(
            f"| favor (Luo: qk_norm) | initial temperature | "
            f"{cells(luo, choices['luo_qk_temperature'])} |"
        )
        grids |= {grid.name: grid for _, grid in luo}
        runs, hours = self.training_hours(grids.values())
        return "\n".join([
            f"# Budget study: tuning ({TUNE_EPOCHS} epochs, seed {TUNE_SEED}, validation split)",
            "",
            f"Rule: {choices['rule']}. Final-epoch validation accuracy % per candidate; the "
            "chosen one in bold. Written by `python -m rpevit.experiments.budget` from the "
            "records in `tune/`; the same choices in `tuning.json`.",
            "",
            "| kernel | setting | candidates: final val % |",
            "| --- | --- | --- |",
            *rows,
            "",
            f"Training time of the {runs} tuning runs: {hours:.2f} hours, the time in their "
            "training epochs summed over runs (one thread each: core-hours).",
            "",
        ])  # fmt: skip

    def training_hours(self, grids: Iterable[Grid]) -> tuple[int, float]:
        """The finished runs of ``grids`` and their training epochs' time summed, in hours."""
        runs, seconds = 0, 0.0
        for grid in grids:
            for model, seed in itertools.product(grid.models, grid.seeds):
                metrics = _folder(self.records, grid, model, seed).read_metrics(model, seed)
                if metrics is not None:
                    runs += 1
                    seconds += metrics.training_seconds(grid.epochs) or 0.0
        return runs, seconds / 3600

    def budget_grids(self, epochs: int, choices: Mapping[str, Any]) -> list[Grid]:
        """The grids of one budget: per kernel its recipe (the 27-epoch budget: APE and the
        declared encoding; softmax also every encoding a Performer row uses there, its
        same-encoding reference), and Luo's normalised FAVOR+ rows."""
        declared = self.declared() if epochs == 27 else None
        luo_models = ("favor-rpe",) if epochs == 27 else ("favor-ape", "favor-rpe")
        grids = []
        for kernel, chosen in choices["kernels"].items():
            recipe = Recipe(chosen["lr"], chosen["warmup_epochs"])
            if declared is None:
                positions: tuple[str, ...] = (*CORE_POSITIONS, "frpe")
            elif kernel == "softmax":
                used = {*declared.values(), *(m.partition("-")[2] for m in luo_models)}
                positions = ("ape", *(p for p in RELATIVE_POSITIONS if p in used))
            else:
                positions = ("ape", declared[kernel])
            models = tuple(f"{kernel}-{p}" for p in positions)
            options = {"frpe_terms": chosen["frpe_terms"]} if "frpe" in positions else {}
            grids.append(Grid(f"e{epochs}/{kernel}", models, SEEDS, epochs, recipe, options))
        favor = choices["kernels"]["favor"]
        options = {"qk_norm": True, "qk_temperature": choices["luo_qk_temperature"]}
        recipe = Recipe(favor["lr"], favor["warmup_epochs"])
        grids.append(Grid(f"e{epochs}/favor-qknorm", luo_models, SEEDS, epochs, recipe, options))
        return grids

    def progress(self, grid: Grid) -> tuple[int, int]:
        """How many runs of ``grid`` have their records, of how many."""
        runs = plan_grid(grid.models, grid.seeds, (), grid.options)
        done = sum(final_val(self.records, grid, run.model, run.seed) is not None for run in runs)
        return done, len(runs)

    def finished(self, grid: Grid) -> bool:
        """Whether every run of ``grid`` has its records."""
        done, total = self.progress(grid)
        return done == total

    @property
    def declaration_file(self) -> Path:
        return self.records / "declared-27.json"

    def declared(self) -> dict[str, str] | None:
        """Per kernel, the relative encoding of the 27-epoch grid (None: not declared yet)."""
        if not self.declaration_file.is_file():
            return None
        return json.loads(self.declaration_file.read_text())["encodings"]

    def declare(self, grids: Sequence[Grid]) -> dict[str, str]:
        """Declare the 27-epoch encodings from the finished 9-epoch ``grids`` (once: a written
        declaration is never replaced)."""
        if (existing := self.declared()) is not None:
            return existing
        means: dict[str, dict[str, float]] = {}
        for grid in grids:
            kernel = grid.name.split("/")[1]
            if kernel not in CORE_KERNELS:
                continue  # Luo's rows are not a kernel's plain encodings
            for model in grid.models:
                position = model.partition("-")[2]
                if position in RELATIVE_POSITIONS:
                    scores = [final_val(self.records, grid, model, s) for s in grid.seeds]
                    if None in scores:
                        raise ConfigError(f"{grid.name}: {model} has unfinished seeds")
                    means.setdefault(kernel, {})[position] = statistics.mean(scores)
        encodings = {k: max(v, key=lambda p: (v[p], -RELATIVE_POSITIONS.index(p)))
                     for k, v in means.items()}  # fmt: skip
        write_json_atomic(self.declaration_file, {
            "rule": "per kernel, the relative encoding with the highest mean final validation "
                    "accuracy over seeds at 9 epochs; declared before the 27-epoch grid ran",
            "encodings": encodings,
            "mean_final_val_accuracy": means,
        })  # fmt: skip
        return encodings

    def next_grids(self) -> tuple[str, list[Grid]]:
        """The stage to run now and its grids (an empty list: the study is complete)."""
        pending, choices = self.tuning()
        if choices is None:
            return "tuning", pending
        write_json_atomic(self.records / "tuning.json", choices)
        with atomic_write(self.records / "tuning.md", "w") as handle:
            handle.write(self.tuning_markdown(choices))
        short = [g for e in BUDGETS[:2] for g in self.budget_grids(e, choices)]
        if not all(map(self.finished, short)):
            return "3 and 9 epochs", short
        self.declare([g for g in short if g.epochs == 9])
        long = self.budget_grids(27, choices)
        return ("27 epochs", long) if not all(map(self.finished, long)) else ("done", [])


def run_study(base: TrainConfig, jobs: int, records: Path = RECORDS, runs: Path = RUNS) -> None:
    """Run stage after stage until the study is complete (resumable at any point)."""
    study = Study(records)
    while True:
        stage, grids = study.next_grids()
        if not grids:
            print(f"budget study: complete; records in {records}")
            return
        specs = [g.spec(base, runs, records) for g in grids]
        count = sum(spec.size for spec in specs)
        print(f"budget study: stage {stage}, {len(grids)} grid(s), {count} runs", flush=True)
        summaries = run_grids_parallel(specs, jobs)
        unfinished = [
            s["out"] for s in summaries if s["counts"].get("finished", 0) < len(s["runs"])
        ]
        if unfinished:
            raise ConfigError(
                f"runs did not finish in {', '.join(unfinished)}; see their grid_summary.json"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpevit.experiments.budget")
    parser.add_argument("--jobs", type=int, default=2, help="parallel single-threaded workers")
    parser.add_argument(
        "--plan", action="store_true", help="print the next stage and its progress, run nothing"
    )
    args = parser.parse_args(argv)
    base = TrainConfig.from_dict(
        dict(dataset="cifar10", preset="study", threads=1, progress_bar=False)
    )
    if args.plan:
        study = Study()
        stage, grids = study.next_grids()
        print(f"next stage: {stage}")
        for grid in grids:
            done, total = study.progress(grid)
            print(f"  {grid.name}: {', '.join(grid.models)} x seeds {list(grid.seeds)}, "
                  f"{grid.epochs} epochs, {grid.recipe}, {dict(grid.options)}: "
                  f"{done} of {total} runs recorded")  # fmt: skip
        return 0
    run_study(base, args.jobs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
