"""Quantization codecs: exact formulas on hand-worked examples, properties, ties, K >= C."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fkd.quantize import Scheme, decode, encode, payload_shape, stored_top_k
from fkd.schemes import SCHEMES

P = np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype=np.float32)


def roundtrip(probs: np.ndarray, scheme: str, k: int = 2) -> torch.Tensor:
    payload = encode(probs, scheme, k)
    idx = None if payload.indices is None else torch.from_numpy(payload.indices.astype(np.int64))
    val = None if payload.values is None else torch.from_numpy(payload.values)
    return decode(idx, val, scheme, probs.shape[1])


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


def test_full_keeps_every_probability_in_float16() -> None:
    payload = encode(P, "full")
    assert payload.indices is None and payload.values.dtype == np.float16 and payload.values.shape == (1, 5)
    assert torch.allclose(roundtrip(P, "full"), torch.from_numpy(P), atol=1e-3)


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
