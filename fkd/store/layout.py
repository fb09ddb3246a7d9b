"""Byte layouts of one image's uncompressed record: crops (boxes, flips) plus the payload fields.

A record is ``boxes`` uint16 (M, 4) fixed-point (top, left, height, width) | ``flips`` packed bits
ceil(M / 8) bytes | the payload's fields | in a reinforced store (format version 6) the crops'
augmentation (``views``: ``fkd.store.views``), back to back, all little-endian. Each payload kind names
its fields once (``payload_names``, in byte order); ``pack`` takes and ``unpack`` returns the
field arrays in that order, None for a field the store does not keep. Soft labels
(``RecordLayout``) keep ``indices`` and ``values``; embeddings (``EmbeddingLayout``) keep
``embedding`` and, for int8, the per-crop ``scales``. Readers, writers and the ``fkd-labels`` tools
go through this interface, so a new payload is a new layout, not a new record format.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np

from ..payload.embedding_spec import SCALE_DTYPE, STORAGE_DTYPES
from .views import ViewParams, ViewSpec, view_fields

BOX_BYTES = 4 * 2


@dataclass(frozen=True)
class PayloadField:
    """One payload field: ``shape`` values of ``dtype`` per crop (``()``: one value)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def crop_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class PayloadLayout:
    """What every layout shares: sizes, ``pack`` and ``unpack`` over ``payload_fields`` and the
    ``views`` fields after them (computed once per layout: a reader unpacks millions of records with one)."""

    num_crops: int
    views: "tuple[PayloadField, ...]"
    payload_names: ClassVar[tuple[str, ...]] = ()

    @property
    def payload_fields(self) -> "tuple[PayloadField | None, ...]":
        """One entry per name of ``payload_names``: the field, or None where the store keeps none."""
        raise NotImplementedError

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        """Bytes of boxes, flips and each payload field (0 where absent), in record order."""
        m = self.num_crops
        return (m * BOX_BYTES, (m + 7) // 8, *(0 if f is None else m * f.crop_bytes for f in self.payload_fields),
                *(m * f.crop_bytes for f in self.views))

    @cached_property
    def raw_size(self) -> int:
        return sum(self.sizes)

    def pack(self, boxes_fixed: np.ndarray, flips: np.ndarray, *payload: "np.ndarray | None", views: "ViewParams | None" = None) -> bytes:
        """One image's record from boxes (M, 4), flips (M,), the payload arrays (M, *shape) and, in
        a reinforced store, the crops' augmentation ``views``."""
        if len(payload) != len(self.payload_names):
            raise ValueError(f"a record takes the payload fields {list(self.payload_names)}, got {len(payload)} arrays")
        m = self.num_crops
        parts = [
            np.ascontiguousarray(boxes_fixed, dtype="<u2").reshape(m, 4).tobytes(),
            np.packbits(np.asarray(flips, dtype=bool).reshape(m)).tobytes(),
        ]
        for name, field, array in zip(self.payload_names, self.payload_fields, payload):
            if field is None:
                continue
            if array is None:
                raise ValueError(f"the record layout needs the payload field {name!r}")
            array = np.asarray(array)
            if field.dtype.kind in "iu" and array.dtype.kind == "f":  # a cast would silently truncate: encode first
                raise ValueError(f"payload field {name!r} is stored as {field.dtype}, got {array.dtype} values; encode them first")
            self.check_field(name, array)
            parts.append(np.ascontiguousarray(array, dtype=field.dtype).reshape(m, *field.shape).tobytes())
        if bool(self.views) != (views is not None):
            raise ValueError("a reinforced store's records need their crops' augmentation (views), a plain store's have none")
        for field in self.views:
            array = getattr(views, field.name)
            if array is None or np.asarray(array).dtype.kind not in "iu":
                raise ValueError(f"the record layout needs the view field {field.name!r} as integers")
            parts.append(np.ascontiguousarray(array, dtype=field.dtype).reshape(m, *field.shape).tobytes())
        return b"".join(parts)

    def check_field(self, name: str, array: np.ndarray) -> None:
        """Refuse values a field cannot hold in this layout (nothing by default)."""

    @cached_property
    def _slices(self) -> "tuple[tuple[slice, np.dtype, tuple[int, ...]] | None, ...]":
        """Where each payload field lies in a raw record, its dtype and its array shape."""
        sizes = self.sizes
        pos = sizes[0] + sizes[1]
        out = []
        for field, size in zip(self.payload_fields, sizes[2:]):
            out.append(None if field is None else (slice(pos, pos + size), field.dtype, (self.num_crops, *field.shape)))
            pos += size
        return tuple(out)

    def unpack(self, raw: bytes) -> tuple["np.ndarray | None", ...]:
        """raw bytes -> (boxes_fixed (M, 4) uint16, flips (M,) bool, *payload arrays (M, *shape) | None)."""
        m = self.num_crops
        nb, nf = self.sizes[:2]
        if len(raw) != self.raw_size:
            raise ValueError(f"record holds {len(raw)} bytes, layout expects {self.raw_size}")
        buf = memoryview(raw)
        boxes = np.frombuffer(buf[:nb], dtype="<u2").reshape(m, 4)
        flips = np.unpackbits(np.frombuffer(buf[nb : nb + nf], dtype=np.uint8), count=m).astype(bool)
        payload = (None if s is None else np.frombuffer(buf[s[0]], dtype=s[1]).reshape(s[2]) for s in self._slices)
        return (boxes, flips, *payload)

    def unpack_views(self, raw: bytes) -> "ViewParams | None":
        """The crops' augmentation of a raw record (None in a plain store's layout)."""
        if not self.views:
            return None
        pos, m, found = self.raw_size - sum(self.sizes[2 + len(self.payload_fields):]), self.num_crops, {}
        for field in self.views:
            size = m * field.crop_bytes
            found[field.name] = np.frombuffer(memoryview(raw)[pos : pos + size], dtype=field.dtype).reshape(m, *field.shape)
            pos += size
        return ViewParams(**found)


