"""The stored augmentation means what timm means: RandAugment's spec parsing and level -> argument
mappings, its colour ops, RandomErasing's and CutMix's boxes; and each op is an exact function of
its arguments (the same bits on any thread count)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment
from timm.data.auto_augment import rand_augment_transform
from timm.data.mixup import rand_bbox
from torchvision.transforms.v2 import functional as TF

from fkd.data import photometric
from fkd.data.mixing import own_share, sample_pairs
from fkd.data.view_draws import component_rng, decode_boxes, sample_erasing, sample_randaugment
from fkd.store.views import FRACTION_SCALE, NEGATED, OP_MASK, RA_OPS, RandAugmentSpec, ViewSpec

SPECS = ["rand-m9-mstd0.5", "rand-m9-n3-mstd0.5-inc1", "rand-n2-m15-mmax15", "rand-m7-p0.8-mstd101", "rand-m20-mmax20-inc1"]


@pytest.mark.parametrize("text", SPECS)
def test_specs_parse_as_timm_parses_them(text):
    spec = RandAugmentSpec.parse(text)
    timm_ra = rand_augment_transform(text, {})
    assert spec.num_layers == timm_ra.num_layers
    colour = [op for op in timm_ra.ops if op.name in spec.ops]
    assert tuple(op.name for op in colour) == spec.ops  # timm's colour ops, in timm's order (the geometric ones left out)
    for op in colour:
        assert (op.magnitude, op.prob, op.magnitude_std, op.magnitude_max) == (
            spec.magnitude, spec.prob, spec.magnitude_std, spec.magnitude_max)


def test_bad_specs_are_refused_in_one_line():
    for text, message in [("autoaug", "is not a timm RandAugment string"), ("rand-tweights", "transform sets ('tweights') are not"),
                          ("rand-q3", "unknown section 'q3'"), ("rand-n0", "needs 1 <= n <= 16")]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            RandAugmentSpec.parse(text)


@pytest.mark.parametrize("name", sorted(set(auto_augment.LEVEL_TO_ARG) & set(photometric.RA_FUNCTIONS)))
def test_level_to_argument_is_timms(name, monkeypatch):
    level_fn = auto_augment.LEVEL_TO_ARG[name]
    for magnitude in np.linspace(0, 20, 41):
        for negated in (False, True):
            monkeypatch.setattr(random, "random", lambda: 1.0 if negated else 0.0)  # timm's _randomly_negate: > 0.5 negates
            want = () if level_fn is None else level_fn(float(magnitude), {})
            got = photometric.ra_argument(name, float(magnitude), negated and name in photometric.SIGNED_OPS)
            assert got == pytest.approx(want), (name, magnitude, negated)


def random_images(count: int = 6, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in [(32, 32), (17, 45), (224, 224)][:count]]


def test_integer_ops_equal_timms_pil_ops():
    for image in random_images():
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        for bits in range(1, 9):
            assert np.array_equal(photometric.posterize(image, bits).permute(1, 2, 0).numpy(), np.asarray(auto_augment.posterize(pil, bits)))
        assert not photometric.posterize(image, 0).any()  # keep no bit (Pillow now refuses 0, which timm asks for below magnitude 2.5)
        for threshold in (0, 1, 128, 200, 256):
            assert np.array_equal(photometric.solarize(image, threshold).permute(1, 2, 0).numpy(), np.asarray(ImageOps.solarize(pil, threshold)))
        for add in (0, 30, 110):
            assert np.array_equal(photometric.solarize_add(image, add).permute(1, 2, 0).numpy(), np.asarray(auto_augment.solarize_add(pil, add)))


@pytest.mark.parametrize("name, torchvision_op", [("brightness", TF.adjust_brightness), ("saturation", TF.adjust_saturation),
                                                  ("contrast", TF.adjust_contrast), ("sharpness", TF.adjust_sharpness)])
def test_enhance_ops_are_torchvisions_up_to_its_float_rounding(name, torchvision_op):
    """torchvision's definitions; its fused multiply-adds and float sums round differently: one level, on up to 2.3 % of the values measured."""
    for image in random_images():
        for factor in (0.1, 0.55, 1.0, 1.9):
            diff = (getattr(photometric, name)(image, factor).int() - torchvision_op(image, factor).int()).abs()
            assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.05


def test_ops_are_exact_for_any_thread_count():
    image = random_images()[2]
    outputs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outputs.append([photometric.apply_ra(image, name, 7.3, True) for name in photometric.RA_FUNCTIONS])
    torch.set_num_threads(1)
    assert all(torch.equal(a, b) for a, b in zip(*outputs))


