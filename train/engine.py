"""One epoch of training and one evaluation pass.

The host delivers uint8 crops; everything numeric happens on the device: scale to [0, 1]
(channels_last on CUDA), build dense targets, Mixup/CutMix, normalize with the student's mean/std,
forward under autocast, backward through the (possibly disabled) GradScaler, clip, step, EMA.
Mixing before normalization is exact: normalization is a per-channel affine map, and both Mixup
(a convex combination) and CutMix (pasting) commute with it; the teacher of online-kd needs the
[0, 1] images anyway.

Random erasing comes last, on the normalized model input only: every target (stored label, ground
truth, the online teacher's output on ``x``) describes the crop before erasing, in every mode alike.
(timm and DeiT erase each image before Mixup and let an online teacher see the erased image; a
stored label cannot.)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from timm.utils import dispatch_clip_grad
from torch import nn
from tqdm import tqdm

from fkd.data.multicrop import CropBatch

from .checkpoint import unwrap
from .distributed import DistInfo, all_reduce_sum
from .mixup import SoftTargetMixup
from .modes import TrainMode


class Normalizer:
    """uint8 or [0, 1] images -> (x - mean) / std on the device, float32."""

    def __init__(self, mean: "tuple[float, ...]", std: "tuple[float, ...]", device: torch.device):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01 - self.mean) / self.std


def to_unit_float(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1], in channels_last layout when asked."""
    x = images.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device: torch.device, dtype: "torch.dtype | None"):
    """Autocast on CUDA with bf16/fp16, or nothing (CPU, or AMP off)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Trainer:
    """Everything one training step needs."""

    model: nn.Module
    mode: TrainMode
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    normalizer: Normalizer
    info: DistInfo
    updates_per_epoch: int
    mixer: "SoftTargetMixup | None" = None
    eraser: "Callable[[torch.Tensor], torch.Tensor] | None" = None
    ema: "nn.Module | None" = None
    student: "nn.Module | None" = None  # what the EMA averages when ``model`` wraps more (a projector); default unwrap(model)
    amp_dtype: "torch.dtype | None" = None
    channels_last: bool = False
    clip_grad: "float | None" = None
    clip_mode: str = "norm"
    log_every: int = 10


@dataclass
class EpochStats:
    loss: float
    lr: float
    samples: int
    images: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_one_epoch(
    t: Trainer, loader: Iterable[CropBatch], epoch: int, mix_generator: "torch.Generator | None", progress_total: "int | None" = None
) -> EpochStats:
    """Train over ``loader`` once. The learning rate follows the per-update schedule, set before
    each step from the global update count, so a resumed run gets exactly the same values.
    ``progress_total``: this rank's crops per epoch for a progress bar (None: no bar). Its loss and
    lr are this step's, shown every ``log_every`` steps but at least 4 times an epoch and at its
    last step, so a warm-up's lr is seen to climb even within a short first epoch."""
    t.model.train()
    device = t.info.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    samples = images = 0
    bar = tqdm(total=progress_total, unit="crop", desc=f"epoch {epoch}", disable=progress_total is None, dynamic_ncols=True, leave=False)
    report_every = max(1, min(t.log_every, t.updates_per_epoch // 4))  # short epochs get 4 updates too
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        num_updates = epoch * t.updates_per_epoch + step
        t.scheduler.step_update(num_updates)
        batch = batch.to(device)
        x = to_unit_float(batch.images, t.channels_last)
        targets = t.mode.targets(batch)
        if t.mixer is not None:
            x, targets = t.mixer(x, targets, generator=mix_generator)
        inputs = t.normalizer(x)
        if t.eraser is not None:
            inputs = t.eraser(inputs)
        with autocast(device, t.amp_dtype):
            loss = t.mode.loss(t.model(inputs), x, targets)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        if t.clip_grad is not None:
            t.scaler.unscale_(t.optimizer)
            dispatch_clip_grad(t.model.parameters(), t.clip_grad, mode=t.clip_mode)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        if t.ema is not None:
            t.ema.update(unwrap(t.model) if t.student is None else t.student, step=num_updates + 1)
        loss_sum += loss.detach().double() * len(batch)
        samples += len(batch)
        images += len(batch.image_index)
        bar.update(len(batch))
        if step % report_every == 0 or step == t.updates_per_epoch - 1:
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at epoch {epoch} step {step}; lower --lr or enable --clip-grad")
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{t.optimizer.param_groups[0]['lr']:.3g}")
    seconds = time.perf_counter() - start
    bar.close()
    total_loss, total_samples, total_images = all_reduce_sum([loss_sum.item(), samples, images], t.info)
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"loss is {total_loss} in epoch {epoch}; lower --lr or enable --clip-grad")
    return EpochStats(total_loss / max(total_samples, 1), t.optimizer.param_groups[0]["lr"], int(total_samples), int(total_images), seconds)


@dataclass
class EvalStats:
    top1: float
    top5: float
    loss: float
    count: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    normalizer: Normalizer,
    info: DistInfo,
    amp_dtype: "torch.dtype | None" = None,
    channels_last: bool = False,
    progress: bool = False,
) -> EvalStats:
    """Top-1 / top-5 accuracy (percent) and cross-entropy over the validation set, summed over
    ranks (each rank evaluates a disjoint shard). Top-5 becomes top-C with fewer than 5 classes."""
    model.eval()
    correct1 = correct5 = loss_sum = 0.0
    count = 0
    for images, labels in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
        images = images.to(info.device, non_blocking=True)
        labels = labels.to(info.device, non_blocking=True)
        with autocast(info.device, amp_dtype):
            logits = model(normalizer(to_unit_float(images, channels_last)))
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels.view(-1, 1))
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        count += labels.shape[0]
    c1, c5, ls, n = all_reduce_sum([correct1, correct5, loss_sum, count], info)
    n = max(n, 1)
    return EvalStats(100.0 * c1 / n, 100.0 * c5 / n, ls / n, int(n))
