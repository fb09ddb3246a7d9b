"""What an embedding store's metadata says about its payload: dimension, storage dtype, source
layer and normalization (``fkd.payload.embedding_codec`` encodes and decodes the vectors).

Apart from the codec, like ``fkd.payload.schemes``, so that command lines can list the choices and the store
format can validate metadata without importing torch. Everything here may come from a hostile
``store.json``: every value is checked for type and range before anything is sized from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EMBEDDING_DTYPES: tuple[str, ...] = ("float16", "int8")
"""``float16``: the vector as float16. ``int8``: symmetric per-crop quantization, one float32 scale per crop."""
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "layernorm")
"""What was applied to the teacher's features before storage (``embedding_codec.normalize``)."""
SOURCES_HELP = "'pre-logits', 'pooled' or a module name of the teacher"
MAX_DIM = 65536
MAX_SOURCE_CHARS = 256
STORAGE_DTYPES: dict[str, np.dtype] = {"float16": np.dtype("<f2"), "int8": np.dtype("i1")}
SCALE_DTYPE = np.dtype("<f4")
"""int8 scales are float32: exact for any finite feature range, for 4 bytes a crop (float16 scales would
save 2 bytes but overflow above 65504 * 127 and lose precision below 7.8e-3; benchmarks/storage/embedding.py)."""


@dataclass(frozen=True)
class EmbeddingSpec:
    """An embedding payload: ``dim`` values per crop stored as ``dtype``, taken from the teacher's
    ``source`` layer after ``normalization``. Raises ValueError for anything else."""

    dim: int
    dtype: str
    source: str
    normalization: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or not 1 <= self.dim <= MAX_DIM:
            raise ValueError(f"embedding dim must be an integer in 1..{MAX_DIM}, got {self.dim!r}")
        if self.dtype not in EMBEDDING_DTYPES:
            raise ValueError(f"embedding dtype must be one of {list(EMBEDDING_DTYPES)}, got {self.dtype!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"embedding normalization must be one of {list(NORMALIZATIONS)}, got {self.normalization!r}")
        if not (isinstance(self.source, str) and 0 < len(self.source) <= MAX_SOURCE_CHARS and self.source.isprintable()):
            raise ValueError(f"embedding source must be a printable name of 1..{MAX_SOURCE_CHARS} characters "
                             f"({SOURCES_HELP}), got {str(self.source)[:40]!r}")

    @classmethod
    def from_dict(cls, data: Any) -> "EmbeddingSpec":
        """The spec a metadata object describes; ValueError for a non-object, unknown or missing keys."""
        if not isinstance(data, dict):
            raise ValueError(f"embedding must be an object with dim, dtype, source and normalization, got {str(data)[:40]!r}")
        names = ("dim", "dtype", "source", "normalization")
        unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
        if unknown or missing:
            raise ValueError(f"embedding must have exactly the keys {list(names)} (unknown: {unknown}, missing: {missing})")
        return cls(**data)

    @property
    def storage_dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.dtype]

    def describe(self) -> str:
        """E.g. ``D=512, int8, source pre-logits, normalization none``."""
        return f"D={self.dim}, {self.dtype}, source {self.source}, normalization {self.normalization}"