def test_randaugment_draws_follow_the_spec():
    spec = RandAugmentSpec.parse("rand-m9-n3-p0.6-mstd0.5-inc1")
    ops, mags = sample_randaugment(spec, component_rng(0, "x", "randaugment"), 4000)
    applied = ops > 0
    assert ops.shape == mags.shape == (4000, 3) and abs(applied.mean() - 0.6) < 0.02
    names = np.array(spec.ops)[(ops[applied] & OP_MASK) - 1]
    signed = np.isin(names, list(photometric.SIGNED_OPS))
    assert abs(signed.mean() - 0.4) < 0.03  # 4 of the 10 ops are signed
    assert not (ops[applied][~signed] & NEGATED).any() and abs((ops[applied][signed] & NEGATED).astype(bool).mean() - 0.5) < 0.03
    stored = mags[applied] * spec.upper / 255
    assert abs(stored.mean() - 9) < 0.05 and abs(stored.std() - 0.5) < 0.05  # N(9, 0.5), clipped to [0, 10]
    assert not mags[~applied].any() and set(np.unique(ops[applied] & OP_MASK)) == set(range(1, 11))
    assert RA_OPS == RandAugmentSpec.parse("rand-m9").ops


def test_erasing_boxes_follow_timms_random_erasing():
    spec = ViewSpec(reprob=0.25, recount=3)
    fixed = sample_erasing(spec, component_rng(0, "x", "erase"), 4000, (224, 224))
    boxes = decode_boxes(fixed, (224, 224))
    present = boxes[..., 2] > 0
    erased = present.any(axis=1)
    assert abs(erased.mean() - 0.25) < 0.02
    counts = present.sum(axis=1)[erased]
    assert set(np.unique(counts)) <= {1, 2, 3} and abs(counts.mean() - 2) < 0.1
    h, w = boxes[present][:, 2], boxes[present][:, 3]
    area = h * w / 224**2 * np.repeat(counts, counts)
    assert area.min() >= 0.015 and area.max() <= 0.34 and (w < 224).all() and (h < 224).all()
    aspect = h / w
    assert aspect.min() >= 0.25 and aspect.max() <= 4.0
    assert (boxes[present][:, 0] + h <= 224).all() and (boxes[present][:, 1] + w <= 224).all()


def test_cutmix_boxes_are_timms_rand_bbox(monkeypatch):
    spec = ViewSpec(cutmix=1.0, mix_partners=3)
    image, crop, lam, box = sample_pairs(spec, 0, "x", 5, 50, 400, (32, 40))
    assert (lam == FRACTION_SCALE).all() and set(np.unique(image)) <= set(range(50)) - {5} and len(np.unique(image)) <= 3
    rng = component_rng(0, "x", "mix")  # the same draws, to hand to timm
    rng.choice(49, size=3, replace=False)
    rng.integers(0, 400, size=400), rng.random(400), rng.random(400)
    lams = rng.beta(1.0, 1.0, size=400)
    centres = iter(np.stack([rng.integers(0, 32, size=400), rng.integers(0, 40, size=400)], axis=1).tolist())
    for row in range(400):
        cy, cx = next(centres)
        draws = iter([cy, cx])
        monkeypatch.setattr(np.random, "randint", lambda *a, **k: next(draws))
        top, bottom, left, right = rand_bbox((32, 40), lams[row])
        want = (top, left, bottom - top, right - left) if bottom > top and right > left else (0, 0, 0, 0)
        assert tuple(decode_boxes(box[row], (32, 40)).tolist()) == want
    share = own_share(type("P", (), {"mix_box": box, "mix_lam": lam})(), (32, 40))
    boxes = decode_boxes(box, (32, 40))
    assert np.allclose(share, 1 - boxes[:, 2] * boxes[:, 3] / (32 * 40))


def test_mixup_pairs_draw_lambda_and_partners_per_crop():
    spec = ViewSpec(mixup=0.8, cutmix=1.0, mix_prob=0.7, mix_switch_prob=0.25, mix_partners=2)
    image, crop, lam, box = sample_pairs(spec, 0, "x", 0, 10, 4000, (32, 32))
    cut = box[:, 2] > 0
    mixup = lam < FRACTION_SCALE
    mixed = cut | mixup
    assert abs(mixed.mean() - 0.7) < 0.03 and abs(cut[mixed].mean() - 0.25) < 0.03
    assert not (cut & mixup).any() and (image[~mixed] == 0).all() and (crop[~mixed] == 0).all()
    partners = np.unique(image[mixed])
    assert len(partners) == 2 and 0 not in partners
    assert all(len(np.unique(image[mixed][np.arange(4000)[mixed] % 2 == k])) == 1 for k in (0, 1))  # crop c: partner c mod 2
    assert abs((lam[mixup] / FRACTION_SCALE).mean() - 0.5) < 0.02 and crop.max() < 4000
    assert math.isclose(float(np.var(lam[mixup] / FRACTION_SCALE)), 1 / (4 * (2 * 0.8 + 1)), rel_tol=0.1)  # Beta(0.8, 0.8)


def test_mixed_ground_truth_weighs_both_images_labels_by_the_crops_own_share():
    from fkd.data.mixing import mixed_ground_truth

    got = mixed_ground_truth(torch.tensor([0, 1]), torch.tensor([2, 1]), torch.tensor([0.25, 1.0]), 3)
    assert torch.allclose(got, torch.tensor([[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]]))
    smoothed = mixed_ground_truth(torch.tensor([0]), torch.tensor([2]), torch.tensor([0.5]), 3, smoothing=0.3)
    assert torch.allclose(smoothed, torch.tensor([[0.45, 0.1, 0.45]])) and torch.allclose(smoothed.sum(1), torch.ones(1))
