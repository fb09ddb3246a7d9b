"""How a worker's stream of crops becomes teacher batches and per-image records.

Batches are cut from the shard's crops in store order (``CropBatcher``), so their boundaries depend
only on the shard; their encoded payload waits in ``PayloadBuffer`` until every crop of an image is
labelled. Kept apart from ``labelgen.worker`` so the worker holds only the per-shard loop.
"""

from __future__ import annotations

import numpy as np
import torch

from .targets import EncodedPayload


class CropBatcher:
    """Cuts a stream of per-image crop tensors into batches of exactly ``batch_size`` crops (the
    last one may be smaller), crossing image boundaries."""

    def __init__(self, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.parts: list[torch.Tensor] = []
        self.count = 0

    def add(self, views: torch.Tensor) -> list[torch.Tensor]:
        self.parts.append(views)
        self.count += len(views)
        batches = []
        while self.count >= self.batch_size:
            joined = torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]
            batches.append(joined[: self.batch_size])
            rest = joined[self.batch_size :]
            self.parts = [rest] if len(rest) else []
            self.count = len(rest)
        return batches

    def flush(self) -> list[torch.Tensor]:
        if not self.count:
            return []
        batch = torch.cat(self.parts)
        self.parts, self.count = [], 0
        return [batch]


class PayloadBuffer:
    """Encoded crops waiting until all M crops of their image are labelled. Payload-blind: it keeps
    the arrays of ``payload.arrays()`` (the record's payload fields in order, None where absent),
    so soft labels and embeddings go through it alike."""

    def __init__(self) -> None:
        self.fields: list[list[np.ndarray]] = []
        self.rows = 0

    def add(self, payload: EncodedPayload) -> None:
        arrays = payload.arrays()
        if not self.fields:
            self.fields = [[] for _ in arrays]
        for parts, array in zip(self.fields, arrays):
            if array is not None:
                parts.append(array)
        self.rows += len(next(a for a in arrays if a is not None))

    def take(self, rows: int) -> tuple["np.ndarray | None", ...]:
        """The first ``rows`` crops of every field (None for a field the payload does not have)."""
        out = []
        for parts in self.fields:
            if not parts:
                out.append(None)
                continue
            joined = np.concatenate(parts)
            parts[:] = [joined[rows:]] if len(joined) > rows else []
            out.append(joined[:rows])
        self.rows -= rows
        return tuple(out)
