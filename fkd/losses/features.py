"""Losses for feature distillation: a student's projected features against a teacher's.

The features are vectors over the last dimension (N, D), or maps moved to channels-last (B, H, W, C)
so that every position is one such vector. Every loss is a float32 scalar, computed with autocast
disabled (under AMP the projector's output arrives in float16/bfloat16), averaged over everything:

- ``smooth-l1``: FD's loss ("Contrastive Learning Rivals Masked Image Modeling in Fine-tuning via
  Feature Distillation", Wei et al. 2022, and its code): the target is whitened by a LayerNorm over
  the feature dimension without learned affine (zero mean, unit variance per vector, eps 1e-5 as
  ``nn.LayerNorm``), then ``smooth_l1(pred, whitened, beta=2.0)``, mean over all values. Whitening
  puts every target on one scale whatever the teacher's feature magnitudes, so no weight has to be
  tuned per teacher; the student's projector learns to predict the whitened values. An ensemble's
  vector is its members' vectors concatenated (``segments``: each member's D): each member's slice
  is whitened on its own, so a member of large features does not drown the others' in one shared
  mean and variance, and every member weighs by its D alone. One segment is FD's loss, unchanged.
- ``cosine``: ``1 - cos(pred, target)`` per vector, mean over vectors: the direction only.
- ``mse``: ``(pred - target)^2`` mean over all values, on the target as given.

Only ``smooth-l1`` whitens (as FD does); ``cosine`` and ``mse`` compare with the target as stored
(an embedding store made with ``normalization layernorm`` or ``l2`` gives them normalized targets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..payload.embedding_codec import normalize

FEATURE_LOSSES: tuple[str, ...] = ("smooth-l1", "cosine", "mse")
SMOOTH_L1_BETA = 2.0
"""FD's beta: quadratic for whitened errors below 2, linear beyond (robust to outlying dimensions)."""


def whiten(features: torch.Tensor, segments: "tuple[int, ...] | None" = None) -> torch.Tensor:
    """LayerNorm over the last dimension without affine: FD's ``nn.LayerNorm(D, elementwise_affine=False)``;
    with ``segments`` (D_1, ..., D_n summing to D), over each slice of D_i values on its own."""
    if segments is not None and sum(segments) != features.shape[-1]:
        raise ValueError(f"segments {list(segments)} do not add up to the features' {features.shape[-1]} values")
    if segments is None or len(segments) == 1:
        return normalize(features, "layernorm")
    return torch.cat([normalize(part, "layernorm") for part in features.split(list(segments), dim=-1)], dim=-1)


def feature_loss(
    pred: torch.Tensor, target: torch.Tensor, kind: str, beta: float = SMOOTH_L1_BETA, segments: "tuple[int, ...] | None" = None
) -> torch.Tensor:
    """``kind`` loss of ``pred`` against ``target`` (same shape, features over the last dimension);
    ``segments``: the ensemble members' parts of the features, whitened apart by ``smooth-l1``."""
    if kind not in FEATURE_LOSSES:
        raise ValueError(f"unknown feature loss {kind!r}; choose one of: {', '.join(FEATURE_LOSSES)}")
    if pred.shape != target.shape:
        raise ValueError(f"predicted features {tuple(pred.shape)} and target features {tuple(target.shape)} differ in shape")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred, target = pred.float(), target.float()
        if kind == "smooth-l1":
            return F.smooth_l1_loss(pred, whiten(target, segments), beta=beta)
        if kind == "cosine":
            return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
        return F.mse_loss(pred, target)


def feature_map_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, beta: float = SMOOTH_L1_BETA) -> torch.Tensor:
    """``feature_loss`` of maps (B, C, H, W): every position's C-vector is one feature vector (FD
    whitens per position over the channels)."""
    if pred.ndim != 4:
        raise ValueError(f"feature maps must be (B, C, H, W), got {tuple(pred.shape)}")
    return feature_loss(pred.movedim(1, -1), target.movedim(1, -1), kind, beta)
