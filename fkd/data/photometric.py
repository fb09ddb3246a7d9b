"""Colour operations on uint8 crops as exact functions of their arguments: what a reinforced store's
stored augmentation means, pixel for pixel, in fkd-labelgen and in training alike.

timm's RandAugment runs PIL ops and draws from Python's global RNG, so its output cannot be
replayed from stored numbers. These ops take explicit arguments and follow torchvision's
``transforms.v2.functional`` definitions on uint8 tensors (brightness, contrast, saturation and
sharpness blend with a degenerate image, then clamp and truncate to uint8), written so that every
result is bitwise the same on any CPU, thread count or CUDA device: sums are taken in integers
(the contrast mean, the sharpness blur), and float arithmetic is one rounded elementwise op at a
time (no fused multiply-add, no reduction whose order could vary). ``autocontrast``, ``equalize``
and ``posterize`` are torchvision's own (elementwise or integer already).

``ra_argument`` maps a RandAugment op and magnitude to the op's argument exactly as timm 1.0.31's
level functions do (``timm.data.auto_augment``: ``_enhance_level_to_arg``, the increasing variants'
random sign, posterize, solarize and solarize-add levels); ``apply_ra`` applies it.
"""

from __future__ import annotations

import itertools

import torch
from torchvision.transforms.v2 import functional as TF

from ..store.views import LEVEL_DENOM

JITTER_ORDERS: tuple[tuple[str, ...], ...] = tuple(itertools.permutations(("brightness", "contrast", "saturation")))
"""Colour jitter's orders, indexed by the stored order code (``itertools.permutations`` order)."""
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's (ITU-R 601-2 luma)


def _blend(image: torch.Tensor, other: "torch.Tensor | float", factor: float) -> torch.Tensor:
    """``factor * image + (1 - factor) * other``, clamped to 0..255 and truncated to uint8
    (torchvision's blend), each product and the sum rounded on its own."""
    mixed = image.float() * factor
    if not isinstance(other, float) or other != 0.0:
        mixed = mixed + other * (1.0 - factor)
    return mixed.clamp_(0, 255).to(torch.uint8)


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """Floored luma (..., 1, H, W) float32 of uint8 RGB, as torchvision's colour ops use it."""
    r, g, b = image.float().unbind(dim=-3)
    luma = r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1]
    luma = luma + b * GRAY_WEIGHTS[2]
    return luma.floor_().unsqueeze(-3)


def brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(image, 0.0, factor)


def saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """timm's ``Color`` (PIL ImageEnhance.Color): a blend with the image's grey version."""
    return _blend(image, grayscale(image), factor)


def contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """A blend with the mean grey level, that mean summed exactly in integers."""
    gray = grayscale(image)
    count = gray.shape[-2] * gray.shape[-1]
    mean = (gray.long().sum(dim=(-3, -2, -1), keepdim=True).double() / count).float()
    return _blend(image, mean, factor)


def sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """A blend with the image blurred by torchvision's 3x3 kernel (1s, 5 in the centre, / 13, rounded)
    inside a one-pixel border that stays as it is. The blur is exact: ``round(s / 13)`` of an integer
    sum s is ``(2 s + 13) // 26`` (s / 13 is never a half)."""
    height, width = image.shape[-2:]
    if height <= 2 or width <= 2:
        return image
    x = image.long()
    total = 4 * x[..., 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            total = total + x[..., dy : height - 2 + dy, dx : width - 2 + dx]
    blurred = torch.div(2 * total + 13, 26, rounding_mode="floor").float()
    out = image.clone()
    out[..., 1:-1, 1:-1] = _blend(image[..., 1:-1, 1:-1], blurred, factor)
    return out


def solarize(image: torch.Tensor, threshold: int) -> torch.Tensor:
    """Invert every value >= ``threshold`` (0..256; PIL's ImageOps.solarize; 256 inverts nothing)."""
    return torch.where(image.int() >= threshold, 255 - image, image)


def solarize_add(image: torch.Tensor, add: int, threshold: int = 128) -> torch.Tensor:
    """Add ``add`` to every value below ``threshold``, saturating at 255 (timm's solarize_add)."""
    return torch.where(image < threshold, (image.int() + add).clamp_(max=255).to(torch.uint8), image)


def posterize(image: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the ``bits`` high bits (0: none, a black crop, as PIL did before it refused 0, which timm's
    level mapping asks for below magnitude 2.5 and so crashes on current Pillow)."""
    return image if bits >= 8 else TF.posterize(image, bits)


RA_FUNCTIONS = {
    "AutoContrast": TF.autocontrast, "Equalize": TF.equalize, "Invert": TF.invert,
    "Posterize": posterize, "PosterizeIncreasing": posterize, "Solarize": solarize, "SolarizeIncreasing": solarize,
    "SolarizeAdd": solarize_add, "Color": saturation, "ColorIncreasing": saturation, "Contrast": contrast,
    "ContrastIncreasing": contrast, "Brightness": brightness, "BrightnessIncreasing": brightness,
    "Sharpness": sharpness, "SharpnessIncreasing": sharpness,
}
SIGNED_OPS = frozenset(("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"))
"""Ops whose argument timm negates at random (``_randomly_negate``): the sign is part of what is stored."""


def ra_argument(name: str, magnitude: float, negated: bool = False) -> "tuple[float | int, ...]":
    """The argument of op ``name`` at ``magnitude`` (timm's level -> argument mapping)."""
    level = magnitude / LEVEL_DENOM
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Posterize":
        return (int(level * 4),)
    if name == "PosterizeIncreasing":
        return (4 - int(level * 4),)
    if name == "Solarize":
        return (min(256, int(level * 256)),)
    if name == "SolarizeIncreasing":
        return (256 - min(256, int(level * 256)),)
    if name == "SolarizeAdd":
        return (min(128, int(level * 110)),)
    if name in SIGNED_OPS:
        change = level * 0.9
        return (max(0.1, 1.0 + (-change if negated else change)),)
    return (level * 1.8 + 0.1,)  # Color, Contrast, Brightness, Sharpness


def apply_ra(image: torch.Tensor, name: str, magnitude: float, negated: bool = False) -> torch.Tensor:
    """RandAugment op ``name`` at ``magnitude`` on a uint8 crop (3, H, W) (or a batch sharing it)."""
    return RA_FUNCTIONS[name](image, *ra_argument(name, magnitude, negated))


def apply_jitter(image: torch.Tensor, factors: "tuple[float, float, float]", order: int) -> torch.Tensor:
    """Colour jitter (torchvision's ColorJitter without hue): brightness, contrast and saturation
    ``factors`` applied in the order ``JITTER_ORDERS[order]``."""
    steps = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    by_name = dict(zip(("brightness", "contrast", "saturation"), factors))
    for name in JITTER_ORDERS[order]:
        image = steps[name](image, by_name[name])
    return image
