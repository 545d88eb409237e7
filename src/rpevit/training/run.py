"""Train a model and evaluate checkpoints: the Python entry points behind ``rpevit train``
and ``rpevit evaluate``.

A run lives in one folder (``<out>/<run_name>``)::

    config.json                resolved training config
    checkpoints/best.ckpt      best validation accuracy
    checkpoints/last.ckpt      latest state (epoch end, every N steps, on SIGINT/SIGTERM);
                               --resume uses it (best.ckpt if it is unreadable)
    logs/tensorboard/          TensorBoard events (a resumed run appends)
    logs/csv/version_<k>/      metrics.csv per start (0: first, 1: first resume, ...)
    metrics.json               test metrics of best.ckpt (DESIGN.md section 6)
    test_predictions.npz       per test image (test-set order) of best.ckpt: true label,
                               predicted class, log-probability of the true class

Every file is written atomically (temporary file + ``os.replace``), so a run killed at any
point (even with SIGKILL) resumes with ``--resume`` and ends with the same metrics as an
uninterrupted run.
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from torch.nn.parallel import DistributedDataParallel

from rpevit.atomic import atomic_write, remove_stale_temporaries
from rpevit.data import DatasetSpec, ImageDataModule, InMemoryLoader, Split, get_spec
from rpevit.data.augment import BatchTransform, normalize
from rpevit.errors import CheckpointError, ConfigError, NonFiniteLossError
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
from rpevit.training.callbacks import EpochTimer, GracefulStop, LastEveryEpoch
from rpevit.training.checkpointing import (
    BEST,
    CHECKPOINT_DIR,
    LAST,
    AtomicCheckpointIO,
    find_checkpoint,
    load_checkpoint,
    resume_checkpoint,
    transfer_weights,
)
from rpevit.training.config import (
    TrainConfig,
    apply_min_steps,
    check_precision,
    identity_mismatch,
    resolve_config,
)
from rpevit.training.module import ImageClassifier

#: Per-image test predictions of a run's best checkpoint, beside metrics.json (for paired tests).
PREDICTIONS = "test_predictions.npz"

#: How images are brought to another resolution by ``evaluate(image_sizes=...)``.
RESIZE_MODES = ("pad", "upscale")

#: Lightning DDP strategy names -> process start method (see :func:`_strategy`).
_DDP_START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}
#: DDP option that turns off buffer syncing in forward (renamed in torch 2.14).
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _resolve_accelerator(config: TrainConfig) -> str:
    if config.accelerator != "auto":
        return config.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _prepare_run_dir(config: TrainConfig) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from (None for a fresh run).

    Temporary files left by a writer that was killed are removed (by the first process).
    """
    run_dir = config.run_dir
    if config.resume:
        source = run_dir if config.resume is True or config.resume == "last" else config.resume
        ckpt, checkpoint = resume_checkpoint(source)
        mismatch = identity_mismatch(checkpoint["hyper_parameters"].get("config") or {}, config)
        if mismatch:
            raise CheckpointError(f"{ckpt} belongs to a different run ({'; '.join(mismatch)})")
        if ckpt.parent.name == CHECKPOINT_DIR:
            run_dir = ckpt.parent.parent
        if rank_zero_only.rank == 0:
            for folder in (run_dir, run_dir / CHECKPOINT_DIR):
                remove_stale_temporaries(folder)
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


def _strategy(name: str) -> str | DDPStrategy:
    """Lightning strategy for ``name``; DDP variants without buffer syncing in forward.

    Every buffer of these models is either constant or a deterministic function of the step
    (FAVOR+ projections are redrawn from a stored seed), so each rank already holds the same
    values (tested); syncing them would add a collective to every forward pass, including
    evaluation, where ranks may see different numbers of batches and would hang.
    """
    if name in _DDP_START_METHODS:
        return DDPStrategy(start_method=_DDP_START_METHODS[name], **_NO_FORWARD_BUFFER_SYNC)
    return name


