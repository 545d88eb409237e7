"""Train a model: the Python entry point behind ``rpevit train`` (the run folder's layout is
:mod:`rpevit.runs`).

Every file is written atomically (temporary file + ``os.replace``), so a run killed at any
point (even with SIGKILL) resumes with ``--resume`` and ends with the same metrics as an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only
from torch.nn.parallel import DistributedDataParallel

from rpevit.data import DataConfig, ImageDataModule, get_spec
from rpevit.errors import CheckpointError, ConfigError, NonFiniteLossError, one_line
from rpevit.metrics import reset_peak_memory
from rpevit.runs import CSV_LOGS, LOGS, TENSORBOARD, RunDir
from rpevit.training.callbacks import EpochTimer, GracefulStop, LastEveryEpoch
from rpevit.training.checkpointing import (
    AtomicCheckpointIO,
    find_checkpoint,
    resume_checkpoint,
    transfer_weights,
)
from rpevit.training.config import (
    TrainConfig,
    apply_min_steps,
    identity_mismatch,
    resolve_config,
)
from rpevit.training.evaluation import evaluate_checkpoint, record_last_checkpoint
from rpevit.training.module import ImageClassifier
from rpevit.training.precision import bf16_note, check_precision

#: Lightning DDP strategy names -> process start method (see :func:`_strategy`).
_DDP_START_METHODS = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}
#: DDP option that turns off buffer syncing in forward (renamed in torch 2.14).
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def _resolve_accelerator(config: TrainConfig) -> str:
    if config.accelerator != "auto":
        return config.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def _prepare_run_dir(config: TrainConfig) -> tuple[RunDir, Path | None]:
    """The run folder and the checkpoint to resume from (None for a fresh run).

    Temporary files left by a writer that was killed are removed (by the first process).
    """
    run = RunDir(config.run_dir)
    if config.resume:
        source = run.path if config.resume is True or config.resume == "last" else config.resume
        ckpt, checkpoint = resume_checkpoint(source)
        mismatch = identity_mismatch(checkpoint["hyper_parameters"].get("config") or {}, config)
        if mismatch:
            raise CheckpointError(f"{ckpt} belongs to a different run ({'; '.join(mismatch)})")
        run = RunDir.of_checkpoint(ckpt) or run
        if rank_zero_only.rank == 0:
            run.remove_stale_temporaries()
        return run, ckpt
    # Only the first process decides about existing folders; DDP workers start later.
    if rank_zero_only.rank == 0 and run.has_checkpoints():
        if not config.overwrite:
            raise ConfigError(
                f"run folder {run.path} already has checkpoints: pass --resume to continue it, "
                "--overwrite to start over, or choose another --run-name"
            )
        shutil.rmtree(run.path)
    return run, None


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
    run = RunDir(run_dir)
    checkpoints = [
        ModelCheckpoint(  # best.ckpt, and last.ckpt when best improves or training ends
            dirpath=run.checkpoint_dir,
            filename=run.best.stem,
            monitor="val/acc",
            mode="max",
            save_top_k=1,
            save_last=True,
            save_weights_only=False,  # full training states: resume needs the optimizer
            auto_insert_metric_name=False,
            enable_version_counter=False,
            # at validation end, before LastEveryEpoch: its last.ckpt then holds this epoch's
            # best-model bookkeeping, and a resume that replays the epoch's end saves nothing
            save_on_train_epoch_end=False,
        ),
        LastEveryEpoch(run.last),  # last.ckpt after every validation
    ]
    if config.checkpoint_every_n_steps:  # last.ckpt also every N steps, mid-epoch included
        checkpoints.append(
            ModelCheckpoint(
                dirpath=run.checkpoint_dir,
                save_top_k=0,
                save_last=True,
                every_n_train_steps=config.checkpoint_every_n_steps,
                save_weights_only=False,
                enable_version_counter=False,
            )
        )
    loggers = [
        TensorBoardLogger(run.path, name=LOGS, version=TENSORBOARD, default_hp_metric=False),
        CSVLogger(run.logs_dir, name=CSV_LOGS),  # one version per start: 0, 1 after a resume
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
        raise ConfigError(f"cannot set up training: {one_line(e)}") from e


#: Lightning's logger of informational lines that say nothing to our users (GPU/TPU
#: availability, adverts, "Loading `train_dataloader` ...", "`Trainer.fit` stopped").
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"


@contextlib.contextmanager
def quiet_framework() -> Iterator[None]:
    """Silence Lightning's informational lines, the pytree deprecation warning it raises with
    recent torch and its "checkpoint directory exists" warning (a resumed run's folder has
    checkpoints by design; a new run into a used folder is refused before training), for one
    run; real warnings (``rank_zero_warn``) still show."""
    logger = logging.getLogger(LIGHTNING_INFO_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
            yield
    finally:
        logger.setLevel(level)


def train(config: TrainConfig | Mapping[str, Any], *, callbacks: Sequence[L.Callback] = ()) -> dict:
    """Train ``config.model`` on ``config.dataset``, evaluate the best checkpoint on the test
    split and write ``config.json`` and ``metrics.json`` in the run folder.

    Returns the metrics (an empty dict on DDP ranks other than 0). ``callbacks`` are added
    to the Trainer's. With ``config.resume`` training continues from ``last.ckpt`` exactly
    where it stopped (model, optimizer, schedule, data order, augmentation, RNG).
    Lightning's informational console lines are silenced (:func:`quiet_framework`).
    """
    with quiet_framework():
        return _train(config, callbacks)


def _train(config: TrainConfig | Mapping[str, Any], callbacks: Sequence[L.Callback]) -> dict:
    config = resolve_config(config)
    check_precision(config.precision, _resolve_accelerator(config))
    if note := bf16_note(config.precision, _resolve_accelerator(config)):
        print(note, file=sys.stderr)
    if config.threads:
        torch.set_num_threads(config.threads)
    run, resume_from = _prepare_run_dir(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = ImageDataModule.from_config(
        config.dataset,
        config.section(DataConfig),
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.seed,
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
    stopper = GracefulStop(run.last)
    trainer = build_trainer(config, run.path, [timer, stopper, *callbacks])
    if trainer.is_global_zero:
        run.write_config(config.to_dict())
    peak_per_run = reset_peak_memory(trainer.strategy.root_device)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e}; {_last_good(trainer, resume_from, run.path)}") from None
    if stopper.signum is not None:  # the signal came during the last validation
        raise stopper.interruption(
            "after training finished, before the test evaluation: "
            f"`rpevit train --resume {run.path}` evaluates"
        )
    if not trainer.is_global_zero:
        return {}
    metrics = evaluate_checkpoint(
        find_checkpoint(run.path),
        datamodule=datamodule,
        device=trainer.strategy.root_device,
        inference_batch_size=config.inference_batch_size,
        predictions_out=run.predictions_file,
    )
    metrics.peak_memory_per_run = peak_per_run
    metrics.train_seconds_per_epoch = timer.mean_seconds
    metrics.train_seconds_epochs = timer.epoch_seconds
    try:  # the final state beside the best (none to record if last.ckpt is unreadable)
        record_last_checkpoint(metrics, run.last, datamodule, trainer.strategy.root_device)
    except CheckpointError as error:
        print(f"rpevit: final state not recorded: {error}", file=sys.stderr)
    run.write_metrics(metrics)
    return metrics.to_dict()


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
