"""What a batch of stored crops trains towards: its payload decoded into dense targets, on the
batch's device, as the store's metadata says (scheme, class count, ``full`` values as
log-probabilities from format version 5 on; embeddings as float16 or int8 with scales).

One implementation for fkd-train's ``--mode fkd`` and for ``fkd.api``: with ``gt_weight`` W the
target is ``(1 - W) * stored + W * one-hot(label)`` (the one-hot smoothed by ``smoothing``, timm's
convention); soft-target cross-entropy is linear in the target, so the loss on it is
``(1 - W) * CE(stored) + W * CE(one-hot)``, and Mixup/CutMix mix the combined target with the image.
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
from .multicrop import CropBatch


def one_hot_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot float32 (N, C) of ``labels``: 1 - smoothing on the label plus smoothing / C everywhere
    (timm's convention; the ground-truth target of every fkd-train mode)."""
    off = smoothing / num_classes
    return one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)


@dataclass(frozen=True)
class StoredTargets:
    """Dense targets of a ``CropBatch``: ``labels`` the stored soft labels (B*n, C), ``embedding``
    the stored features (B*n, D), and calling it the training target (B*n, C) with the ground
    truth's share ``gt_weight``. ``codec`` None: the batches come from an embedding store alone."""

    codec: "LabelCodec | None"
    num_classes: int
    gt_weight: float = 0.0
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gt_weight <= 1.0:
            raise ReplayError(f"gt_weight must be in [0, 1], got {self.gt_weight}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ReplayError(f"smoothing must be in [0, 1), got {self.smoothing}")

    @classmethod
    def of_store(cls, store: LabelStore, gt_weight: float = 0.0, smoothing: float = 0.0) -> "StoredTargets":
        """The targets of batches replayed from ``store`` (a label store, or an embedding store: then
        ``embedding`` only). A ground-truth share needs every image's label: refused otherwise."""
        if gt_weight > 0:
            check_labels_known(store.labels, store.image_ids, "the store", "fkd --gt-weight")
        codec = store.meta.label_codec() if store.meta.payload == "labels" else None
        return cls(codec, store.meta.num_classes, gt_weight, smoothing)

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

    def ground_truth(self, labels: torch.Tensor) -> torch.Tensor:
        return one_hot_targets(labels, self.num_classes, self.smoothing)

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        """The training target (B*n, C): ``(1 - W) * labels(batch) + W * ground_truth(batch.labels)``."""
        stored = self.labels(batch)
        if not self.gt_weight:
            return stored
        return (1.0 - self.gt_weight) * stored + self.gt_weight * self.ground_truth(batch.labels)
