"""Feature-distillation losses (fkd.losses.features) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fkd.losses.features import FEATURE_LOSSES, feature_loss, feature_map_loss, whiten
from train.mode_names import EMBED_LOSSES, PROJECTORS
from train.projector import PROJECTOR_KINDS


def test_smooth_l1_whitens_the_target_then_uses_beta_2() -> None:
    """Row 1: target (1, 3) has mean 2 and variance 1, whitened to (-s1, s1) with s1 = 1/sqrt(1 + 1e-5)
    (LayerNorm's eps); pred (2, 1) is off by 2 + s1 > beta = 2 (linear part: |d| - beta/2 = 1 + s1)
    and by 1 - s1 ~ 5e-6 (quadratic part: d^2 / (2 beta) ~ 6e-12). Row 2: target (0, 4), mean 2,
    variance 4, whitened to (-s2, s2) with s2 = 2/sqrt(4 + 1e-5); pred (0, 2) is off by s2 and
    2 - s2, both below beta: (s2^2 + (2 - s2)^2) / 4. Mean over the 4 values."""
    pred = torch.tensor([[2.0, 1.0], [0.0, 2.0]])
    target = torch.tensor([[1.0, 3.0], [0.0, 4.0]])
    s1, s2 = 1 / math.sqrt(1 + 1e-5), 2 / math.sqrt(4 + 1e-5)
    by_hand = ((1 + s1) + (1 - s1) ** 2 / 4 + (s2**2 + (2 - s2) ** 2) / 4) / 4
    assert by_hand == pytest.approx(0.625, abs=2e-6)
    assert feature_loss(pred, target, "smooth-l1").item() == pytest.approx(by_hand, rel=1e-6)
    # Whitening makes the loss blind to the teacher's scale and offset.
    torch.testing.assert_close(whiten(target * 4 + 7), whiten(target), rtol=0, atol=1e-5)
    assert feature_loss(pred, target * 4 + 7, "smooth-l1").item() == pytest.approx(by_hand, rel=1e-5)


def test_cosine_is_one_minus_cosine_averaged_over_vectors() -> None:
    """Orthogonal: 1; parallel: 0; (3, 4) vs (4, 3): 1 - 24/25 = 0.04; mean 1.04 / 3."""
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 1.0], [2.0, 2.0], [4.0, 3.0]])
    assert feature_loss(pred, target, "cosine").item() == pytest.approx(1.04 / 3, rel=1e-6)


def test_mse_is_the_mean_squared_error_on_the_target_as_given() -> None:
    """(1 - 3)^2 = 4 and (2 - -2)^2 = 16: mean 10 (no whitening)."""
    assert feature_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -2.0]]), "mse").item() == 10.0


@pytest.mark.parametrize("kind", FEATURE_LOSSES)
def test_a_feature_map_is_one_vector_per_position(kind: str) -> None:
    """FD whitens and compares every position's channel vector: the map loss equals the loss of
    the (B*H*W, C) vectors."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g) * 3 + 1
    vectors = feature_loss(pred.permute(0, 2, 3, 1).reshape(-1, 5), target.permute(0, 2, 3, 1).reshape(-1, 5), kind)
    assert feature_map_loss(pred, target, kind).item() == pytest.approx(vectors.item(), rel=1e-6)


def test_losses_run_in_float32_under_autocast() -> None:
    pred, target = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).bfloat16(), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = feature_loss(pred, target, "smooth-l1")
    assert loss.dtype == torch.float32
    assert loss.item() == feature_loss(pred.float(), target, "smooth-l1").item()


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown feature loss 'l1'; choose one of: smooth-l1, cosine, mse"):
        feature_loss(torch.zeros(1, 2), torch.zeros(1, 2), "l1")
    with pytest.raises(ValueError, match=r"predicted features \(1, 3\) and target features \(1, 2\) differ in shape"):
        feature_loss(torch.zeros(1, 3), torch.zeros(1, 2), "mse")
    with pytest.raises(ValueError, match=r"feature maps must be \(B, C, H, W\), got \(1, 2\)"):
        feature_map_loss(torch.zeros(1, 2), torch.zeros(1, 2), "mse")


def test_the_cli_lists_the_same_names_without_importing_torch() -> None:
    assert EMBED_LOSSES == FEATURE_LOSSES and PROJECTORS == PROJECTOR_KINDS


def test_smooth_l1_whitens_each_member_of_an_ensemble_apart() -> None:
    """Target [a | b] of an ensemble (segments (2, 2)): whitened as LN(a) | LN(b). Row (1, 3 | 10, 30):
    both slices whiten to (-s, s) with s = 1/sqrt(1 + eps) and 1/sqrt(1 + eps/100), where one LayerNorm
    over the 4 values (mean 11, variance 131.5) would put a's slice at -10 / 11.47 and -8 / 11.47. pred (-1, 1, -1, 1) is then off by
    1 - s each: (1 - s)^2 / 4 per value. One segment is the plain loss, bitwise."""
    target, pred = torch.tensor([[1.0, 3.0, 10.0, 30.0]]), torch.tensor([[-1.0, 1.0, -1.0, 1.0]])
    s1, s2 = 1 / math.sqrt(1 + 1e-5), 1 / math.sqrt(1 + 1e-7)
    by_hand = (2 * (1 - s1) ** 2 / 4 + 2 * (1 - s2) ** 2 / 4) / 4
    assert feature_loss(pred, target, "smooth-l1", segments=(2, 2)).item() == pytest.approx(by_hand, rel=1e-3, abs=1e-12)
    whole = whiten(target)[0, :2].tolist()
    assert whole == pytest.approx([-10 / math.sqrt(131.5), -8 / math.sqrt(131.5)], rel=1e-6)
    assert torch.equal(feature_loss(pred, target, "smooth-l1", segments=(4,)), feature_loss(pred, target, "smooth-l1"))
    # cosine and mse compare with the target as stored: segments change nothing.
    assert feature_loss(pred, target, "mse", segments=(2, 2)).item() == feature_loss(pred, target, "mse").item()
    with pytest.raises(ValueError, match=r"segments \[2, 3\] do not add up to the features' 4 values"):
        feature_loss(pred, target, "smooth-l1", segments=(2, 3))
