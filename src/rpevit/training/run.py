"""Train a model and evaluate checkpoints: the Python entry points behind ``rpevit train``
and ``rpevit evaluate``.

A run lives in one folder (``<out>/<run_name>``)::

    config.json                resolved training config
    checkpoints/best.ckpt      best validation accuracy
    checkpoints/last.ckpt      latest state (epoch end, or every N steps); --resume uses it
    logs/tensorboard/          TensorBoard events (a resumed run appends)
    logs/csv/version_<k>/      metrics.csv per start (0: first, 1: first resume, ...)
    metrics.json               test metrics of best.ckpt (DESIGN.md section 6), written atomically
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from rpevit.data import ImageDataModule, InMemoryLoader, Split
from rpevit.data.augment import BatchTransform, normalize
from rpevit.errors import CheckpointError, ConfigError
from rpevit.metrics import (
    classification_metrics,
    count_parameters,
    device_name,
    environment_info,
    git_commit,
    inference_ms_per_sample,
    information_criteria,
    peak_memory_mb,
    write_json_atomic,
)
from rpevit.training.callbacks import EpochTimer
from rpevit.training.config import (
    TrainConfig,
    check_precision,
    identity_mismatch,
    resolve_config,
)
from rpevit.training.module import ImageClassifier

CHECKPOINT_DIR = "checkpoints"
BEST, LAST = "best.ckpt", "last.ckpt"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training checkpoint safely (``weights_only=True``) onto the CPU and check that
    it was written by :func:`train`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, truncation, zip errors: all mean "unreadable"
        raise CheckpointError(f"cannot read checkpoint {path} ({_one_line(e)})") from e
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not hparams or "model_name" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not an rpevit training checkpoint")
    return checkpoint


def find_checkpoint(run_dir_or_ckpt: str | os.PathLike[str], name: str = BEST) -> Path:
    """A checkpoint file itself, or ``<run>/checkpoints/<name>`` (falling back to last)."""
    path = Path(run_dir_or_ckpt)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path} is neither a run folder nor a checkpoint file")
    for candidate in (name, LAST):
        if (path / CHECKPOINT_DIR / candidate).is_file():
            return path / CHECKPOINT_DIR / candidate
    raise CheckpointError(f"run folder {path} has no {CHECKPOINT_DIR}/{name} or {LAST}")


def _resolve_accelerator(config: TrainConfig) -> str:
    if config.accelerator != "auto":
        return config.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _prepare_run_dir(config: TrainConfig) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from (None for a fresh run)."""
    run_dir = config.run_dir
    if config.resume:
        if config.resume is True or config.resume == "last":
            ckpt = run_dir / CHECKPOINT_DIR / LAST
        else:
            resume = Path(config.resume)
            ckpt = resume / CHECKPOINT_DIR / LAST if resume.is_dir() else resume
        if not ckpt.is_file():
            raise CheckpointError(f"nothing to resume: {ckpt} does not exist")
        mismatch = identity_mismatch(
            load_checkpoint(ckpt)["hyper_parameters"].get("config") or {}, config
        )
        if mismatch:
            raise CheckpointError(f"{ckpt} belongs to a different run ({'; '.join(mismatch)})")
        if ckpt.parent.name == CHECKPOINT_DIR:
            run_dir = ckpt.parent.parent
        return run_dir, ckpt
    # Only the first process decides about existing folders; DDP workers start later.
    if rank_zero_only.rank == 0 and any((run_dir / CHECKPOINT_DIR).glob("*.ckpt")):
        if not config.overwrite:
            raise ConfigError(
                f"run folder {run_dir} already has checkpoints: pass --resume to continue it, "
                "--overwrite to start over, or choose another --run-name"
            )
        shutil.rmtree(run_dir)
    return run_dir, None


