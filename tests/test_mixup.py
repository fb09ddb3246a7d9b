"""train.mixup: exact mixing formulas, CutMix box/lam consistency, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.data import mixup as timm_mixup

from fkd.config import parse_args_with_config
from train.cli import build_parser
from train.config import TrainConfig
from train.mixup import MixInfo, SoftTargetMixup, cutmix_box
from train.run import build_mixer

B, C, H, W, K = 5, 3, 12, 16, 4


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, C, H, W, generator=g)
    targets = torch.softmax(torch.randn(B, K, generator=g), dim=-1)
    return images, targets


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", range(5))
def test_mixup_mixes_images_and_targets_with_reported_lam(seed: int) -> None:
    images, targets = batch(seed)
    originals = images.clone(), targets.clone()
    mixer = SoftTargetMixup(mixup_alpha=0.8, cutmix_alpha=0.0)
    out_images, out_targets = mixer(images, targets, gen(seed))
    lam = mixer.last_lam
    assert mixer.last is not None and mixer.last.mode == "mixup" and 0.0 < lam < 1.0
    assert torch.equal(out_images, images * lam + images.flip(0) * (1 - lam))
    assert torch.equal(out_targets, targets * lam + targets.flip(0) * (1 - lam))
    assert torch.allclose(out_targets.sum(-1), torch.ones(B))
    assert torch.equal(images, originals[0]) and torch.equal(targets, originals[1])


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_pastes_partner_box_and_lam_is_area_fraction(seed: int) -> None:
    images, targets = batch(seed)
    mixer = SoftTargetMixup(mixup_alpha=0.0, cutmix_alpha=1.0)
    out_images, out_targets = mixer(images, targets, gen(seed))
    info = mixer.last
    assert info is not None and info.mode == "cutmix" and info.box is not None and 0 < info.lam < 1
    top, bottom, left, right = info.box
    assert 0 <= top <= bottom <= H and 0 <= left <= right <= W
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    partner = images.flip(0)
    assert torch.equal(out_images[:, :, inside], partner[:, :, inside])
    assert torch.equal(out_images[:, :, ~inside], images[:, :, ~inside])
    assert info.lam == 1.0 - inside.sum().item() / (H * W)
    assert torch.equal(out_targets, targets * info.lam + targets.flip(0) * (1 - info.lam))
    assert torch.allclose(out_targets.sum(-1), torch.ones(B))


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_box_matches_timm_formula(seed: int) -> None:
    # lam = 0.75 -> side ratio sqrt(0.25) = 0.5: an 8x6 box around a uniform centre, then clipped.
    replay = np.random.default_rng(seed)
    cy, cx = int(replay.integers(0, 16)), int(replay.integers(0, 12))
    box, lam = cutmix_box(np.random.default_rng(seed), 16, 12, 0.75)
    top, bottom, left, right = max(cy - 4, 0), min(cy + 4, 16), max(cx - 3, 0), min(cx + 3, 12)
    assert box == (top, bottom, left, right)
    assert lam == 1 - (bottom - top) * (right - left) / (16 * 12)


class FixedCentre:
    """Stands in for the generator in ``cutmix_box``: its two draws are the box centre (row, column)."""

    def __init__(self, cy: int, cx: int):
        self.draws = [cy, cx]

    def integers(self, low: int, high: int) -> int:
        return self.draws.pop(0)


@pytest.mark.parametrize("lam", [0.19, 0.36, 0.75])  # box sides 13x9, 12x8, 7x5 on a 15x11 image: odd and even
def test_cutmix_box_equals_timms_rand_bbox_on_odd_sides(lam: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """At every centre of an odd-sized image, the same box as timm's rand_bbox given that centre."""
    height, width = 15, 11
    centre: list[int] = []
    monkeypatch.setattr(timm_mixup.np.random, "randint", lambda low, high, size=None: centre.pop(0))
    for cy in range(height):
        for cx in range(width):
            centre[:] = [cy, cx]
            expected = tuple(int(v) for v in timm_mixup.rand_bbox((height, width), lam))
            box, corrected = cutmix_box(FixedCentre(cy, cx), height, width, lam)  # type: ignore[arg-type]
            assert box == expected, (cy, cx)
            assert corrected == 1 - (box[1] - box[0]) * (box[3] - box[2]) / (height * width)
    box, _ = cutmix_box(FixedCentre(7, 5), height, width, lam)  # type: ignore[arg-type]
    cut = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
    assert (box[1] - box[0], box[3] - box[2]) == cut  # unclipped, the box is exactly cut_h x cut_w pixels


