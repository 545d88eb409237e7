"""``--compile``: the compiled training forward computes the eager model's losses and gradients,
and a model that cannot compile trains eagerly after a one-line note instead of crashing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rpevit.training import module as training_module
from rpevit.training.config import RUN_IDENTITY, resolve_config
from rpevit.training.module import ImageClassifier

KWARGS = dict(image_size=8, in_chans=1, num_classes=3, patch_size=4, dim=8, depth=1, heads=2,
              mlp_dim=16)  # fmt: skip


def classifier(name: str, compiled: bool) -> ImageClassifier:
    torch.manual_seed(0)
    module = ImageClassifier(name, {**KWARGS, "nb_features": 8} if "favor" in name else KWARGS)
    module.use_compile(compiled)
    module.on_fit_start()
    return module.train()


def sgd_losses(module: ImageClassifier, steps: int = 3) -> tuple[list[float], torch.Tensor]:
    """Losses of ``steps`` plain SGD steps on one fixed batch, and the final weights."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (4,), generator=generator)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(module._run(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.slow  # inductor compiles forward and backward: ~30 s of CPU on a cold cache
def test_compiled_training_matches_eager(capsys):
    name = "favor-ape"  # FAVOR+ includes the graph break of the Python-side redraw counter
    from torch._dynamo.utils import counters

    eager_losses, eager_weights = sgd_losses(classifier(name, compiled=False))
    graphs = counters["stats"]["unique_graphs"]
    compiled = classifier(name, compiled=True)
    losses, weights = sgd_losses(compiled)
    note = capsys.readouterr().err
    if compiled._compiled is None:  # no compiler here: then the fallback must have said so
        assert "--compile" in note and "continuing eagerly" in note
    else:  # the losses came from graphs dynamo captured, not from the eager model
        assert counters["stats"]["unique_graphs"] > graphs
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    assert torch.allclose(weights, eager_weights, rtol=1e-4, atol=1e-6)
    assert eager_losses[-1] < eager_losses[0]  # the steps changed the weights


@pytest.mark.parametrize("when", ["construction", "first call"])
def test_a_model_that_cannot_compile_trains_eagerly_after_one_line(when, monkeypatch, capsys):
    def broken_compile(fn, **kwargs):
        if when == "construction":
            raise RuntimeError("Dynamo is not supported on this Python")

        def call(*args):
            raise RuntimeError("InductorError: C++ compiler not found\nlong traceback ...")

        return call

    eager_losses, _ = sgd_losses(classifier("softmax-ape", compiled=False))
    monkeypatch.setattr(training_module.torch, "compile", broken_compile)
    module = classifier("softmax-ape", compiled=True)
    losses, _ = sgd_losses(module)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "continuing eagerly" in lines[0]  # once, on one line
    assert "not supported" in lines[0] or "C++ compiler not found" in lines[0]
    assert module._compiled is None
    assert losses == eager_losses  # the eager model, bit for bit


def test_compile_is_recorded_but_not_part_of_the_run_identity():
    config = resolve_config({"model": "relu-ape", "preset": "quick", "compile": True})
    assert config.to_dict()["compile"] is True and "compile" not in RUN_IDENTITY
