"""What a batch of stored crops trains towards: its payload decoded into dense targets, on the
batch's device, as the store's metadata says (scheme, class count, ``full`` values as
log-probabilities from format version 5 on; embeddings as float16 or int8 with scales).

One implementation for fkd-train's ``--mode fkd`` and for ``fkd.api``: with ``gt_weight`` W the
target is ``(1 - W) * stored + W * one-hot(label)`` (the one-hot smoothed by ``smoothing``, timm's
convention); soft-target cross-entropy is linear in the target, so the loss on it is
``(1 - W) * CE(stored) + W * CE(one-hot)``, and Mixup/CutMix mix the combined target with the image.

``gt_weight_by="confidence"`` gives crop i its own share ``W_i`` instead (``confidence_gt_weights``):
more ground truth where the stored label is unsure, less where it is sure (FerKD's lever), with the
batch's mean share kept at W, so it is measured against the constant W at the same mean objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data.mixup import one_hot

from ..payload.embedding_codec import decode as decode_embedding
from ..payload.quantize import LabelCodec
from ..store import LabelStore
from .checks import check_labels_known
from .errors import ReplayError
from .mixing import mixed_ground_truth
from .multicrop import CropBatch

GT_WEIGHT_BY = ("constant", "confidence")


def confidence_gt_weights(stored: torch.Tensor, gt_weight: float) -> torch.Tensor:
    """Per-crop ground-truth shares (N,) whose mean is exactly ``gt_weight`` W, following each stored
    label's uncertainty ``u_i = 1 - max_c stored_ic``: ``W_i = min(1, lam * u_i)``, with the one
    ``lam`` that makes ``mean_i W_i = W`` (water-filling: a share above 1 is capped and the rest
    spread over the others in proportion to ``u``). So a crop the teacher was twice as unsure of
    gets twice the ground truth, up to ground truth alone.

    When fewer than ``N * W`` crops have ``u > 0`` (labels at probability 1 carry no uncertainty),
    those crops get 1 and the crops with ``u = 0`` share the rest equally (the limit of the formula
    as every ``u`` grows by the same vanishing amount); all ``u = 0`` gives every crop W.
    """
    if not 0.0 <= gt_weight <= 1.0:
        raise ReplayError(f"gt_weight must be in [0, 1], got {gt_weight}")
    u = (1.0 - stored.double().max(dim=1).values).clamp_min(0.0)
    n = u.numel()
    total = n * gt_weight  # the shares' sum
    uncertain = int((u > 0).sum())
    if uncertain <= total:
        rest = 0.0 if uncertain == n else (total - uncertain) / (n - uncertain)
        return torch.where(u > 0, 1.0, rest).to(stored.dtype)
    s = u.sort(descending=True).values
    tail = s.flip(0).cumsum(0).flip(0)  # tail[k] = sum of s[k:], the shares left uncapped when the k largest are capped at 1
    k = torch.arange(n, device=u.device, dtype=torch.float64)
    lam = (total - k) / tail.clamp_min(torch.finfo(torch.float64).tiny)
    fits = (lam * s <= 1.0 + 1e-12) & (k < uncertain)  # the largest uncapped share stays <= 1
    first = int(fits.nonzero()[0])  # the fewest capped crops: the one consistent solution
    return (lam[first] * u).clamp_max(1.0).to(stored.dtype)


def one_hot_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot float32 (N, C) of ``labels``: 1 - smoothing on the label plus smoothing / C everywhere
    (timm's convention; the ground-truth target of every fkd-train mode)."""
    off = smoothing / num_classes
    return one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)


def crop_ground_truth(batch: CropBatch, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """The crops' ground truth (B*n, C), smoothed: one-hot of each image's label, or, on a store of
    stored Mixup/CutMix pairs, both images' labels mixed by each crop's own share of its view (the
    ground truth of every fkd-train mode, as batch Mixup mixes it)."""
    if batch.partner_labels is None:
        return one_hot_targets(batch.labels, num_classes, smoothing)
    return mixed_ground_truth(batch.labels, batch.partner_labels, batch.own_share, num_classes, smoothing)


@dataclass(frozen=True)
class StoredTargets:
    """Dense targets of a ``CropBatch``: ``labels`` the stored soft labels (B*n, C), ``embedding``
    the stored features (B*n, D), and calling it the training target (B*n, C) with the ground
    truth's share ``gt_weight``, the same for every crop (``gt_weight_by="constant"``) or per crop
    by the stored label's confidence (``"confidence"``: ``confidence_gt_weights``, batch mean W).
    ``codec`` None: the batches come from an embedding store alone."""

    codec: "LabelCodec | None"
    num_classes: int
    gt_weight: float = 0.0
    smoothing: float = 0.0
    gt_weight_by: str = "constant"

    def __post_init__(self) -> None:
        if not 0.0 <= self.gt_weight <= 1.0:
            raise ReplayError(f"gt_weight must be in [0, 1], got {self.gt_weight}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ReplayError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.gt_weight_by not in GT_WEIGHT_BY:
            raise ReplayError(f"gt_weight_by must be one of {', '.join(GT_WEIGHT_BY)}, got {self.gt_weight_by!r}")
        if self.gt_weight_by == "confidence" and (self.codec is None or self.codec.scheme == "hardening"):
            kept = "no soft labels" if self.codec is None else "each crop's top-1 class only, at probability 1"
            raise ReplayError(f"gt_weight_by='confidence' follows the stored labels' confidence, but this store keeps {kept}: "
                              "use gt_weight_by='constant' (--gt-weight-by constant)")

    @classmethod
    def of_store(cls, store: LabelStore, gt_weight: float = 0.0, smoothing: float = 0.0, gt_weight_by: str = "constant") -> "StoredTargets":
        """The targets of batches replayed from ``store`` (a label store, or an embedding store: then
        ``embedding`` only). A ground-truth share needs every image's label: refused otherwise."""
        if gt_weight > 0:
            check_labels_known(store.labels, store.image_ids, "the store", "fkd --gt-weight")
        codec = store.meta.label_codec() if store.meta.payload == "labels" else None
        return cls(codec, store.meta.num_classes, gt_weight, smoothing, gt_weight_by)

    def labels(self, batch: CropBatch) -> torch.Tensor:
        """The stored soft labels, float32 (B*n, C), rows summing to 1."""
        if self.codec is None:
            raise ReplayError("these batches come from an embedding store, which keeps no soft labels: read .embedding(batch)")
        return self.codec.decode(batch.indices, batch.values)

    def embedding(self, batch: CropBatch) -> torch.Tensor:
        """The stored teacher features, float32 (B*n, D)."""
        if batch.embedding is None:
            raise ReplayError("these batches hold no embeddings: pass an embedding store (embed_store, or as the store)")
        return decode_embedding(batch.embedding, batch.scales)

    def ground_truth(self, batch: CropBatch) -> torch.Tensor:
        """The crops' ground truth (``crop_ground_truth``): on stored pairs both images' labels."""
        return crop_ground_truth(batch, self.num_classes, self.smoothing)

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        """The training target (B*n, C): ``(1 - W) * labels(batch) + W * ground_truth(batch)``,
        with ``W`` per crop (a column) under ``gt_weight_by="confidence"``."""
        stored = self.labels(batch)
        if not self.gt_weight:
            return stored
        weight = self.gt_weight if self.gt_weight_by == "constant" else confidence_gt_weights(stored, self.gt_weight).unsqueeze(1)
        return (1.0 - weight) * stored + weight * self.ground_truth(batch)
