"""Seeded RandomResizedCrop sampling and exact replay.

Label generation and training must agree on the pixels behind every stored label. Both sides go
through this module: ``sample_crops`` draws M boxes + flips per image from (seed, image id) alone, so
any Ray worker on any node reproduces them; boxes are stored as fixed-point fractions of the image
size (``boxes_to_fixed``) and ``replay`` cuts the same pixels again with torchvision's
``resized_crop``.

Box convention (torchvision's): ``(top, left, height, width)`` in pixels of the original image.
Fixed point: ``round(v * 65535 / dim)`` with ``dim`` the image height for top/height and the width
for left/width. Decoding rounds back to the nearest pixel, which is exact for any image side up to
65535 pixels (the rounding error is at most ``dim / 131070 < 0.5`` pixel).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

FIXED_POINT_SCALE = 65535
"""Denominator of the stored box coordinates (uint16 full range)."""

DEFAULT_SCALE: tuple[float, float] = (0.08, 1.0)
DEFAULT_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)


@dataclass(frozen=True)
class CropParams:
    """How crops are drawn: RandomResizedCrop ranges plus the horizontal-flip probability."""

    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not (0.0 < lo <= hi <= 1.0):
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        rlo, rhi = self.ratio
        if not (0.0 < rlo <= rhi):
            raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not (0.0 <= self.flip_prob <= 1.0):
            raise ValueError(f"flip probability must be in [0, 1], got {self.flip_prob}")


@dataclass
class Crops:
    """M crops of one image: ``boxes`` (M, 4) int64 pixels (top, left, height, width), ``flips`` (M,)."""

    boxes: np.ndarray
    flips: np.ndarray


def image_rng(seed: int, image_id: str) -> np.random.Generator:
    """A generator determined by (seed, image id) only: independent of worker, order and process."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{image_id}".encode(), digest_size=16).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))


def sample_crops(
    image_id: str,
    height: int,
    width: int,
    num_crops: int,
    seed: int,
    params: CropParams = CropParams(),
) -> Crops:
    """Draw ``num_crops`` RandomResizedCrop boxes and flips for one image.

    Same rule as ``torchvision.transforms.RandomResizedCrop.get_params``: up to 10 tries of an area
    fraction uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``, keeping the first box
    that fits; otherwise the central crop with the ratio clamped to the range. Vectorized over the
    crops and driven by ``image_rng(seed, image_id)`` instead of torch's global RNG.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image {image_id!r} has an empty size {height}x{width}")
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    rng = image_rng(seed, image_id)
    area = height * width
    tries = 10
    log_ratio = (math.log(params.ratio[0]), math.log(params.ratio[1]))
    target_area = area * rng.uniform(params.scale[0], params.scale[1], size=(num_crops, tries))
    aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1], size=(num_crops, tries)))
    w = np.round(np.sqrt(target_area * aspect)).astype(np.int64)
    h = np.round(np.sqrt(target_area / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = np.argmax(fits, axis=1)
    ok = fits[np.arange(num_crops), first]
    h = h[np.arange(num_crops), first]
    w = w[np.arange(num_crops), first]

    # Central fallback crop (torchvision's rule), used where no try fitted.
    in_ratio = width / height
    if in_ratio < params.ratio[0]:
        fw, fh = width, int(round(width / params.ratio[0]))
    elif in_ratio > params.ratio[1]:
        fh, fw = height, int(round(height * params.ratio[1]))
    else:
        fw, fh = width, height
    h = np.where(ok, h, fh)
    w = np.where(ok, w, fw)
    u_top = rng.random(num_crops)
    u_left = rng.random(num_crops)
    top = np.where(ok, np.floor(u_top * (height - h + 1)).astype(np.int64), (height - h) // 2)
    left = np.where(ok, np.floor(u_left * (width - w + 1)).astype(np.int64), (width - w) // 2)
    flips = rng.random(num_crops) < params.flip_prob
    return Crops(np.stack([top, left, h, w], axis=1).astype(np.int64), flips)


def boxes_to_fixed(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel boxes (..., 4) -> uint16 fractions of the image size (see module docstring)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    dims = np.array([height, width, height, width], dtype=np.float64)
    if max(height, width) > FIXED_POINT_SCALE:
        raise ValueError(f"image sides above {FIXED_POINT_SCALE} pixels cannot be stored exactly")
    return np.round(boxes * FIXED_POINT_SCALE / dims).astype(np.uint16)


def fixed_to_boxes(fixed: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint16 fractions (..., 4) -> pixel boxes (top, left, height, width) for an image of this size.

    On the image the crops were drawn from this returns the original boxes exactly; on a resized
    copy it returns the corresponding region, clipped to stay inside the image and at least 1 px.
    """
    dims = np.array([height, width, height, width], dtype=np.float64)
    boxes = np.round(np.asarray(fixed, dtype=np.float64) * dims / FIXED_POINT_SCALE).astype(np.int64)
    boxes[..., 2] = np.clip(boxes[..., 2], 1, height)
    boxes[..., 3] = np.clip(boxes[..., 3], 1, width)
    boxes[..., 0] = np.clip(boxes[..., 0], 0, height - boxes[..., 2])
    boxes[..., 1] = np.clip(boxes[..., 1], 0, width - boxes[..., 3])
    return boxes


def parse_interpolation(name: "str | InterpolationMode") -> InterpolationMode:
    """'bilinear' / 'bicubic' / 'nearest' (timm's names) -> torchvision's enum."""
    if isinstance(name, InterpolationMode):
        return name
    try:
        return InterpolationMode(str(name).lower())
    except ValueError:
        choices = ", ".join(m.value for m in InterpolationMode)
        raise ValueError(f"unknown interpolation {name!r}; choose one of: {choices}") from None


def replay(
    image: torch.Tensor,
    box: "np.ndarray | tuple[int, int, int, int]",
    flip: bool,
    size: "int | tuple[int, int]",
    interpolation: "str | InterpolationMode" = "bilinear",
) -> torch.Tensor:
    """Cut pixel ``box`` (top, left, height, width) out of ``image`` (C, H, W), resize it to ``size``
    with antialiasing, and mirror it when ``flip``: the pixels the teacher saw for that crop."""
    top, left, h, w = (int(v) for v in box)
    size = [size, size] if isinstance(size, int) else list(size)
    out = TF.resized_crop(image, top, left, h, w, size, interpolation=parse_interpolation(interpolation), antialias=True)
    return TF.horizontal_flip(out) if flip else out


def replay_fixed(
    image: torch.Tensor,
    fixed_boxes: np.ndarray,
    flips: np.ndarray,
    size: "int | tuple[int, int]",
    interpolation: "str | InterpolationMode" = "bilinear",
) -> torch.Tensor:
    """Replay several stored (fixed-point) crops on ``image`` (C, H, W) -> (n, C, size, size)."""
    height, width = image.shape[-2:]
    boxes = fixed_to_boxes(fixed_boxes, height, width)
    return torch.stack([replay(image, b, bool(f), size, interpolation) for b, f in zip(boxes, flips)])
