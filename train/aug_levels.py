"""``--aug-level``: AugReg's named augmentation levels as Mixup alpha + RandAugment, colour ops only.

"How to train your ViT?" (Steiner et al. 2021) names its augmentation strengths by Mixup's Beta
alpha and RandAugment's (layers, magnitude); the table is the one of its released configs
(big_vision ``configs/vit_i1k.py``, ``MIXUP_DEF`` and ``RANDAUG_DEF``). A level only fills in
``--mixup`` and ``--randaugment`` where they were not given (on the command line or in a recipe), so
explicit flags always win. RandAugment runs with the colour ops only (``fkd.data.augment.PHOTOMETRIC_OPS``):
AugReg's also rotate, shear and translate, which would move pixels away from the box a stored label
describes. AugReg's magnitudes above 10 are passed to timm with ``mmax``, or timm would clip them
to its default maximum of 10 (its scale is TensorFlow's, where AugReg's 15 and 20 act as given).

Kept free of torch so that ``fkd-train --help`` lists the levels (and erasing modes) without importing it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from .config import AugmentConfig


class AugLevel(NamedTuple):
    """What one named level sets: Mixup's Beta alpha (0 = off) and a timm RandAugment spec (None = off)."""

    mixup: float
    randaugment: "str | None"


AUG_LEVELS: dict[str, AugLevel] = {
    "none": AugLevel(0.0, None),
    "light1": AugLevel(0.0, "rand-n2-m0"),  # magnitude 0 still changes colours (e.g. Color at factor 0.1)
    "light2": AugLevel(0.2, "rand-n2-m10"),
    "medium1": AugLevel(0.2, "rand-n2-m15-mmax15"),
    "medium2": AugLevel(0.5, "rand-n2-m15-mmax15"),
    "strong1": AugLevel(0.5, "rand-n2-m20-mmax20"),
    "strong2": AugLevel(0.8, "rand-n2-m20-mmax20"),
}


ERASE_MODES: tuple[str, ...] = ("const", "rand", "pixel")
"""--remode, timm's RandomErasing fills: zeros (the mean colour after normalization), one normal colour
per box, normal noise per pixel."""


def apply_aug_level(augment: AugmentConfig) -> AugmentConfig:
    """``augment`` with ``mixup`` and ``randaugment`` resolved: the explicit value, else ``--aug-level``'s,
    else off (mixup 0). The CLI does it before anything else, so args.yaml records what was used."""
    level = AUG_LEVELS[augment.aug_level] if augment.aug_level else AUG_LEVELS["none"]
    return replace(
        augment,
        mixup=level.mixup if augment.mixup is None else augment.mixup,
        randaugment=level.randaugment if augment.randaugment is None else augment.randaugment,
    )
