"""The embedding codec: a teacher's D-dim feature vector per crop, stored as float16 or int8.

The second payload behind the store's interface (``fkd.payload.quantize`` is the first: soft labels).
``encode`` turns float32 features (N, D) into what a record keeps; ``decode`` turns stored arrays
back into float32 (..., D), batched on the training device like ``quantize.decode``.

- ``float16``: the values rounded to float16 (2 bytes a value). Features beyond float16's range
  (|x| > 65504) are refused rather than stored as infinities.
- ``int8``: symmetric quantization with one scale per crop, ``scale = max|x| / 127`` (float32),
  ``q = round(x / scale)`` in -127..127 (1 byte a value plus 4 a crop). Every value is then within
  ``scale / 2`` of the original; the scale is the crop's own, so a crop of small values loses no
  more, relatively, than one of large values, and cosine similarity is unaffected by the scale
  (benchmarks/storage/embedding.py measures the error on the real CIFAR-10 teacher). -128 is never
  written, so the range is symmetric. An all-zero vector gets scale 0 and decodes to zeros.

``normalize`` applies what the metadata's ``normalization`` records, before encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .embedding_spec import EMBEDDING_DTYPES, NORMALIZATIONS, SCALE_DTYPE, STORAGE_DTYPES

INT8_LEVELS = 127
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class EmbeddingPayload:
    """Encoded features of a batch of crops: ``embedding`` (N, D) float16 or int8, and for int8 the
    per-crop ``scales`` (N,) float32 (None for float16). ``arrays()`` gives them in the store's
    record order (``fkd.store.EmbeddingLayout.payload_names``)."""

    embedding: np.ndarray
    scales: "np.ndarray | None"

    def arrays(self) -> tuple[np.ndarray, "np.ndarray | None"]:
        return self.embedding, self.scales


def encode(features: np.ndarray, dtype: str) -> EmbeddingPayload:
    """Store float features (N, D) as ``dtype`` (``float16`` or ``int8``); ValueError for other
    shapes, non-finite values, or values float16 cannot hold."""
    if dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"unknown embedding dtype {dtype!r}; choose one of: {', '.join(EMBEDDING_DTYPES)}")
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"encode expects features of shape (N, D), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("the features are not all finite (NaN or infinity): nothing meaningful to store")
    peak = np.abs(x).max(axis=1, initial=0.0)
    if dtype == "float16":
        if peak.max(initial=0.0) > FLOAT16_MAX:
            raise ValueError(f"features reach |x| = {peak.max():.4g}, beyond float16's range ({FLOAT16_MAX:g}): "
                             "store them as int8 (a scale per crop) or normalize them")
        return EmbeddingPayload(x.astype(STORAGE_DTYPES["float16"]), None)
    scales = (peak / INT8_LEVELS).astype(SCALE_DTYPE)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / safe[:, None]), -INT8_LEVELS, INT8_LEVELS).astype(STORAGE_DTYPES["int8"])
    return EmbeddingPayload(codes, scales)


def decode(embedding: torch.Tensor, scales: "torch.Tensor | None" = None) -> torch.Tensor:
    """float32 features (..., D) from stored ``embedding`` (..., D) and, for int8, ``scales`` (...),
    on the payload's device."""
    if embedding.dtype == torch.int8:
        if scales is None:
            raise ValueError("int8 embeddings need their per-crop scales")
        return embedding.float() * scales.float().unsqueeze(-1)
    if embedding.dtype != torch.float16:
        raise ValueError(f"stored embeddings are float16 or int8, got {embedding.dtype}")
    return embedding.float()


def normalize(features: torch.Tensor, normalization: str) -> torch.Tensor:
    """Features (..., D) after ``normalization``: ``none`` (as they are), ``l2`` (unit length; zero
    vectors stay zero) or ``layernorm`` (zero mean, unit variance over D, no learned affine)."""
    if normalization == "none":
        return features
    if normalization == "l2":
        return F.normalize(features, dim=-1)
    if normalization == "layernorm":
        return F.layer_norm(features, features.shape[-1:])
    raise ValueError(f"unknown normalization {normalization!r}; choose one of: {', '.join(NORMALIZATIONS)}")
