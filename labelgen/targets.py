"""What a worker computes for a batch of crops: the teacher's soft labels or its features.

Both targets give the worker the same two steps, so it never branches on the target: ``forward``
(float crops in [0, 1] -> float32 teacher output) and ``encode`` (that output, where it was computed
-> a payload whose ``arrays()`` are the record's payload fields in ``layout.payload_names`` order:
``quantize.Payload`` for labels, ``embedding_codec.EmbeddingPayload`` for embeddings). On a GPU the
top-K schemes rank there (``device_batch.encode_ranked``) and only the (N, K) payload comes back;
the host encoders get the output as numpy, as they always did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import torch

from fkd.payload import embedding_codec, quantize
from fkd.teacher.features import TeacherFeatures
from fkd.teacher.teachers import Teacher

from .device_batch import encode_ranked
from .messages import LabelSettings


class EncodedPayload(Protocol):
    def arrays(self) -> tuple["np.ndarray | None", ...]: ...


@dataclass
class BatchTarget:
    """The teacher's per-batch work for one target."""

    what: str  # "probabilities" or "features", for messages
    forward: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[torch.Tensor], EncodedPayload]
    embedding_dims: "tuple[int, ...] | None" = None  # each member's D (embeddings only)


def on_host(encode: Callable[[np.ndarray], EncodedPayload]) -> Callable[[torch.Tensor], EncodedPayload]:
    """A numpy encoder fed the whole output, copied to the host."""
    return lambda output: encode(output.cpu().numpy())


def batch_target(teacher: Teacher, settings: LabelSettings) -> BatchTarget:
    """Soft labels (the teacher's probabilities, quantized by the scheme) or, with
    ``settings.embedding``, the teacher's features at the source, normalized as asked, encoded as
    the dtype. The features' shapes are probed here: a source that yields no vector fails when the
    worker starts, before any shard. Labels from a CUDA teacher are ranked on the device; the CPU
    path keeps ``quantize.encode`` (both give the same payload, bit for bit)."""
    if settings.embedding is None:
        if teacher.device.type == "cuda":
            return BatchTarget("probabilities", teacher, partial(encode_ranked, scheme=settings.scheme, top_k=settings.top_k))
        return BatchTarget("probabilities", teacher, on_host(partial(quantize.encode, scheme=settings.scheme, top_k=settings.top_k)))
    spec = settings.embedding
    features = TeacherFeatures(teacher, spec.source)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return embedding_codec.normalize(features(x), spec.normalization)

    return BatchTarget("features", forward, on_host(partial(embedding_codec.encode, dtype=spec.dtype)), features.dims)
