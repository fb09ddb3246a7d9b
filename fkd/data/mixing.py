"""Mixup/CutMix pairs decided at generation: each stored crop mixed with another image's stored crop,
labelled by the teacher on the mixed view (instead of mixing two labels linearly, a label the
teacher never gave).

Drawing (``sample_pairs``, timm 1.0.31's per-element semantics): from the generator of (seed,
image id, "mix") come first the image's ``mix_partners`` partner images (distinct, never the image
itself), then per crop c: the partner image ``partners[c % mix_partners]``, a uniform crop of it,
whether the crop is mixed (probability ``mix_prob``), CutMix or Mixup (``mix_switch_prob`` when both
are on), lambda ~ Beta(alpha, alpha), and the CutMix box (timm's ``rand_bbox``: sides
``int(side * sqrt(1 - lambda))`` around a uniform centre, clipped to the crop) on the crop at the
teacher's input size. Few partner images per image keep the cost bounded: fkd-labelgen and training
decode each partner image once per image, not once per crop.

Rendering: the partner crop is the partner's own stored crop with its own stored augmentation
(``ViewRenderer.augment``; never mixed again). Mixup is exact integer arithmetic on uint8,
``(a * q + b * (65535 - q) + 32767) // 65535`` with q the stored lambda; CutMix pastes the partner's
pixels inside the stored box (decoded at the size the crop is rendered at). The crop's own share of
the view (``own_share``: q / 65535, or 1 - box area / crop area at that size) weighs its ground
truth against the partner's (``mixed_ground_truth``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from timm.data.mixup import one_hot

from ..store.views import FRACTION_SCALE, ViewParams, ViewSpec
from .crops import boxes_to_fixed
from .view_draws import component_rng, decode_boxes

PartnerCrops = Callable[[int, np.ndarray], torch.Tensor]
"""(partner image index, its crop indices) -> those crops rendered with their own augmentation."""


def partner_images(spec: ViewSpec, rng: np.random.Generator, index: int, num_images: int) -> np.ndarray:
    """The partner images of image ``index`` (store indices, distinct, never ``index``): the first
    draws of its "mix" stream, so fkd-labelgen's driver finds them without drawing the rest."""
    count = min(spec.mix_partners, num_images - 1)
    if count < 1:
        return np.zeros(0, dtype=np.int64)
    others = rng.choice(num_images - 1, size=count, replace=False)
    return others + (others >= index)


def image_partners(spec: ViewSpec, seed: int, image_id: str, index: int, num_images: int) -> np.ndarray:
    """``partner_images`` of one image, from its own stream."""
    return partner_images(spec, component_rng(seed, image_id, "mix"), index, num_images)


def sample_pairs(
    spec: ViewSpec, seed: int, image_id: str, index: int, num_images: int, num_crops: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mix_image uint32, mix_crop uint16, mix_lam uint16, mix_box uint16 (M, 4)) of an image's crops
    cut at ``size``, as ``ViewParams`` stores them (the partner fields 0 where a crop is not mixed)."""
    rng = component_rng(seed, image_id, "mix")
    partners = partner_images(spec, rng, index, num_images)
    m, (height, width) = num_crops, size
    partner_crop = rng.integers(0, num_crops, size=m)
    mixed = (rng.random(m) < spec.mix_prob) & (len(partners) > 0)
    switch = rng.random(m)
    lam_cut = rng.beta(spec.cutmix, spec.cutmix, size=m) if spec.cutmix > 0 else np.ones(m)
    lam_mix = rng.beta(spec.mixup, spec.mixup, size=m) if spec.mixup > 0 else np.ones(m)
    cy, cx = rng.integers(0, height, size=m), rng.integers(0, width, size=m)
    cutmix = (switch < spec.mix_switch_prob) if spec.mixup > 0 and spec.cutmix > 0 else np.full(m, spec.cutmix > 0)
    ratio = np.sqrt(1.0 - lam_cut)
    cut_h, cut_w = (height * ratio).astype(np.int64), (width * ratio).astype(np.int64)
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + (cut_h + 1) // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + (cut_w + 1) // 2, 0, width)
    box = np.stack([top, left, bottom - top, right - left], axis=1)
    box = np.where((mixed & cutmix)[:, None], box, 0)
    lam = np.where(mixed & ~cutmix, np.rint(lam_mix * FRACTION_SCALE), FRACTION_SCALE).astype(np.uint16)
    mix_box = boxes_to_fixed(box, height, width)
    mixed &= (lam < FRACTION_SCALE) | ((mix_box[:, 2] > 0) & (mix_box[:, 3] > 0))
    image = np.where(mixed, partners[np.arange(m) % max(len(partners), 1)] if len(partners) else 0, 0).astype(np.uint32)
    crop = np.where(mixed, partner_crop, 0).astype(np.uint16)
    return image, crop, lam, mix_box


def own_share(params: ViewParams, size: tuple[int, int]) -> np.ndarray:
    """float32 (n,): each crop's own share of its view rendered at ``size`` (1 where not mixed)."""
    height, width = size
    boxes = decode_boxes(params.mix_box, size)
    cut = 1.0 - boxes[:, 2] * boxes[:, 3] / float(height * width)
    share = np.where(boxes[:, 2] > 0, cut, params.mix_lam.astype(np.float64) / FRACTION_SCALE)
    return share.astype(np.float32)


def mix_crop(crop: torch.Tensor, partner: torch.Tensor, lam: int, fixed_box: np.ndarray) -> torch.Tensor:
    """One crop (3, H, W) uint8 mixed with ``partner`` by its stored lambda code or CutMix box."""
    box = decode_boxes(fixed_box[None], tuple(crop.shape[-2:]))[0]
    if box[2] > 0:
        top, left, h, w = box.tolist()
        out = crop.clone()
        out[:, top : top + h, left : left + w] = partner[:, top : top + h, left : left + w]
        return out
    mixed = crop.long() * lam + partner.long() * (FRACTION_SCALE - lam) + FRACTION_SCALE // 2
    return torch.div(mixed, FRACTION_SCALE, rounding_mode="floor").to(torch.uint8)


def render_pairs(crops: torch.Tensor, params: ViewParams, partner_crops: PartnerCrops) -> torch.Tensor:
    """Crops (n, 3, H, W) mixed with their stored partners' crops, fetched once per partner image."""
    mixed = params.mixed
    if mixed is None or not mixed.any():
        return crops
    out = crops.clone()
    for image in np.unique(params.mix_image[mixed]):
        rows = np.flatnonzero(mixed & (params.mix_image == image))
        wanted = np.unique(params.mix_crop[rows])
        fetched = partner_crops(int(image), wanted)
        for row in rows.tolist():
            partner = fetched[int(np.searchsorted(wanted, params.mix_crop[row]))]
            out[row] = mix_crop(crops[row], partner, int(params.mix_lam[row]), params.mix_box[row])
    return out


def mixed_ground_truth(labels: torch.Tensor, partner_labels: torch.Tensor, share: torch.Tensor, num_classes: int,
                       smoothing: float = 0.0) -> torch.Tensor:
    """The ground truth of mixed views (B*n, C): ``share * one_hot(label) + (1 - share) *
    one_hot(partner label)``, each one-hot smoothed as ``fkd.data.targets.one_hot_targets`` does."""
    off = smoothing / num_classes
    own = one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)
    other = one_hot(partner_labels, num_classes, on_value=1.0 - smoothing + off, off_value=off)
    weight = share.view(-1, 1).to(own.dtype)
    return own * weight + other * (1.0 - weight)
