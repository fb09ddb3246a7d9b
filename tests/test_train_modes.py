"""fkd-train modes: exact targets per label scheme, exact losses (DeiT at a temperature, Hinton KD),
and the refusal of distillation options a run would not use."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fkd.data.multicrop import CropBatch
from fkd.data.targets import one_hot_targets
from fkd.losses.features import feature_loss, whiten
from fkd.losses.labels import deit_token_loss, soft_target_cross_entropy
from fkd.payload.quantize import decode, encode
from train.cli import main
from train.errors import SetupError
from train.feature_modes import EmbeddingMode
from train.modes import DeiTMode, FKDMode, OnlineKDMode

from conftest import TinyData, train_args


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
        ("full", None, FULL_VALUES, [[0.125, 0.25, 0.5, 0.125], [0.5, 0.25, 0.25, 0.0]]),  # an older store: probabilities
        ("full-log", None, torch.tensor([[-2.0, -1.0, 0.0, -2.0], [0.0, -1.0, -1.0, -104.0]], dtype=torch.float16),
         [[e / (2 * math.exp(-2) + math.exp(-1) + 1) for e in (math.exp(-2), math.exp(-1), 1.0, math.exp(-2))],
          [e / (1 + 2 * math.exp(-1)) for e in (1.0, math.exp(-1), math.exp(-1), 0.0)]]),
    ],
)
def test_fkd_mode_targets_are_the_schemes_dense_labels(scheme: str, indices, values, expected: list) -> None:
    """full-log: a format-5 full store's ln p, decoded as exp, renormalized (e^-104 is below 1e-6)."""
    mode = FKDMode("full", 4, log_probs=True) if scheme == "full-log" else FKDMode(scheme, 4)
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


def _deit_loss_by_hand(cls: np.ndarray, dist: np.ndarray, labels: list[int], q: np.ndarray, alpha: float, tau: float) -> float:
    """(1 - a) CE(cls, y) + a tau^2 KL(q || softmax(dist / tau)), in float64."""
    kl = np.array([sum(qc * (math.log(qc) - ls) for qc, ls in zip(qr, lr) if qc > 0) for qr, lr in zip(q, _log_softmax(dist / tau))])
    ce = -_log_softmax(cls)[np.arange(len(labels)), labels]
    return (1 - alpha) * ce.mean() + alpha * tau**2 * kl.mean()


CLS = np.array([[1.0, -0.5, 0.25, 2.0], [0.0, 1.5, -1.0, 0.5]])
DIST = np.array([[0.5, 0.0, 1.0, -1.0], [2.0, -0.5, 0.0, 1.0]])


def _loss(mode: DeiTMode, indices, values) -> float:
    targets = mode.targets(_batch([1, 3], indices, values))
    return mode.loss((torch.tensor(CLS, dtype=torch.float32), torch.tensor(DIST, dtype=torch.float32)), None, targets).item()


def test_deit_soft_distillation_re_tempers_a_full_store_of_log_probabilities_exactly() -> None:
    """A format-5 full store keeps ln p at the store's temperature T; at tau the teacher is
    softmax(T ln p / tau): here T = 1, tau = 2, so q = sqrt(p) renormalized, by hand in float64
    from the stored float16 ln p."""
    tau, alpha = 2.0, 0.3
    values = torch.from_numpy(encode(np.array([[0.125, 0.25, 0.5, 0.125], [0.5, 0.25, 0.125, 0.125]], np.float32), "full").values)
    p = np.exp(values.double().numpy())
    p /= p.sum(axis=1, keepdims=True)
    q = np.sqrt(p) / np.sqrt(p).sum(axis=1, keepdims=True)
    mode = DeiTMode("full", 4, smoothing=0.0, kind="soft", alpha=alpha, tau=tau, log_probs=True)
    assert torch.allclose(mode.targets(_batch([1, 3], None, values))[:, 4:].double(), torch.from_numpy(q), rtol=1e-6)
    assert _loss(mode, None, values) == pytest.approx(_deit_loss_by_hand(CLS, DIST, [1, 3], q, alpha, tau), rel=1e-6)
    # tau 1 at T = 1: soft-target CE on the stored labels, as before.
    at_one = DeiTMode("full", 4, smoothing=0.0, kind="soft", alpha=alpha, tau=1.0, log_probs=True)
    ce_dist = -(p * _log_softmax(DIST)).sum(axis=1).mean()
    ce_cls = -_log_softmax(CLS)[[0, 1], [1, 3]].mean()
    assert _loss(at_one, None, values) == pytest.approx((1 - alpha) * ce_cls + alpha * ce_dist, rel=1e-6)


