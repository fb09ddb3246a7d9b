"""Reading label stores: random access by image index, safe in DataLoader workers.

A shard is opened once per process, read-only and without file locks, to check it and load its
small per-image index (offsets, checksums, ids, labels, sizes); the HDF5 file is closed again right
away. Records are then read with one ``pread`` at the records dataset's file offset (it is stored
contiguous and unfiltered): no HDF5 handle stays open, so forking DataLoader workers is safe, a store
of thousands of shards never runs out of file descriptors, and a read costs one system call instead
of an HDF5 selection. Each shard is checked when first opened (present, the size and sha256 the manifest
recorded, a readable HDF5 file of this store and format version, consistent offsets), and every
record is checked against its CRC32 and exact decompressed size when decoded, so damage surfaces as a
``StoreError`` naming the file, never as wrong labels.

The sha256 comes first because HDF5 does not checksum everything it parses: one flipped byte in a
shard's global heap (where variable-length strings such as the image ids live) can make HDF5 loop
forever, and flips in the small per-image datasets (labels, sizes) would go unnoticed. Only the bytes
HDF5 parses are hashed: everything but the records dataset, whose place the manifest records
(format version 3; older stores hash the whole file), so opening a shard costs the same for any
payload (``full`` labels of 1000 classes at M=200 make 100 MB shards whose metadata is ~50 KB);
the records are covered by their CRC-32s, every byte of them by exactly one record.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import zstandard

from ..payload.embedding_codec import decode as decode_embedding
from ..payload.quantize import LabelCodec
from .errors import StoreCorruptError, StoreError, StoreIncompleteError
from .format import StoreMeta
from .integrity import shard_file_problem
from .layout import PayloadLayout
from .manifest import Manifest
from .views import ViewParams


@dataclass
class ImageLabels:
    """One image's stored crops: fixed-point boxes (M, 4) uint16, flips (M,), and the payload arrays
    named as the store's layout names them (``PayloadLayout.payload_names``): soft labels in
    ``indices`` (M, Ki) and ``values`` (M, Kv), embeddings in ``embedding`` (M, D) float16 or int8
    and, for int8, ``scales`` (M,) float32; None where the store keeps no such field. ``views``: in a
    reinforced store (format version 6), the augmentation each crop's label describes."""

    index: int
    image_id: str
    label: int
    height: int
    width: int
    boxes_fixed: np.ndarray
    flips: np.ndarray
    indices: "np.ndarray | None" = None
    values: "np.ndarray | None" = None
    fingerprint: "int | None" = None  # CRC-32 of the image file's bytes; None in stores without them
    embedding: "np.ndarray | None" = None
    scales: "np.ndarray | None" = None
    views: "ViewParams | None" = None  # a reinforced store's per-crop augmentation (fkd.store.views)

    def decoded_labels(self, codec: LabelCodec) -> torch.Tensor:
        """(M, C) float32 soft labels of a label record, decoded as the store's ``codec`` says
        (``StoreMeta.label_codec()``: full values are log-probabilities from format version 5 on)."""
        indices = None if self.indices is None else torch.from_numpy(self.indices.astype(np.int64))
        values = None if self.values is None else torch.from_numpy(np.array(self.values))  # copies: records are read-only
        return codec.decode(indices, values)

    def decoded_embedding(self) -> torch.Tensor:
        """(M, D) float32 features of an embedding record (``embedding_codec.decode``)."""
        if self.embedding is None:
            raise ValueError(f"image {self.image_id!r}: the record holds no embedding (a label store)")
        scales = None if self.scales is None else torch.from_numpy(np.array(self.scales))  # copies: records are read-only
        return decode_embedding(torch.from_numpy(np.array(self.embedding)), scales)


@dataclass
class _ShardIndex:
    """What a shard's records are found and checked with; loaded once per shard and process."""

    path: Path
    records_offset: int
    offsets: np.ndarray
    crc32: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    image_ids: list[str]
    fingerprints: "np.ndarray | None"


