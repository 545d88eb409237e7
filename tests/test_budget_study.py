"""The budget study's stages: which grids each needs, what the tuning rule chooses from the
records, and the 27-epoch declaration (written once, before its grid)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rpevit.errors import ConfigError
from rpevit.experiments.budget import (
    FRPE_TERMS,
    LEARNING_RATES,
    SEEDS,
    TEMPERATURES,
    TUNE_SEED,
    WARMUPS,
    Grid,
    Recipe,
    Study,
    choose,
)
from rpevit.registry import CORE_KERNELS, STUDY_MODELS
from rpevit.training import TrainConfig


def finish(records: Path, grid: Grid, score: float | dict[str, float], **extra) -> None:
    """Records of every run of ``grid`` as training leaves them, with final validation accuracy
    ``score`` (per model for a dict)."""
    for model in grid.models:
        for seed in grid.seeds:
            run = records / grid.name / model / f"seed{seed}"
            run.mkdir(parents=True, exist_ok=True)
            value = score[model] if isinstance(score, dict) else score
            metrics = {"model": model, "seed": seed, "test_accuracy": 0.5,
                       "last_val_accuracy": value + 0.001 * seed, **extra}  # fmt: skip
            (run / "metrics.json").write_text(json.dumps(metrics))


def test_choose_takes_the_best_candidate_ties_to_the_first_and_waits_for_all():
    assert choose([(1, 0.5), (2, 0.7), (3, 0.6)]) == 2
    assert choose([(1, 0.7), (2, 0.7)]) == 1
    assert choose([(1, 0.9), (2, None)]) is None
    assert choose([]) is None


def tune_all(study: Study, records: Path, best_lr=3e-3, best_warmup=1.0, best_terms=None,
             best_temperature=8.0) -> None:  # fmt: skip
    """Records of every tuning run, the given candidates best (frpe R: per kernel), each 9
    epochs of 60 s."""
    best_terms = best_terms or {"softmax": 1, "favor": 2, "relu": 4}
    timed = {"train_seconds_epochs": [60.0] * 9}
    for kernel in CORE_KERNELS:
        for lr, grid in study.lr_grids(kernel):
            finish(records, grid, 0.6 if lr == best_lr else 0.5, **timed)
        for warmup, grid in study.warmup_grids(kernel, best_lr):
            if not (records / grid.name).exists():
                finish(records, grid, 0.7 if warmup == best_warmup else 0.55, **timed)
        recipe = Recipe(best_lr, best_warmup)
        for terms, grid in study.frpe_grids(kernel, recipe):
            finish(records, grid, 0.6 if terms == best_terms[kernel] else 0.5, **timed)
    for temperature, grid in study.luo_grids(Recipe(best_lr, best_warmup)):
        finish(records, grid, 0.6 if temperature == best_temperature else 0.5, **timed)


def test_tuning_runs_stage_by_stage_and_records_its_choices(tmp_path):
    study = Study(tmp_path)
    stage, grids = study.next_grids()
    assert stage == "tuning"
    assert [(g.models, g.seeds, g.epochs, g.recipe.lr) for g in grids] == [
        ((f"{k}-ape",), (TUNE_SEED,), 9, lr) for k in CORE_KERNELS for lr in LEARNING_RATES
    ]
    assert {g.recipe.warmup_epochs for g in grids} == {WARMUPS[0]}
    assert TUNE_SEED not in SEEDS  # no reported run is a tuning winner
    for kernel in CORE_KERNELS:  # the middle rate wins for every kernel
        for lr, grid in study.lr_grids(kernel):
            finish(tmp_path, grid, 0.6 if lr == 3e-3 else 0.5)
    _, grids = study.next_grids()  # warm-up at the chosen rate; 0.3 is the rate's own run
    assert {(g.recipe.lr, g.recipe.warmup_epochs) for g in grids} == {(3e-3, w) for w in WARMUPS}
    assert [study.finished(g) for g in grids] == [True, False] * len(CORE_KERNELS)
    tune_all(study, tmp_path, best_temperature=TEMPERATURES[-1])
    stage, grids = study.next_grids()
    assert stage == "3 and 9 epochs"
    choices = json.loads((tmp_path / "tuning.json").read_text())
    assert choices["kernels"] == {
        k: {"lr": 3e-3, "warmup_epochs": 1.0, "frpe_terms": r}
        for k, r in (("softmax", 1), ("favor", 2), ("relu", 4))
    }
    assert choices["luo_qk_temperature"] == TEMPERATURES[-1]
    # per kernel 3 rates, 1 more warm-up, the frpe terms; then the temperatures
    assert len(choices["final_val_accuracy"]) == 3 * (3 + 1 + len(FRPE_TERMS)) + 3
    assert "ties to the earlier" in choices["rule"]
    table = (tmp_path / "tuning.md").read_text()
    # every candidate with its score, the choice in bold (warm-up 0.3 is the rate's own run)
    assert (
        "| softmax | learning rate (warm-up 0.3) | 0.0015: 50.00, **0.003: 60.00**, "
        "0.006: 50.00 |" in table
    )
    assert "| relu | warm-up epochs (lr 0.003) | 0.3: 60.00, **1: 70.00** |" in table
    assert "| favor | frpe terms R | 1: 50.00, **2: 60.00**, 4: 50.00 |" in table
    assert (
        "| favor (Luo: qk_norm) | initial temperature | 2: 50.00, 4: 50.00, **8: 60.00** |" in table
    )
    assert table.count("**") == 2 * (3 * 3 + 1)  # one choice per row, 10 rows
    # 3 x (3 rates + 1 warm-up + 3 R) + 3 temperatures, each 540 s; the shared run once
    assert "Training time of the 24 tuning runs: 3.60 hours" in table


def test_the_budget_grids_use_each_kernels_choices_and_add_luos_rows(tmp_path):
    study = Study(tmp_path)
    tune_all(study, tmp_path)
    _, grids = study.next_grids()
    for epochs in (3, 9):
        mine = [g for g in grids if g.epochs == epochs]
        models = sorted(m for g in mine for m in g.models if g.name != f"e{epochs}/favor-qknorm")
        assert models == sorted(STUDY_MODELS)
        assert all(g.seeds == SEEDS for g in mine)
        frpe = {g.name: g.options for g in mine if any(m.endswith("frpe") for m in g.models)}
        assert frpe == {f"e{epochs}/{k}": {"frpe_terms": r}
                        for k, r in (("softmax", 1), ("favor", 2), ("relu", 4))}  # fmt: skip
        (luo,) = [g for g in mine if g.name == f"e{epochs}/favor-qknorm"]
        assert luo.models == ("favor-ape", "favor-rpe")
        assert luo.options == {"qk_norm": True, "qk_temperature": 8.0}
        assert luo.recipe == Recipe(3e-3, 1.0)
    spec = grids[0].spec(TrainConfig.from_dict({"dataset": "cifar10"}), tmp_path / "r", tmp_path)
    assert (spec.config.epochs, spec.config.lr, spec.config.warmup_epochs) == (3, 3e-3, 1.0)
    assert spec.out == tmp_path / "r" / grids[0].name and spec.records == tmp_path / grids[0].name


def test_the_27_epoch_encodings_are_declared_once_from_the_9_epoch_validation(tmp_path):
    study = Study(tmp_path)
    tune_all(study, tmp_path)
    _, grids = study.next_grids()
    best = {"softmax": "rope", "favor": "string", "relu": "frpe"}
    for grid in grids:
        kernel = grid.name.split("/")[1]
        scores = {m: 0.7 if m == f"{kernel}-{best.get(kernel)}" else 0.6 for m in grid.models}
        scores |= {m: 0.9 for m in grid.models if m.endswith("-ape")}  # APE is not a choice
        finish(tmp_path, grid, scores if grid.epochs == 9 else 0.5)
    stage, long = study.next_grids()
    assert stage == "27 epochs"
    assert [study.progress(g) for g in grids if g.epochs == 9] == [(15, 15)] * 3 + [(6, 6)]
    assert [study.progress(g) for g in long] == [(0, 15), (0, 6), (0, 6), (0, 3)]
    assert study.declared() == best
    softmax = ("softmax-ape", "softmax-rpe", "softmax-string", "softmax-rope", "softmax-frpe")
    assert {g.name: g.models for g in long} == {
        "e27/softmax": softmax,  # the same-encoding reference of every Performer row
        "e27/favor": ("favor-ape", "favor-string"),
        "e27/relu": ("relu-ape", "relu-frpe"),
        "e27/favor-qknorm": ("favor-rpe",),
    }
    assert [g.options for g in long[:3]] == [{"frpe_terms": 1}, {}, {"frpe_terms": 4}]
    # new evidence after the declaration does not move it
    relu_rope = tmp_path / "e9" / "relu" / "relu-rope"
    for metrics in relu_rope.glob("seed*/metrics.json"):
        metrics.write_text(metrics.read_text().replace('"last_val_accuracy": 0.6', '"last_'
                           'val_accuracy": 0.95'))  # fmt: skip
    assert study.next_grids()[1] == long
    finish(tmp_path, long[1], 0.8)
    (tmp_path / "e27" / "favor" / "favor-ape" / "seed43" / "metrics.json").unlink()
    assert study.progress(long[1]) == (5, 6) and not study.finished(long[1])
    for grid in long:
        finish(tmp_path, grid, 0.8)
    assert study.next_grids() == ("done", [])


def test_softmax_runs_at_27_epochs_with_the_encodings_the_performer_rows_use_only(tmp_path):
    study = Study(tmp_path)
    tune_all(study, tmp_path)
    _, choices = study.tuning()
    declaration = {"encodings": {"softmax": "string", "favor": "string", "relu": "rope"}}
    study.declaration_file.write_text(json.dumps(declaration))
    grids = {g.name: g for g in study.budget_grids(27, choices)}
    # rope for relu-rope, rpe for Luo's favor-rpe; no softmax-frpe, so no frpe option
    assert grids["e27/softmax"].models == ("softmax-ape", "softmax-rpe", "softmax-string",
                                           "softmax-rope")  # fmt: skip
    assert grids["e27/softmax"].options == {}
    assert grids["e27/relu"].models == ("relu-ape", "relu-rope")


def test_a_record_without_its_final_validation_accuracy_is_an_error_not_a_rerun(tmp_path):
    study = Study(tmp_path)
    _, grid = study.lr_grids("softmax")[0]
    finish(tmp_path, grid, 0.5)
    metrics = tmp_path / grid.name / "softmax-ape" / f"seed{TUNE_SEED}" / "metrics.json"
    record = json.loads(metrics.read_text())
    del record["last_val_accuracy"]
    metrics.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="rpevit evaluate"):
        study.next_grids()
