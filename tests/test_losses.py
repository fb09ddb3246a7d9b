"""fkd.losses.labels: every formula against values computed by hand with explicit math."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fkd.losses.labels import (
    DistillationLoss,
    classification_loss,
    deit_token_loss,
    kd_hard_loss,
    kd_soft_loss,
    soft_target_cross_entropy,
    teacher_distribution,
)

Z = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]  # student logits (2 x 3)
T = [[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]]  # teacher logits (2 x 3)
P = [[0.2, 0.3, 0.5], [0.6, 0.0, 0.4]]  # a soft target with a zero entry


def softmax(row: list[float], tau: float = 1.0) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def ce(z_row: list[float], p_row: list[float]) -> float:
    """-sum_c p_c log softmax(z)_c by hand."""
    return -sum(p * math.log(q) for p, q in zip(p_row, softmax(z_row)))


def kl(p_row: list[float], q_row: list[float]) -> float:
    return sum(p * math.log(p / q) for p, q in zip(p_row, q_row) if p > 0)


def tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).float()


def expected_soft_kd(tau: float) -> float:
    return tau**2 * sum(kl(softmax(t, tau), softmax(z, tau)) for t, z in zip(T, Z)) / 2


def test_soft_target_cross_entropy_matches_hand_computation() -> None:
    expected = (ce(Z[0], P[0]) + ce(Z[1], P[1])) / 2
    got = soft_target_cross_entropy(tensor(Z), tensor(P))
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_soft_target_cross_entropy_is_float32_for_half_inputs_and_under_autocast() -> None:
    z16, p16 = tensor(Z).half(), tensor(P).half()
    expected = soft_target_cross_entropy(z16.float(), p16.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = soft_target_cross_entropy(z16, p16)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_soft_target_cross_entropy_stays_finite_for_huge_half_logits() -> None:
    # exp(60000) overflows fp16 and fp32; log_softmax in fp32 handles it exactly.
    z = torch.tensor([[60000.0, 0.0]], dtype=torch.float16)
    got = soft_target_cross_entropy(z, torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(got, torch.tensor(30000.0))


def test_classification_loss_hard_and_soft() -> None:
    labels = torch.tensor([2, 0])
    expected_hard = (-math.log(softmax(Z[0])[2]) - math.log(softmax(Z[1])[0])) / 2
    assert torch.allclose(classification_loss(tensor(Z), labels), torch.tensor(expected_hard))
    one_hot = F.one_hot(labels, 3).float()
    assert torch.allclose(classification_loss(tensor(Z), one_hot), torch.tensor(expected_hard))


def test_classification_loss_rejects_wrong_label_shape() -> None:
    with pytest.raises(ValueError, match=r"integer targets must have shape \(2,\) .*got \(2, 1\)"):
        classification_loss(tensor(Z), torch.tensor([[1], [0]]))


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kd_soft_loss_is_batchmean_kl_times_tau_squared(tau: float) -> None:
    got = kd_soft_loss(tensor(Z), tensor(T), tau)
    assert torch.allclose(got, torch.tensor(expected_soft_kd(tau)), atol=1e-6)


def test_kd_soft_loss_tau_squared_factor() -> None:
    # Scaling logits by tau and using temperature tau gives the same KL, so the only difference
    # between the two losses is the tau**2 factor.
    tau = 3.0
    at_tau = kd_soft_loss(tensor(Z) * tau, tensor(T) * tau, tau)
    at_one = kd_soft_loss(tensor(Z), tensor(T), 1.0)
    assert torch.allclose(at_tau, at_one * tau**2, rtol=1e-5)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_teacher_probabilities_at_tau_equal_softmax_of_logits_over_tau(tau: float) -> None:
    logits = tensor(T)
    p = F.softmax(logits, dim=-1)
    powered = p ** (1 / tau)
    renormalized = powered / powered.sum(-1, keepdim=True)
    from_prob = teacher_distribution(p, tau, teacher_is_prob=True)
    from_logits = teacher_distribution(logits, tau)
    assert torch.allclose(from_prob, renormalized, atol=1e-6)
    assert torch.allclose(from_prob, from_logits, atol=1e-6)
    assert torch.allclose(
        kd_soft_loss(tensor(Z), p, tau, teacher_is_prob=True), kd_soft_loss(tensor(Z), logits, tau), atol=1e-6
    )


@pytest.mark.parametrize("teacher_tau", [2.0, 3.0])
def test_teacher_probabilities_at_their_own_temperature_re_temper_from_it(teacher_tau: float) -> None:
    """p = softmax(t / T): at tau, softmax(T log p / tau) = softmax(t / tau); at tau == T, p itself."""
    tau = 3.0
    p = F.softmax(tensor(T) / teacher_tau, dim=-1)
    got = teacher_distribution(p, tau, teacher_is_prob=True, teacher_tau=teacher_tau)
    assert torch.allclose(got, F.softmax(tensor(T) / tau, dim=-1), atol=1e-6)
    expected = tau**2 * sum(kl(softmax(t, tau), softmax(z, tau)) for t, z in zip(T, Z)) / 2
    assert kd_soft_loss(tensor(Z), p, tau, teacher_is_prob=True, teacher_tau=teacher_tau).item() == pytest.approx(expected, rel=1e-5)
    if teacher_tau == tau:
        assert torch.equal(got, p / p.sum(-1, keepdim=True))


def test_kd_soft_loss_with_zero_probabilities_is_finite_and_exact() -> None:
    tau = 2.0
    expected = 0.0
    for z, p in zip(Z, P):
        q = [x ** (1 / tau) for x in p]
        q = [x / sum(q) for x in q]
        expected += kl(q, softmax(z, tau))
    expected *= tau**2 / 2
    got = kd_soft_loss(tensor(Z), tensor(P), tau, teacher_is_prob=True)
    assert teacher_distribution(tensor(P), tau, teacher_is_prob=True)[1, 1] == 0
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


def test_kd_hard_loss_is_ce_on_teacher_argmax() -> None:
    # argmax of T rows: 0 and 2.
    expected = (-math.log(softmax(Z[0])[0]) - math.log(softmax(Z[1])[2])) / 2
    assert torch.allclose(kd_hard_loss(tensor(Z), tensor(T)), torch.tensor(expected))
    assert torch.allclose(kd_hard_loss(tensor(Z), F.softmax(tensor(T), -1)), torch.tensor(expected))


def test_kd_losses_reject_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"teacher must have the logits' shape \(2, 3\); got \(2, 4\)"):
        kd_soft_loss(tensor(Z), torch.zeros(2, 4), 1.0)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
def test_distillation_loss_soft_blends_with_alpha(alpha: float) -> None:
    labels = torch.tensor([2, 0])
    base = (-math.log(softmax(Z[0])[2]) - math.log(softmax(Z[1])[0])) / 2
    loss = DistillationLoss(kind="soft", alpha=alpha, tau=3.0)
    expected = (1 - alpha) * base + alpha * expected_soft_kd(3.0)
    assert torch.allclose(loss(tensor(Z), labels, tensor(T)), torch.tensor(expected), atol=1e-6)


def test_distillation_loss_hard_and_none() -> None:
    labels = torch.tensor([1, 1])
    base = (-math.log(softmax(Z[0])[1]) - math.log(softmax(Z[1])[1])) / 2
    kd = (-math.log(softmax(Z[0])[0]) - math.log(softmax(Z[1])[2])) / 2
    hard = DistillationLoss(kind="hard", alpha=0.25)
    assert torch.allclose(hard(tensor(Z), labels, tensor(T)), torch.tensor(0.75 * base + 0.25 * kd))
    none = DistillationLoss(kind="none", alpha=0.25)
    assert torch.allclose(none(tensor(Z), labels), torch.tensor(base))
    assert torch.allclose(none(tensor(Z), labels, tensor(T)), torch.tensor(base))


def test_distillation_loss_uses_given_base_and_teacher_probabilities() -> None:
    base = soft_target_cross_entropy(tensor(Z), tensor(P))
    p = F.softmax(tensor(T), -1)
    loss = DistillationLoss(kind="soft", alpha=0.3, tau=2.0, base=soft_target_cross_entropy, teacher_is_prob=True)
    expected = 0.7 * base + 0.3 * expected_soft_kd(2.0)
    assert torch.allclose(loss(tensor(Z), tensor(P), p), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "bogus"}, "distillation kind must be one of none, soft, hard; got 'bogus'"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]; got 1.5"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\]; got -0.1"),
        ({"tau": 0.0}, "tau must be > 0; got 0.0"),
        ({"tau": -2.0}, "tau must be > 0; got -2.0"),
    ],
)
def test_distillation_loss_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistillationLoss(**kwargs)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_distillation_loss_needs_teacher(kind: str) -> None:
    with pytest.raises(ValueError, match=f"distillation kind '{kind}' needs teacher outputs, got None"):
        DistillationLoss(kind=kind)(tensor(Z), torch.tensor([0, 1]))


def test_deit_token_loss_hard_is_half_and_half() -> None:
    cls, dist = tensor(Z), tensor(Z).flip(-1)
    labels = torch.tensor([0, 1])
    base = (-math.log(softmax(Z[0])[0]) - math.log(softmax(Z[1])[1])) / 2
    # dist rows are Z reversed; teacher argmax is 0 and 2.
    kd = (-math.log(softmax(Z[0][::-1])[0]) - math.log(softmax(Z[1][::-1])[2])) / 2
    got = deit_token_loss(cls, dist, labels, F.softmax(tensor(T), -1), kind="hard")
    assert torch.allclose(got, torch.tensor(0.5 * base + 0.5 * kd))


def test_deit_token_loss_soft_with_stored_probabilities_and_mixed_targets() -> None:
    cls, dist = tensor(Z), tensor(T)
    teacher_probs = tensor(P)
    mixed = tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    base = (ce(Z[0], [0.7, 0.3, 0.0]) + ce(Z[1], [0.0, 0.4, 0.6])) / 2
    kd = (ce(T[0], P[0]) + ce(T[1], P[1])) / 2
    got = deit_token_loss(cls, dist, mixed, teacher_probs, kind="soft", alpha=0.1)
    assert torch.allclose(got, torch.tensor(0.9 * base + 0.1 * kd), atol=1e-6)


def test_deit_token_loss_soft_with_teacher_logits_and_tau() -> None:
    labels = torch.tensor([2, 0])
    base = (-math.log(softmax(Z[0])[2]) - math.log(softmax(Z[1])[0])) / 2
    got = deit_token_loss(tensor(Z), tensor(Z), labels, tensor(T), kind="soft", alpha=0.4, tau=3.0)
    assert torch.allclose(got, torch.tensor(0.6 * base + 0.4 * expected_soft_kd(3.0)), atol=1e-6)


def test_deit_token_loss_errors() -> None:
    args = (tensor(Z), tensor(Z), torch.tensor([0, 1]), tensor(T))
    with pytest.raises(ValueError, match="the distillation token needs kind 'soft' or 'hard'; got 'none'"):
        deit_token_loss(*args, kind="none")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]; got 2"):
        deit_token_loss(*args, kind="hard", alpha=2)
    with pytest.raises(ValueError, match="tau must be > 0; got 0"):
        deit_token_loss(*args, kind="soft", tau=0)
