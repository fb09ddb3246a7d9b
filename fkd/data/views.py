"""The view a reinforced store's label describes: each crop's colour augmentation and erasing,
drawn at generation and replayed from the stored numbers (``fkd.store.views``), never re-sampled.

Drawing: ``sample_views`` composes the components of ``view_draws`` (and the pairs of ``mixing``).

Rendering (``ViewRenderer.augment``): jitter, then the RandAugment layers, then erasing, on the
uint8 crop (``fkd.data.photometric``). The erased pixels are ``round(255 * (mean + std * z))``
clamped to 0..255 (timm's fill in normalized units, with the store's mean/std, mapped back to
pixels): z = 0 for ``const``, one normal draw per channel and box for ``rand``, one per pixel for
``pixel``, drawn in box order from a generator of (seed, image id, crop index); so an erased view is
exactly reproducible at any size (its noise is drawn at the size it is rendered at).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..store.views import NEGATED, OP_MASK, ViewParams, ViewSpec
from . import photometric
from .errors import ReplayError
from .mixing import sample_pairs
from .view_draws import component_rng, decode_boxes, sample_erasing, sample_jitter, sample_randaugment

if TYPE_CHECKING:
    from ..store import StoreMeta


def sample_views(
    spec: ViewSpec, seed: int, image_id: str, num_crops: int, size: tuple[int, int], index: int, num_images: int
) -> ViewParams:
    """The augmentation of an image's M crops (image ``index`` of ``num_images``, its crops cut at
    ``size``, the teacher's input size): what fkd-labelgen applies and stores."""
    params = ViewParams()
    ra = spec.randaugment_spec
    if ra is not None:
        params.ra_ops, params.ra_mags = sample_randaugment(ra, component_rng(seed, image_id, "randaugment"), num_crops)
    if spec.color_jitter > 0:
        params.jitter = sample_jitter(spec.color_jitter, component_rng(seed, image_id, "jitter"), num_crops)
    if spec.reprob > 0:
        params.erase = sample_erasing(spec, component_rng(seed, image_id, "erase"), num_crops, size)
    if spec.mixes:
        pairs = sample_pairs(spec, seed, image_id, index, num_images, num_crops, size)
        params.mix_image, params.mix_crop, params.mix_lam, params.mix_box = pairs
    return params


@dataclass(frozen=True)
class ViewRenderer:
    """Renders a reinforced store's crops as its labels describe them (picklable: DataLoader
    workers and the device path carry it). ``seed``, ``mean``, ``std``: the store's."""

    spec: ViewSpec
    seed: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, meta: "StoreMeta") -> "ViewRenderer | None":
        """The renderer of a store's views; None for a plain store."""
        if meta.augmentation is None:
            return None
        return cls(meta.augmentation, meta.seed, tuple(meta.mean), tuple(meta.std))

    def augment(self, crops: torch.Tensor, params: ViewParams, image_id: "str | Sequence[str]",
                crop_ids: "np.ndarray | Sequence[int]") -> torch.Tensor:
        """Crops (n, 3, H, W) uint8 (any device) with their stored jitter, RandAugment and erasing
        (``params``: their n rows; ``image_id`` theirs, or one per row; ``crop_ids``: their indices
        among their image's M, for the erasing noise)."""
        out = []
        ra = self.spec.randaugment_spec
        ids = [image_id] * len(crops) if isinstance(image_id, str) else list(image_id)
        for row, crop in enumerate(crops):
            if params.jitter is not None:
                crop = photometric.apply_jitter(crop, self.jitter_factors(params.jitter[row]), int(params.jitter[row, 3]))
            if params.ra_ops is not None:
                for code, mag in zip(params.ra_ops[row].tolist(), params.ra_mags[row].tolist()):
                    if code:
                        name = ra.ops[(code & OP_MASK) - 1]
                        crop = photometric.apply_ra(crop, name, mag * ra.upper / 255, bool(code & NEGATED))
            if params.erase is not None:
                crop = self.erase(crop, params.erase[row], ids[row], int(crop_ids[row]))
            out.append(crop)
        return torch.stack(out) if out else crops

    def jitter_factors(self, codes: np.ndarray) -> tuple[float, float, float]:
        strength = self.spec.color_jitter
        low, high = max(0.0, 1.0 - strength), 1.0 + strength
        return tuple(low + int(c) * (high - low) / 255 for c in codes[:3])  # type: ignore[return-value]

    def erase(self, crop: torch.Tensor, fixed: np.ndarray, image_id: str, crop_id: int) -> torch.Tensor:
        """``crop`` with its stored erasing boxes filled (see the module docstring)."""
        boxes = decode_boxes(fixed, tuple(crop.shape[-2:]))
        if not boxes[:, 2].any():
            return crop
        rng = component_rng(self.seed, image_id, "erase-noise", crop_id)
        crop = crop.clone()
        mean, std = np.array(self.mean).reshape(3, 1, 1), np.array(self.std).reshape(3, 1, 1)
        for top, left, h, w in boxes.tolist():
            if not h:
                continue
            shape = {"pixel": (3, h, w), "rand": (3, 1, 1), "const": None}[self.spec.remode]
            z = 0.0 if shape is None else rng.standard_normal(shape)
            fill = np.broadcast_to(np.clip(np.rint(255 * (mean + std * z)), 0, 255), (3, h, w)).astype(np.uint8)
            crop[:, top : top + h, left : left + w] = torch.from_numpy(np.ascontiguousarray(fill)).to(crop.device)
        return crop



def check_online_augment(meta: "StoreMeta", source: object, per_crop: "list[str]", batch_mixing: bool) -> None:
    """Refuse augmentation drawn in training on top of a reinforced store's stored augmentation, in
    one line: ``per_crop`` names the per-crop options given (``--randaugment``, ``--color-jitter``,
    ``--reprob``), ``batch_mixing`` whether batch-level Mixup/CutMix is on (refused only on a store
    that stores pairs: on the others it mixes stored labels as on a plain store)."""
    spec = meta.augmentation
    if spec is None:
        return
    if per_crop:
        raise ReplayError(
            f"{source} is a reinforced store ({spec.describe()}): each label describes its crop after that stored augmentation, "
            f"which training replays; {' and '.join(per_crop)} would change the crop after the teacher labelled it: drop "
            f"{'them' if len(per_crop) > 1 else 'it'}, or make a store with the augmentation you want"
        )
    if batch_mixing and spec.mixes:
        raise ReplayError(
            f"{source} stores Mixup/CutMix pairs labelled by the teacher ({spec.describe()}): batch-level --mixup/--cutmix would mix "
            "those views again, with labels mixed linearly: drop --mixup and --cutmix (use --mixup 0)"
        )
