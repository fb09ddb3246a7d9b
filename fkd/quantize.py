"""FKD soft-label quantization codecs (Shen & Xing, ECCV 2022, section 3.3).

Each scheme is a pair: ``encode`` turns teacher probabilities ``p`` (N, C) into the small payload
kept in the label store, ``decode`` turns payloads back into dense soft labels (N, C) that sum to 1.

Payload layout (what the store keeps per crop):

=====================  ==========================  =========================================
scheme                 indices (uint16/uint32)     values (float16)
=====================  ==========================  =========================================
hardening              (1,) argmax                 none
smoothing              (1,) argmax                 (1,) p_max
marginal-smoothing     (K,) top-K classes          (K,) their raw probabilities
marginal-renorm        (K,) top-K classes          (K,) their raw probabilities
full                   none                        (C,) all probabilities
=====================  ==========================  =========================================

The two marginal schemes store the same payload (raw top-K probabilities) and differ only in
decoding, so a store can be re-read under either without the teacher.

Ordering and ties: classes are ranked by descending probability with ties broken by the lower class
index (a stable sort), so ``indices[..., 0]`` is ``numpy.argmax(p)``.

Decoding runs batched on the training device: ``decode`` takes torch tensors and builds dense
targets with one ``scatter_`` per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .schemes import Scheme


@dataclass(frozen=True)
class PayloadShape:
    """How many indices and values one crop stores under a scheme (0 means the field is absent)."""

    num_indices: int
    num_values: int


def stored_top_k(scheme: "str | Scheme", top_k: int, num_classes: int) -> int:
    """The K a store actually keeps: K for the marginal schemes (capped at C), 1 for hardening and
    smoothing, C for full. Raises ValueError for K < 1."""
    scheme = Scheme.parse(scheme)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if scheme in (Scheme.MARGINAL_SMOOTHING, Scheme.MARGINAL_RENORM):
        if top_k < 1:
            raise ValueError(f"--top-k must be >= 1 for {scheme.value}, got {top_k}")
        return min(int(top_k), num_classes)
    if scheme is Scheme.FULL:
        return num_classes
    return 1


def payload_shape(scheme: "str | Scheme", top_k: int, num_classes: int) -> PayloadShape:
    """Per-crop payload sizes for ``scheme`` with the stored K (see ``stored_top_k``)."""
    scheme = Scheme.parse(scheme)
    k = stored_top_k(scheme, top_k, num_classes)
    if scheme is Scheme.HARDENING:
        return PayloadShape(1, 0)
    if scheme is Scheme.SMOOTHING:
        return PayloadShape(1, 1)
    if scheme is Scheme.FULL:
        return PayloadShape(0, num_classes)
    return PayloadShape(k, k)


def index_dtype(num_classes: int) -> np.dtype:
    """uint16 while every class index fits, else uint32."""
    return np.dtype(np.uint16) if num_classes <= 65535 else np.dtype(np.uint32)


@dataclass
class Payload:
    """Encoded labels for a batch of crops: ``indices`` (..., k) and/or ``values`` (..., k).
    ``arrays()`` gives them in the store's record order (``fkd.store.RecordLayout.payload_names``),
    as ``embedding_codec.EmbeddingPayload.arrays()`` does for embeddings."""

    indices: np.ndarray | None
    values: np.ndarray | None

    def arrays(self) -> tuple["np.ndarray | None", "np.ndarray | None"]:
        return self.indices, self.values


def _ranked(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries per row, descending, ties to the lower class index."""
    return np.argsort(-probs, axis=-1, kind="stable")[..., :k]


def encode(probs: np.ndarray, scheme: "str | Scheme", top_k: int = 5) -> Payload:
    """Quantize teacher probabilities ``probs`` (N, C), rows summing to 1, into a scheme's payload.

    Indices come out as uint16 (uint32 beyond 65535 classes), values as float16.
    """
    scheme = Scheme.parse(scheme)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2:
        raise ValueError(f"encode expects probabilities of shape (N, C), got {probs.shape}")
    num_classes = probs.shape[1]
    k = stored_top_k(scheme, top_k, num_classes)
    if scheme is Scheme.FULL:
        return Payload(None, probs.astype(np.float16))
    top = _ranked(probs, k)
    indices = top.astype(index_dtype(num_classes))
    if scheme is Scheme.HARDENING:
        return Payload(indices, None)
    values = np.take_along_axis(probs, top, -1).astype(np.float16)
    return Payload(indices, values)


def decode(
    indices: torch.Tensor | None,
    values: torch.Tensor | None,
    scheme: "str | Scheme",
    num_classes: int,
) -> torch.Tensor:
    """Dense soft labels (..., C) in float32 from a payload, on the payload's device.

    - hardening: one-hot on ``indices[..., 0]``.
    - smoothing: ``p_max`` on the argmax, ``(1 - p_max) / (C - 1)`` on every other class.
    - marginal-smoothing: the K stored probabilities kept, ``(1 - sum) / (C - K)`` on every other
      class (nothing to spread when K == C).
    - marginal-renorm: the K stored probabilities divided by their sum, 0 elsewhere.
    - full: the stored probabilities.

    float16 storage can make the kept mass exceed 1 by a rounding step; the spread mass is clamped
    to [0, smallest kept value] (it never exceeds it in exact arithmetic) and every row is
    renormalized, so rows always sum to 1 and the teacher's top-1 stays a top-1.
    """
    scheme = Scheme.parse(scheme)
    if scheme is Scheme.FULL:
        if values is None:
            raise ValueError("full scheme needs values")
        dense = values.float().clamp_min(0)
        return dense / dense.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    if indices is None:
        raise ValueError(f"{scheme.value} scheme needs indices")
    idx = indices.long()
    shape = (*idx.shape[:-1], num_classes)
    if scheme is Scheme.HARDENING:
        dense = torch.zeros(shape, dtype=torch.float32, device=idx.device)
        return dense.scatter_(-1, idx[..., :1], 1.0)
    if values is None:
        raise ValueError(f"{scheme.value} scheme needs values")
    vals = values.float().clamp(0.0, 1.0)
    if scheme is Scheme.MARGINAL_RENORM:
        dense = torch.zeros(shape, dtype=torch.float32, device=idx.device)
        dense.scatter_(-1, idx, vals)
        return dense / dense.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    # smoothing is marginal smoothing with K = 1.
    k = idx.shape[-1]
    rest = num_classes - k
    if rest > 0:
        spread = ((1.0 - vals.sum(-1, keepdim=True)) / rest).clamp_min(0.0)
        spread = torch.minimum(spread, vals.min(-1, keepdim=True).values)
        dense = spread.expand(shape).clone()
    else:
        dense = torch.zeros(shape, dtype=torch.float32, device=idx.device)
    dense.scatter_(-1, idx, vals)
    return dense / dense.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)