def test_cutmix_minmax_box_is_inside_and_sized() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        (top, bottom, left, right), lam = cutmix_box(rng, 20, 10, 0.3, minmax=(0.2, 0.8))
        assert 4 <= bottom - top < 16 and 2 <= right - left < 8
        assert 0 <= top and bottom <= 20 and 0 <= left and right <= 10
        assert lam == 1 - (bottom - top) * (right - left) / 200


def test_prob_zero_is_identity_and_still_consumes_one_draw() -> None:
    images, targets = batch()
    mixer = SoftTargetMixup(prob=0.0)
    g = gen(7)
    out_images, out_targets = mixer(images, targets, g)
    assert out_images is images and out_targets is targets
    assert mixer.last == MixInfo("none", 1.0) and mixer.last_lam == 1.0
    reference = gen(7)
    torch.randint(0, 2**63 - 1, (1,), generator=reference)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=reference))


def test_both_alphas_zero_disables() -> None:
    mixer = SoftTargetMixup(mixup_alpha=0.0, cutmix_alpha=0.0)
    assert not mixer.enabled
    images, targets = batch()
    assert mixer(images, targets, gen(0))[0] is images


def test_switch_prob_picks_cutmix_or_mixup() -> None:
    images, targets = batch()
    always_cut = SoftTargetMixup(switch_prob=1.0)
    never_cut = SoftTargetMixup(switch_prob=0.0)
    modes_cut, modes_mix = set(), set()
    for seed in range(10):
        always_cut(images, targets, gen(seed))
        never_cut(images, targets, gen(seed))
        modes_cut.add(always_cut.last.mode)  # type: ignore[union-attr]
        modes_mix.add(never_cut.last.mode)  # type: ignore[union-attr]
    assert modes_cut == {"cutmix"} and modes_mix == {"mixup"}
    half = SoftTargetMixup(switch_prob=0.5)
    modes_half = set()
    for seed in range(40):
        half(images, targets, gen(seed))
        modes_half.add(half.last.mode)  # type: ignore[union-attr]
    assert modes_half == {"cutmix", "mixup"}


def test_prob_applies_to_a_fraction_of_batches() -> None:
    images, targets = batch()
    mixer = SoftTargetMixup(prob=0.5)
    g = gen(1)
    applied = 0
    for _ in range(400):
        mixer(images, targets, g)
        applied += mixer.last.mode != "none"  # type: ignore[union-attr]
    assert 160 < applied < 240


def test_same_generator_seed_gives_identical_results() -> None:
    images, targets = batch()
    first, second = SoftTargetMixup(), SoftTargetMixup()
    g1, g2 = gen(42), gen(42)
    for _ in range(6):
        out1 = first(images, targets, g1)
        out2 = second(images, targets, g2)
        assert first.last == second.last
        assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])


def test_different_seeds_differ_and_global_rng_is_not_used() -> None:
    images, targets = batch()
    mixer = SoftTargetMixup()
    np.random.seed(0)
    torch.manual_seed(0)
    lams = []
    for seed in range(4):
        mixer(images, targets, gen(seed))
        lams.append(mixer.last_lam)
    assert len(set(lams)) == 4
    np.random.seed(123)
    torch.manual_seed(123)
    mixer(images, targets, gen(0))
    assert mixer.last_lam == lams[0]


def test_one_hot_targets_become_two_point_distributions() -> None:
    images = torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    one_hot = torch.nn.functional.one_hot(labels, 4).float()
    mixer = SoftTargetMixup(mixup_alpha=1.0, cutmix_alpha=0.0)
    _, mixed = mixer(images, one_hot, gen(5))
    lam = mixer.last_lam
    assert torch.allclose(mixed[0], torch.tensor([lam, 0, 0, 1 - lam]))
    assert torch.allclose(mixed[1], torch.tensor([0, lam, 1 - lam, 0]))


