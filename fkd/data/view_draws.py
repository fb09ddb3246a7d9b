"""The random draws of a reinforced store's views, one component at a time.

Every component has its own random stream, a generator determined by
(seed, image id, component) alone, apart from the crop sampler's (``fkd.data.crops.image_rng``), so
the boxes, flips and ids of a store are the same bits with or without augmentation, and any worker
on any node draws the same numbers. Within a component the M crops' values are drawn together, in
crop order. The semantics follow timm (1.0.31):

- RandAugment (``--randaugment``, colour ops only): per layer an op uniformly among the spec's ops
  (with replacement), applied with probability p, at magnitude m (with ``mstd``: normal noise, or
  uniform in [0, m] above 100), clipped to [0, mmax]; increasing enhance ops flip their sign with
  probability 1/2. Magnitudes are stored as ``round(m / mmax * 255)`` and applied as stored.
- Colour jitter (``--color-jitter s``): brightness, contrast and saturation factors uniform among
  256 levels of [max(0, 1 - s), 1 + s], in a uniformly drawn order (torchvision's ColorJitter).
- Random erasing (``--reprob p``): timm's RandomErasing per crop (probability p, 1 to ``recount``
  boxes, area 2 % to 1/3 of the crop split between them, aspect 0.3 to 3.3, 10 tries each), its
  boxes drawn on the crop at the teacher's input size and stored as fractions of it.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from ..store.views import NEGATED, RandAugmentSpec, ViewSpec
from . import photometric
from .crops import boxes_to_fixed, fixed_to_boxes

ERASE_AREA = (0.02, 1 / 3)
ERASE_ASPECT = 0.3
ERASE_TRIES = 10


def component_rng(seed: int, image_id: str, component: str, crop: "int | None" = None) -> np.random.Generator:
    """A generator of (seed, image id, component[, crop]) only: separate from the crop sampler's stream."""
    key = f"{int(seed)}\x00{image_id}\x00{component}" + ("" if crop is None else f"\x00{int(crop)}")
    digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))


def sample_randaugment(spec: RandAugmentSpec, rng: np.random.Generator, num_crops: int) -> tuple[np.ndarray, np.ndarray]:
    """(ops, magnitudes) uint8 (M, L) as ``ViewParams`` stores them."""
    shape = (num_crops, spec.num_layers)
    op = rng.integers(0, len(spec.ops), size=shape)
    applied = rng.random(shape) <= spec.prob
    if math.isinf(spec.magnitude_std):
        magnitude = rng.uniform(0.0, spec.magnitude, size=shape)
    elif spec.magnitude_std > 0:
        magnitude = rng.normal(spec.magnitude, spec.magnitude_std, size=shape)
    else:
        magnitude = np.full(shape, float(spec.magnitude))
    negated = rng.random(shape) > 0.5
    signed = np.isin(op, [i for i, name in enumerate(spec.ops) if name in photometric.SIGNED_OPS])
    codes = np.where(applied, op + 1 + np.where(signed & negated, NEGATED, 0), 0).astype(np.uint8)
    mags = np.where(applied, np.rint(np.clip(magnitude, 0.0, spec.upper) / spec.upper * 255), 0).astype(np.uint8)
    return codes, mags


def sample_jitter(strength: float, rng: np.random.Generator, num_crops: int) -> np.ndarray:
    """uint8 (M, 4): three factor codes and the order code."""
    codes = rng.integers(0, 256, size=(num_crops, 3))
    order = rng.integers(0, len(photometric.JITTER_ORDERS), size=(num_crops, 1))
    return np.concatenate([codes, order], axis=1).astype(np.uint8)


def sample_erasing(spec: ViewSpec, rng: np.random.Generator, num_crops: int, size: tuple[int, int]) -> np.ndarray:
    """uint16 (M, recount, 4): timm's RandomErasing boxes on crops of ``size``, as fractions of it."""
    height, width = size
    m, r = num_crops, spec.recount
    erase = rng.random(m) <= spec.reprob
    count = rng.integers(1, r + 1, size=m) if r > 1 else np.ones(m, dtype=np.int64)
    area = rng.uniform(*ERASE_AREA, size=(m, r, ERASE_TRIES)) * (height * width) / count[:, None, None]
    aspect = np.exp(rng.uniform(math.log(ERASE_ASPECT), math.log(1 / ERASE_ASPECT), size=(m, r, ERASE_TRIES)))
    h = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    w = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    fits = (w < width) & (h < height)
    first = np.argmax(fits, axis=2)[..., None]
    found = np.take_along_axis(fits, first, axis=2)[..., 0] & erase[:, None] & (np.arange(r)[None] < count[:, None])
    h, w = np.take_along_axis(h, first, axis=2)[..., 0], np.take_along_axis(w, first, axis=2)[..., 0]
    top = np.floor(rng.random((m, r)) * (height - h + 1)).astype(np.int64)
    left = np.floor(rng.random((m, r)) * (width - w + 1)).astype(np.int64)
    boxes = np.where(found[..., None], np.stack([top, left, h, w], axis=-1), 0)
    return boxes_to_fixed(boxes, height, width)


def decode_boxes(fixed: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stored box fractions (..., 4) -> pixel boxes at ``size``; rows stored with height or width 0
    (no box) come back with height 0."""
    present = (fixed[..., 2] > 0) & (fixed[..., 3] > 0)
    boxes = fixed_to_boxes(fixed, *size)
    boxes[~present] = 0
    return boxes
