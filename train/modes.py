"""Training modes: what a batch's targets are and how the loss is computed from the student output.

Every mode gives dense float targets (B*n, T) built on the device, so Mixup/CutMix mixes images and
targets of any mode with the same lambda; then ``loss`` turns the student output (and, for
online-kd, the mixed images in [0, 1]) into a scalar.

- ``fkd``: the decoded stored soft labels; soft-target cross-entropy.
- ``supervised``: (smoothed) one-hot ground truth; soft-target cross-entropy.
- ``online-kd``: ground truth, plus the teacher run on the same mixed crops in the loop;
  ``(1 - alpha) * CE + alpha * KD`` (soft: tau^2 KL at tau, hard: CE on the teacher's argmax).
- ``deit``: ground truth for the class head and the stored labels for the distillation head,
  mixed together as one (B*n, 2C) target so both get the same lambda.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fkd.losses import DistillationLoss, deit_token_loss, soft_target_cross_entropy
from fkd.quantize import decode

from .data import CropBatch

MODES: tuple[str, ...] = ("fkd", "supervised", "online-kd", "deit")
STORE_MODES: frozenset[str] = frozenset({"fkd", "deit"})
"""Modes that read the label store; the others draw fresh random crops from --data."""


class TrainMode(Protocol):
    def targets(self, batch: CropBatch) -> torch.Tensor: ...

    def loss(self, output: "torch.Tensor | tuple[torch.Tensor, torch.Tensor]", images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


def one_hot_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(1 - smoothing) on the label plus smoothing / C everywhere (timm's convention)."""
    off = smoothing / num_classes
    dense = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return dense.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


class FKDMode:
    """Train on the stored soft labels alone: the teacher never runs."""

    def __init__(self, scheme: str, num_classes: int):
        self.scheme = scheme
        self.num_classes = num_classes

    def targets(self, batch: CropBatch) -> torch.Tensor:
        return decode(batch.indices, batch.values, self.scheme, self.num_classes)

    def loss(self, output: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(output, targets)


class SupervisedMode:
    """Ground-truth labels only, with optional label smoothing."""

    def __init__(self, num_classes: int, smoothing: float = 0.0):
        self.num_classes = num_classes
        self.smoothing = smoothing

    def targets(self, batch: CropBatch) -> torch.Tensor:
        return one_hot_targets(batch.labels, self.num_classes, self.smoothing)

    def loss(self, output: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(output, targets)


class OnlineKDMode(SupervisedMode):
    """Vanilla KD: the teacher sees the student's (mixed) crops, resized to its input size.

    ``teacher`` maps images in [0, 1] at its input size to probabilities (fkd.teachers.Teacher).
    """

    def __init__(self, teacher: nn.Module, num_classes: int, smoothing: float, kind: str, alpha: float, tau: float):
        super().__init__(num_classes, smoothing)
        self.teacher = teacher.eval()
        self.teacher_size = tuple(teacher.data_config.input_size)
        self.criterion = DistillationLoss(kind=kind, alpha=alpha, tau=tau, teacher_is_prob=True)

    @torch.no_grad()
    def teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.teacher_size:
            images = F.interpolate(images, size=self.teacher_size, mode="bilinear", align_corners=False, antialias=True)
        return self.teacher(images).float()

    def loss(self, output: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(output, targets, self.teacher_probs(images))


class DeiTMode:
    """Distillation token: class head <- ground truth, distillation head <- stored labels (hard:
    the store's top-1, soft: the decoded distribution). The model returns (cls, dist) in training."""

    def __init__(self, scheme: str, num_classes: int, smoothing: float, kind: str, alpha: float):
        self.scheme = scheme
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.kind = kind
        self.alpha = alpha

    def targets(self, batch: CropBatch) -> torch.Tensor:
        gt = one_hot_targets(batch.labels, self.num_classes, self.smoothing)
        return torch.cat([gt, decode(batch.indices, batch.values, self.scheme, self.num_classes)], dim=1)

    def loss(self, output: "tuple[torch.Tensor, torch.Tensor]", images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, tuple):
            raise TypeError("--mode deit needs a distilled model (timm deit_*_distilled_*) in distilled training mode")
        cls_logits, dist_logits = output
        gt, teacher = targets.split(self.num_classes, dim=1)
        return deit_token_loss(cls_logits, dist_logits, gt, teacher, self.kind, self.alpha)
