"""Checkpoints that survive crashes: atomic saving, validated loading, resume fall-back, and
weight transfer between model variants (``--init-from``).

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary
file lives in the system temp folder and is moved with ``shutil.move``: across file systems
that is a copy, so a kill during it leaves a truncated ``last.ckpt``, and nothing is fsynced.
:class:`AtomicCheckpointIO` writes next to the target and renames instead.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from rpevit.atomic import atomic_write
from rpevit.errors import CheckpointError, one_line
from rpevit.runs import RunDir


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, ``os.replace``.

    Remembers the last checkpoint it wrote (path and global step), so an error message can
    name the last good checkpoint.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_saved: tuple[Path, int | None] | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_write(path) as f:
            torch.save(checkpoint, f)
        self.last_saved = (Path(path), checkpoint.get("global_step"))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training checkpoint safely (``weights_only=True``) onto the CPU and check that
    it was written by :func:`rpevit.training.train`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a PyTorch checkpoint, or truncated "
            f"({path.stat().st_size} bytes)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, truncation, zip errors: all mean "unreadable"
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if unsafe:
            raise CheckpointError(
                f"cannot read checkpoint {path}: it contains a Python object "
                f"({unsafe.group(1)}) that loading with weights_only=True refuses, for safety; "
                "save checkpoints with tensors and plain values only"
            ) from e
        raise CheckpointError(f"cannot read checkpoint {path} ({one_line(e)})") from e
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not hparams or "model_name" not in hparams or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not an rpevit training checkpoint")
    return checkpoint


def find_checkpoint(run_dir_or_ckpt: str | os.PathLike[str]) -> Path:
    """A checkpoint file itself, or a run folder's best checkpoint (falling back to last)."""
    path = Path(run_dir_or_ckpt)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path} is neither a run folder nor a checkpoint file")
    run = RunDir(path)
    found = run.checkpoint()
    if found is None:
        raise CheckpointError(
            f"run folder {path} has no {run.best.relative_to(path)} or {run.last.name}"
        )
    return found


def resume_checkpoint(run_dir_or_ckpt: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume a run from, loaded and validated.

    For a run folder that is ``last.ckpt``; if it is missing or unreadable (a disk error, a
    copy cut short: atomic saving rules out a kill), ``best.ckpt`` is used instead, which is
    also a complete training state (saved after validation at an epoch end), with a warning.
    An explicitly named checkpoint file gets no fall-back.
    """
    path = Path(run_dir_or_ckpt)
    if path.is_file():
        return path, load_checkpoint(path)
    run = RunDir(path)
    candidates = (run.last, run.best)
    if not any(ckpt.is_file() for ckpt in candidates):
        raise CheckpointError(f"nothing to resume: {run.last} does not exist")
    problems = []
    for ckpt in candidates:
        try:
            checkpoint = load_checkpoint(ckpt)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            print(
                f"rpevit: warning: {'; '.join(problems)}; resuming from {ckpt} "
                f"(step {checkpoint.get('global_step')}) instead",
                file=sys.stderr,
            )
        return ckpt, checkpoint
    raise CheckpointError(
        f"no intact checkpoint to resume in {run.checkpoint_dir} ({'; '.join(problems)}): "
        "start the run again with --overwrite"
    )


def _is_kernel_key(key: str) -> bool:
    """Parameters and buffers that belong to an attention kernel (``blocks.<i>.attn.kernel.``)."""
    return ".attn.kernel." in key


def transfer_weights(model: torch.nn.Module, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the weights of a run or checkpoint into ``model`` (another kernel, same backbone).

    Every tensor of the source must exist in ``model`` with the same shape (so the source's
    kernel must have no state of its own: a softmax model); only the new kernel's own
    parameters/buffers (e.g. FAVOR+ projections) may be missing from it. Returns what was
    transferred, for the run record.
    """
    path = find_checkpoint(source)
    checkpoint = load_checkpoint(path)
    prefix = "model."
    state = {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }
    target = model.state_dict()
    unexpected = sorted(k for k in state if k not in target)
    missing = sorted(k for k in target if k not in state and not _is_kernel_key(k))
    shapes = [
        f"{k} {list(v.shape)} -> {list(target[k].shape)}"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    source_name = checkpoint["hyper_parameters"]["model_name"]
    if unexpected or missing or shapes:
        details = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("shape mismatch", shapes), ("unexpected", unexpected))
            if keys
        )
        if missing:
            details += f"{'; ' if details else ''}missing: {', '.join(missing[:3])}"
        raise CheckpointError(
            f"cannot initialise {getattr(model, 'model_name', 'the model')} from {path} "
            f"({source_name}): {details}; the source must have the same position encoding, sizes "
            "and image size, and only the new attention kernel may add weights"
        )
    shared = {k: v for k, v in state.items() if k in target}
    model.load_state_dict(shared, strict=False)
    return {
        "path": str(path),
        "model": source_name,
        "step": checkpoint.get("global_step"),
        "epochs": (checkpoint["hyper_parameters"].get("config") or {}).get("epochs"),
        "transferred": len(shared),
        "new": sorted(k for k in target if k not in shared),
    }