@pytest.mark.parametrize("scheme", ["marginal-smoothing", "full"])
def test_deit_soft_distillation_at_the_store_temperature_uses_the_stored_labels(scheme: str) -> None:
    """A store made with --temperature 2 already holds the teacher at 2: --kd-tau 2 distills from its
    decoded labels as they are (before: re-tempered once more, i.e. the teacher at 4)."""
    tau, alpha = 2.0, 0.3
    indices, values = (TOP2, TOP2_VALUES) if scheme != "full" else (None, FULL_VALUES)
    stored = decode(indices, values, scheme, 4).double().numpy()
    mode = DeiTMode(scheme, 4, smoothing=0.0, kind="soft", alpha=alpha, tau=tau, temperature=2.0)
    assert _loss(mode, indices, values) == pytest.approx(_deit_loss_by_hand(CLS, DIST, [1, 3], stored, alpha, tau), rel=1e-6)
    # A full store of log-probabilities made at T = 2 and asked for tau 2: the same stored distribution.
    if scheme == "full":
        logs = FULL_VALUES.float().log().clamp_min(-104).half()
        stored_logs = np.exp(logs.double().numpy())
        stored_logs /= stored_logs.sum(axis=1, keepdims=True)
        exact = DeiTMode(scheme, 4, smoothing=0.0, kind="soft", alpha=alpha, tau=tau, temperature=2.0, log_probs=True)
        assert _loss(exact, None, logs) == pytest.approx(_deit_loss_by_hand(CLS, DIST, [1, 3], stored_logs, alpha, tau), rel=1e-6)


REMEDY = "; use --kd-tau 1.0 (the store's temperature) or a full store of this fkd (fkd-labelgen --scheme full keeps log-probabilities, format version 5)"
MEASURED = "re-tempered to tau 3 they are off by a total variation of {} on average and {} at worst on the real CIFAR-10 teacher's crops ({} at worst on 1000-class ImageNet-like labels)"


@pytest.mark.parametrize(("scheme", "message"), [
    ("hardening", "a hardening store (made at temperature 1.0) cannot be re-tempered exactly to 3.0: it keeps each crop's top-1 "
                  "class only; " + MEASURED.format("0.60", "0.85", "1.00")),
    ("smoothing", "a smoothing store (made at temperature 1.0) cannot be re-tempered exactly to 3.0: it keeps p_max only and "
                  "spreads the rest uniformly; " + MEASURED.format("0.23", "0.59", "0.38")),
    ("marginal-smoothing", "a marginal-smoothing store (made at temperature 1.0) cannot be re-tempered exactly to 3.0: it keeps "
                           "the top K and spreads the rest uniformly; " + MEASURED.format("0.03", "0.09", "0.32")),
    ("marginal-renorm", "a marginal-renorm store (made at temperature 1.0) cannot be re-tempered exactly to 3.0: it keeps the "
                        "top K and drops the rest; " + MEASURED.format("0.17", "0.37", "0.99")),
    ("full", "a full store of probabilities (made at temperature 1.0, before format version 5) cannot be re-tempered exactly "
             "to 3.0: its float16 probabilities below 6e-8 are 0, and 0 stays 0; " + MEASURED.format("0.00017", "0.011", "0.10")),
])
def test_deit_soft_distillation_refuses_inexact_re_tempering(scheme: str, message: str) -> None:
    """Top-K stores and full stores of probabilities cannot give the teacher at another temperature:
    refused in one line with the measured error (tests/test_retemper_measured.py) and the two
    remedies. --kd hard needs no temperature; tau equal to the store's temperature is exact."""
    with pytest.raises(SetupError) as refused:
        DeiTMode(scheme, 4, smoothing=0.0, kind="soft", alpha=0.1, tau=3.0)
    assert str(refused.value) == "--kd-tau 3.0: " + message + REMEDY
    DeiTMode(scheme, 4, smoothing=0.0, kind="hard", alpha=0.5, tau=3.0)
    DeiTMode(scheme, 4, smoothing=0.0, kind="soft", alpha=0.1, tau=3.0, temperature=3.0)


