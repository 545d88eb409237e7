"""Evaluate a trained checkpoint: every DESIGN.md section 6 metric, the per-image test
predictions, and optionally resolution transfer (the Python side of ``rpevit evaluate``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rpevit.atomic import write_json_atomic
from rpevit.data import DataConfig, DatasetSpec, ImageDataModule, InMemoryLoader, Split, get_spec
from rpevit.data.augment import BatchTransform, normalize
from rpevit.errors import ConfigError
from rpevit.metrics import (
    classification_metrics,
    count_parameters,
    device_name,
    environment_info,
    git_commit,
    inference_ms_per_sample,
    information_criteria,
    peak_memory_mb,
)
from rpevit.runs import LAST, Metrics, Predictions, RunDir
from rpevit.training.checkpointing import find_checkpoint, load_checkpoint
from rpevit.training.inference import (
    CheckpointInfo,
    load_model,
    predict,
    resolve_device,
    timer_state,
)
from rpevit.training.transfer import check_resize_mode, resolution_transfer


def write_predictions(
    path: str | os.PathLike[str], logits: torch.Tensor, labels: torch.Tensor
) -> None:
    """Write ``labels``, ``predicted`` (argmax, int64) and ``true_log_prob`` (float64 log-softmax
    of the true class) per test image, atomically, as an ``.npz``: what paired tests need."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    Predictions(
        labels=labels.long().numpy(),
        predicted=logits.argmax(dim=-1).long().numpy(),
        true_log_prob=log_probs.gather(1, labels.long()[:, None])[:, 0].numpy(),
    ).save(Path(path))


def _check_data_fits(info: CheckpointInfo, spec: DatasetSpec) -> None:
    """Refuse to evaluate a model on data with other channels or classes than it was built for."""
    want = (info.model_kwargs["in_chans"], info.model_kwargs["num_classes"])
    if (spec.in_chans, spec.num_classes) != want:
        raise ConfigError(
            f"{info.path} is a model for {want[0]}-channel images and {want[1]} classes "
            f"(trained on {info.config.get('dataset', 'mnist')}); {spec.name} has "
            f"{spec.in_chans}-channel images and {spec.num_classes} classes"
        )


def _stored_data(
    info: CheckpointInfo,
    dataset: str,
    data_dir: str | os.PathLike[str] | None,
    max_test_samples: int | None,
) -> ImageDataModule:
    """The evaluation splits as the checkpoint's run made them (``dataset`` / ``data_dir`` /
    ``max_test_samples`` overriding its config)."""
    imagefolder, size = dataset == "imagefolder", info.model_kwargs.get("image_size")
    stored = DataConfig.from_record(info.config)
    data = dataclasses.replace(
        stored,
        data_dir=data_dir if data_dir is not None else stored.data_dir,
        max_train_samples=None,
        max_test_samples=max_test_samples or stored.max_test_samples,
        download=False,
        verify_data=False,
        image_size=(size if isinstance(size, int) else None) if imagefolder else None,
        in_chans=info.model_kwargs.get("in_chans") if imagefolder else None,
    )
    return ImageDataModule.from_config(dataset, data)


