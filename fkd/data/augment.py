"""Non-geometric per-crop augmentation: colour jitter and a photometric-only RandAugment.

A stored soft label describes the pixels of one box, so after replaying the box nothing may move
pixels around (rotate, shear, translate, crop): only colour operations are allowed. timm's
RandAugment is used with its op list restricted to the photometric ops.

Randomness: every call takes an explicit seed, derived by the dataset from (seed, epoch, image), so
the augmentation of a crop does not depend on the worker that happens to load it.

Random erasing (``build_eraser``) is the one other operation that keeps stored labels valid: it
moves no pixel, it hides a box of the crop. Like Mixup it is applied on top of the labelled crop,
on the device: timm's ``RandomErasing`` expects normalized float images (its noise is N(0, 1) in
normalized units), while crops travel as uint8 until they reach the device.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .errors import ReplayError

PHOTOMETRIC_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness",
)
"""timm RandAugment ops that change colours only (no Rotate, Shear*, Translate*)."""

CropAugment = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch, NumPy and Python's global RNGs for the block, then restore them.

    torchvision and timm transforms draw from the global generators; restoring keeps the training
    loop's own random stream (mixup, dropout) untouched when data loads in the main process.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def build_crop_augment(color_jitter: float = 0.0, randaugment: "str | None" = None) -> "CropAugment | None":
    """A uint8 (3, H, W) -> uint8 (3, H, W) transform, or None when no augmentation is asked for.

    ``color_jitter``: brightness/contrast/saturation strength (0 disables; hue is left alone).
    ``randaugment``: a timm RandAugment string such as 'rand-m9-mstd0.5' applied with the
    photometric ops only (ReplayError unless it starts with 'rand'; timm ignores unknown fields).
    """
    steps: list[CropAugment] = []
    if color_jitter < 0:
        raise ReplayError(f"--color-jitter must be >= 0, got {color_jitter}")
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    if randaugment:
        if not randaugment.startswith("rand"):
            raise ReplayError(f"--randaugment must be a timm RandAugment string like 'rand-m9-mstd0.5', got {randaugment!r}")
        ra = rand_augment_transform(randaugment, {}, transforms=list(PHOTOMETRIC_OPS))
        steps.append(lambda img: TF.pil_to_tensor(ra(TF.to_pil_image(img))))
    if not steps:
        return None
    return v2.Compose(steps)


def build_eraser(probability: float, mode: str, max_count: int, device: torch.device) -> "RandomErasing | None":
    """timm's RandomErasing for normalized (B, 3, H, W) batches on ``device``, each crop erased
    independently with ``probability`` (timm's and DeiT's box area 2 % to 1/3, aspect 0.3 to 3.3,
    1 to ``max_count`` boxes); None when ``probability`` is 0.

    It draws box positions from Python's ``random`` and noise from torch's generator of ``device``:
    the training process's own streams, seeded per rank and saved in checkpoints like dropout's,
    which DataLoader workers never touch, so a run erases the same boxes for any number of workers
    and after ``--resume``.
    """
    if probability == 0:
        return None
    return RandomErasing(probability=probability, mode=mode, max_count=max_count, device=str(device))
