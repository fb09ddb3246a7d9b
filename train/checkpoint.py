"""Checkpoints that resume exactly: model, optimizer, scheduler, AMP scaler, EMA, every rank's RNGs.

A run resumed from the checkpoint of epoch e must continue as if it had never stopped, so besides
the weights we keep everything that decides what happens next: the optimizer's momentum, the
scheduler position, the loss scale, the EMA weights and the random number generators of torch
(CPU and CUDA), NumPy and Python, per rank. The data order and crop choices derive from
(seed, epoch) alone, so the epoch number restores them. Everything is stored as tensors and plain
Python values so ``torch.load(weights_only=True)`` reads it: loading a checkpoint runs no pickled code.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

LAST_NAME = "last.pth"
BEST_NAME = "best.pth"
PROJECTOR_NAME = "projector.pth"
"""Feature distillation: the projector of last.pth, apart from the student (``train.projector``)."""
EPOCH_PATTERN = "checkpoint-{:04d}.pth"


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP and/or torch.compile wrappers (its state dict has clean keys)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].astype(np.int64).tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass
class TrainingState:
    """The objects a checkpoint covers. ``scaler``, ``ema`` and ``projector`` may be absent (CPU, no
    EMA, no feature distillation). ``model`` is the student alone, whatever wraps it for training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: "torch.amp.GradScaler | None" = None
    ema: "nn.Module | None" = None
    projector: "Any | None" = None  # train.projector.Projector: saved by its entry(), apart from the student


@dataclass
class Progress:
    """Where training stands: epochs finished and the best validation top-1 so far."""

    epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = -1


def build_checkpoint(
    state: TrainingState, progress: Progress, rng_states: list[dict[str, Any]], settings: dict[str, Any]
) -> dict[str, Any]:
    """The checkpoint dictionary (``rng_states``: one entry per rank, in rank order; ``settings``: the
    run's options as args.yaml holds them, under ``args``); a projector, when trained, under
    ``projector``, so ``model`` stays the plain timm student."""
    projector = {} if state.projector is None else {"projector": state.projector.entry()}
    return {
        "epoch": progress.epoch,
        "best_top1": progress.best_top1,
        "best_epoch": progress.best_epoch,
        "model": unwrap(state.model).state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None and state.scaler.is_enabled() else None,
        "ema": unwrap(state.ema).state_dict() if state.ema is not None else None,
        "rng": rng_states,
        "args": settings,
        **projector,
    }


def load_checkpoint(path: Path, state: TrainingState, rank: int, world_size: int) -> Progress:
    """Restore ``state`` and this rank's RNGs from ``path``; returns the progress to continue from.

    RNGs are restored only when the checkpoint came from the same number of ranks (otherwise the
    weights and optimizer still resume, but the random stream starts afresh from the seed).
    """
    ckpt = read_checkpoint(path)
    unwrap(state.model).load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    if state.ema is not None:
        if ckpt.get("ema") is None:
            raise ValueError(f"{path}: checkpoint has no EMA weights but --model-ema is on")
        unwrap(state.ema).load_state_dict(ckpt["ema"])
    if state.projector is not None:
        state.projector.load_entry(ckpt.get("projector"))
    rngs = ckpt.get("rng") or []
    if len(rngs) == world_size:
        set_rng_state(rngs[rank])
    return Progress(int(ckpt["epoch"]), float(ckpt["best_top1"]), int(ckpt["best_epoch"]))


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise ValueError(f"{path}: not a readable fkd-train checkpoint ({exc})") from None
    if not isinstance(ckpt, dict) or not {"epoch", "model", "optimizer", "scheduler"} <= ckpt.keys():
        raise ValueError(f"{path}: not an fkd-train checkpoint (missing epoch/model/optimizer/scheduler)")
    return ckpt


def resolve_resume(resume: "str | None", output: Path) -> "Path | None":
    """``--resume``: a path, or 'auto' for OUTPUT/last.pth when it exists (a fresh start otherwise)."""
    if not resume:
        return None
    if resume == "auto":
        last = output / LAST_NAME
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
    return path


class CheckpointSaver:
    """Writes OUTPUT/last.pth every epoch (atomically), keeps the newest ``keep`` per-epoch copies
    checkpoint-NNNN.pth, and copies the checkpoint to best.pth when validation top-1 improves. A
    checkpoint with a projector also writes it alone to projector.pth (the one of last.pth)."""

    def __init__(self, output: Path, keep: int):
        self.output = Path(output)
        self.keep = keep

    def save(self, checkpoint: dict[str, Any], improved: bool) -> Path:
        last = self.output / LAST_NAME
        atomic_torch_save(checkpoint, last)
        if "projector" in checkpoint:
            atomic_torch_save(checkpoint["projector"], self.output / PROJECTOR_NAME)
        epoch = int(checkpoint["epoch"])
        if self.keep > 0:
            _atomic_copy(last, self.output / EPOCH_PATTERN.format(epoch))
            for old in sorted(self.output.glob("checkpoint-*.pth"))[: -self.keep]:
                old.unlink()
        if improved:
            _atomic_copy(last, self.output / BEST_NAME)
        return last


def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """``write`` a temporary file in ``path``'s directory, then rename it: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _atomic_copy(src: Path, dst: Path) -> None:
    _atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