def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    callbacks: Sequence[L.Callback] = (),
) -> L.Trainer:
    """Lightning Trainer: checkpoints (best by val accuracy + last), TensorBoard and CSV logs,
    gradient clipping, precision, devices and determinism from ``config``."""
    accelerator = _resolve_accelerator(config)
    check_precision(config.precision, accelerator)
    deterministic = config.deterministic
    if deterministic is None:  # CPU kernels are deterministic; some GPU ones only warn
        deterministic = True if accelerator == "cpu" else "warn"
    ckpt_dir = run_dir / CHECKPOINT_DIR
    checkpoints = [
        ModelCheckpoint(  # best.ckpt, plus last.ckpt after every validation
            dirpath=ckpt_dir,
            filename=Path(BEST).stem,
            monitor="val/acc",
            mode="max",
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
    ]
    if config.checkpoint_every_n_steps:  # last.ckpt also every N steps, mid-epoch included
        checkpoints.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                save_top_k=0,
                save_last=True,
                every_n_train_steps=config.checkpoint_every_n_steps,
                enable_version_counter=False,
            )
        )
    loggers = [
        TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False),
        CSVLogger(run_dir / "logs", name="csv"),  # version_0, version_1 after a resume, ...
    ]
    try:
        return L.Trainer(
            accelerator=accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            precision=config.precision,
            max_epochs=config.epochs,
            max_steps=config.max_steps or -1,
            gradient_clip_val=config.grad_clip,
            deterministic=deterministic,
            callbacks=[*checkpoints, LearningRateMonitor("step"), *callbacks],
            logger=loggers,
            default_root_dir=run_dir,
            log_every_n_steps=config.log_every_n_steps,
            enable_progress_bar=config.progress_bar,
            enable_model_summary=config.progress_bar,
            use_distributed_sampler=False,
        )
    except (ValueError, TypeError, RuntimeError) as e:  # MisconfigurationException is a ValueError
        raise ConfigError(f"cannot set up training: {_one_line(e)}") from e


