"""Training modes: what a batch's targets are and how the loss is computed from the student output.

Every mode gives dense float targets (B*n, T) built on the device, so Mixup/CutMix mixes images and
targets of any mode with the same lambda; then ``loss`` turns the student output (and, for
online-kd, the mixed images in [0, 1]) into a scalar.

- ``fkd``: the decoded stored soft labels; soft-target cross-entropy.
- ``supervised``: (smoothed) one-hot ground truth; soft-target cross-entropy.
- ``online-kd``: ground truth, plus the teacher run on the same mixed crops in the loop;
  ``(1 - alpha) * CE + alpha * KD`` (soft: tau^2 KL at tau, hard: CE on the teacher's argmax).
- ``fkd`` with embeddings, ``online-fd``: feature distillation, in ``feature_modes``.
- ``deit``: ground truth for the class head and the stored labels for the distillation head,
  mixed together as one (B*n, 2C) target so both get the same lambda; soft distillation takes the
  teacher at ``tau`` from the store, exactly or not at all (see ``DeiTMode``).

The stored labels decode through the store's ``fkd.payload.quantize.LabelCodec`` (``log_probs``: a full
store of format version 5 keeps log-probabilities; ``temperature``: the store's own).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fkd.data.multicrop import CropBatch
from fkd.data.targets import StoredTargets, crop_ground_truth
from fkd.losses.labels import DistillationLoss, deit_token_loss, soft_target_cross_entropy
from fkd.payload.quantize import LabelCodec

from .errors import SetupError


class TrainMode(Protocol):
    def targets(self, batch: CropBatch) -> torch.Tensor: ...

    def loss(self, output: "torch.Tensor | tuple[torch.Tensor, torch.Tensor]", images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


def resize_for_teacher(images: torch.Tensor, size: "tuple[int, int]") -> torch.Tensor:
    """The student's (mixed) crops in [0, 1] at the teacher's input size (antialiased bilinear)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


class FKDMode:
    """Train on the stored soft labels: the teacher never runs. With ``gt_weight`` W > 0 the target
    is ``(1 - W) * stored + W * one_hot(label)`` (smoothed by ``smoothing``): soft-target CE being
    linear in the target, that is ``(1 - W) * CE(stored) + W * CE(ground truth)``, and Mixup/CutMix
    mix the combined target with the image. ``gt_weight_by="confidence"``: W per crop, by the stored
    label's confidence, at the batch mean W (``fkd.data.targets.confidence_gt_weights``)."""

    def __init__(self, scheme: str, num_classes: int, gt_weight: float = 0.0, smoothing: float = 0.0, *, log_probs: bool = False,
                 gt_weight_by: str = "constant"):
        self.stored = StoredTargets(LabelCodec(scheme, num_classes, log_probs=log_probs), num_classes, gt_weight, smoothing, gt_weight_by)

    def targets(self, batch: CropBatch) -> torch.Tensor:
        return self.stored(batch)  # fkd.api's StoredTargets: (1 - W) * stored + W * one-hot

    def loss(self, output: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(output, targets)


class SupervisedMode:
    """Ground-truth labels only, with optional label smoothing."""

    def __init__(self, num_classes: int, smoothing: float = 0.0):
        self.num_classes = num_classes
        self.smoothing = smoothing

    def targets(self, batch: CropBatch) -> torch.Tensor:
        return crop_ground_truth(batch, self.num_classes, self.smoothing)

    def loss(self, output: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_target_cross_entropy(output, targets)


class OnlineKDMode(SupervisedMode):
    """Vanilla KD: the teacher sees the student's (mixed) crops, resized to its input size.

    ``teacher`` maps images in [0, 1] at its input size to probabilities at temperature 1
    (fkd.teacher.teachers.Teacher); the loss tempers them once, exactly, with ``tau``: Hinton's
    ``tau**2 * KL(softmax(t/tau) || softmax(z/tau))``.
    """

    def __init__(self, teacher: nn.Module, num_classes: int, smoothing: float, kind: str, alpha: float, tau: float):
        super().__init__(num_classes, smoothing)
        self.teacher = teacher.eval()
        self.teacher_size = tuple(teacher.data_config.input_size)
        self.criterion = DistillationLoss(kind=kind, alpha=alpha, tau=tau, teacher_is_prob=True)

    @torch.no_grad()
    def teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher(resize_for_teacher(images, self.teacher_size)).float()

    def loss(self, output: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(output, targets, self.teacher_probs(images))


class DeiTMode:
    """Distillation token: class head <- ground truth, distillation head <- stored labels (hard:
    the store's top-1, soft: the teacher's distribution at ``tau``). The model returns (cls, dist)
    in training.

    Soft distillation is DeiT's ``tau**2 * KL(softmax(t/tau) || softmax(z/tau))`` (at ``tau == 1``
    the soft-target cross-entropy, which differs from that KL by the target's entropy only: same
    gradient). The teacher's ``softmax(t/tau)`` comes from the store (``LabelCodec.tempered``): its
    labels as they are when ``tau`` is the store's own ``temperature`` T (any scheme), else rebuilt
    from a full store of log-probabilities as ``softmax(T ln p / tau)``, exact up to float16. Every
    other store is refused here (``SetupError``, with the error re-tempering it would make): top-K
    labels lost the teacher's tail (their decoder spreads or drops it) and float16 probabilities
    rounded it to 0, which no temperature brings back. The targets are the tempered distributions, so
    Mixup/CutMix mix them with the image's lambda like any target; DeiT's online teacher would label
    the mixed image instead (an approximation common to every stored target).
    """

    def __init__(self, scheme: str, num_classes: int, smoothing: float, kind: str, alpha: float, tau: float = 1.0, *,
                 temperature: float = 1.0, log_probs: bool = False):
        self.codec = LabelCodec(scheme, num_classes, temperature, log_probs)
        self.num_classes = num_classes
        self.smoothing = smoothing
        self.kind = kind
        self.alpha = alpha
        self.tau = tau
        problem = self.codec.retemper_problem(tau) if kind == "soft" else None
        if problem is not None:
            raise SetupError(
                f"--kd-tau {tau}: {problem}; use --kd-tau {self.codec.temperature} (the store's temperature) or a full store of this fkd "
                "(fkd-labelgen --scheme full keeps log-probabilities, format version 5)"
            )

    def targets(self, batch: CropBatch) -> torch.Tensor:
        gt = crop_ground_truth(batch, self.num_classes, self.smoothing)
        if self.kind == "soft":
            teacher = self.codec.tempered(batch.indices, batch.values, self.tau)
        else:
            teacher = self.codec.decode(batch.indices, batch.values)
        return torch.cat([gt, teacher], dim=1)

    def loss(self, output: "tuple[torch.Tensor, torch.Tensor]", images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, tuple):
            raise TypeError("--mode deit needs a distilled model (timm deit_*_distilled_*) in distilled training mode")
        cls_logits, dist_logits = output
        gt, teacher = targets.split(self.num_classes, dim=1)
        tau = None if self.tau == 1.0 else self.tau
        return deit_token_loss(cls_logits, dist_logits, gt, teacher, self.kind, self.alpha, tau,
                               teacher_is_prob=True, teacher_tau=self.tau)
