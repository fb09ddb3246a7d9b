"""What a worker computes for a batch of crops: the teacher's soft labels or its features.

Both targets give the worker the same two steps, so it never branches on the target: ``forward``
(float crops in [0, 1] -> float32 teacher output) and ``encode`` (that output as numpy -> a payload
whose ``arrays()`` are the record's payload fields in ``layout.payload_names`` order:
``quantize.Payload`` for labels, ``embedding_codec.EmbeddingPayload`` for embeddings).
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

from .messages import LabelSettings


class EncodedPayload(Protocol):
    def arrays(self) -> tuple["np.ndarray | None", ...]: ...


@dataclass
class BatchTarget:
    """The teacher's per-batch work for one target."""

    what: str  # "probabilities" or "features", for messages
    forward: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[np.ndarray], EncodedPayload]
    embedding_dims: "tuple[int, ...] | None" = None  # each member's D (embeddings only)


def batch_target(teacher: Teacher, settings: LabelSettings) -> BatchTarget:
    """Soft labels (the teacher's probabilities, quantized by the scheme) or, with
    ``settings.embedding``, the teacher's features at the source, normalized as asked, encoded as
    the dtype. The features' shapes are probed here: a source that yields no vector fails when the
    worker starts, before any shard."""
    if settings.embedding is None:
        return BatchTarget("probabilities", teacher, partial(quantize.encode, scheme=settings.scheme, top_k=settings.top_k))
    spec = settings.embedding
    features = TeacherFeatures(teacher, spec.source)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return embedding_codec.normalize(features(x), spec.normalization)

    return BatchTarget("features", forward, partial(embedding_codec.encode, dtype=spec.dtype), features.dims)
