"""Losses for training a student from soft labels and for classic (Hinton / DeiT) distillation.

Notation: ``z`` student logits (B, C), ``p`` a target distribution (B, C), ``t`` teacher logits,
``tau`` the distillation temperature, ``alpha`` the weight of the distillation term.

Every loss computes ``log_softmax`` in float32 with autocast disabled: under AMP the logits arrive
in float16/bfloat16, where ``log_softmax`` of confident predictions loses the small probabilities
that soft labels are all about (and fp16 overflows for large logits). The result is a float32
scalar, the mean over the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "DistillKind",
    "DistillationLoss",
    "classification_loss",
    "deit_token_loss",
    "kd_hard_loss",
    "kd_soft_loss",
    "soft_target_cross_entropy",
    "teacher_distribution",
]

DistillKind = Literal["none", "soft", "hard"]
_KINDS: tuple[str, ...] = ("none", "soft", "hard")

#: A base criterion: (student logits (B, C), targets) -> scalar loss.
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _log_softmax_fp32(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last dim in float32, immune to an enclosing autocast region."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.log_softmax(logits.float(), dim=-1)


def soft_target_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a dense target distribution: ``mean_b( -sum_c p_bc * log_softmax(z_b)_c )``.

    This is FKD's training loss on stored soft labels and timm's ``SoftTargetCrossEntropy``,
    but float32-safe under AMP (timm's runs ``log_softmax`` in the autocast dtype).
    """
    _check_same_shape(logits, target_probs, "target_probs")
    log_q = _log_softmax_fp32(logits)
    return -(target_probs.float() * log_q).sum(dim=-1).mean()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The usual base criterion: CE for integer class labels (B,), soft-target CE for dense (B, C).

    One function for both because the same training step sees hard labels without mixing and dense
    soft targets once Mixup/CutMix (or a label store) is on.
    """
    if targets.dtype.is_floating_point:
        return soft_target_cross_entropy(logits, targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"integer targets must have shape {tuple(logits.shape[:-1])} (one class index per sample), "
            f"got {tuple(targets.shape)}"
        )
    return F.nll_loss(_log_softmax_fp32(logits), targets.long())


def teacher_distribution(
    teacher: torch.Tensor, tau: float, teacher_is_prob: bool = False, teacher_tau: float = 1.0
) -> torch.Tensor:
    """The teacher's distribution at temperature ``tau``, float32 (B, C).

    From logits: ``softmax(t / tau)``. From probabilities ``p = softmax(t / T)`` at temperature
    ``T = teacher_tau``: ``p**(T/tau) / sum_c p_c**(T/tau)``, computed as ``softmax(T log(p) / tau)``.
    The two are equal because ``p_c**(T/tau) = exp(t_c/tau) / Z**(T/tau)`` and the common factor
    cancels in the normalization. Zero probabilities give ``log 0 = -inf`` and stay exactly zero (so
    re-tempering is exact only where the probabilities kept the teacher's whole tail). At
    ``T == tau`` the probabilities are the answer, only renormalized.
    """
    _check_tau(tau)
    _check_tau(teacher_tau)
    with torch.autocast(device_type=teacher.device.type, enabled=False):
        if not teacher_is_prob:
            return F.softmax(teacher.float() / tau, dim=-1)
        if teacher_tau == tau:
            return teacher.float() / teacher.float().sum(dim=-1, keepdim=True)
        return F.softmax(torch.log(teacher.float()) * (teacher_tau / tau), dim=-1)


def kd_soft_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor,
    tau: float,
    teacher_is_prob: bool = False,
    teacher_tau: float = 1.0,
) -> torch.Tensor:
    """Hinton / DeiT soft distillation: ``tau**2 * KL(softmax(t/tau) || softmax(z/tau))``.

    The KL divergence ``sum_c q_c (log q_c - log softmax(z/tau)_c)`` is averaged over the batch
    (``batchmean``): the true per-sample KL. DeiT's code divides by batch*classes instead, which
    silently shrinks the term by the number of classes. The ``tau**2`` factor keeps the gradient
    magnitude independent of ``tau`` (Hinton et al. 2015). ``teacher`` holds logits, or
    probabilities at ``teacher_tau`` when ``teacher_is_prob`` (see ``teacher_distribution``).
    """
    _check_same_shape(student_logits, teacher, "teacher")
    q = teacher_distribution(teacher, tau, teacher_is_prob, teacher_tau)
    log_s = _log_softmax_fp32(student_logits / tau)
    # kl_div uses xlogy(q, q), so entries with q == 0 contribute exactly 0 (no NaN).
    return F.kl_div(log_s, q, reduction="batchmean") * (tau * tau)


def kd_hard_loss(student_logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """DeiT hard distillation: ``CE(z, argmax_c t_c)``; logits or probabilities (same argmax)."""
    _check_same_shape(student_logits, teacher, "teacher")
    return classification_loss(student_logits, teacher.argmax(dim=-1))


@dataclass
class DistillationLoss:
    """Ground-truth loss blended with a distillation term from the same student logits.

    ``loss = (1 - alpha) * base(z, targets) + alpha * kd(z, teacher)`` with ``kd`` = ``kd_soft_loss``
    (kind ``'soft'``, at ``tau``) or ``kd_hard_loss`` (kind ``'hard'``); kind ``'none'`` is the base
    loss alone. DeiT's paper setting: soft, ``tau=3``, ``alpha=0.1``. ``teacher_is_prob`` says the
    teacher tensor holds probabilities (e.g. decoded from a label store) rather than logits.
    """

    kind: DistillKind = "soft"
    alpha: float = 0.5
    tau: float = 1.0
    base: Criterion = classification_loss
    teacher_is_prob: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"distillation kind must be one of {', '.join(_KINDS)}; got {self.kind!r}")
        _check_alpha(self.alpha)
        _check_tau(self.tau)

    def __call__(
        self,
        student_logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        base = self.base(student_logits, targets)
        if self.kind == "none":
            return base
        if teacher_logits is None:
            raise ValueError(f"distillation kind {self.kind!r} needs teacher outputs, got None")
        if self.kind == "hard":
            kd = kd_hard_loss(student_logits, teacher_logits)
        else:
            kd = kd_soft_loss(student_logits, teacher_logits, self.tau, self.teacher_is_prob)
        return (1.0 - self.alpha) * base + self.alpha * kd


def deit_token_loss(
    cls_logits: torch.Tensor,
    dist_logits: torch.Tensor,
    base_targets: torch.Tensor,
    teacher_dense: torch.Tensor,
    kind: DistillKind,
    alpha: float = 0.5,
    tau: float | None = None,
    teacher_is_prob: bool = False,
    teacher_tau: float = 1.0,
) -> torch.Tensor:
    """DeiT's distillation-token loss: each head has its own target.

    ``loss = (1 - alpha) * base(cls_logits, base_targets) + alpha * kd(dist_logits, teacher_dense)``.
    The class head learns from ``base_targets`` (integer labels, or dense mixed soft targets) via
    ``classification_loss``. The distillation head learns from the teacher:

    - ``'hard'``: ``CE(dist_logits, argmax teacher_dense)``; with the default ``alpha=0.5`` this is
      DeiT's hard-distillation total ``0.5 * CE(cls, y) + 0.5 * CE(dist, y_t)``.
    - ``'soft'`` with ``tau=None``: ``teacher_dense`` holds probabilities already at the generation
      temperature (a label store's soft labels), so ``soft_target_cross_entropy(dist, teacher_dense)``.
      It differs from the KL only by the teacher's entropy, a constant: same gradient.
    - ``'soft'`` with a ``tau``: ``kd_soft_loss(dist, teacher_dense, tau, teacher_is_prob, teacher_tau)``;
      ``teacher_dense`` holds logits, or probabilities at ``teacher_tau`` when ``teacher_is_prob``
      (re-tempered by ``teacher_distribution``; with ``teacher_tau == tau``, as fkd-train's DeiT mode
      passes them, they are used as they are).

    At inference timm's ``VisionTransformerDistilled`` averages the two heads.
    """
    if kind not in ("soft", "hard"):
        raise ValueError(f"the distillation token needs kind 'soft' or 'hard'; got {kind!r}")
    _check_alpha(alpha)
    base = classification_loss(cls_logits, base_targets)
    if kind == "hard":
        kd = kd_hard_loss(dist_logits, teacher_dense)
    elif tau is None:
        kd = soft_target_cross_entropy(dist_logits, teacher_dense)
    else:
        kd = kd_soft_loss(dist_logits, teacher_dense, tau, teacher_is_prob, teacher_tau)
    return (1.0 - alpha) * base + alpha * kd


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")


def _check_tau(tau: float) -> None:
    if not tau > 0.0:
        raise ValueError(f"tau must be > 0; got {tau}")


def _check_same_shape(logits: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if logits.shape != other.shape:
        raise ValueError(
            f"{name} must have the logits' shape {tuple(logits.shape)}; got {tuple(other.shape)}"
        )