def measure(
    model: torch.nn.Module,
    info: CheckpointInfo,
    datamodule: ImageDataModule,
    device: torch.device,
    *,
    batch_size: int | None = None,
    inference_batch_size: int = 128,
    image_sizes: Sequence[int] = (),
    resize_mode: str = "pad",
    predictions_out: str | os.PathLike[str] | None = None,
) -> Metrics:
    """Every metric of ``model`` (loaded from ``info.path``) on the val and test splits."""
    spec, data = datamodule.spec, datamodule.data
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
    return Metrics(
        model=info.model_name,
        dataset=spec.name,
        seed=info.config.get("seed"),
        epochs=info.config.get("epochs"),
        checkpoint=str(info.path),
        checkpoint_epoch=info.epoch,
        checkpoint_step=info.step,
        init_from=info.init_from,
        val_accuracy=val_scores["accuracy"],
        val_top5_accuracy=val_scores["top5_accuracy"],
        test_accuracy=scores["accuracy"],
        test_top5_accuracy=scores["top5_accuracy"],
        precision_macro=scores["precision_macro"],
        recall_macro=scores["recall_macro"],
        f1_macro=scores["f1_macro"],
        per_class=scores["per_class"],
        num_test_samples=scores["num_samples"],
        log_likelihood=scores["log_likelihood"],
        mean_nll=scores["mean_nll"],
        aic=criteria["aic"],
        bic=criteria["bic"],
        val_mean_nll=val_scores["mean_nll"],
        params=params,
        nb_features=model.feature_count,
        flops_per_image=count_flops(model, tuple(data.test.images.shape[1:])),
        train_seconds_per_epoch=info.timer.mean_seconds if info.timer else None,
        inference_ms_per_sample=inference_ms_per_sample(model, sample),
        inference_batch_size=int(sample.shape[0]),
        peak_memory_mb=peak_memory_mb(device),
        device=device_name(device),
        torch_version=torch.__version__,
        git_commit=git_commit(),
        config=info.config,
        resolution_transfer=transfer,
        **environment_info(),
    )


def record_last_checkpoint(
    metrics: Metrics,
    last: Path,
    datamodule: ImageDataModule | None = None,
    device: torch.device | str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Add the epoch, validation and test accuracy of ``last`` (the run's final state) to the
    best checkpoint's ``metrics``; with them the report tells a run that ended below its best.
    The data come from ``datamodule``, else from the checkpoint's config (``data_dir``
    overriding its folder)."""
    device = resolve_device(device)
    model, info = load_model(last, device)
    if datamodule is None:
        datamodule = _stored_data(info, info.config.get("dataset", "mnist"), data_dir, None)
    spec, data = datamodule.spec, datamodule.data
    assert data is not None
    accuracies = []
    for split in (data.val, data.test):
        loader = InMemoryLoader(
            split, datamodule.eval_batch_size, BatchTransform(spec.mean, spec.std), device=device
        )
        logits, labels = predict(model, loader)
        accuracies.append(float((logits.argmax(-1) == labels).double().mean()))
    metrics.last_checkpoint_epoch = info.epoch
    metrics.last_val_accuracy, metrics.last_test_accuracy = accuracies


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
) -> Metrics:
    """All DESIGN.md section 6 metrics of one checkpoint on its data set's val and test splits.

    The data comes from ``datamodule`` or is reloaded from the checkpoint's config (with
    ``dataset`` / ``data_dir`` / ``max_test_samples`` overriding it; another data set must
    have the same channels and classes). Evaluation runs in float32 on ``device`` (default:
    CUDA if available). Timing of training epochs comes from the checkpoint's
    :class:`EpochTimer` state. ``image_sizes`` adds a ``resolution_transfer`` record: test
    accuracy with the images resized by ``resize_mode`` (see :func:`resize_images`).
    ``predictions_out`` also writes the per-image test predictions (:func:`write_predictions`).
    """
    device = resolve_device(device)
    model, info = load_model(ckpt_path, device)
    check_resize_mode(resize_mode)
    dataset = dataset or info.config.get("dataset", "mnist")
    if datamodule is None and dataset != "imagefolder":  # a named data set's shape is known
        _check_data_fits(info, get_spec(dataset))
    if datamodule is None:
        datamodule = _stored_data(info, dataset, data_dir, max_test_samples)
    _check_data_fits(info, datamodule.spec)
    return measure(
        model,
        info,
        datamodule,
        device,
        batch_size=batch_size,
        inference_batch_size=inference_batch_size,
        image_sizes=image_sizes,
        resize_mode=resize_mode,
        predictions_out=predictions_out,
    )


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
        predictions_out=RunDir(run_dir_or_ckpt).predictions_file if own_test_set else None,
    )
    last = ckpt.with_name(LAST)
    if last.is_file() and last != ckpt:
        timer = timer_state(load_checkpoint(last))
        metrics.train_seconds_per_epoch = timer.mean_seconds if timer else None
    if last.is_file() and own_test_set:
        record_last_checkpoint(metrics, last, device=device, data_dir=data_dir)
    if out is not None:
        write_json_atomic(out, metrics.to_dict())
    return metrics.to_dict()