def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    callbacks: Sequence[L.Callback] = (),
) -> L.Trainer:
    """Lightning Trainer: checkpoints (best by val accuracy + last, saved atomically),
    TensorBoard and CSV logs, gradient clipping, precision, devices, strategy and determinism
    from ``config``."""
    accelerator = _resolve_accelerator(config)
    check_precision(config.precision, accelerator)
    deterministic = config.deterministic
    if deterministic is None:  # CPU kernels are deterministic; some GPU ones only warn
        deterministic = True if accelerator == "cpu" else "warn"
    ckpt_dir = run_dir / CHECKPOINT_DIR
    checkpoints = [
        ModelCheckpoint(  # best.ckpt, and last.ckpt when best improves or training ends
            dirpath=ckpt_dir,
            filename=Path(BEST).stem,
            monitor="val/acc",
            mode="max",
            save_top_k=1,
            save_last=True,
            save_weights_only=False,  # full training states: resume needs the optimizer
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        LastEveryEpoch(ckpt_dir / LAST),  # last.ckpt after every validation
    ]
    if config.checkpoint_every_n_steps:  # last.ckpt also every N steps, mid-epoch included
        checkpoints.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                save_top_k=0,
                save_last=True,
                every_n_train_steps=config.checkpoint_every_n_steps,
                save_weights_only=False,
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
            strategy=_strategy(config.strategy),
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
            use_distributed_sampler=False,  # ImageDataModule shards by rank itself
            plugins=[AtomicCheckpointIO()],
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
        verify=config.verify_data,
    )
    # Named data sets have known shapes: build the model (and check --init-from) before
    # reading them; an image folder is read first. Either way, errors come before any setup.
    spec = get_spec(config.dataset) if config.dataset != "imagefolder" else datamodule.spec
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
    if config.init_from and resume_from is None:  # a resumed run has its weights already
        module.hparams.init_from = transfer_weights(module.model, config.init_from)
    datamodule.setup()
    config = apply_min_steps(config, len(datamodule.data.train))  # small data: more epochs
    module.hparams.update(warmup_epochs=config.warmup_epochs, config=config.to_dict())
    module.use_compile(config.compile)
    timer = EpochTimer()
    stopper = GracefulStop(run_dir / CHECKPOINT_DIR / LAST)
    trainer = build_trainer(config, run_dir, [timer, stopper, *callbacks])
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "config.json", config.to_dict())
    if trainer.strategy.root_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e}; {_last_good(trainer, resume_from, run_dir)}") from None
    if stopper.signum is not None:  # the signal came during the last validation
        raise stopper.interruption(
            "after training finished, before the test evaluation: "
            f"`rpevit train --resume {run_dir}` evaluates"
        )
    if not trainer.is_global_zero:
        return {}
    metrics = evaluate_checkpoint(
        find_checkpoint(run_dir),
        datamodule=datamodule,
        device=trainer.strategy.root_device,
        inference_batch_size=config.inference_batch_size,
        predictions_out=run_dir / PREDICTIONS,
    )
    metrics["train_seconds_per_epoch"] = timer.mean_seconds
    metrics["train_seconds_epochs"] = timer.epoch_seconds
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def _last_good(trainer: L.Trainer, resume_from: Path | None, run_dir: Path) -> str:
    """Where to continue after a non-finite loss: the newest checkpoint, saved before it."""
    io = trainer.strategy.checkpoint_io
    saved = io.last_saved if isinstance(io, AtomicCheckpointIO) else None
    if saved is not None:
        where = f"{saved[0]} (after step {saved[1]})"
    elif resume_from is not None:
        where = str(resume_from)
    else:
        return "no checkpoint was saved before it: start again with a lower --lr (--overwrite)"
    return (
        f"last good checkpoint: {where}; continue from it with a lower learning rate "
        f"(`rpevit train --resume {run_dir} --lr ...`) or start over with --overwrite"
    )


