"""Non-geometric per-crop augmentation drawn in training: colour jitter and a photometric-only RandAugment.

A stored soft label describes the pixels of one box, so after replaying the box nothing may move
pixels around (rotate, shear, translate, crop): only colour operations are allowed: timm's
RandAugment colour ops (``RA_OPS``), drawn with timm's semantics and applied by the same exact ops
a reinforced store replays (``fkd.data.views``), so online KD with ``--randaugment`` and a store
made with the same ``--randaugment`` see crops of one distribution.

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
from timm.data.random_erasing import RandomErasing

from ..store.views import RA_OPS, ViewParams, ViewSpec
from .errors import ReplayError
from .view_draws import sample_jitter, sample_randaugment
from .views import ViewRenderer

PHOTOMETRIC_OPS: tuple[str, ...] = RA_OPS
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
    photometric ops only (ReplayError for anything else). Each call draws its parameters from
    NumPy's global generator, which the dataset seeds per (seed, epoch, image) (``seeded_rngs``).
    """
    if color_jitter < 0:
        raise ReplayError(f"--color-jitter must be >= 0, got {color_jitter}")
    if randaugment and not randaugment.startswith("rand"):
        raise ReplayError(f"--randaugment must be a timm RandAugment string like 'rand-m9-mstd0.5', got {randaugment!r}")
    try:
        spec = ViewSpec(randaugment=randaugment or None, color_jitter=color_jitter)
    except ValueError as exc:
        raise ReplayError(f"--randaugment {exc}") from None
    if not spec.active:
        return None
    renderer = ViewRenderer(spec, 0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    ra = spec.randaugment_spec

    def augment(crop: torch.Tensor) -> torch.Tensor:
        rng = np.random.default_rng(np.random.randint(0, 2**63 - 1, dtype=np.int64))
        params = ViewParams()
        if color_jitter > 0:
            params.jitter = sample_jitter(color_jitter, rng, 1)
        if ra is not None:
            params.ra_ops, params.ra_mags = sample_randaugment(ra, rng, 1)
        return renderer.augment(crop[None], params, "", [0])[0]

    return augment


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
