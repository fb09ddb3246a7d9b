"""Crop sampling (seeded, torchvision's rule), fixed-point boxes and pixel-exact replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from fkd.data.crops import CropParams, boxes_to_fixed, fixed_to_boxes, replay, replay_fixed, sample_crops


def test_crops_depend_only_on_seed_and_image_id() -> None:
    a = sample_crops("train/cat/1.jpg", 300, 400, 50, seed=7)
    b = sample_crops("train/cat/1.jpg", 300, 400, 50, seed=7)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.flips, b.flips)
    assert not np.array_equal(a.boxes, sample_crops("train/cat/2.jpg", 300, 400, 50, seed=7).boxes)
    assert not np.array_equal(a.boxes, sample_crops("train/cat/1.jpg", 300, 400, 50, seed=8).boxes)


def test_boxes_follow_the_scale_and_ratio_ranges() -> None:
    h, w = 480, 640
    c = sample_crops("x", h, w, 2000, seed=0, params=CropParams(scale=(0.25, 0.5), ratio=(0.75, 1.333)))
    top, left, bh, bw = c.boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    area = bh * bw / (h * w)
    assert area.min() > 0.24 and area.max() < 0.51  # rounding to whole pixels moves the area slightly
    assert (bw / bh).min() > 0.74 and (bw / bh).max() < 1.34
    assert 0.45 < c.flips.mean() < 0.55


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    values = np.concatenate([a, b])
    gap = np.searchsorted(a, values, side="right") / len(a) - np.searchsorted(b, values, side="right") / len(b)
    return float(np.abs(gap).max())


def ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    """Asymptotic KS critical value at level ``alpha`` (conservative for discrete samples like pixel boxes)."""
    return float(np.sqrt(-np.log(alpha / 2) / 2) * np.sqrt((n + m) / (n * m)))


def torchvision_boxes(height: int, width: int, count: int, scale: tuple[float, float], ratio: tuple[float, float]) -> np.ndarray:
    """``count`` draws of RandomResizedCrop.get_params from a fixed torch seed, global RNG left as it was."""
    image = torch.zeros(1, height, width)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return np.array([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(count)])


def torchvision_fallback(height: int, width: int, ratio: tuple[float, float]) -> np.ndarray:
    """The centre crop get_params returns when none of its 10 tries fits, by torchvision's rule."""
    h, w = height, width
    if width / height < ratio[0]:
        h = int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        w = int(round(height * ratio[1]))
    return np.array([(height - h) // 2, (width - w) // 2, h, w])


@pytest.mark.parametrize(
    ("height", "width", "scale", "ratio", "min_fallback"),
    [
        pytest.param(200, 300, (0.08, 1.0), (3 / 4, 4 / 3), 0.0, id="default"),
        pytest.param(300, 200, (0.3, 0.9), (0.25, 4.0), 0.0, id="wide-ratio"),
        # A box fits a 100x1000 image only when its area is small: about 3 draws in 4 fall back.
        pytest.param(100, 1000, (0.08, 1.0), (3 / 4, 4 / 3), 0.6, id="mostly-fallback"),
    ],
)
def test_same_distribution_as_torchvision_get_params(height: int, width: int, scale: tuple, ratio: tuple, min_fallback: float) -> None:
    """Area fraction, aspect ratio, position and the centre-crop fallback rate follow torchvision's
    sampler: two-sample KS tests at level 1e-3 and a 4-sigma bound on the fallback rates, fixed seeds."""
    count = 12000
    ours = sample_crops("img", height, width, count, seed=1, params=CropParams(scale=scale, ratio=ratio)).boxes
    theirs = torchvision_boxes(height, width, count, scale, ratio)
    features = {
        "area": lambda b: b[:, 2] * b[:, 3] / (height * width),
        "aspect": lambda b: b[:, 3] / b[:, 2],
        "top": lambda b: b[:, 0],
        "left": lambda b: b[:, 1],
    }
    for name, feature in features.items():
        assert ks_statistic(feature(ours), feature(theirs)) < ks_critical(count, count), name
    fallback = torchvision_fallback(height, width, ratio)
    ours_rate, theirs_rate = ((boxes == fallback).all(axis=1).mean() for boxes in (ours, theirs))
    assert theirs_rate >= min_fallback
    assert abs(ours_rate - theirs_rate) <= 4 * np.sqrt(2 * max(theirs_rate * (1 - theirs_rate), 1 / count) / count)


def test_central_fallback_when_no_box_fits() -> None:
    # A very wide image with a full-area scale and square-ish ratios: no try fits, torchvision falls back
    # to the central crop with the ratio clamped to the range.
    c = sample_crops("wide", 100, 1000, 5, seed=0, params=CropParams(scale=(1.0, 1.0), ratio=(1.0, 1.0)))
    assert c.boxes.tolist() == [[0, 450, 100, 100]] * 5


def test_fixed_point_boxes_replay_to_the_pixel_on_an_8k_image() -> None:
    for h, w in [(4320, 7680), (65535, 3), (1, 1), (37, 53)]:
        c = sample_crops("big", h, w, 3000, seed=3)
        fixed = boxes_to_fixed(c.boxes, h, w)
        assert fixed.dtype == np.uint16
        assert np.array_equal(fixed_to_boxes(fixed, h, w), c.boxes)
    with pytest.raises(ValueError, match="above 65535 pixels"):
        boxes_to_fixed(np.zeros((1, 4)), 70000, 10)


def test_fixed_point_boxes_map_onto_a_resized_copy() -> None:
    c = sample_crops("img", 800, 600, 100, seed=0)
    half = fixed_to_boxes(boxes_to_fixed(c.boxes, 800, 600), 400, 300)
    assert np.abs(half - c.boxes / 2).max() <= 1.0
    assert (half[:, 0] + half[:, 2] <= 400).all() and (half[:, 1] + half[:, 3] <= 300).all()


def test_replay_equals_torchvision_resized_crop_and_flip() -> None:
    image = torch.randint(0, 256, (3, 57, 83), dtype=torch.uint8)
    c = sample_crops("img", 57, 83, 12, seed=5)
    replayed = replay_fixed(image, boxes_to_fixed(c.boxes, 57, 83), c.flips, 32, "bicubic")
    for n, (box, flip) in enumerate(zip(c.boxes.tolist(), c.flips)):
        expected = F.resized_crop(image, *box, [32, 32], InterpolationMode.BICUBIC, antialias=True)
        expected = F.horizontal_flip(expected) if flip else expected
        assert torch.equal(replayed[n], expected)
        assert torch.equal(replay(image, box, bool(flip), (32, 32), "bicubic"), expected)
    assert c.flips.any() and not c.flips.all()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="crop scale must satisfy"):
        CropParams(scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="empty size"):
        sample_crops("x", 0, 10, 1, 0)
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        replay(torch.zeros(3, 4, 4, dtype=torch.uint8), (0, 0, 2, 2), False, 2, "cubic")
