"""fkd-train modes: exact targets per label scheme, exact losses (DeiT at a temperature, Hinton KD),
and the refusal of distillation options a run would not use."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fkd.losses import deit_token_loss, soft_target_cross_entropy
from fkd.quantize import decode
from train.cli import main
from train.data import CropBatch
from train.modes import DeiTMode, FKDMode, OnlineKDMode, one_hot_targets


def _batch(labels: list[int], indices: "torch.Tensor | None" = None, values: "torch.Tensor | None" = None) -> CropBatch:
    n = len(labels)
    return CropBatch(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), indices, values, torch.tensor(labels), torch.arange(n), torch.zeros(n))


def test_one_hot_targets_smoothing_formula() -> None:
    t = one_hot_targets(torch.tensor([2, 0]), 4, 0.1)
    assert torch.allclose(t, torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]]))


TOP1 = torch.tensor([[2], [0]], dtype=torch.int32)
TOP2 = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32)
TOP2_VALUES = torch.tensor([[0.5, 0.25], [0.625, 0.125]], dtype=torch.float16)
FULL_VALUES = torch.tensor([[0.125, 0.25, 0.5, 0.125], [0.5, 0.25, 0.25, 0.0]], dtype=torch.float16)


@pytest.mark.parametrize(
    ("scheme", "indices", "values", "expected"),
    [
        ("hardening", TOP1, None, [[0, 0, 1, 0], [1, 0, 0, 0]]),
        # p_max on the argmax, (1 - p_max) / (C - 1) elsewhere
        ("smoothing", TOP1, torch.tensor([[0.625], [0.5]], dtype=torch.float16), [[0.125, 0.125, 0.625, 0.125], [0.5, 1 / 6, 1 / 6, 1 / 6]]),
        # the top-K kept, (1 - their sum) / (C - K) elsewhere
        ("marginal-smoothing", TOP2, TOP2_VALUES, [[0.25, 0.125, 0.5, 0.125], [0.125, 0.625, 0.125, 0.125]]),
        # the top-K divided by their sum, 0 elsewhere
        ("marginal-renorm", TOP2, TOP2_VALUES, [[1 / 3, 0, 2 / 3, 0], [0, 5 / 6, 0, 1 / 6]]),
        ("full", None, FULL_VALUES, [[0.125, 0.25, 0.5, 0.125], [0.5, 0.25, 0.25, 0.0]]),
    ],
)
def test_fkd_mode_targets_are_the_schemes_dense_labels(scheme: str, indices, values, expected: list) -> None:
    mode = FKDMode(scheme, 4)
    targets = mode.targets(_batch([0, 1], indices, values))
    expected_t = torch.tensor(expected, dtype=torch.float32)
    assert torch.allclose(targets, expected_t, rtol=0, atol=1e-6)
    logits = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.25, 3.0, -1.0, 1.0]])
    hand = -(expected_t * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert torch.allclose(mode.loss(logits, None, targets), hand, rtol=1e-6, atol=0)


def test_gt_weight_mixes_the_ground_truth_into_the_stored_labels() -> None:
    """target = (1 - W) * stored + W * smoothed one-hot; so the loss is (1 - W) CE(stored) + W CE(truth)."""
    mode = FKDMode("marginal-smoothing", 4, gt_weight=0.25, smoothing=0.1)
    targets = mode.targets(_batch([0, 3], TOP2, TOP2_VALUES))
    stored = torch.tensor([[0.25, 0.125, 0.5, 0.125], [0.125, 0.625, 0.125, 0.125]])
    truth = torch.tensor([[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.025, 0.925]])
    assert torch.allclose(targets, 0.75 * stored + 0.25 * truth, rtol=0, atol=1e-6)
    logits = torch.randn(2, 4)
    expected = 0.75 * soft_target_cross_entropy(logits, stored) + 0.25 * soft_target_cross_entropy(logits, truth)
    assert torch.allclose(mode.loss(logits, None, targets), expected, rtol=1e-6)


def test_deit_mode_splits_heads_between_ground_truth_and_store() -> None:
    mode = DeiTMode("marginal-smoothing", 4, smoothing=0.0, kind="soft", alpha=0.3)
    targets = mode.targets(_batch([1, 3], TOP2, TOP2_VALUES))
    assert targets.shape == (2, 8)
    cls, dist = torch.randn(2, 4), torch.randn(2, 4)
    stored = decode(TOP2, TOP2_VALUES, "marginal-smoothing", 4)
    expected = deit_token_loss(cls, dist, one_hot_targets(torch.tensor([1, 3]), 4, 0.0), stored, "soft", 0.3)
    assert torch.allclose(mode.loss((cls, dist), None, targets), expected)
    with pytest.raises(TypeError, match="needs a distilled model"):
        mode.loss(cls, None, targets)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_deit_soft_distillation_retempers_the_stored_probabilities_at_kd_tau() -> None:
    """DeiT soft: (1 - a) CE(cls, y) + a tau^2 KL(p^(1/tau) / Z || softmax(dist / tau)), in float64 by hand."""
    tau, alpha = 2.0, 0.3
    cls = np.array([[1.0, -0.5, 0.25, 2.0], [0.0, 1.5, -1.0, 0.5]])
    dist = np.array([[0.5, 0.0, 1.0, -1.0], [2.0, -0.5, 0.0, 1.0]])
    p = FULL_VALUES.double().numpy()  # exact in float16; one class has probability 0
    q = np.sqrt(p) / np.sqrt(p).sum(axis=1, keepdims=True)  # p ** (1 / tau), renormalized
    kl = np.array([sum(qc * (math.log(qc) - ls) for qc, ls in zip(qr, lr) if qc > 0) for qr, lr in zip(q, _log_softmax(dist / tau))])
    ce = -_log_softmax(cls)[[0, 1], [1, 3]]
    hand = (1 - alpha) * ce.mean() + alpha * tau**2 * kl.mean()
    mode = DeiTMode("full", 4, smoothing=0.0, kind="soft", alpha=alpha, tau=tau)
    targets = mode.targets(_batch([1, 3], None, FULL_VALUES))
    loss = mode.loss((torch.tensor(cls, dtype=torch.float32), torch.tensor(dist, dtype=torch.float32)), None, targets)
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    at_one = DeiTMode("full", 4, smoothing=0.0, kind="soft", alpha=alpha, tau=1.0)
    ce_dist = -(p * _log_softmax(dist)).sum(axis=1).mean()  # tau 1: soft-target CE on the stored labels
    at_one_loss = at_one.loss((torch.tensor(cls, dtype=torch.float32), torch.tensor(dist, dtype=torch.float32)), None, targets)
    assert at_one_loss.item() == pytest.approx((1 - alpha) * ce.mean() + alpha * ce_dist, rel=1e-6)


def test_online_kd_applies_one_temperature_hinton_kd() -> None:
    """The teacher gives probabilities at temperature 1; the loss is Hinton's tau^2 KL at tau, from its logits."""

    class Teacher(torch.nn.Module):
        data_config = type("Cfg", (), {"input_size": (12, 12)})()

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return 3.0 * x.mean(dim=(2, 3)) @ torch.tensor([[1.0, 0, 0, -1], [0, 1, 0, 0], [0, 0, 1, 1]])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen = x.shape
            return torch.softmax(self.logits(x), dim=1)

    teacher, tau = Teacher(), 2.0
    mode = OnlineKDMode(teacher, 4, smoothing=0.0, kind="soft", alpha=0.25, tau=tau)
    images, logits = torch.rand(2, 3, 8, 8), torch.randn(2, 4)
    targets = mode.targets(_batch([0, 3]))
    loss = mode.loss(logits, images, targets)
    assert teacher.seen == (2, 3, 12, 12)
    t = teacher.logits(torch.nn.functional.interpolate(images, size=(12, 12), mode="bilinear", antialias=True)).double()
    q = torch.softmax(t / tau, dim=1)
    kl = (q * (q.log() - torch.log_softmax(logits.double() / tau, dim=1))).sum(dim=1).mean()
    expected = 0.75 * soft_target_cross_entropy(logits, targets).double() + 0.25 * tau**2 * kl
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mode", "fkd", "--kd", "hard"], "--kd hard has no effect in --mode fkd: it is used by --mode online-kd and deit only"),
        (["--mode", "supervised", "--kd-alpha", "0.2"], "--kd-alpha 0.2 has no effect in --mode supervised: it is used by --mode online-kd and deit only"),
        (["--mode", "fkd", "--kd-tau", "3"], "--kd-tau 3.0 has no effect in --mode fkd: it is used by --mode online-kd and deit only"),
        (["--mode", "deit", "--kd", "hard", "--kd-tau", "3"], "--kd-tau 3.0 has no effect with --kd hard (it learns the teacher's top-1 class)"),
        (["--mode", "online-kd", "--teacher", "test_resnet", "--kd", "hard", "--kd-tau", "2"], "--kd-tau 2.0 has no effect with --kd hard"),
        (["--mode", "online-kd", "--teacher", "test_resnet", "--temperature", "2"],
         "--temperature 2.0 is not used by fkd-train: set the distillation temperature with --kd-tau"),
        (["--mode", "deit", "--temperature", "4"], "--temperature 4.0 is not used by fkd-train"),
        (["--mode", "supervised", "--gt-weight", "0.3"], "--gt-weight mixes ground truth into stored labels (--mode fkd)"),
        (["--mode", "fkd", "--gt-weight", "1.5"], "--gt-weight must be in [0, 1], got 1.5"),
        (["--mode", "fkd", "--smoothing", "0.1"], "--smoothing smooths ground-truth targets: in --mode fkd it needs --gt-weight W > 0"),
        (["--mode", "supervised", "--stored-crops", "random"], "--stored-crops chooses among stored crops: --mode supervised draws fresh"),
        (["--reprob", "1.5"], "--reprob must be in [0, 1], got 1.5"),
        (["--reprob", "0.25", "--recount", "0"], "--recount must be >= 1, got 0"),
    ],
)
def test_options_a_run_would_not_use_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str) -> None:
    argv = ["--data", str(tmp_path), "--store", str(tmp_path), "--model", "test_resnet", "--output", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"fkd-train: error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything is written
