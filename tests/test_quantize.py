"""Quantization codecs: exact formulas on hand-worked examples, properties, ties, K >= C."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fkd.payload.quantize import LOG_PROB_FLOOR, LabelCodec, Scheme, decode, encode, payload_shape, stored_top_k
from fkd.payload.schemes import SCHEMES

P = np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype=np.float32)


def roundtrip(probs: np.ndarray, scheme: str, k: int = 2) -> torch.Tensor:
    payload = encode(probs, scheme, k)
    idx = None if payload.indices is None else torch.from_numpy(payload.indices.astype(np.int64))
    val = None if payload.values is None else torch.from_numpy(payload.values)
    return decode(idx, val, scheme, probs.shape[1], log_probs=scheme == "full")


def test_hardening_is_one_hot_of_argmax() -> None:
    payload = encode(P, "hardening")
    assert payload.indices.tolist() == [[0]] and payload.values is None
    assert roundtrip(P, "hardening").tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0]]


def test_smoothing_spreads_the_rest_uniformly() -> None:
    # p_max = 0.5 stays, (1 - 0.5) / 4 = 0.125 on each other class.
    out = roundtrip(P, "smoothing")
    assert torch.allclose(out, torch.tensor([[0.5, 0.125, 0.125, 0.125, 0.125]]), atol=1e-4)


def test_marginal_smoothing_keeps_top_k_and_spreads_the_rest() -> None:
    # top-2 = 0.5, 0.2; rest 0.3 over 3 classes = 0.1 each.
    out = roundtrip(P, "marginal-smoothing", 2)
    assert torch.allclose(out, torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.1]]), atol=1e-3)


def test_marginal_renorm_divides_by_top_k_mass() -> None:
    out = roundtrip(P, "marginal-renorm", 2)
    assert torch.allclose(out, torch.tensor([[0.5 / 0.7, 0.2 / 0.7, 0.0, 0.0, 0.0]]), atol=1e-3)


def test_full_keeps_every_log_probability_in_float16() -> None:
    """full stores ln p (float16, in [floor, 0]); a probability of 0 gets the floor. Decoding is
    exp(ln p) renormalized: softmax of the stored values."""
    probs = np.array([[0.5, 0.25, 0.25 - 2**-30, 2**-30, 0.0]], dtype=np.float32)
    payload = encode(probs, "full")
    assert payload.indices is None and payload.values.dtype == np.float16 and payload.values.shape == (1, 5)
    with np.errstate(divide="ignore"):
        expected = np.maximum(np.log(probs), LOG_PROB_FLOOR).astype(np.float16)
    assert np.array_equal(payload.values, expected) and payload.values[0, 4] == LOG_PROB_FLOOR == -104.0
    assert payload.values[0, 0] == np.float16(math.log(0.5)) and payload.values[0, 3] == np.float16(-30 * math.log(2))
    values = torch.from_numpy(payload.values)
    decoded = decode(None, values, "full", 5, log_probs=True)
    assert torch.equal(decoded, torch.softmax(values.float(), -1))
    assert torch.allclose(decoded, torch.from_numpy(probs), rtol=1e-3, atol=1e-9)
    # An older full store keeps float16 probabilities: decoded as before (clamped, renormalized).
    legacy = torch.tensor([[0.5, 0.25, 0.25, 0.0]], dtype=torch.float16)
    assert decode(None, legacy, "full", 4).tolist() == [[0.5, 0.25, 0.25, 0.0]]
    # Tools that re-encode or export get probabilities either way (encode refuses log-probabilities).
    codec = LabelCodec("full", 5, log_probs=True)
    assert np.array_equal(codec.stored_probabilities(payload.values), np.exp(payload.values.astype(np.float32)))
    assert np.allclose(encode(codec.stored_probabilities(payload.values), "full").values, payload.values, rtol=2**-10)
    assert LabelCodec("full", 4).stored_probabilities(legacy.numpy()).tolist() == [[0.5, 0.25, 0.25, 0.0]]


def test_encode_refuses_negative_probabilities() -> None:
    """Log-probabilities (a format-5 full store's values) are not probabilities: re-quantizing them
    unconverted is refused instead of storing garbage."""
    with pytest.raises(ValueError, match=r"encode takes probabilities \(>= 0\), got values down to -3: decode log-probabilities first"):
        encode(np.log(P), "marginal-renorm", 2)


# A confident teacher: logit 20 on one class, 0 on 999 others. At temperature 1 each other class has
# p = e^-20 / Z ~ 2.1e-9, below float16's smallest subnormal (6e-8): a float16 probability is 0, and
# 0 stays 0 under p^(1/tau). At tau 3 those 999 classes really hold 1 - e^(20/3) / Z3 ~ 0.56 of the mass.
CONFIDENT = np.concatenate([[20.0], np.zeros(999)])[None]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_full_log_probabilities_re_temper_exactly_where_float16_probabilities_lose_the_tail() -> None:
    tau = 3.0
    truth = _softmax(CONFIDENT / tau)[0]
    assert truth[0] == pytest.approx(0.4403, abs=1e-4)
    probs = _softmax(CONFIDENT).astype(np.float32)
    assert probs.astype(np.float16)[0, 1] == 0  # what an older full store kept
    legacy = LabelCodec("full", 1000, temperature=1.0, log_probs=False)
    assert legacy.retemper_problem(tau) is not None
    with pytest.raises(ValueError, match="cannot be re-tempered exactly"):
        legacy.tempered(None, torch.from_numpy(probs.astype(np.float16)), tau)
    codec = LabelCodec("full", 1000, temperature=1.0, log_probs=True)
    assert codec.retemper_problem(tau) is None
    got = codec.tempered(None, torch.from_numpy(encode(probs, "full").values), tau)[0].double().numpy()
    assert 0.5 * np.abs(got - truth).sum() < 1e-3  # float16 rounding of ln p only
    assert got[0] == pytest.approx(truth[0], rel=1e-3)


def test_re_tempering_honours_the_store_temperature() -> None:
    """Values of a store made at temperature T are ln softmax(z / T); at tau the teacher's
    distribution is softmax(T * ln p / tau) = softmax(z / tau). At tau == T every scheme gives its
    stored distribution unchanged; at another tau only a format-5 full store can."""
    z = np.array([[3.0, 1.0, 0.0, -2.0]])
    temperature, tau = 2.0, 4.0
    values = torch.from_numpy(encode(_softmax(z / temperature).astype(np.float32), "full").values)
    codec = LabelCodec("full", 4, temperature=temperature, log_probs=True)
    expected = torch.softmax(values.float() * temperature / tau, -1)
    assert torch.equal(codec.tempered(None, values, tau), expected)
    assert torch.allclose(expected.double(), torch.from_numpy(_softmax(z / tau)), rtol=2e-3)
    assert torch.equal(codec.tempered(None, values, temperature), codec.decode(None, values))
    top2 = LabelCodec("marginal-renorm", 4, temperature=temperature)
    idx, val = torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.25]], dtype=torch.float16)
    assert torch.equal(top2.tempered(idx, val, temperature), decode(idx, val, "marginal-renorm", 4))
    assert top2.retemper_problem(temperature) is None
    assert top2.retemper_problem(1.0).startswith("a marginal-renorm store (made at temperature 2.0) cannot be re-tempered exactly to 1.0")
    with pytest.raises(ValueError, match="log-probabilities are kept by full stores only"):
        LabelCodec("smoothing", 4, log_probs=True)


def test_payload_dtypes_and_shapes() -> None:
    probs = np.full((3, 70000), 1 / 70000, dtype=np.float32)
    probs[:, 69999] += 0.5
    probs /= probs.sum(1, keepdims=True)
    payload = encode(probs, "marginal-smoothing", 5)
    assert payload.indices.dtype == np.uint32 and payload.indices[:, 0].tolist() == [69999] * 3
    assert encode(P, "marginal-renorm", 3).indices.dtype == np.uint16
    assert payload_shape("smoothing", 5, 1000) == payload_shape("smoothing", 1, 1000)
    assert (payload_shape("marginal-renorm", 5, 1000).num_indices, payload_shape("full", 5, 1000).num_values) == (5, 1000)


def test_ties_go_to_the_lower_class_index() -> None:
    probs = np.array([[0.1, 0.3, 0.3, 0.3]], dtype=np.float32)
    assert encode(probs, "marginal-renorm", 2).indices.tolist() == [[1, 2]]
    assert encode(probs, "hardening").indices.tolist() == [[1]]


def test_k_at_or_above_c_keeps_everything() -> None:
    assert stored_top_k("marginal-smoothing", 10, 5) == 5
    for scheme in ("marginal-smoothing", "marginal-renorm"):
        out = roundtrip(P, scheme, 10)
        assert torch.allclose(out, torch.from_numpy(P), atol=1e-3)


def test_scheme_names_and_errors() -> None:
    assert Scheme.parse("marginal_renorm") is Scheme.MARGINAL_RENORM
    with pytest.raises(ValueError, match="unknown label scheme 'topk'; choose one of: hardening, smoothing"):
        Scheme.parse("topk")
    with pytest.raises(ValueError, match="--top-k must be >= 1"):
        encode(P, "marginal-smoothing", 0)


def test_decode_is_batched_over_leading_axes() -> None:
    probs = np.random.default_rng(0).dirichlet(np.ones(6), size=(4 * 3)).astype(np.float32)
    payload = encode(probs, "marginal-smoothing", 3)
    flat = decode(torch.from_numpy(payload.indices.astype(np.int64)), torch.from_numpy(payload.values), "marginal-smoothing", 6)
    batched = decode(
        torch.from_numpy(payload.indices.astype(np.int64)).view(4, 3, 3), torch.from_numpy(payload.values).view(4, 3, 3), "marginal-smoothing", 6
    )
    assert torch.equal(batched.view(12, 6), flat)


distributions = st.integers(2, 40).flatmap(
    lambda c: arrays(np.float64, (3, c), elements=st.floats(0.0, 1.0, allow_nan=False)).filter(lambda a: (a.sum(1) > 1e-3).all())
)


@settings(max_examples=150, deadline=None)
@given(raw=distributions, k=st.integers(1, 45), scheme=st.sampled_from(SCHEMES))
def test_decoded_labels_are_distributions_that_keep_the_argmax(raw: np.ndarray, k: int, scheme: str) -> None:
    probs = (raw / raw.sum(1, keepdims=True)).astype(np.float32)
    out = roundtrip(probs, scheme, k).numpy()
    assert (out >= 0).all()
    assert np.allclose(out.sum(1), 1.0, atol=1e-5)
    top1 = np.argmax(probs, axis=1)
    # The teacher's top-1 class is a top-1 class of the decoded label (ties may add others) ...
    assert (out[np.arange(len(out)), top1] >= out.max(1) - 1e-7).all()
    # ... and it is the unique argmax whenever the teacher had a clear margin.
    second = np.sort(probs, axis=1)[:, -2]
    clear = probs.max(1) - second > 2e-3
    assert (out.argmax(1)[clear] == top1[clear]).all()
