"""LightningModule wrapping any registry model: loss, metrics, AdamW + warm-up/cosine schedule."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from rpevit.attention import schedule_redraws
from rpevit.errors import ConfigError, NonFiniteLossError, RpevitError

#: Parameters whose name contains one of these are position tables / frequencies / tokens:
#: decaying them towards 0 would fight the geometry they encode, so they get no weight decay.
NO_DECAY_KEYWORDS = ("pos", "rpe", "cls", "freq", "string", "temperature")


def build_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``rpevit.create_model(name, **kwargs)`` with bad names/sizes/options as ConfigError."""
    import rpevit

    try:
        return rpevit.create_model(name, **kwargs)
    except RpevitError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot build model {name!r}: {e}") from e


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether AdamW should decay this parameter: matrices only, not norms, biases, position
    tables, frequencies or the CLS token."""
    return param.ndim > 1 and not any(k in name.lower() for k in NO_DECAY_KEYWORDS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weight matrices and everything else with decay 0."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in params if decays(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR factor: linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ImageClassifier(L.LightningModule):
    """Classifier training around ``rpevit.create_model(model_name, **model_kwargs)``.

    Hyper-parameters are plain values so checkpoints load with ``weights_only=True``;
    ``config`` (the resolved training config) rides along so evaluation can rebuild the data;
    ``init_from`` records the checkpoint the weights were transferred from (set by ``train``).
    The global torch RNG state is saved in checkpoints so that a resumed run draws the same
    random numbers (e.g. dropout masks) as an uninterrupted one. A NaN/Inf loss or gradient
    raises :class:`NonFiniteLossError` before the optimizer step, so the weights (and every
    checkpoint) stay finite.
    """

    def __init__(
        self,
        model_name: str,
        model_kwargs: dict[str, Any],
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        config: dict[str, Any] | None = None,
        init_from: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name, model_kwargs)
        num_classes = model_kwargs["num_classes"]
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self._loss: torch.Tensor | None = None
        #: set by :meth:`use_compile`; the compiled forward is built in each process at fit start
        self.compile_requested = False
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def use_compile(self, enabled: bool = True) -> None:
        """Run training and validation forwards through ``torch.compile`` (inductor).

        The compiled function wraps ``self.model.forward``, so parameters, state-dict keys and
        checkpoints are those of the eager model. Evaluation of checkpoints stays eager.
        """
        self.compile_requested = enabled

    def on_fit_start(self) -> None:
        self._compiled = None
        if self.compile_requested:
            try:  # static shapes: one graph per batch size (the last batch adds one)
                self._compiled = torch.compile(self.model.forward, dynamic=False)
            except Exception as e:  # e.g. no dynamo for this Python version
                self._compile_failed(e)

    def _compile_failed(self, error: Exception) -> None:
        """Switch to eager for the rest of the run, saying why in one line."""
        self._compiled = None
        first = (str(error).strip().splitlines() or [""])[0][:200]
        print(
            f"rpevit: --compile: torch.compile cannot compile this model here "
            f"({type(error).__name__}: {first}); continuing eagerly",
            file=sys.stderr,
            flush=True,
        )

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        """The model's logits, compiled if requested and possible, else eager.

        Compilation happens at a graph's first call; if it fails, the same batch runs eagerly
        (a genuine error in the model then raises from the eager call).
        """
        if self._compiled is not None:
            try:
                return self._compiled(images)
            except Exception as e:
                self._compile_failed(e)
        return self.model(images)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images, labels = batch
        logits = self._run(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)
        self._loss = loss.detach()
        self.train_acc(logits, labels)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(labels),
            sync_dist=True,  # every rank runs the same number of steps, so this cannot hang
        )
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop before a NaN/Inf loss or gradient reaches the weights.

        Under DDP the decision is OR-reduced over ranks so that every rank stops at the same
        step. With fp16 mixed precision inf gradients are expected (the grad scaler skips
        those steps), so only the loss is checked there.
        """
        loss = self._loss
        bad = loss is not None and not bool(torch.isfinite(loss))
        if self.trainer.precision != "16-mixed":
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            bad = bad or not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            what = f"loss is {float(loss)}" if loss is not None else "loss is not finite"
            if loss is not None and bool(torch.isfinite(loss)):
                what = f"gradient is not finite (loss {float(loss):.4g})"
            raise NonFiniteLossError(
                f"training {what} at step {self.trainer.global_step + 1} "
                f"(epoch {self.current_epoch}); the step was not applied"
            )

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self._run(images)
        self.val_loss.update(F.cross_entropy(logits.float(), labels), weight=len(labels))
        self.val_acc.update(logits, labels)
        self.log("val/loss", self.val_loss, on_epoch=True, batch_size=len(labels))
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(labels))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr)
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)  # also sets up the train loader
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        warmup = max(1, round(hp.warmup_epochs * per_epoch)) if hp.warmup_epochs > 0 else 0
        schedule = partial(
            warmup_cosine, warmup_steps=warmup, total_steps=total, min_ratio=hp.min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        schedule_redraws(self.model, total)  # FAVOR+: no redraw in the schedule's final phase
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