def test_minmax_enables_cutmix_like_timm() -> None:
    mixer = SoftTargetMixup(mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_minmax=(0.2, 0.8))
    assert mixer.enabled
    mixer(*batch(), gen(0))
    assert mixer.last is not None and mixer.last.mode == "cutmix"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mixup_alpha": -1.0}, "mixup_alpha and cutmix_alpha must be >= 0; got -1.0, 1.0"),
        ({"prob": 1.5}, r"prob must be in \[0, 1\]; got 1.5"),
        ({"switch_prob": -0.1}, r"switch_prob must be in \[0, 1\]; got -0.1"),
        ({"cutmix_minmax": (0.8, 0.2)}, r"cutmix_minmax must satisfy 0 < min < max <= 1; got \(0.8, 0.2\)"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SoftTargetMixup(**kwargs)


def test_bad_inputs_are_rejected() -> None:
    images, targets = batch()
    mixer = SoftTargetMixup()
    with pytest.raises(ValueError, match=r"images must be \(B, C, H, W\); got shape \(3, 12, 16\)"):
        mixer(images[0], targets)
    with pytest.raises(ValueError, match=r"targets must be dense float \(B, num_classes\) with B=5; got torch.int64 \(5,\)"):
        mixer(images, torch.arange(5))
    with pytest.raises(ValueError, match="with B=5; got torch.float32 \\(4, 4\\)"):
        mixer(images, targets[:4])


# ------------------------------------------------------------------ --mixup-mode elem


@pytest.mark.parametrize("seed", range(4))
def test_elem_mode_mixes_each_sample_with_its_mirror_by_its_own_draw(seed: int) -> None:
    """Sample b is mixed with sample B-1-b by its own MixInfo, with batch mode's formulas: each row
    equals what batch mode gives that row with that draw, image and target alike."""
    images, targets = batch(seed)
    mixer = SoftTargetMixup(mode="elem")
    out_images, out_targets = mixer(images, targets, gen(seed))
    infos = mixer.last
    assert isinstance(infos, tuple) and len(infos) == B
    for b, info in enumerate(infos):
        alone_images, alone_targets = SoftTargetMixup._apply(images, targets, info)
        assert torch.equal(out_images[b], alone_images[b]) and torch.equal(out_targets[b], alone_targets[b])
    assert torch.allclose(out_targets.sum(-1), torch.ones(B))
    with pytest.raises(ValueError, match="a lam per sample"):
        mixer.last_lam


def test_elem_mode_draws_differ_within_a_batch_and_batch_mode_shares_one() -> None:
    """What tells the modes apart: within one call elem mode has several lams and both kinds,
    batch mode one draw for all (the control the stored pairs' per-crop draws need)."""
    images = torch.rand(64, C, H, W, generator=gen(0))
    targets = torch.softmax(torch.randn(64, K, generator=gen(1)), dim=-1)
    elem = SoftTargetMixup(mode="elem")
    elem(images, targets, gen(3))
    assert len({i.lam for i in elem.last}) > 30 and {i.mode for i in elem.last} == {"mixup", "cutmix"}  # type: ignore[union-attr]
    half = SoftTargetMixup(prob=0.5, mode="elem")
    half(images, targets, gen(4))
    mixed = sum(i.mode != "none" for i in half.last)  # type: ignore[union-attr]
    assert 16 < mixed < 48  # per sample, not all or nothing


def test_elem_mode_is_reproducible_and_takes_one_draw() -> None:
    images, targets = batch()
    first, second = SoftTargetMixup(mode="elem"), SoftTargetMixup(mode="elem")
    g1, g2, reference = gen(9), gen(9), gen(9)
    out1, out2 = first(images, targets, g1), second(images, targets, g2)
    assert first.last == second.last and torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])
    torch.randint(0, 2**63 - 1, (1,), generator=reference)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=reference))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of batch, elem; got 'pair'"):
        SoftTargetMixup(mode="pair")


@pytest.mark.parametrize(("flags", "mode"), [((), "batch"), (("--mixup-mode", "elem"), "elem")])
def test_fkd_train_builds_the_mixer_in_the_mode_asked(flags: tuple[str, ...], mode: str) -> None:
    args = parse_args_with_config(build_parser(), ["--data", "D", "--model", "M", "--output", "O", "--mixup", "0.8", *flags])
    mixer = build_mixer(TrainConfig.from_namespace(args).augment)
    assert mixer is not None and mixer.mode == mode and mixer.mixup_alpha == 0.8
