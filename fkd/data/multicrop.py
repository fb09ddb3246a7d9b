"""Multi-crop training data: decode each image once, cut n crops from it, flatten B images to B*n samples.

FKD's speed comes from here: the teacher's work is in the store, and one JPEG decode feeds n crops
(which ones: ``fkd.data.plan``). Batches stay uint8 on the host (4x less to copy and pin);
``CropBatch.to`` moves them to the device, where normalization, target decoding and mixup happen.

A reinforced store's crops are rendered as its labels describe them: their stored augmentation
applied (``views.ViewRenderer``) and, where a crop is paired, the partner image decoded (once per
image, whatever the number of its crops mixed in) and its crop mixed in (``mixing.render_pairs``);
such samples carry the partner's label and the crop's own share of the view, for the ground truth.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from .augment import CropAugment, seeded_rngs
from .crops import parse_interpolation, replay_fixed
from .images import check_fingerprint, read_image
from .mixing import own_share, render_pairs
from .plan import PAYLOAD_FIELDS, CropPlan, CropPlanner, derived_seed
from .sources import FolderSource, ImageSource


@dataclass
class CropTargets:
    """What an image's sample carries besides pixels (``MultiCropDataset.targets``): the payload of
    its n crops (n, ...) or None, label, store index and crop ids; shared by the cut and uncut
    samples. From a store with stored pairs also each crop's partner label and own share of its view
    (n,) (the partner label is the image's own where a crop is not mixed, its share 1)."""

    indices: "torch.Tensor | None"
    values: "torch.Tensor | None"
    label: int
    index: int
    crop_ids: torch.Tensor
    embedding: "torch.Tensor | None" = None
    scales: "torch.Tensor | None" = None
    partner_labels: "torch.Tensor | None" = None
    own_share: "torch.Tensor | None" = None


PAIR_FIELDS: tuple[str, ...] = ("partner_labels", "own_share")
"""Per-crop fields of views mixed from stored pairs (None elsewhere)."""


@dataclass
class CropSample(CropTargets):
    """One image's n crops: uint8 pixels (n, 3, s, s) and their targets."""

    images: torch.Tensor = field(kw_only=True)


class MultiCropDataset(Dataset):
    """Indexed by (epoch, image index) pairs from ``EpochSampler``; decodes the image once and
    replays the planned crops at ``size`` with ``interpolation``, then renders a reinforced store's
    stored augmentation and pairs, or applies ``augment`` per crop (not both: refused up front)."""

    def __init__(
        self,
        source: "Path | ImageSource",
        planner: CropPlanner,
        size: "int | tuple[int, int]",
        interpolation: str,
        augment: "CropAugment | None" = None,
        seed: int = 0,
    ):
        self.source = FolderSource(Path(source)) if isinstance(source, (str, Path)) else source
        self.planner = planner
        self.size = size
        self.interpolation = parse_interpolation(interpolation)
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.planner.image_ids)

    def __getitem__(self, key: "tuple[int, int]") -> CropSample:
        epoch, index = key
        image, plan = self.decode(epoch, index)
        crops = replay_fixed(image, plan.boxes_fixed, plan.flips, self.size, self.interpolation)
        if plan.views is not None:
            renderer = self.planner.views
            crops = renderer.augment(crops, plan.views, self.planner.image_ids[index], plan.crop_ids)
            crops = render_pairs(crops, plan.views, self.partner_crops)
        elif self.augment is not None:
            with seeded_rngs(derived_seed(self.seed, epoch, index, 1)):
                crops = torch.stack([self.augment(c) for c in crops])
        return CropSample(images=crops, **self.targets(plan, index))

    def decode(self, epoch: int, index: int) -> tuple[torch.Tensor, CropPlan]:
        """The decoded image (its fingerprint checked against the plan's) and its crops this epoch."""
        location = self.source.locate(self.planner.image_ids[index])
        loaded = read_image(location)
        height, width = loaded.pixels.shape[-2:]
        plan = self.planner.plan(index, epoch, height, width)
        check_fingerprint(location, loaded.fingerprint, plan.fingerprint)
        return loaded.pixels, plan

    def decode_partner(self, index: int, chosen: np.ndarray) -> tuple[torch.Tensor, CropPlan]:
        """Image ``index`` (a partner of a stored pair), its fingerprint checked, and the plan of its crops ``chosen``."""
        location = self.source.locate(self.planner.image_ids[index])
        loaded = read_image(location)
        plan = self.planner.partner(index, chosen, *loaded.pixels.shape[-2:])
        check_fingerprint(location, loaded.fingerprint, plan.fingerprint)
        return loaded.pixels, plan

    def partner_crops(self, index: int, chosen: np.ndarray) -> torch.Tensor:
        """Crops ``chosen`` of image ``index`` (a partner of a stored pair) cut at this dataset's
        size with their own stored augmentation."""
        pixels, plan = self.decode_partner(index, chosen)
        crops = replay_fixed(pixels, plan.boxes_fixed, plan.flips, self.size, self.interpolation)
        return self.planner.views.augment(crops, plan.views, self.planner.image_ids[index], chosen)

    def targets(self, plan: CropPlan, index: int) -> dict[str, Any]:
        """What a sample carries besides pixels: stored payload rows (``indices`` as int32, torch
        having no uint16 arithmetic; the others as stored), label, image and crop ids, and for
        stored pairs the partners' labels and each crop's own share of its view."""
        label = int(self.planner.labels[index])
        pairs: dict[str, torch.Tensor] = {}
        mixed = None if plan.views is None else plan.views.mixed
        if mixed is not None:
            partner = np.where(mixed, self.planner.labels[plan.views.mix_image.astype(np.int64)], label)
            pairs = {"partner_labels": torch.from_numpy(partner.astype(np.int64)),
                     "own_share": torch.from_numpy(own_share(plan.views, _pair(self.size)))}
        return {
            **{name: _payload_tensor(name, getattr(plan, name)) for name in PAYLOAD_FIELDS},
            "label": label,
            "index": index,
            "crop_ids": torch.from_numpy(np.asarray(plan.crop_ids, dtype=np.int64)),
            **pairs,
        }


