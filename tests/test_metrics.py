"""Metrics against hand-computed values."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from rpevit.atomic import write_json_atomic
from rpevit.metrics import (
    classification_metrics,
    count_parameters,
    inference_ms_per_sample,
    information_criteria,
    log_likelihood,
    peak_memory_mb,
    reset_peak_memory,
)


def one_hot_logits(predictions: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predictions), num_classes).float() * 5


def test_scores_on_a_tiny_confusion_matrix():
    # targets / predictions; confusion matrix (rows = truth, columns = prediction):
    #   class 0: [2, 1, 0]   class 1: [0, 1, 1]   class 2: [1, 0, 2]
    targets = [0, 0, 0, 1, 1, 2, 2, 2]
    predicted = [0, 0, 1, 1, 2, 2, 2, 0]
    m = classification_metrics(one_hot_logits(predicted, 3), torch.tensor(targets), 3, "abc")
    precision = [2 / 3, 1 / 2, 2 / 3]  # tp / predicted count
    recall = [2 / 3, 1 / 2, 2 / 3]  # tp / support
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["top5_accuracy"] is None  # only reported with more than 10 classes
    assert m["precision_macro"] == pytest.approx(sum(precision) / 3)
    assert m["recall_macro"] == pytest.approx(sum(recall) / 3)
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert [c["support"] for c in m["per_class"]] == [3, 2, 3]
    assert [c["name"] for c in m["per_class"]] == ["a", "b", "c"]
    for c, record in enumerate(m["per_class"]):
        assert record["precision"] == pytest.approx(precision[c])
        assert record["recall"] == pytest.approx(recall[c])
        assert record["f1"] == pytest.approx(f1[c])


def test_unequal_precision_and_recall():
    # class 0 predicted 4 times (3 right), class 1 once (right), support 3 and 2
    targets = [0, 0, 0, 1, 1]
    predicted = [0, 0, 0, 0, 1]
    m = classification_metrics(one_hot_logits(predicted, 2), torch.tensor(targets), 2)
    assert [c["precision"] for c in m["per_class"]] == pytest.approx([3 / 4, 1.0])
    assert [c["recall"] for c in m["per_class"]] == pytest.approx([1.0, 1 / 2])
    assert m["f1_macro"] == pytest.approx((2 * 0.75 / 1.75 + 2 * 0.5 / 1.5) / 2)


def test_top5_with_more_than_ten_classes():
    logits = torch.arange(12.0).repeat(3, 1)  # ranking 11, 10, 9, 8, 7, ... for every sample
    targets = torch.tensor([11, 7, 6])  # top-1, top-5 (5th), not in top 5
    m = classification_metrics(logits, targets, 12)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["top5_accuracy"] == pytest.approx(2 / 3)


def test_log_likelihood_and_nll_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    targets = torch.tensor([0, 1])
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = math.exp(1) / (1 + math.exp(1) + math.exp(3))
    expected = math.log(p0) + math.log(p1)
    assert log_likelihood(logits, targets) == pytest.approx(expected, rel=1e-12)
    m = classification_metrics(logits, targets, 3)
    assert m["log_likelihood"] == pytest.approx(expected)
    assert m["mean_nll"] == pytest.approx(-expected / 2)


def test_aic_and_bic_formulas():
    ic = information_criteria(log_lik=-120.5, num_params=1000, num_samples=10_000)
    assert ic["aic"] == pytest.approx(2 * 1000 + 241.0)
    assert ic["bic"] == pytest.approx(1000 * math.log(10_000) + 241.0)


def test_parameter_counts_and_latency():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[1].weight.requires_grad_(False)
    assert count_parameters(model) == {"trainable": 4 * 3 + 3 + 3, "total": 4 * 3 + 3 + 3 + 3}
    model.train()
    ms = inference_ms_per_sample(model, torch.randn(8, 4), warmup=1, repeats=3)
    assert ms > 0 and model.training  # mode restored


def test_peak_memory_is_reported_on_cpu():
    assert peak_memory_mb("cpu") > 10


@pytest.mark.skipif(sys.platform != "linux", reason="the RSS high-water mark is reset via /proc")
def test_peak_memory_reset_starts_a_new_measurement():
    """A grid worker trains several runs in one process: after the reset, a run's peak no
    longer holds an earlier run's (here: a freed 256 MiB tensor)."""
    big = torch.ones(64 * 2**20)  # 256 MiB, written
    before = peak_memory_mb("cpu")
    del big
    assert peak_memory_mb("cpu") == before  # the high-water mark stays without a reset
    assert reset_peak_memory("cpu") is True
    assert peak_memory_mb("cpu") < before - 200


def test_json_is_written_atomically(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json_atomic(
        path, {"a": torch.tensor(1.5), "b": float("nan"), "c": [torch.tensor([1, 2])]}
    )
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": [[1, 2]]}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text())["a"] == 1.5  # old content intact
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left
