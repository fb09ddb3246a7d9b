"""The device crop kernel: cut, resize and flip many crops of uint8 images on any torch device.

One kernel for every path that cuts crops off the CPU: fkd-train's ``--replay-device cuda``
(``device_replay``), the partner crops of a reinforced store's stored pairs (``device_views``).
It takes the device as an argument, so tests run the very same arithmetic on the CPU and compare it
with the worker path's uint8 kernel (``fkd.data.crops.replay_fixed``): within two grey levels.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .crops import parse_interpolation


def cut_crops(
    pixels: torch.Tensor,
    shapes: torch.Tensor,
    counts: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    interpolation: "str | InterpolationMode",
    device: "torch.device | str",
) -> torch.Tensor:
    """Cut, resize (antialiased, in float32: ``_resize``) and flip every crop of a batch on ``device``.

    ``pixels``: the images' uint8 (3, H, W) pixels, flattened and concatenated; ``shapes`` (B, 2)
    their (H, W); ``counts`` (B,) crops per image; ``boxes`` (N, 4) pixel boxes (top, left,
    height, width) and ``flips`` (N,) in image order. Returns uint8 (N, 3, size, size) on ``device``.
    Boxes and sizes are read on the host (no device synchronization); one copy moves the pixels.
    """
    device = torch.device(device)
    mode = parse_interpolation(interpolation)
    pixels = pixels.to(device, non_blocking=True)
    out = torch.empty((boxes.shape[0], 3, size, size), dtype=torch.float32, device=device)
    offset = row = 0
    for (height, width), count in zip(shapes.tolist(), counts.tolist()):
        image = pixels[offset : offset + 3 * height * width].view(3, height, width)
        offset += 3 * height * width
        for top, left, h, w in boxes[row : row + count].tolist():
            out[row] = _resize(image[:, top : top + h, left : left + w].float(), size, mode)
            row += 1
    flip = flips.to(device, non_blocking=True).view(-1, 1, 1, 1)
    out = torch.where(flip, out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _resize(crop: torch.Tensor, size: int, mode: InterpolationMode) -> torch.Tensor:
    """Antialiased resize in two passes, columns then rows, each rounded and clamped to 0..255: the
    order and the uint8 intermediate of torch's CPU uint8 kernel, which bicubic overshoot would
    otherwise tell apart (tens of grey levels at sharp edges)."""
    wide = TF.resize(crop, [crop.shape[-2], size], interpolation=mode, antialias=True).round_().clamp_(0, 255)
    return TF.resize(wide, [size, size], interpolation=mode, antialias=True)
