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
(``tests/test_device_replay.py``). ``cut_crops`` takes the device as an argument, so the tests run
the very same arithmetic on the CPU.

Per-crop augmentation (``--color-jitter``, ``--randaugment``) runs in the workers on cut crops, so it
is refused here rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .augment import CropAugment
from .crops import fixed_to_boxes, parse_interpolation
from .errors import ReplayError
from .multicrop import CropBatch, CropTargets, MultiCropDataset, collate_crops, collate_targets
from .plan import PAYLOAD_FIELDS, CropPlanner
from .sources import ImageSource

REPLAY_DEVICES = ("cpu", "cuda")


@dataclass
class UncutSample(CropTargets):
    """One decoded image (uint8 (3, H, W)) and its n crops as pixel boxes (n, 4) (top, left,
    height, width) and flips (n,), with their targets."""

    image: torch.Tensor = field(kw_only=True)
    boxes: torch.Tensor = field(kw_only=True)
    flips: torch.Tensor = field(kw_only=True)


class DecodeOnlyDataset(MultiCropDataset):
    """``MultiCropDataset`` that stops after decoding: same planner, same boxes, no pixel work."""

    def __init__(self, source: ImageSource, planner: CropPlanner, size: int, interpolation: str, seed: int = 0):
        super().__init__(source, planner, size, interpolation, augment=None, seed=seed)

    def __getitem__(self, key: "tuple[int, int]") -> UncutSample:  # type: ignore[override]
        epoch, index = key
        image, plan = self.decode(epoch, index)
        boxes = fixed_to_boxes(plan.boxes_fixed, *image.shape[-2:])
        flips = torch.from_numpy(np.asarray(plan.flips, dtype=bool))
        return UncutSample(image=image, boxes=torch.from_numpy(boxes), flips=flips, **self.targets(plan, index))


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

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def pin_memory(self) -> "UncutBatch":
        """Called by DataLoader(pin_memory=True); sizes and boxes stay pageable (read on the host)."""
        pinned = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("pixels", *PAYLOAD_FIELDS, "labels", "image_index", "crop_ids"):
            if pinned[name] is not None:
                pinned[name] = pinned[name].pin_memory()
        return UncutBatch(**pinned)

    def to(self, device: torch.device) -> CropBatch:
        """The crops cut on ``device`` (``cut_crops``) with the targets moved there: the
        ``CropBatch`` the worker path would have delivered."""
        crops = cut_crops(self.pixels, self.shapes, self.counts, self.boxes, self.flips, self.size, self.interpolation, device)
        rest = {name: getattr(self, name) for name in (*PAYLOAD_FIELDS, "labels", "image_index", "crop_ids")}
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
        **collate_targets(samples),
    )


def cut_crops(
    pixels: torch.Tensor,
    shapes: torch.Tensor,
    counts: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    interpolation: "str | InterpolationMode",
    device: "torch.device | str",
) -> torch.Tensor:
    """Cut, resize (antialiased, in float32: ``_resize``) and flip every crop of a batch on ``device``.

    ``pixels``: the images' uint8 (3, H, W) pixels, flattened and concatenated; ``shapes`` (B, 2)
    their (H, W); ``counts`` (B,) crops per image; ``boxes`` (N, 4) pixel boxes (top, left,
    height, width) and ``flips`` (N,) in image order. Returns uint8 (N, 3, size, size) on ``device``.
    Boxes and sizes are read on the host (no device synchronization); one copy moves the pixels.
    """
    device = torch.device(device)
    mode = parse_interpolation(interpolation)
    pixels = pixels.to(device, non_blocking=True)
    out = torch.empty((boxes.shape[0], 3, size, size), dtype=torch.float32, device=device)
    offset = row = 0
    for (height, width), count in zip(shapes.tolist(), counts.tolist()):
        image = pixels[offset : offset + 3 * height * width].view(3, height, width)
        offset += 3 * height * width
        for top, left, h, w in boxes[row : row + count].tolist():
            out[row] = _resize(image[:, top : top + h, left : left + w].float(), size, mode)
            row += 1
    flip = flips.to(device, non_blocking=True).view(-1, 1, 1, 1)
    out = torch.where(flip, out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _resize(crop: torch.Tensor, size: int, mode: InterpolationMode) -> torch.Tensor:
    """Antialiased resize in two passes, columns then rows, each rounded and clamped to 0..255: the
    order and the uint8 intermediate of torch's CPU uint8 kernel, which bicubic overshoot would
    otherwise tell apart (tens of grey levels at sharp edges)."""
    wide = TF.resize(crop, [crop.shape[-2], size], interpolation=mode, antialias=True).round_().clamp_(0, 255)
    return TF.resize(wide, [size, size], interpolation=mode, antialias=True)


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
