"""Validation images as timm evaluates them (resize, centre crop), split exactly over ranks."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from .crops import parse_interpolation
from .errors import ReplayError
from .images import load_image
from .sources import ImageList


class EvalDataset(Dataset):
    """Validation images, resized so the centre crop of ``size`` covers ``crop_pct`` of the shorter
    side (timm's eval transform: resize to floor(size / crop_pct), centre crop), as uint8."""

    def __init__(self, images: ImageList, size: int, crop_pct: float, interpolation: str):
        if not 0 < crop_pct <= 1:
            raise ReplayError(f"--crop-pct must be in (0, 1], got {crop_pct}")
        self.images = images
        self.size = size
        self.resize_to = math.floor(size / crop_pct)
        self.interpolation = parse_interpolation(interpolation)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.images.location(index))
        image = TF.resize(image, [self.resize_to], interpolation=self.interpolation, antialias=True)
        return TF.center_crop(image, [self.size, self.size]), self.images.entries[index].label


def shard_indices(length: int, rank: int, world_size: int) -> list[int]:
    """Evaluation split: every image exactly once over all ranks (no padding, so metrics are exact)."""
    return list(range(rank, length, world_size))
