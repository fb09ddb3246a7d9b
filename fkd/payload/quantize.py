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
full                   none                        (C,) all log-probabilities ``ln p``
=====================  ==========================  =========================================

The two marginal schemes store the same payload (raw top-K probabilities) and differ only in
decoding, so a store can be re-read under either without the teacher.

``full`` keeps ``ln p`` (store format version 5; older full stores kept ``p`` itself, and still
decode as they did): a float16 probability rounds everything below 6e-8 to 0, and 0 stays 0 when
the labels are re-tempered (``p ** (T / tau)``), while the teacher's real tail at a higher
temperature can hold most of the mass. ``ln p`` keeps the tail to float16's relative precision, so
``LabelCodec.tempered`` rebuilds the teacher's distribution at any tau exactly up to that rounding.
``LabelCodec`` says how one store's labels decode (scheme, C, generation temperature, full values
as log-probabilities or not); ``StoreMeta.label_codec()`` gives it for a store.

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

LOG_PROB_FLOOR = -104.0
"""What ``full`` stores for a probability of 0: the teacher's float32 probabilities reach down to
1.4e-45 (ln = -103.28), so one that underflowed to 0 had ln p below -103.97. Exact in float16,
finite, and re-tempered to a weight that is negligible at any sensible tau (e^(-104/4) = 5e-12)."""


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

    Indices come out as uint16 (uint32 beyond 65535 classes), values as float16: probabilities for
    the top-K schemes, ``ln p`` clamped to [LOG_PROB_FLOOR, 0] for ``full``. Negative inputs
    (log-probabilities taken for probabilities) are refused.
    """
    scheme = Scheme.parse(scheme)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2:
        raise ValueError(f"encode expects probabilities of shape (N, C), got {probs.shape}")
    lowest = float(probs.min(initial=0.0))
    if lowest < 0:
        raise ValueError(f"encode takes probabilities (>= 0), got values down to {lowest:.3g}: decode log-probabilities first")
    num_classes = probs.shape[1]
    k = stored_top_k(scheme, top_k, num_classes)
    if scheme is Scheme.FULL:
        with np.errstate(divide="ignore"):
            return Payload(None, np.clip(np.log(probs), LOG_PROB_FLOOR, 0.0).astype(np.float16))
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
    log_probs: bool = False,
) -> torch.Tensor:
    """Dense soft labels (..., C) in float32 from a payload, on the payload's device.

    - hardening: one-hot on ``indices[..., 0]``.
    - smoothing: ``p_max`` on the argmax, ``(1 - p_max) / (C - 1)`` on every other class.
    - marginal-smoothing: the K stored probabilities kept, ``(1 - sum) / (C - K)`` on every other
      class (nothing to spread when K == C).
    - marginal-renorm: the K stored probabilities divided by their sum, 0 elsewhere.
    - full: with ``log_probs`` (format-5 stores) ``exp`` of the stored ``ln p``, renormalized
      (``softmax``); else (older stores) the stored probabilities.

    float16 storage can make the kept mass exceed 1 by a rounding step; the spread mass is clamped
    to [0, smallest kept value] (it never exceeds it in exact arithmetic) and every row is
    renormalized, so rows always sum to 1 and the teacher's top-1 stays a top-1.
    """
    scheme = Scheme.parse(scheme)
    if scheme is Scheme.FULL:
        if values is None:
            raise ValueError("full scheme needs values")
        if log_probs:
            return torch.softmax(values.float(), dim=-1)
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


@dataclass(frozen=True)
class RetemperFigures:
    """Why a scheme's stored labels cannot give the teacher at another temperature, and how far
    off re-tempering them is: total variation to the teacher's real ``softmax(z / tau)`` at tau 3
    (DeiT's), K=5 for the marginal schemes, measured by tests/test_retemper_measured.py on 400 real
    CIFAR-10 crops (50 test images x 8) labelled by the real Keras teacher (C=10), and the worst crop
    of 400 synthetic ImageNet-like labels (C=1000, ``benchmarks.storage.compression.synthetic_probs``)."""

    why: str
    mean: float
    worst: float
    worst_1000: float

    def describe(self) -> str:
        return (f"{self.why}; re-tempered to tau 3 they are off by a total variation of {_figure(self.mean)} on average and "
                f"{_figure(self.worst)} at worst on the real CIFAR-10 teacher's crops ({_figure(self.worst_1000)} at worst on "
                "1000-class ImageNet-like labels)")


def _figure(value: float) -> str:
    """Two decimals from 0.1 up (1.00, not 1), two significant digits below (0.011, 0.00017)."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


RETEMPER_ERRORS: dict[str, RetemperFigures] = {
    Scheme.HARDENING.value: RetemperFigures("it keeps each crop's top-1 class only", 0.60, 0.85, 1.0),
    Scheme.SMOOTHING.value: RetemperFigures("it keeps p_max only and spreads the rest uniformly", 0.23, 0.59, 0.38),
    Scheme.MARGINAL_SMOOTHING.value: RetemperFigures("it keeps the top K and spreads the rest uniformly", 0.030, 0.090, 0.32),
    Scheme.MARGINAL_RENORM.value: RetemperFigures("it keeps the top K and drops the rest", 0.17, 0.37, 0.99),
    Scheme.FULL.value: RetemperFigures("its float16 probabilities below 6e-8 are 0, and 0 stays 0", 0.00017, 0.011, 0.10),
}
"""Per scheme; ``full`` is a store of probabilities (before format version 5). A full store of
log-probabilities re-tempers exactly up to float16's rounding of ln p: total variation 8.1e-05 on
average and 0.00015 at worst on the same CIFAR-10 crops, 0.00034 at worst on the 1000-class labels."""


@dataclass(frozen=True)
class LabelCodec:
    """How one store's soft labels decode: its ``scheme``, C, the ``temperature`` T the teacher's
    labels were made at, and whether ``full`` values are log-probabilities (format version 5) or
    probabilities (older stores). ``StoreMeta.label_codec()`` builds it from a store's metadata."""

    scheme: "str | Scheme"
    num_classes: int
    temperature: float = 1.0
    log_probs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", Scheme.parse(self.scheme))
        object.__setattr__(self, "temperature", float(self.temperature))
        if self.log_probs and self.scheme is not Scheme.FULL:
            raise ValueError(f"log-probabilities are kept by full stores only, not {self.scheme.value}")

    def decode(self, indices: "torch.Tensor | None", values: "torch.Tensor | None") -> torch.Tensor:
        """The stored labels: the teacher's distribution at ``temperature`` (``decode``)."""
        return decode(indices, values, self.scheme, self.num_classes, self.log_probs)

    def stored_probabilities(self, values: np.ndarray) -> np.ndarray:
        """A full store's values (..., C) as float32 probabilities, as stored (not renormalized): ``exp``
        of log-probabilities, older stores' probabilities unchanged. For tools that re-encode
        (``encode`` takes probabilities) or export them."""
        if self.scheme is not Scheme.FULL:
            raise ValueError(f"a {self.scheme.value} store keeps only part of each distribution; decode it instead")
        return np.exp(values.astype(np.float32)) if self.log_probs else values.astype(np.float32)

    def retemper_problem(self, tau: float) -> "str | None":
        """None when ``tempered(..., tau)`` is exact (tau equal to the store's temperature, or a
        store of log-probabilities); else why not, with the measured error."""
        if tau == self.temperature or self.log_probs:
            return None
        made = f"made at temperature {self.temperature}"
        full = self.scheme is Scheme.FULL
        what = f"full store of probabilities ({made}, before format version 5)" if full else f"{self.scheme.value} store ({made})"
        return f"a {what} cannot be re-tempered exactly to {tau}: {RETEMPER_ERRORS[self.scheme.value].describe()}"

    def tempered(self, indices: "torch.Tensor | None", values: "torch.Tensor | None", tau: float) -> torch.Tensor:
        """The teacher's distribution at ``tau``, ``softmax(z / tau)``, float32 (..., C): the stored
        labels at the store's own temperature, else ``softmax(T * ln p / tau)`` from a store of
        log-probabilities (``T * ln p = z - T ln Z``, and the constant cancels). ValueError
        (``retemper_problem``) for any other scheme and tau."""
        if tau == self.temperature:
            return self.decode(indices, values)
        problem = self.retemper_problem(tau)
        if problem is not None:
            raise ValueError(problem)
        if values is None:
            raise ValueError("full scheme needs values")
        return torch.softmax(values.float() * (self.temperature / tau), dim=-1)
