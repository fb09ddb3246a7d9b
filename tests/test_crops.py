"""Crop sampling (seeded, torchvision's rule), fixed-point boxes and pixel-exact replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from fkd.crops import CropParams, boxes_to_fixed, fixed_to_boxes, replay, replay_fixed, sample_crops


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


def test_same_distribution_as_torchvision_get_params() -> None:
    torch.manual_seed(0)
    image = torch.zeros(3, 200, 300)
    ours = sample_crops("img", 200, 300, 4000, seed=1).boxes
    theirs = np.array([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)])
    for col in range(4):
        assert abs(ours[:, col].mean() - theirs[:, col].mean()) < 0.06 * theirs[:, col].mean() + 2


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