def train(config: TrainConfig | Mapping[str, Any], *, callbacks: Sequence[L.Callback] = ()) -> dict:
    """Train ``config.model`` on ``config.dataset``, evaluate the best checkpoint on the test
    split and write ``config.json`` and ``metrics.json`` in the run folder.

    Returns the metrics (an empty dict on DDP ranks other than 0). ``callbacks`` are added
    to the Trainer's. With ``config.resume`` training continues from ``last.ckpt`` exactly
    where it stopped (model, optimizer, schedule, data order, augmentation, RNG).
    """
    config = resolve_config(config)
    check_precision(config.precision, _resolve_accelerator(config))
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir, resume_from = _prepare_run_dir(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = ImageDataModule(
        config.dataset,
        config.data_dir,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.seed,
        split_seed=config.split_seed,
        augment=config.augment,
        max_train_samples=config.max_train_samples,
        max_val_samples=config.max_val_samples,
        max_test_samples=config.max_test_samples,
        download=config.download,
        image_size=config.image_size,
        in_chans=config.in_chans,
        num_workers=config.num_workers,
    )
    spec = datamodule.spec  # loads the data now: a missing data set fails before any setup
    module = ImageClassifier(
        config.model,
        config.model_kwargs(spec.num_classes, spec.in_chans, spec.image_size),
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        min_lr_ratio=config.min_lr_ratio,
        label_smoothing=config.label_smoothing,
        config=config.to_dict(),
    )
    timer = EpochTimer()
    trainer = build_trainer(config, run_dir, [timer, *callbacks])
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "config.json", config.to_dict())
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    if not trainer.is_global_zero:
        return {}
    metrics = evaluate_checkpoint(
        find_checkpoint(run_dir),
        datamodule=datamodule,
        device=trainer.strategy.root_device,
        inference_batch_size=config.inference_batch_size,
    )
    metrics["train_seconds_per_epoch"] = timer.mean_seconds
    metrics["train_seconds_epochs"] = timer.epoch_seconds
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: InMemoryLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of every batch of ``loader``, model in eval mode."""
    model.eval()
    logits, labels = [], []
    for images, y in loader:
        logits.append(model(images).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def _timer_state(checkpoint: Mapping[str, Any]) -> EpochTimer | None:
    """The :class:`EpochTimer` saved in a checkpoint, if any."""
    state = (checkpoint.get("callbacks") or {}).get(EpochTimer.__qualname__)
    if state is None:
        return None
    timer = EpochTimer()
    timer.load_state_dict(state)
    return timer


def evaluate_checkpoint(
    ckpt_path: str | os.PathLike[str],
    *,
    datamodule: ImageDataModule | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    inference_batch_size: int = 128,
    max_test_samples: int | None = None,
) -> dict[str, Any]:
    """All DESIGN.md section 6 metrics of one checkpoint on its data set's val and test splits.

    The data comes from ``datamodule`` or is reloaded from the checkpoint's config (with
    ``data_dir`` / ``max_test_samples`` overriding it). Evaluation runs in float32 on
    ``device`` (default: CUDA if available). Timing of training epochs comes from the
    checkpoint's :class:`EpochTimer` state.
    """
    checkpoint = load_checkpoint(ckpt_path)
    hparams = dict(checkpoint["hyper_parameters"])
    stored = dict(hparams.get("config") or {})
    device = _resolve_device(device)
    module = ImageClassifier(**hparams)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt_path} does not match its model ({_one_line(e)})") from e
    model = module.model.to(device).eval()

    if datamodule is None:
        datamodule = ImageDataModule(
            stored.get("dataset", "mnist"),
            data_dir if data_dir is not None else stored.get("data_dir"),
            split_seed=stored.get("split_seed", 42),
            max_val_samples=stored.get("max_val_samples"),
            max_test_samples=max_test_samples or stored.get("max_test_samples"),
            download=False,
            image_size=stored.get("image_size"),
            in_chans=stored.get("in_chans"),
            num_workers=stored.get("num_workers", 0),
        )
    spec = datamodule.spec
    data = datamodule.data
    assert data is not None
    batch_size = batch_size or datamodule.eval_batch_size

    def loader(split: Split) -> InMemoryLoader:
        return InMemoryLoader(split, batch_size, BatchTransform(spec.mean, spec.std), device=device)

    val_logits, val_labels = predict(model, loader(data.val))
    test_logits, test_labels = predict(model, loader(data.test))
    scores = classification_metrics(test_logits, test_labels, spec.num_classes, spec.class_names)
    val_scores = classification_metrics(val_logits, val_labels, spec.num_classes)
    params = count_parameters(model)
    criteria = information_criteria(
        scores["log_likelihood"], params["trainable"], scores["num_samples"]
    )
    from rpevit.flops import count_flops

    sample = normalize(data.test.images[:inference_batch_size].to(device), spec.mean, spec.std)
    timer = _timer_state(checkpoint)
    return {
        "model": hparams["model_name"],
        "dataset": spec.name,
        "seed": stored.get("seed"),
        "epochs": stored.get("epochs"),
        "checkpoint": str(ckpt_path),
        "checkpoint_epoch": checkpoint.get("epoch"),
        "checkpoint_step": checkpoint.get("global_step"),
        "val_accuracy": val_scores["accuracy"],
        "test_accuracy": scores["accuracy"],
        "test_top5_accuracy": scores["top5_accuracy"],
        "precision_macro": scores["precision_macro"],
        "recall_macro": scores["recall_macro"],
        "f1_macro": scores["f1_macro"],
        "per_class": scores["per_class"],
        "num_test_samples": scores["num_samples"],
        "log_likelihood": scores["log_likelihood"],
        "mean_nll": scores["mean_nll"],
        "aic": criteria["aic"],
        "bic": criteria["bic"],
        "val_mean_nll": val_scores["mean_nll"],
        "params": params,
        "flops_per_image": count_flops(model, tuple(data.test.images.shape[1:])),
        "train_seconds_per_epoch": timer.mean_seconds if timer else None,
        "inference_ms_per_sample": inference_ms_per_sample(model, sample),
        "inference_batch_size": int(sample.shape[0]),
        "peak_memory_mb": peak_memory_mb(device),
        "device": device_name(device),
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "config": stored,
        **environment_info(),
    }


def evaluate(
    run_dir_or_ckpt: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    max_test_samples: int | None = None,
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's best checkpoint (or a given checkpoint file); write JSON to ``out`` if
    given. For a run folder, training time per epoch is read from its ``last.ckpt``."""
    ckpt = find_checkpoint(run_dir_or_ckpt)
    metrics = evaluate_checkpoint(
        ckpt,
        data_dir=data_dir,
        device=device,
        batch_size=batch_size,
        max_test_samples=max_test_samples,
    )
    last = ckpt.parent / LAST
    if last.is_file() and last != ckpt:
        timer = _timer_state(load_checkpoint(last))
        metrics["train_seconds_per_epoch"] = timer.mean_seconds if timer else None
    if out is not None:
        write_json_atomic(out, metrics)
    return metrics
