"""What a reinforced store (format version 6) keeps besides box and flip: each crop's augmentation.

FKD stores a box and a flip per crop, so anything else a student's recipe does to a crop happens
after the teacher spoke. A reinforced store (Apple's "dataset reinforcement", done for any data,
teacher and student) decides the rest at generation too, labels the augmented (and mixed) view,
and keeps the decisions with the label, as small integers that replay exactly:

- ``ViewSpec``: the store's augmentation settings (metadata ``augmentation``), in fkd-train's
  option names: a timm RandAugment spec (colour ops only), colour jitter, random erasing, and
  Mixup/CutMix pairs with another image's stored crop.
- ``ViewParams``: the per-crop decisions, arrays with a leading crop axis (M, or n once chosen).
- ``view_fields``: their byte layout in a record, after the payload (``fkd.store.layout``).

What the numbers mean (how they are drawn and applied) is ``fkd.data.views`` and
``fkd.data.mixing``; docs/FORMAT.md specifies both for other tools. Kept free of torch and timm:
the store reads them at every open.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

LEVEL_DENOM = 10.0
"""timm's magnitude scale: magnitude M is the fraction M / 10 of each op's argument range."""
RA_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness",
)
"""timm RandAugment's colour ops, in timm's order (its ``_RAND_TRANSFORMS`` without the geometric ops)."""
RA_OPS_INCREASING: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
    "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
)
"""The same with ``inc1`` (timm's ``_RAND_INCREASING_TRANSFORMS``): severity grows with magnitude."""
ERASE_MODES: tuple[str, ...] = ("const", "rand", "pixel")
MAX_LAYERS = 16
MAX_ERASE_COUNT = 16
MAX_PARTNERS = 64
FRACTION_SCALE = 65535
"""Denominator of the stored fractions (erasing and CutMix boxes, Mixup's lambda): uint16 full range."""
NEGATED = 0x80
"""Bit 7 of a stored op code: the op's argument was negated (timm's random sign of the increasing enhance ops)."""
OP_MASK = NEGATED - 1
"""The op code's other bits: 0 = layer skipped, else 1 + the op's index."""


@dataclass(frozen=True)
class RandAugmentSpec:
    """A timm RandAugment string (``rand-m9-n2-mstd0.5-inc1``), parsed as timm parses it: ``m``
    magnitude (default 10), ``n`` layers (2), ``p`` probability of each layer (0.5), ``mstd`` std of
    the magnitude noise (above 100: uniform in [0, m]), ``mmax`` upper bound (default 10), ``inc``
    the increasing op set. Transform sets (``t...``) are refused: the ops are timm's colour ops."""

    text: str
    magnitude: int = 10
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: "int | None" = None
    increasing: bool = False

    @classmethod
    def parse(cls, text: str) -> "RandAugmentSpec":
        sections = str(text).split("-")
        if sections[0] != "rand":
            raise ValueError(f"{text!r} is not a timm RandAugment string like 'rand-m9-mstd0.5'")
        values: dict[str, Any] = {}
        for section in sections[1:]:
            if section.startswith("t"):
                raise ValueError(f"{text!r}: transform sets ('{section}') are not supported: the ops are timm's colour ops")
            parts = re.split(r"(\d.*)", section)
            if len(parts) < 2:  # timm skips sections without a number
                continue
            key, value = parts[:2]
            try:
                if key == "mstd":
                    values["magnitude_std"] = math.inf if float(value) > 100 else float(value)
                elif key == "mmax":
                    values["magnitude_max"] = int(value)
                elif key == "inc":
                    values["increasing"] = bool(int(value))
                elif key in ("m", "n"):
                    values["magnitude" if key == "m" else "num_layers"] = int(value)
                elif key == "p":
                    values["prob"] = float(value)
                else:
                    raise ValueError(f"unknown section {section!r}")
            except ValueError as exc:
                raise ValueError(f"{text!r}: {exc}") from None
        spec = cls(str(text), **values)
        if not 1 <= spec.num_layers <= MAX_LAYERS or spec.magnitude < 0 or not 0 <= spec.prob <= 1 or spec.magnitude_std < 0 or (
            spec.magnitude_max is not None and spec.magnitude_max < 1
        ):
            raise ValueError(f"{text!r}: needs 1 <= n <= {MAX_LAYERS}, m >= 0, 0 <= p <= 1, mstd >= 0, mmax >= 1")
        return spec

    @property
    def ops(self) -> tuple[str, ...]:
        return RA_OPS_INCREASING if self.increasing else RA_OPS

    @property
    def upper(self) -> float:
        """The largest magnitude (timm's ``mmax``, default 10): stored magnitudes are fractions of it."""
        return float(self.magnitude_max or LEVEL_DENOM)


@dataclass(frozen=True)
class ViewSpec:
    """A reinforced store's augmentation (metadata ``augmentation``), named as fkd-train's options.

    ``randaugment``: timm spec, colour ops only; ``color_jitter``: brightness/contrast/saturation
    strength; ``reprob``/``remode``/``recount``: timm's random erasing; ``mixup``/``cutmix``: Beta
    alphas of the pairs (0: off), ``mix_prob`` the chance a crop is mixed, ``mix_switch_prob`` the
    chance of CutMix when both are on (timm's), ``mix_partners`` how many other images an image's
    crops are paired with (each costs a decode per image, in fkd-labelgen and in training).
    """

    randaugment: "str | None" = None
    color_jitter: float = 0.0
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    mix_partners: int = 1

    def __post_init__(self) -> None:
        for name in ("color_jitter", "reprob", "mixup", "cutmix", "mix_prob", "mix_switch_prob"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"augmentation {name} must be a number >= 0, got {value!r}")
        for name in ("reprob", "mix_prob", "mix_switch_prob"):
            if getattr(self, name) > 1:
                raise ValueError(f"augmentation {name} must be in [0, 1], got {getattr(self, name)}")
        for name, top in (("recount", MAX_ERASE_COUNT), ("mix_partners", MAX_PARTNERS)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ValueError(f"augmentation {name} must be an integer in 1..{top}, got {value!r}")
        if self.remode not in ERASE_MODES:
            raise ValueError(f"augmentation remode must be one of {list(ERASE_MODES)}, got {self.remode!r}")
        if self.randaugment is not None:
            self.randaugment_spec  # noqa: B018 - parses, raising ValueError for a bad spec

    @property
    def randaugment_spec(self) -> "RandAugmentSpec | None":
        return None if not self.randaugment else RandAugmentSpec.parse(self.randaugment)

    @property
    def mixes(self) -> bool:
        """Crops are paired with another image's crop (Mixup and/or CutMix)."""
        return self.mix_prob > 0 and (self.mixup > 0 or self.cutmix > 0)

    @property
    def active(self) -> bool:
        return bool(self.randaugment) or self.color_jitter > 0 or self.reprob > 0 or self.mixes

    def describe(self) -> str:
        """One line for ``fkd-labels info`` and messages, e.g. ``randaugment rand-m9-mstd0.5 (colour ops); mixup 0.8 ...``."""
        parts = []
        if self.randaugment:
            parts.append(f"randaugment {self.randaugment} (colour ops)")
        if self.color_jitter:
            parts.append(f"color-jitter {self.color_jitter:g}")
        if self.reprob:
            parts.append(f"random erasing p={self.reprob:g} {self.remode} x1..{self.recount}")
        if self.mixes:
            kinds = " + ".join(f"{name} {alpha:g}" for name, alpha in (("mixup", self.mixup), ("cutmix", self.cutmix)) if alpha)
            switch = f", switch {self.mix_switch_prob:g}" if self.mixup and self.cutmix else ""
            parts.append(f"{kinds} pairs (p={self.mix_prob:g}{switch}, {self.mix_partners} partner image(s) per image)")
        return "; ".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "ViewSpec":
        if not isinstance(data, dict):
            raise ValueError(f"augmentation must be an object, got {data!r}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"augmentation has unknown fields {unknown}")
        return cls(**data)


VIEW_NAMES: tuple[str, ...] = ("ra_ops", "ra_mags", "jitter", "erase", "mix_image", "mix_crop", "mix_lam", "mix_box")


@dataclass
class ViewParams:
    """Per-crop augmentation decisions (leading axis: crops), None where the spec has no such step.

    ``ra_ops`` (L,) uint8: 0 = layer skipped, else 1 + the op's index in the spec's op list, bit 7
    set when its argument is negated; ``ra_mags`` (L,) uint8: magnitude as ``code * upper / 255``;
    ``jitter`` (4,) uint8: brightness, contrast and saturation factors as ``lo + code * (hi - lo) /
    255`` on [max(0, 1 - s), 1 + s], then the order (index of the permutation of the three, in
    ``itertools.permutations`` order); ``erase`` (R, 4) uint16: boxes (top, left, height, width) as
    fractions of the crop (a box of height 0 erases nothing); ``mix_image`` uint32 and ``mix_crop``
    uint16: the partner's store index and crop; ``mix_lam`` uint16: Mixup's lambda (the crop's own
    share) as a fraction, 65535 when not mixed by Mixup; ``mix_box`` (4,) uint16: the CutMix box
    (top, left, height, width) pasted from the partner, as fractions (height 0: no CutMix).
    """

    ra_ops: "np.ndarray | None" = None
    ra_mags: "np.ndarray | None" = None
    jitter: "np.ndarray | None" = None
    erase: "np.ndarray | None" = None
    mix_image: "np.ndarray | None" = None
    mix_crop: "np.ndarray | None" = None
    mix_lam: "np.ndarray | None" = None
    mix_box: "np.ndarray | None" = None

    def take(self, rows: "np.ndarray | slice") -> "ViewParams":
        """The decisions of some crops (a chosen subset, in that order)."""
        return ViewParams(**{name: None if (a := getattr(self, name)) is None else a[rows] for name in VIEW_NAMES})

    def arrays(self) -> tuple["np.ndarray | None", ...]:
        return tuple(getattr(self, name) for name in VIEW_NAMES)

    @property
    def mixed(self) -> "np.ndarray | None":
        """(n,) bool: which crops are mixed with a partner (None: the store pairs nothing)."""
        if self.mix_lam is None:
            return None
        return (self.mix_lam < FRACTION_SCALE) | ((self.mix_box[:, 2] > 0) & (self.mix_box[:, 3] > 0))

    @classmethod
    def concat(cls, params: "list[ViewParams]") -> "ViewParams":
        """Rows of several crops' decisions, one after the other (batches of crops from many images)."""
        return cls(**{name: None if getattr(params[0], name) is None else np.concatenate([getattr(p, name) for p in params])
                      for name in VIEW_NAMES})

    @classmethod
    def stack(cls, params: "list[ViewParams]") -> "ViewParams":
        """Per-image decisions (M, ...) stacked to (N, M, ...), for ``compress_records``."""
        return cls(**{name: None if getattr(params[0], name) is None else np.stack([getattr(p, name) for p in params]) for name in VIEW_NAMES})


def view_fields(spec: "ViewSpec | None") -> tuple[tuple[str, np.dtype, tuple[int, ...]], ...]:
    """(name, little-endian dtype, per-crop shape) of the fields a record of ``spec`` keeps, in
    record order (``VIEW_NAMES`` order, the absent ones left out)."""
    if spec is None:
        return ()
    u8, u16, u32 = np.dtype("u1"), np.dtype("<u2"), np.dtype("<u4")
    out: list[tuple[str, np.dtype, tuple[int, ...]]] = []
    ra = spec.randaugment_spec
    if ra is not None:
        out += [("ra_ops", u8, (ra.num_layers,)), ("ra_mags", u8, (ra.num_layers,))]
    if spec.color_jitter > 0:
        out.append(("jitter", u8, (4,)))
    if spec.reprob > 0:
        out.append(("erase", u16, (spec.recount, 4)))
    if spec.mixes:
        out += [("mix_image", u32, ()), ("mix_crop", u16, ()), ("mix_lam", u16, ()), ("mix_box", u16, (4,))]
    return tuple(out)


def view_problems(params: ViewParams, spec: ViewSpec, num_images: int, index: int) -> list[str]:
    """Stored augmentation no writer produces (``fkd-labels verify``): op codes beyond the spec's ops,
    boxes outside the crop, a partner that is the image itself or not in the store."""
    problems = []
    ra = spec.randaugment_spec
    if params.ra_ops is not None and ra is not None and int((params.ra_ops & OP_MASK).max(initial=0)) > len(ra.ops):
        problems.append(f"RandAugment op codes beyond the spec's {len(ra.ops)} ops")
    if params.jitter is not None and int(params.jitter[:, 3].max(initial=0)) >= 6:
        problems.append("colour-jitter order codes beyond the 6 orders")
    for name in ("erase", "mix_box"):
        boxes = getattr(params, name)
        if boxes is not None and np.any(boxes[..., :2].astype(np.int64) + boxes[..., 2:].astype(np.int64) > FRACTION_SCALE + 1):
            problems.append(f"{'erasing' if name == 'erase' else 'CutMix'} boxes that extend past the crop")
    mixed = params.mixed
    if mixed is not None and mixed.any():
        partners = params.mix_image[mixed].astype(np.int64)
        if np.any(partners >= num_images) or np.any(partners == index):
            problems.append(f"Mixup/CutMix partners that are the image itself or beyond the store's {num_images} images")
        if np.any(params.mix_crop[mixed] >= len(params.mix_crop)):
            problems.append(f"Mixup/CutMix partner crops beyond the {len(params.mix_crop)} crops per image")
    return problems