def test_fkd_train_refuses_inexact_deit_re_tempering_in_one_line(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The tiny store holds marginal-smoothing labels at temperature 1."""
    deit = ["deit_tiny_distilled_patch16_224", "--model-kwargs", "img_size=32", "patch_size=8", "depth=1", "embed_dim=32",
            "num_heads=2"]
    out = tmp_path / "out"
    assert main(train_args(tiny, out, "--mode", "deit", "--kd", "soft", "--kd-tau", "3", "--model", *deit)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()
    assert err.startswith("fkd-train: error: --kd-tau 3.0: a marginal-smoothing store (made at temperature 1.0) cannot be "
                          "re-tempered exactly to 3.0: it keeps the top K and spreads the rest uniformly; re-tempered to tau 3 "
                          "they are off by a total variation of 0.03 on average and 0.09 at worst")


def test_embedding_mode_whitens_each_ensemble_member_apart() -> None:
    """Target [member a (2 values) | member b (3 values)]: smooth-l1 against LN(a) | LN(b), each
    without affine; b's scale (x 1000) then changes nothing, where one LayerNorm over all 5 would
    leave a's slice near 0. One member: bitwise the loss of before."""
    a = torch.tensor([[1.0, 3.0], [0.0, 4.0]])
    b = torch.tensor([[1000.0, -2000.0, 500.0], [0.0, 3000.0, 3000.0]])
    target = torch.cat([a, b], dim=1)
    pred = torch.tensor([[0.5, -0.5, 1.0, 0.0, -1.0], [2.0, 0.0, -1.0, 1.0, 0.0]])
    s1, s2 = 1 / math.sqrt(1 + 1e-5), 1 / math.sqrt(1 + 1e-5 / 4)
    whitened_a = torch.tensor([[-s1, s1], [-s2, s2]])
    b64 = b.double()
    whitened_b = ((b64 - b64.mean(1, keepdim=True)) / torch.sqrt(b64.var(1, unbiased=False, keepdim=True) + 1e-5)).float()
    hand = torch.nn.functional.smooth_l1_loss(pred, torch.cat([whitened_a, whitened_b], dim=1), beta=2.0)
    assert feature_loss(pred, target, "smooth-l1", segments=(2, 3)).item() == pytest.approx(hand.item(), rel=1e-6)
    assert torch.equal(whiten(target, (2, 3))[:, :2], whiten(a))
    mode = EmbeddingMode(4, 5, "smooth-l1", member_dims=(2, 3))
    assert mode.loss((torch.zeros(2, 4), pred), None, target).item() == pytest.approx(hand.item(), rel=1e-6)
    single = EmbeddingMode(4, 5, "smooth-l1", member_dims=(5,))
    assert torch.equal(single.loss((torch.zeros(2, 4), pred), None, target), feature_loss(pred, target, "smooth-l1"))
    assert torch.equal(whiten(target, (5,)), whiten(target))
    with pytest.raises(ValueError, match=r"the members' dims \[2, 2\] do not add up to D=5"):
        EmbeddingMode(4, 5, "smooth-l1", member_dims=(2, 2))


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