def view_layout_fields(spec: "ViewSpec | None") -> tuple[PayloadField, ...]:
    """The ``views`` of a layout for a store augmented as ``spec`` (none for a plain store)."""
    return tuple(PayloadField(name, dtype, shape) for name, dtype, shape in view_fields(spec))


@dataclass(frozen=True)
class RecordLayout(PayloadLayout):
    """Soft labels: ``indices`` (M, Ki) uint16 or uint32 | ``values`` (M, Kv) float16, probabilities
    (>= 0) or, with ``log_values`` (full stores of format version 5), log-probabilities (<= 0): a
    record of the other sign is refused, so values of one store never land in the other kind."""

    num_crops: int
    num_indices: int
    num_values: int
    index_dtype: np.dtype
    log_values: bool = False
    views: "tuple[PayloadField, ...]" = ()
    payload_names: ClassVar[tuple[str, ...]] = ("indices", "values")

    def check_field(self, name: str, array: np.ndarray) -> None:
        if name != "values" or not array.size:
            return
        if self.log_values and np.any(array > 0):
            raise ValueError(f"this store keeps log-probabilities (<= 0), got values up to {float(array.max()):.3g}: encode "
                             "probabilities with fkd.payload.quantize.encode")
        if not self.log_values and np.any(array < 0):
            raise ValueError(f"this store keeps probabilities (>= 0), got values down to {float(array.min()):.3g}: "
                             "decode log-probabilities (a full store of format version 5) first")

    @cached_property
    def payload_fields(self) -> "tuple[PayloadField | None, ...]":
        return (
            PayloadField("indices", np.dtype(self.index_dtype).newbyteorder("<"), (self.num_indices,)) if self.num_indices else None,
            PayloadField("values", np.dtype("<f2"), (self.num_values,)) if self.num_values else None,
        )


@dataclass(frozen=True)
class EmbeddingLayout(PayloadLayout):
    """Embeddings: ``embedding`` (M, D) float16 or int8 | ``scales`` (M,) float32, int8 only."""

    num_crops: int
    dim: int
    dtype: str
    views: "tuple[PayloadField, ...]" = ()
    payload_names: ClassVar[tuple[str, ...]] = ("embedding", "scales")

    @cached_property
    def payload_fields(self) -> "tuple[PayloadField | None, ...]":
        return (
            PayloadField("embedding", STORAGE_DTYPES[self.dtype], (self.dim,)),
            PayloadField("scales", SCALE_DTYPE, ()) if self.dtype == "int8" else None,
        )