def _pair(size: "int | tuple[int, int]") -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]


def _payload_tensor(name: str, array: "np.ndarray | None") -> "torch.Tensor | None":
    if array is None:
        return None
    return torch.from_numpy(array.astype(np.int32) if name == "indices" else np.ascontiguousarray(array))


@dataclass
class CropBatch:
    """B images x n crops flattened to B*n samples; labels repeat per crop, ``image_index`` is per
    image. From a store with stored pairs ``partner_labels`` and ``own_share`` (B*n,) say what each
    view is made of (``fkd.data.mixing.mixed_ground_truth``)."""

    images: torch.Tensor
    indices: "torch.Tensor | None"
    values: "torch.Tensor | None"
    labels: torch.Tensor
    image_index: torch.Tensor
    crop_ids: torch.Tensor
    embedding: "torch.Tensor | None" = None
    scales: "torch.Tensor | None" = None
    partner_labels: "torch.Tensor | None" = None
    own_share: "torch.Tensor | None" = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def _map(self, fn) -> "CropBatch":
        return CropBatch(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name)) for f in fields(self)})

    def pin_memory(self) -> "CropBatch":
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device) -> "CropBatch":
        return self._map(lambda t: t.to(device, non_blocking=True))


def collate_crops(samples: list[CropSample]) -> CropBatch:
    return CropBatch(images=torch.cat([s.images for s in samples]), **collate_targets(samples))


def collate_targets(samples: "Sequence[Any]") -> dict[str, "torch.Tensor | None"]:
    """The non-pixel fields of a batch from samples carrying ``MultiCropDataset.targets``: payload
    rows, crop ids and pair fields concatenated, labels repeated per crop."""
    n = [len(s.crop_ids) for s in samples]
    return {
        **{name: None if getattr(samples[0], name) is None else torch.cat([getattr(s, name) for s in samples])
           for name in (*PAYLOAD_FIELDS, *PAIR_FIELDS)},
        "labels": torch.repeat_interleave(torch.tensor([s.label for s in samples], dtype=torch.int64), torch.tensor(n)),
        "image_index": torch.tensor([s.index for s in samples], dtype=torch.int64),
        "crop_ids": torch.cat([s.crop_ids for s in samples]),
    }


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (shuffled by seed + epoch, split into disjoint per-rank parts,
    padded to equal length) yielding (epoch, index) so datasets in any worker know the epoch.
    Call ``set_epoch`` before each epoch. ``num_replicas`` and ``rank`` default to the initialized
    process group's, or, in a process without one, to the whole data set (where torch's raises)."""

    def __init__(self, dataset: Dataset, num_replicas: "int | None" = None, rank: "int | None" = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        alone = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        super().__init__(dataset, 1 if alone and num_replicas is None else num_replicas, 0 if alone and rank is None else rank,
                         shuffle, seed, drop_last)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return ((self.epoch, int(i)) for i in super().__iter__())
