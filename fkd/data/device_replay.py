"""``fkd-train --replay-device cuda``: DataLoader workers only decode; crops are cut on the device.

At ImageNet sizes, cutting and resizing n crops costs a worker more CPU than decoding the image
(``benchmarks/speed/loader.py --profile``). With this path a worker reads the label record, decodes
the image and copies it into the batch; the training process moves the batch to the GPU in one
pinned, non-blocking copy and cuts, resizes and flips the crops there, before Mixup, as part of
``batch.to(device)``: the training step is the same for both paths.

Same crops as the worker path as far as torch allows: the same planned boxes (``fixed_to_boxes`` on
the decoded image), flips and interpolation, resized with torchvision's antialiased ``resize``. The
one difference: CUDA has no uint8 resize kernel, so the device resizes in float32, in the two
rounded passes of the CPU's uint8 kernel, where the worker path uses that kernel's fixed-point
weights: a value moves by at most two grey levels, and under 2 % of them move at all
(``tests/test_device_replay.py``). The kernel (``device_crops.cut_crops``) takes the device as an
argument, so the tests run the very same arithmetic on the CPU.

Per-crop augmentation (``--color-jitter``, ``--randaugment``) runs in the workers on cut crops, so it
is refused here rather than silently dropped. A reinforced store's stored augmentation and pairs are
rendered on the device, after cutting (``device_views``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial

import numpy as np
import torch
from torchvision.transforms import InterpolationMode

from .augment import CropAugment
from .crops import fixed_to_boxes, parse_interpolation
from .device_crops import cut_crops
from .device_views import UncutViews, collate_views, render_views, uncut_views
from .errors import ReplayError
from .multicrop import PAIR_FIELDS, CropBatch, CropTargets, MultiCropDataset, collate_crops, collate_targets
from .plan import PAYLOAD_FIELDS, CropPlanner
from .sources import ImageSource

REPLAY_DEVICES = ("cpu", "cuda")
TARGET_FIELDS: tuple[str, ...] = (*PAYLOAD_FIELDS, *PAIR_FIELDS, "labels", "image_index", "crop_ids")
"""What a batch carries besides pixels, moved to the device as it is."""


@dataclass
class UncutSample(CropTargets):
    """One decoded image (uint8 (3, H, W)) and its n crops as pixel boxes (n, 4) (top, left,
    height, width) and flips (n,), with their targets; from a reinforced store also their views
    (stored augmentation, decoded partner images)."""

    image: torch.Tensor = field(kw_only=True)
    boxes: torch.Tensor = field(kw_only=True)
    flips: torch.Tensor = field(kw_only=True)
    views: "UncutViews | None" = field(default=None, kw_only=True)


class DecodeOnlyDataset(MultiCropDataset):
    """``MultiCropDataset`` that stops after decoding: same planner, same boxes, no pixel work."""

    def __init__(self, source: ImageSource, planner: CropPlanner, size: int, interpolation: str, seed: int = 0):
        super().__init__(source, planner, size, interpolation, augment=None, seed=seed)

    def __getitem__(self, key: "tuple[int, int]") -> UncutSample:  # type: ignore[override]
        epoch, index = key
        image, plan = self.decode(epoch, index)
        boxes = fixed_to_boxes(plan.boxes_fixed, *image.shape[-2:])
        flips = torch.from_numpy(np.asarray(plan.flips, dtype=bool))
        views = None if plan.views is None else uncut_views(self, plan, index)
        return UncutSample(image=image, boxes=torch.from_numpy(boxes), flips=flips, views=views, **self.targets(plan, index))


@dataclass
class UncutBatch:
    """B decoded images in one flat uint8 buffer (one pin, one host-to-device copy), their sizes
    (B, 2), crop counts (B,), and the B*n boxes and flips to cut; ``to`` yields the ``CropBatch``."""

    pixels: torch.Tensor
    shapes: torch.Tensor
    counts: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    indices: "torch.Tensor | None"
    values: "torch.Tensor | None"
    labels: torch.Tensor
    image_index: torch.Tensor
    crop_ids: torch.Tensor
    size: int
    interpolation: InterpolationMode
    embedding: "torch.Tensor | None" = None
    scales: "torch.Tensor | None" = None
    partner_labels: "torch.Tensor | None" = None
    own_share: "torch.Tensor | None" = None
    views: "UncutViews | None" = None

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def pin_memory(self) -> "UncutBatch":
        """Called by DataLoader(pin_memory=True); sizes and boxes stay pageable (read on the host)."""
        pinned = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("pixels", *TARGET_FIELDS):
            if pinned[name] is not None:
                pinned[name] = pinned[name].pin_memory()
        if self.views is not None:
            pinned["views"] = self.views.pin_memory()
        return UncutBatch(**pinned)

    def to(self, device: torch.device) -> CropBatch:
        """The crops cut on ``device`` (``cut_crops``; a reinforced store's then rendered there,
        ``render_views``) with the targets moved there: the ``CropBatch`` the worker path would have delivered."""
        crops = cut_crops(self.pixels, self.shapes, self.counts, self.boxes, self.flips, self.size, self.interpolation, device)
        if self.views is not None:
            crops = render_views(crops, self.crop_ids, self.views, self.size, self.interpolation, device)
        rest = {name: getattr(self, name) for name in TARGET_FIELDS}
        moved = {name: None if t is None else t.to(device, non_blocking=True) for name, t in rest.items()}
        return CropBatch(images=crops, **moved)


def collate_uncut(samples: Sequence[UncutSample], size: int, interpolation: "str | InterpolationMode") -> UncutBatch:
    return UncutBatch(
        pixels=torch.cat([s.image.reshape(-1) for s in samples]),
        shapes=torch.tensor([tuple(s.image.shape[-2:]) for s in samples], dtype=torch.int64),
        counts=torch.tensor([len(s.boxes) for s in samples], dtype=torch.int64),
        boxes=torch.cat([s.boxes for s in samples]),
        flips=torch.cat([s.flips for s in samples]),
        size=size,
        interpolation=parse_interpolation(interpolation),
        views=None if samples[0].views is None else collate_views([s.views for s in samples]),
        **collate_targets(samples),
    )


def training_dataset(
    replay_device: str,
    device: torch.device,
    source: ImageSource,
    planner: CropPlanner,
    size: int,
    interpolation: str,
    augment: "CropAugment | None",
    seed: int,
) -> tuple[MultiCropDataset, Callable]:
    """fkd-train's training dataset and collate function for ``--replay-device``: crops cut in the
    workers (cpu) or on the training device (cuda, refused without one or with per-crop augmentation)."""
    if replay_device == "cpu":
        return MultiCropDataset(source, planner, size, interpolation, augment, seed), collate_crops
    if replay_device != "cuda":
        raise ReplayError(f"--replay-device must be one of {', '.join(REPLAY_DEVICES)}, got {replay_device!r}")
    if device.type != "cuda":
        raise ReplayError(f"--replay-device cuda needs a CUDA training device (this run uses {device}); use --replay-device cpu")
    if augment is not None:
        raise ReplayError("--color-jitter and --randaugment (or an --aug-level's) run per crop in the DataLoader workers: use --replay-device cpu")
    return DecodeOnlyDataset(source, planner, size, interpolation, seed), partial(collate_uncut, size=size, interpolation=interpolation)
