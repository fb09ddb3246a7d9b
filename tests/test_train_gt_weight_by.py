"""--gt-weight-by confidence (fkd-train) / gt_weight_by="confidence" (fkd.api's StoredTargets): the
per-crop ground-truth share W_i = min(1, lam * (1 - max stored prob_i)) with batch mean W, by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fkd.api import StoredTargets
from fkd.data.errors import ReplayError
from fkd.data.multicrop import CropBatch
from fkd.data.targets import confidence_gt_weights, one_hot_targets
from fkd.payload.quantize import LabelCodec
from train.cli import main
from train.modes import FKDMode

from conftest import TinyData, train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stored(top1: list[float]) -> torch.Tensor:
    """Rows over 3 classes whose largest value is ``top1[i]`` (the rest split evenly)."""
    return torch.tensor([[p, (1 - p) / 2, (1 - p) / 2] for p in top1], dtype=torch.float32)


@pytest.mark.parametrize(("top1", "weight", "expected"), [
    # u = 1 - max = (0.5, 0.3, 0.1, 0.1); W = 0.25 -> lam = 4 W / sum(u) = 1: W_i = u_i
    ([0.5, 0.7, 0.9, 0.9], 0.25, [0.5, 0.3, 0.1, 0.1]),
    # W = 0.5 -> lam = 2: the most uncertain crop reaches exactly 1
    ([0.5, 0.7, 0.9, 0.9], 0.5, [1.0, 0.6, 0.2, 0.2]),
    # W = 0.6 -> lam = 2.4 would give 1.2: capped at 1, the other 1.4 spread by u: lam = 1.4 / 0.5 = 2.8
    ([0.5, 0.7, 0.9, 0.9], 0.6, [1.0, 0.84, 0.28, 0.28]),
    # one uncertain crop cannot carry 4 x 0.4 = 1.6: it takes 1, the three sure crops share 0.6
    ([0.5, 1.0, 1.0, 1.0], 0.4, [1.0, 0.2, 0.2, 0.2]),
    # no uncertainty at all: every crop W
    ([1.0, 1.0, 1.0], 0.3, [0.3, 0.3, 0.3]),
    ([0.5, 0.7, 0.9, 0.9], 1.0, [1.0, 1.0, 1.0, 1.0]),
    ([0.5, 0.7, 0.9, 0.9], 0.0, [0.0, 0.0, 0.0, 0.0]),
])
def test_confidence_weights_follow_the_uncertainty_with_the_batch_mean_kept(top1, weight, expected) -> None:
    got = confidence_gt_weights(_stored(top1), weight)
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor(expected), rtol=0, atol=1e-6)
    assert got.double().mean().item() == pytest.approx(weight, abs=1e-6)


def test_confidence_weights_keep_the_mean_on_random_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    for weight in (0.05, 0.3, 0.7, 0.95):
        stored = torch.softmax(3 * torch.randn(128, 10, generator=generator), dim=1)
        got = confidence_gt_weights(stored, weight)
        u = 1 - stored.max(dim=1).values
        assert got.double().mean().item() == pytest.approx(weight, abs=1e-6)
        assert got.min() >= 0 and got.max() <= 1
        uncapped = got < 1
        ratio = got[uncapped] / u[uncapped]  # one lam for every crop below the cap
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)


def _batch(labels: list[int], values: torch.Tensor) -> CropBatch:
    n = len(labels)
    return CropBatch(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), None, values, torch.tensor(labels), torch.arange(n), torch.zeros(n))


def test_stored_targets_mix_each_crop_with_its_own_share() -> None:
    """Target_i = (1 - W_i) * stored_i + W_i * one-hot(label_i): fkd-train's FKDMode and fkd.api alike."""
    stored = torch.tensor([[0.5, 0.25, 0.25], [0.875, 0.0625, 0.0625]])  # u = 0.5, 0.125; W = 0.25 -> lam = 0.8: W_i = 0.4, 0.1
    values = stored.half()  # a full store of probabilities (exact in float16)
    codec = LabelCodec("full", 3)
    batch = _batch([1, 0], values)
    decoded = codec.decode(None, values)
    truth = one_hot_targets(torch.tensor([1, 0]), 3)
    expected = torch.stack([0.6 * decoded[0] + 0.4 * truth[0], 0.9 * decoded[1] + 0.1 * truth[1]])
    targets = StoredTargets(codec, 3, gt_weight=0.25, gt_weight_by="confidence")(batch)
    assert torch.allclose(targets, expected, rtol=0, atol=1e-6)
    mode = FKDMode("full", 3, gt_weight=0.25, gt_weight_by="confidence")
    assert torch.equal(mode.targets(batch), targets)
    constant = StoredTargets(codec, 3, gt_weight=0.25)(batch)  # the same mean share, the same for both crops
    assert torch.allclose(constant, 0.75 * decoded + 0.25 * truth, rtol=0, atol=1e-6)


def test_stored_targets_refuse_confidence_without_a_confidence() -> None:
    with pytest.raises(ReplayError, match=r"^gt_weight_by='confidence' follows the stored labels' confidence, but this store keeps each "
                                          r"crop's top-1 class only, at probability 1: use gt_weight_by='constant' \(--gt-weight-by constant\)$"):
        StoredTargets(LabelCodec("hardening", 3), 3, 0.3, gt_weight_by="confidence")
    with pytest.raises(ReplayError, match=r"^gt_weight_by must be one of constant, confidence, got 'entropy'$"):
        StoredTargets(LabelCodec("full", 3), 3, 0.3, gt_weight_by="entropy")


@pytest.mark.parametrize(("extra", "message"), [
    (["--mode", "fkd", "--gt-weight-by", "confidence"],
     "--gt-weight-by confidence distributes the share W over the crops: it needs 0 < --gt-weight < 1, got 0"),
    (["--mode", "fkd", "--gt-weight", "1", "--gt-weight-by", "confidence"],
     "--gt-weight-by confidence distributes the share W over the crops: it needs 0 < --gt-weight < 1, got 1"),
    (["--mode", "online-fd", "--teacher", "t", "--gt-weight", "0.3", "--gt-weight-by", "confidence"],
     "--gt-weight-by confidence weighs the ground truth per crop by the stored labels' confidence: it needs --mode fkd with --store "
     "(and no --embed-store)"),
])
def test_gt_weight_by_is_refused_where_it_has_nothing_to_follow(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                                                               message: str) -> None:
    store = [] if "online-fd" in extra else ["--store", str(tmp_path)]
    assert main(["--data", str(tmp_path), *store, "--model", "test_resnet", "--output", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err == f"fkd-train: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_fkd_train_records_and_trains_with_confidence_weights(tiny: TinyData, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(train_args(tiny, out, "--epochs", "1", "--gt-weight", "0.3", "--gt-weight-by", "confidence")) == 0
    assert "gt_weight_by: confidence\n" in (out / "args.yaml").read_text()