@torch.inference_mode()
def predict(model: torch.nn.Module, loader: InMemoryLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of every batch of ``loader``, model in eval mode."""
    model.eval()
    logits, labels = [], []
    for images, y in loader:
        logits.append(model(images).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def write_predictions(
    path: str | os.PathLike[str], logits: torch.Tensor, labels: torch.Tensor
) -> None:
    """Write ``labels``, ``predicted`` (argmax, int64) and ``true_log_prob`` (float64 log-softmax
    of the true class) per test image, atomically, as an ``.npz``: what paired tests need."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    with atomic_write(path) as f:
        np.savez(
            f,
            labels=labels.long().numpy(),
            predicted=logits.argmax(dim=-1).long().numpy(),
            true_log_prob=log_probs.gather(1, labels.long()[:, None])[:, 0].numpy(),
        )


def _timer_state(checkpoint: Mapping[str, Any]) -> EpochTimer | None:
    """The :class:`EpochTimer` saved in a checkpoint, if any."""
    state = (checkpoint.get("callbacks") or {}).get(EpochTimer.__qualname__)
    if state is None:
        return None
    timer = EpochTimer()
    timer.load_state_dict(state)
    return timer


def _check_resize_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise ConfigError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")


def resize_images(images: torch.Tensor, size: int, mode: str, align: int = 1) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` images brought to ``size x size`` for resolution transfer.

    ``pad``: zero-pad around the image (centre-crop if ``size`` is smaller): objects keep their
    pixel size and the canvas grows, natural for MNIST digits on black. The offset of the
    original image is the centring one rounded down to a multiple of ``align`` (the patch
    size), so every patch holds exactly the pixels it held in training and only the token
    positions change. ``upscale``: bilinear resampling of the whole image (antialiased when
    shrinking): objects grow with the canvas, so each patch covers a smaller part of them.
    """
    _check_resize_mode(mode)
    h, w = images.shape[-2:]
    if mode == "upscale":
        if (h, w) == (size, size):
            return images
        x = F.interpolate(
            images.float(),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=size < min(h, w),
        )
        return x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = ((size - h) // 2 // align) * align, ((size - w) // 2 // align) * align
    return F.pad(images, (left, size - w - left, top, size - h - top))  # negative: crop


def resolution_transfer(
    model: torch.nn.Module,
    test: Split,
    spec: DatasetSpec,
    sizes: Sequence[int],
    mode: str,
    batch_size: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Test accuracy / NLL of ``model`` on the test images resized to each of ``sizes``.

    Each position encoding applies its own rule for a grid it was not trained on (APE:
    bicubic interpolation of the table; RPE: offsets beyond the trained range clamped;
    RoPE/STRING: the rotations extrapolate). Models with a fixed token count (Linformer)
    cannot change resolution: that is a ConfigError.
    """
    patch = model.config.patch_size
    bad = [s for s in sizes if s < 1 or s % patch]
    if bad:
        raise ConfigError(
            f"image size(s) {', '.join(map(str, bad))} are not positive multiples of the "
            f"model's patch size {patch}"
        )
    results = []
    for size in sizes:
        split = Split(resize_images(test.images, size, mode, align=patch), test.labels)
        transform = BatchTransform(spec.mean, spec.std)
        loader = InMemoryLoader(split, batch_size, transform, device=device)
        try:
            logits, labels = predict(model, loader)
        except ValueError as e:
            raise ConfigError(
                f"{model.model_name} cannot be evaluated at {size}x{size}: {_one_line(e)}"
            ) from e
        scores = classification_metrics(logits, labels, spec.num_classes)
        results.append(
            {
                "image_size": size,
                "patch_tokens": (size // patch) ** 2,
                "test_accuracy": scores["accuracy"],
                "test_top5_accuracy": scores["top5_accuracy"],
                "mean_nll": scores["mean_nll"],
            }
        )
    return results


def _check_data_fits(
    path: Path, model_kwargs: Mapping[str, Any], trained_on: str, spec: DatasetSpec
) -> None:
    """Refuse to evaluate a model on data with other channels or classes than it was built for."""
    want = (model_kwargs["in_chans"], model_kwargs["num_classes"])
    if (spec.in_chans, spec.num_classes) != want:
        raise ConfigError(
            f"{path} is a model for {want[0]}-channel images and {want[1]} classes "
            f"(trained on {trained_on}); {spec.name} has {spec.in_chans}-channel images and "
            f"{spec.num_classes} classes"
        )


def evaluate_checkpoint(
    ckpt_path: str | os.PathLike[str],
    *,
    datamodule: ImageDataModule | None = None,
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    inference_batch_size: int = 128,
    max_test_samples: int | None = None,
    image_sizes: Sequence[int] = (),
    resize_mode: str = "pad",
    predictions_out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """All DESIGN.md section 6 metrics of one checkpoint on its data set's val and test splits.

    The data comes from ``datamodule`` or is reloaded from the checkpoint's config (with
    ``dataset`` / ``data_dir`` / ``max_test_samples`` overriding it; another data set must
    have the same channels and classes). Evaluation runs in float32 on ``device`` (default:
    CUDA if available). Timing of training epochs comes from the checkpoint's
    :class:`EpochTimer` state. ``image_sizes`` adds a ``resolution_transfer`` record: test
    accuracy with the images resized by ``resize_mode`` (see :func:`resize_images`).
    ``predictions_out`` also writes the per-image test predictions (:func:`write_predictions`).
    """
    ckpt_path = Path(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path)
    hparams = dict(checkpoint["hyper_parameters"])
    stored = dict(hparams.get("config") or {})
    model_kwargs = hparams.get("model_kwargs") or {}
    _check_resize_mode(resize_mode)
    trained_on = stored.get("dataset", "mnist")
    dataset = dataset or trained_on
    imagefolder = dataset == "imagefolder"
    if datamodule is None and not imagefolder:  # a named data set's shape is known already
        _check_data_fits(ckpt_path, model_kwargs, trained_on, get_spec(dataset))
    device = _resolve_device(device)
    module = ImageClassifier(**hparams)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:  # the first line only says "Error(s) in loading state_dict"
        details = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise CheckpointError(
            f"{ckpt_path} does not match its model {hparams['model_name']} "
            f"({details[0] if details else _one_line(e)})"
        ) from e
    model = module.model.to(device).eval()

    if datamodule is None:
        size = model_kwargs.get("image_size")
        datamodule = ImageDataModule(
            dataset,
            data_dir if data_dir is not None else stored.get("data_dir"),
            split_seed=stored.get("split_seed", 42),
            max_val_samples=stored.get("max_val_samples"),
            max_test_samples=max_test_samples or stored.get("max_test_samples"),
            download=False,
            image_size=(size if isinstance(size, int) else None) if imagefolder else None,
            in_chans=model_kwargs.get("in_chans") if imagefolder else None,
            num_workers=stored.get("num_workers", 0),
        )
    spec = datamodule.spec
    _check_data_fits(ckpt_path, model_kwargs, trained_on, spec)
    data = datamodule.data
    assert data is not None
    batch_size = batch_size or datamodule.eval_batch_size

    def loader(split: Split) -> InMemoryLoader:
        return InMemoryLoader(split, batch_size, BatchTransform(spec.mean, spec.std), device=device)

    val_logits, val_labels = predict(model, loader(data.val))
    test_logits, test_labels = predict(model, loader(data.test))
    scores = classification_metrics(test_logits, test_labels, spec.num_classes, spec.class_names)
    if predictions_out is not None:
        write_predictions(predictions_out, test_logits, test_labels)
    val_scores = classification_metrics(val_logits, val_labels, spec.num_classes)
    transfer = None
    if image_sizes:
        transfer = {
            "resize_mode": resize_mode,
            "trained_image_size": list(data.test.images.shape[-2:]),
            "results": resolution_transfer(
                model, data.test, spec, image_sizes, resize_mode, batch_size, device
            ),
        }
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
        "init_from": hparams.get("init_from"),
        "val_accuracy": val_scores["accuracy"],
        "val_top5_accuracy": val_scores["top5_accuracy"],
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
        "nb_features": model.feature_count,
        "flops_per_image": count_flops(model, tuple(data.test.images.shape[1:])),
        "train_seconds_per_epoch": timer.mean_seconds if timer else None,
        "inference_ms_per_sample": inference_ms_per_sample(model, sample),
        "inference_batch_size": int(sample.shape[0]),
        "peak_memory_mb": peak_memory_mb(device),
        "device": device_name(device),
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "config": stored,
        **({"resolution_transfer": transfer} if transfer else {}),
        **environment_info(),
    }


def evaluate(
    run_dir_or_ckpt: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    max_test_samples: int | None = None,
    image_sizes: Sequence[int] = (),
    resize_mode: str = "pad",
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's best checkpoint (or a given checkpoint file); write JSON to ``out`` if
    given. For a run folder, training time per epoch is read from its ``last.ckpt``, and when
    evaluated on its own test set (no ``dataset`` / ``max_test_samples``) its
    ``test_predictions.npz`` is (re)written."""
    ckpt = find_checkpoint(run_dir_or_ckpt)
    own_test_set = Path(run_dir_or_ckpt).is_dir() and dataset is None and max_test_samples is None
    metrics = evaluate_checkpoint(
        ckpt,
        dataset=dataset,
        data_dir=data_dir,
        device=device,
        batch_size=batch_size,
        max_test_samples=max_test_samples,
        image_sizes=image_sizes,
        resize_mode=resize_mode,
        predictions_out=Path(run_dir_or_ckpt) / PREDICTIONS if own_test_set else None,
    )
    last = ckpt.parent / LAST
    if last.is_file() and last != ckpt:
        timer = _timer_state(load_checkpoint(last))
        metrics["train_seconds_per_epoch"] = timer.mean_seconds if timer else None
    if out is not None:
        write_json_atomic(out, metrics)
    return metrics