class LabelStore:
    """A label store opened for reading.

    ``LabelStore(path)`` refuses an incomplete store (``allow_incomplete=True`` opens the finished
    shards only, for inspection tools). ``read(i)`` returns image ``i``'s crops and payload.
    ``verify_checksums=False`` skips the sha256 of each shard at open (to test the checks behind it).
    ``payload`` is what the caller reads: ``labels`` (default: every tool written before embeddings
    existed gets a clear refusal instead of misreading them), ``embedding``, or None for tools that
    handle both (``StorePayloadError`` otherwise).
    One instance per thread: reads reuse one zstd decompressor, which is not thread-safe.
    """

    def __init__(self, path: "str | Path", allow_incomplete: bool = False, verify_checksums: bool = True,
                 payload: "str | None" = "labels"):
        self.path = Path(path)
        self.verify_checksums = verify_checksums
        self.manifest = Manifest.load(self.path)
        self.meta.check_payload(payload, self.path)
        if not allow_incomplete and not self.manifest.complete:
            missing = self.manifest.missing_shards()
            raise StoreIncompleteError(
                self.path,
                f"store is incomplete: {len(missing)} of {self.meta.num_shards} shards missing "
                f"(first: {missing[:5]}); rerun fkd-labelgen with the same arguments to finish it",
            )
        self.layout: PayloadLayout = self.meta.record_layout()
        self._shards: dict[int, _ShardIndex] = {}
        self._image_ids: list[str] | None = None
        self._decompressor: "zstandard.ZstdDecompressor | None" = None  # made per process: 8 us to create, a third of a read

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_decompressor": None}  # not picklable; rebuilt on first read

    @property
    def meta(self) -> StoreMeta:
        return self.manifest.meta

    def __len__(self) -> int:
        return self.meta.num_images

    def close(self) -> None:
        """Forget the loaded shard indexes (they are reloaded, and rechecked, on the next read)."""
        self._shards.clear()
        self._image_ids = None

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Shards ---------------------------------------------------------------------------------

    def _shard(self, shard: int) -> _ShardIndex:
        opened = self._shards.get(shard)
        if opened is None:
            opened = self._shards[shard] = self._open_shard(shard)
        return opened

    def _open_shard(self, shard: int) -> _ShardIndex:
        info = self.manifest.shards.get(shard)
        if info is None:
            raise StoreIncompleteError(self.path, f"shard {shard} is not finished")
        path = self.path / info.file
        problem = shard_file_problem(self.path, info, checksum=self.verify_checksums, metadata_only=True)
        if problem is not None:
            raise StoreCorruptError(path, problem)
        size = info.bytes
        if info.count * MIN_BYTES_PER_IMAGE > size:
            # The per-image arrays are stored uncompressed, so they fit in the file: this bounds what
            # a hostile shard (declaring huge datasets) can make us allocate by the file's real size.
            raise StoreCorruptError(path, f"a shard of {size} bytes cannot hold the {info.count} images the manifest claims")
        try:
            f = h5py.File(path, "r", locking=False)
        except Exception as exc:  # h5py raises OSError subclasses with HDF5's message
            raise StoreCorruptError(path, f"not a readable HDF5 shard (corrupted?): {exc}") from None
        try:
            attrs = {k: f.attrs.get(k) for k in ("format_version", "store_id", "shard_index", "start", "count")}
            if attrs["format_version"] != self.meta.format_version:
                raise StoreCorruptError(path, f"shard has format version {attrs['format_version']!r}, expected {self.meta.format_version}")
            if attrs["store_id"] != self.meta.store_id:
                raise StoreCorruptError(path, f"shard belongs to another store (store id {attrs['store_id']!r}, expected {self.meta.store_id!r})")
            if (attrs["shard_index"], attrs["start"], attrs["count"]) != (info.index, info.start, info.count):
                raise StoreCorruptError(path, "shard's index or image range differs from the manifest")
            n = info.count
            offsets = _read_array(f, "offsets", (n + 1,), np.uint64, path)
            crc = _read_array(f, "crc32", (n,), np.uint32, path)
            labels = _read_array(f, "labels", (n,), np.int32, path)
            sizes = _read_array(f, "sizes", (n, 2), np.uint32, path)
            fingerprints = _read_array(f, "fingerprints", (n,), np.uint32, path) if self.meta.image_fingerprint == "crc32" else None
            records = f["records"]
            if records.ndim != 1 or records.dtype != np.uint8 or records.chunks is not None or records.compression is not None:
                raise StoreCorruptError(path, "records dataset must be a contiguous, unfiltered uint8 array")
            records_offset = records.id.get_offset() if records.shape[0] else 0
            if records_offset is None or records_offset + records.shape[0] > size:
                raise StoreCorruptError(path, "records dataset lies outside the file")
            if info.records_range is not None and info.records_range != (records_offset, records.shape[0]):
                raise StoreCorruptError(path, f"records dataset is not where the manifest recorded it ({info.records_range})")
            lengths = np.diff(offsets.astype(np.int64))
            if offsets[0] != 0 or np.any(lengths < 0) or int(offsets[-1]) != records.shape[0]:
                raise StoreCorruptError(path, "record offsets are inconsistent with the records dataset")
            longest, bound = int(lengths.max(initial=0)), max_frame_size(self.layout.raw_size)
            if longest > bound:
                raise StoreCorruptError(path, f"a record of {longest} bytes is longer than any compressed record of this store ({bound} bytes)")
            ids = f["image_ids"]
            if not isinstance(ids, h5py.Dataset) or ids.shape != (n,) or ids.dtype.kind != "O":
                raise StoreCorruptError(path, f"dataset 'image_ids' must hold {n} strings")
            image_ids = [s.decode() if isinstance(s, bytes) else str(s) for s in ids[...]]
            return _ShardIndex(path, int(records_offset), offsets, crc, labels, sizes, image_ids, fingerprints)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreCorruptError(path, f"unreadable shard structure: {exc}") from None
        finally:
            f.close()

    def shard_image_ids(self, shard: int) -> list[str]:
        """Open ``shard`` (running the structure checks above; StoreError if they fail) and return
        its image ids, without decoding any record."""
        return self._shard(shard).image_ids

    def verify_shard_checksum(self, shard: int) -> None:
        """Check the shard file's size and sha256 against the manifest (reads the whole file)."""
        problem = shard_file_problem(self.path, self.manifest.shards[shard])
        if problem is not None:
            raise StoreCorruptError(self.path / self.manifest.shards[shard].file, problem)

    # Records --------------------------------------------------------------------------------

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row) of image ``index``."""
        if not 0 <= index < self.meta.num_images:
            raise IndexError(f"image index {index} out of range for a store of {self.meta.num_images} images")
        return divmod(index, self.meta.shard_size)

    def read(self, index: int) -> ImageLabels:
        """Decode image ``index``: boxes, flips and payload arrays of all M crops."""
        shard_no, row = self.locate(index)
        shard = self._shard(shard_no)
        start, stop = int(shard.offsets[row]), int(shard.offsets[row + 1])
        path = shard.path
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                blob = os.pread(fd, stop - start, shard.records_offset + start)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreCorruptError(path, f"cannot read record {row}: {exc.strerror or exc}") from None
        if zlib.crc32(blob) != int(shard.crc32[row]):
            raise StoreCorruptError(path, f"checksum mismatch in the record of image {index} (row {row})")
        expected = self.layout.raw_size
        try:
            declared = zstandard.frame_content_size(blob)
            if declared != expected:
                raise ValueError(f"frame declares {declared} bytes, the layout needs {expected}")
            if self._decompressor is None:
                self._decompressor = zstandard.ZstdDecompressor()
            raw = self._decompressor.decompress(blob, max_output_size=expected)
            boxes, flips, *payload = self.layout.unpack(raw)
            views = self.layout.unpack_views(raw)
        except (zstandard.ZstdError, ValueError) as exc:
            raise StoreCorruptError(path, f"undecodable record of image {index} (row {row}): {exc}") from None
        height, width = (int(v) for v in shard.sizes[row])
        fingerprint = None if shard.fingerprints is None else int(shard.fingerprints[row])
        return ImageLabels(index, shard.image_ids[row], int(shard.labels[row]), height, width, boxes, flips, fingerprint=fingerprint,
                           views=views, **dict(zip(self.layout.payload_names, payload)))

    # Per-image columns ----------------------------------------------------------------------

    @property
    def image_ids(self) -> list[str]:
        """All image ids (relative paths), in store order ('' for images of unfinished shards)."""
        if self._image_ids is None:
            ids: list[str] = []
            for shard_no in range(self.meta.num_shards):
                if shard_no in self.manifest.shards:
                    ids.extend(self._shard(shard_no).image_ids)
                else:
                    start, stop = self.meta.shard_range(shard_no)
                    ids.extend([""] * (stop - start))
            self._image_ids = ids
        return self._image_ids

    def _column(self, name: str, missing: np.ndarray) -> np.ndarray:
        """A per-image column over all N images; ``missing`` (one row) fills unfinished shards."""
        parts = []
        for shard_no in range(self.meta.num_shards):
            if shard_no in self.manifest.shards:
                parts.append(getattr(self._shard(shard_no), name).astype(np.int64))
            else:
                start, stop = self.meta.shard_range(shard_no)
                parts.append(np.repeat(missing[None], stop - start, axis=0))
        return np.concatenate(parts) if parts else np.zeros((0, *missing.shape), dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 ground-truth class per image, -1 where unknown (or in an unfinished shard)."""
        return self._column("labels", np.array(-1))

    @property
    def image_sizes(self) -> np.ndarray:
        """(N, 2) int64 original (height, width) per image, (0, 0) in unfinished shards."""
        return self._column("sizes", np.zeros(2, dtype=np.int64))

    @property
    def fingerprints(self) -> "np.ndarray | None":
        """(N,) int64 CRC-32 of each image file the crops were labelled from (0 in unfinished shards),
        or None when the store records none (made before fingerprints)."""
        if self.meta.image_fingerprint != "crc32":
            return None
        return self._column("fingerprints", np.zeros((), dtype=np.int64))


MIN_BYTES_PER_IMAGE = 24
"""What a shard stores per image at least: offset (8), crc32 (4), label (4), height and width (8)."""


def max_frame_size(raw_size: int) -> int:
    """An upper bound on a zstd frame holding ``raw_size`` bytes (zstd's compress bound plus the
    frame header), so a record length read from a shard is checked before anything is allocated."""
    return raw_size + (raw_size >> 8) + 1024


def _read_array(f: h5py.File, name: str, shape: tuple[int, ...], dtype: type, path: Path) -> np.ndarray:
    """Read a small per-image dataset after checking its shape, so hostile sizes allocate nothing."""
    if name not in f:
        raise StoreCorruptError(path, f"dataset {name!r} is missing")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset) or ds.shape != shape:
        raise StoreCorruptError(path, f"dataset {name!r} has shape {getattr(ds, 'shape', None)}, expected {shape}")
    return np.asarray(ds[...], dtype=dtype)
