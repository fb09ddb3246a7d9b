"""Mixup / CutMix for dense soft targets, reproducible from a ``torch.Generator``.

Why not ``timm.data.Mixup``: it needs integer targets (it builds one-hot labels itself), while FKD
mixes the stored soft labels, and it draws from NumPy's global RNG, so a resumed or multi-worker
run cannot replay it. This module follows timm's batch mode and box convention exactly, but draws
everything from a ``numpy.random.Generator`` seeded by one draw from the caller's torch generator.

Sample ``b`` is paired with sample ``B-1-b`` (the flipped batch order). timm's two modes:

- ``batch`` (timm's default): one draw for the whole batch: mixed or not, Mixup or CutMix, one
  ``lam`` and one box for every sample;
- ``elem``: a draw per sample, in batch order: each sample mixed or not, Mixup or CutMix, with its
  own ``lam`` and box; what fkd-labelgen's stored pairs draw per crop (``fkd.data.mixing``), so
  this is the mixing that matches them when online KD or linearly mixed stored labels are set beside
  them.

- Mixup: ``x' = lam * x + (1 - lam) * x.flip(0)`` with ``lam ~ Beta(mixup_alpha, mixup_alpha)``.
- CutMix: ``lam ~ Beta(cutmix_alpha, cutmix_alpha)`` sizes a box of side ``sqrt(1 - lam)`` times
  the image side around a uniform centre (or a ``cutmix_minmax`` box), clipped to the image; that
  box is pasted from the partner and ``lam`` becomes ``1 - box_area / (H * W)``, the true fraction
  of the image's own pixels.

Targets are mixed with the same ``lam`` (each sample's own in ``elem`` mode):
``y' = lam * y + (1 - lam) * y.flip(0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .mode_names import MIX_SCOPES

__all__ = ["Box", "MixInfo", "SoftTargetMixup", "cutmix_box"]

#: (top, bottom, left, right): rows top:bottom and columns left:right, bottom/right exclusive.
Box = tuple[int, int, int, int]
MixMode = Literal["none", "mixup", "cutmix"]


@dataclass(frozen=True)
class MixInfo:
    """What one call did, so tests and logs can check the exact ``lam`` and box."""

    mode: MixMode
    lam: float
    box: Box | None = None


def cutmix_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    lam: float,
    minmax: tuple[float, float] | None = None,
) -> tuple[Box, float]:
    """A CutMix box and the corrected ``lam = 1 - box_area / (height * width)``.

    Without ``minmax`` the box has sides ``cut = int(side * sqrt(1 - lam))`` around a uniform pixel
    ``c``: ``c - cut // 2`` (inclusive) to ``c + (cut + 1) // 2`` (exclusive), ``cut`` pixels for odd
    ``cut`` too, then clipped to the image: timm's ``rand_bbox`` as pinned (1.0.31; older timm
    releases used ``c + cut // 2``, one pixel short on odd sides). With ``minmax = (lo, hi)`` each
    side is a uniform fraction of the image side in ``[lo, hi)``, placed fully inside (timm's
    ``rand_bbox_minmax``, where ``lam`` is ignored).
    """
    if minmax is None:
        ratio = float(np.sqrt(1.0 - lam))
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width)
    else:
        lo, hi = minmax
        cut_h = int(rng.integers(int(height * lo), int(height * hi)))
        cut_w = int(rng.integers(int(width * lo), int(width * hi)))
        top = int(rng.integers(0, height - cut_h + 1))
        left = int(rng.integers(0, width - cut_w + 1))
        bottom, right = top + cut_h, left + cut_w
    area = (bottom - top) * (right - left)
    return (top, bottom, left, right), 1.0 - area / float(height * width)


@dataclass
class SoftTargetMixup:
    """Mixup/CutMix of images and dense targets (soft labels or one-hot), timm-compatible.

    ``prob``: chance to mix a batch (a sample, in ``elem`` mode) at all. ``switch_prob``: chance of
    CutMix rather than Mixup when both alphas are > 0. An alpha of 0 disables that kind
    (``cutmix_minmax`` enables CutMix on its own, as in timm). ``mode``: ``batch`` or ``elem``
    (``MIX_SCOPES``). Inputs are not modified; ``last`` holds the latest call's ``MixInfo``: one for
    the batch, or in ``elem`` mode a tuple of one per sample.
    """

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    cutmix_minmax: tuple[float, float] | None = None
    mode: str = "batch"
    last: "MixInfo | tuple[MixInfo, ...] | None" = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(
                f"mixup_alpha and cutmix_alpha must be >= 0; got {self.mixup_alpha}, {self.cutmix_alpha}"
            )
        for name in ("prob", "switch_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]; got {value}")
        if self.mode not in MIX_SCOPES:
            raise ValueError(f"mode must be one of {', '.join(MIX_SCOPES)}; got {self.mode!r}")
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            if not 0.0 < lo < hi <= 1.0:
                raise ValueError(f"cutmix_minmax must satisfy 0 < min < max <= 1; got {self.cutmix_minmax}")
            # timm's convention: a min/max box replaces the Beta-sized box, so CutMix is on.
            self.cutmix_alpha = self.cutmix_alpha or 1.0

    @property
    def enabled(self) -> bool:
        """False when the mixer can never change a batch (the trainer can skip it)."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @property
    def last_lam(self) -> float | None:
        """``lam`` of the latest call in ``batch`` mode (1.0 when it did not mix), None before the
        first call (in ``elem`` mode each sample's is in ``last``)."""
        if isinstance(self.last, tuple):
            raise ValueError("last_lam: an elem-mode call has a lam per sample (see last)")
        return None if self.last is None else self.last.lam

    def __call__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix a batch; ``generator`` (on the CPU) makes it reproducible, None uses torch's default.

        Exactly one draw is taken from ``generator`` per call, whatever happens, so the trainer's
        random stream does not depend on whether a batch was mixed.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
        if targets.ndim != 2 or targets.shape[0] != images.shape[0] or not targets.dtype.is_floating_point:
            raise ValueError(
                f"targets must be dense float (B, num_classes) with B={images.shape[0]}; "
                f"got {targets.dtype} {tuple(targets.shape)} (one-hot encode class indices first)"
            )
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
        rng, (height, width) = np.random.default_rng(seed), images.shape[-2:]
        if self.mode == "batch":
            self.last = self._draw(rng, height, width)
            return self._apply(images, targets, self.last)
        self.last = tuple(self._draw(rng, height, width) for _ in range(images.shape[0]))
        return self._apply_each(images, targets, self.last)

    def _draw(self, rng: np.random.Generator, height: int, width: int) -> MixInfo:
        if not self.enabled or rng.random() >= self.prob:
            return MixInfo("none", 1.0)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if not use_cutmix:
            return MixInfo("mixup", lam)
        box, lam = cutmix_box(rng, height, width, lam, self.cutmix_minmax)
        return MixInfo("cutmix", lam, box)

    @staticmethod
    def _apply(
        images: torch.Tensor, targets: torch.Tensor, info: MixInfo
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if info.mode == "none":
            return images, targets
        lam = info.lam
        if info.mode == "mixup":
            mixed = images * lam + images.flip(0) * (1.0 - lam)
        else:
            top, bottom, left, right = info.box  # type: ignore[misc]
            mixed = images.clone()
            mixed[:, :, top:bottom, left:right] = images.flip(0)[:, :, top:bottom, left:right]
        return mixed, targets * lam + targets.flip(0) * (1.0 - lam)

    @staticmethod
    def _apply_each(
        images: torch.Tensor, targets: torch.Tensor, infos: tuple[MixInfo, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``elem`` mode: sample ``b`` mixed with sample ``B-1-b`` by its own ``MixInfo``, in a few
        whole-batch operations (it runs every training step). Mixup weighs every sample, 1 and 0
        where it does not apply, and CutMix pastes through a per-sample box mask: the same values as
        ``_apply``'s per-sample formulas, bit for bit (``x * 1 + y * 0 == x``)."""
        def column(values: list[float], like: torch.Tensor) -> torch.Tensor:
            return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *[1] * (like.ndim - 1))

        mix = [i.lam if i.mode == "mixup" else 1.0 for i in infos]
        partners = images.flip(0)
        mixed = images * column(mix, images) + partners * column([1.0 - m for m in mix], images)
        boxes = torch.tensor([i.box if i.mode == "cutmix" else (0, 0, 0, 0) for i in infos], device=images.device)
        rows, cols = (torch.arange(n, device=images.device) for n in images.shape[-2:])
        inside = ((rows >= boxes[:, :1]) & (rows < boxes[:, 1:2]))[:, :, None] & ((cols >= boxes[:, 2:3]) & (cols < boxes[:, 3:]))[:, None, :]
        mixed = torch.where(inside[:, None], partners, mixed)
        lam = [i.lam for i in infos]
        return mixed, targets * column(lam, targets) + targets.flip(0) * column([1.0 - v for v in lam], targets)
