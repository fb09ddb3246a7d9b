"""Stored labels in your own training loop: the public API (``from fkd.api import ...``).

The names in ``__all__`` are the stable surface; everything else in ``fkd`` may move. They are the
very classes fkd-train trains with, so a loop built on them gets fkd-train's guarantees: the store
is checked against the data before the first step (ids, labels, classes, sizes, fingerprints, class
map, a paired embedding store) and every image's fingerprint as it loads; each epoch replays n of
the M stored crops (``stored_crops="cycle"``: every stored crop once before any repeats), the same
crops for the same seed whatever the batch size, the number of DataLoader workers or of DDP ranks.

    train = StoredCrops(store, data, crops_per_image=4, size=224)
    sampler = EpochSampler(train, seed=0)                     # DDP: the process group's ranks
    loader = DataLoader(train, batch_size=64, sampler=sampler, num_workers=8, collate_fn=collate_crops)
    targets = train.stored_targets(gt_weight=0.0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:                                  # B images -> B*n crops
            batch = batch.to(device)                          # uint8 crops (B*n, 3, size, size)
            loss = soft_target_cross_entropy(model(normalize(batch.images)), targets(batch))

Errors a user can fix (``INPUT_ERRORS``) say in one line what to change.
"""

from __future__ import annotations

import os

from .data.augment import build_crop_augment
from .data.errors import DataMismatchError, ReplayError
from .data.evaluation import EvalDataset
from .data.images import BadImageError, ImageMismatchError
from .data.multicrop import CropBatch, EpochSampler, collate_crops
from .data.stored import StoredCrops, validation_images
from .data.targets import StoredTargets
from .losses.features import feature_loss
from .losses.labels import soft_target_cross_entropy
from .store import LabelStore, StoreError

__all__ = [
    "INPUT_ERRORS", "BadImageError", "CropBatch", "DataMismatchError", "EpochSampler", "EvalDataset", "ImageMismatchError", "LabelStore",
    "ReplayError", "StoreError", "StoredCrops", "StoredTargets", "build_crop_augment", "collate_crops", "feature_loss", "open_store",
    "soft_target_cross_entropy", "validation_images",
]

INPUT_ERRORS: tuple[type[Exception], ...] = (ReplayError, StoreError, BadImageError, ImageMismatchError)
"""The errors that mean the inputs are wrong (a store that does not match the data, a damaged
store, a bad image): their message is one line saying what to change, worth printing as it is."""


def open_store(path: "str | os.PathLike", payload: "str | None" = None) -> LabelStore:
    """The label store at ``path``, checked at open (complete, every shard's size and checksum).
    ``payload``: ``labels`` or ``embedding`` refuses a store of the other kind in one line; None
    takes either (``store.meta.payload`` says which)."""
    return LabelStore(path, payload=payload)
