"""Reading label stores: random access by image index, safe in DataLoader workers.

HDF5 handles are opened lazily, per process (a fork or a pickle drops them), read-only and without
file locks. Each shard is checked when first opened (present, the size and sha256 the manifest
recorded, a readable HDF5 file of this store and format version, consistent offsets), and every
record is checked against its CRC32 and exact decompressed size when decoded, so damage surfaces as a
``StoreError`` naming the file, never as wrong labels.

The sha256 comes first because HDF5 does not checksum everything it parses: one flipped byte in a
shard's global heap (where variable-length strings such as the image ids live) can make HDF5 loop
forever, and flips in the small per-image datasets (labels, sizes) would go unnoticed. Hashing a
shard costs about 3 ms per 4 MB, once per shard and process.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zstandard

from .errors import StoreCorruptError, StoreError, StoreIncompleteError
from .format import FORMAT_VERSION, Manifest, RecordLayout, StoreMeta
from .writer import file_sha256


@dataclass
class ImageLabels:
    """One image's stored crops: fixed-point boxes (M, 4) uint16, flips (M,), payload arrays."""

    index: int
    image_id: str
    label: int
    height: int
    width: int
    boxes_fixed: np.ndarray
    flips: np.ndarray
    indices: "np.ndarray | None"
    values: "np.ndarray | None"


@dataclass
class _OpenShard:
    file: h5py.File
    records: h5py.Dataset
    offsets: np.ndarray
    crc32: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    image_ids: list[str]


class LabelStore:
    """A label store opened for reading.

    ``LabelStore(path)`` refuses an incomplete store (``allow_incomplete=True`` opens the finished
    shards only, for inspection tools). ``read(i)`` returns image ``i``'s crops and payload.
    ``verify_checksums=False`` skips the sha256 of each shard at open (to test the checks behind it).
    """

    def __init__(self, path: "str | Path", allow_incomplete: bool = False, verify_checksums: bool = True):
        self.path = Path(path)
        self.verify_checksums = verify_checksums
        self.manifest = Manifest.load(self.path)
        if not allow_incomplete and not self.manifest.complete:
            missing = self.manifest.missing_shards()
            raise StoreIncompleteError(
                self.path,
                f"store is incomplete: {len(missing)} of {self.meta.num_shards} shards missing "
                f"(first: {missing[:5]}); rerun fkd-labelgen with the same arguments to finish it",
            )
        self.layout: RecordLayout = self.meta.record_layout()
        self._pid = os.getpid()
        self._shards: dict[int, _OpenShard] = {}
        self._image_ids: list[str] | None = None

    @property
    def meta(self) -> StoreMeta:
        return self.manifest.meta

    def __len__(self) -> int:
        return self.meta.num_images

    # Pickling / fork safety -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def close(self) -> None:
        for shard in self._shards.values():
            shard.file.close()
        self._shards.clear()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Shards ---------------------------------------------------------------------------------

    def shard_path(self, shard: int) -> Path:
        return self.path / self.manifest.shards[shard].file

    def _shard(self, shard: int) -> _OpenShard:
        if os.getpid() != self._pid:
            # Forked child: the parent's HDF5 handles must not be used (or closed) here.
            self._shards = {}
            self._pid = os.getpid()
        opened = self._shards.get(shard)
        if opened is None:
            opened = self._shards[shard] = self._open_shard(shard)
        return opened

    def _open_shard(self, shard: int) -> _OpenShard:
        info = self.manifest.shards.get(shard)
        if info is None:
            raise StoreIncompleteError(self.path, f"shard {shard} is not finished")
        path = self.path / info.file
        if not path.is_file():
            raise StoreCorruptError(path, "shard file is missing")
        size = path.stat().st_size
        if size != info.bytes:
            kind = "is truncated" if size < info.bytes else "has the wrong size"
            raise StoreCorruptError(path, f"shard {kind}: {size} bytes, the manifest recorded {info.bytes}")
        if info.count * MIN_BYTES_PER_IMAGE > size:
            # The per-image arrays are stored uncompressed, so they fit in the file: this bounds what
            # a hostile shard (declaring huge datasets) can make us allocate by the file's real size.
            raise StoreCorruptError(path, f"a shard of {size} bytes cannot hold the {info.count} images the manifest claims")
        if self.verify_checksums:
            self.verify_shard_checksum(shard)
        try:
            f = h5py.File(path, "r", locking=False)
        except Exception as exc:  # h5py raises OSError subclasses with HDF5's message
            raise StoreCorruptError(path, f"not a readable HDF5 shard (corrupted?): {exc}") from None
        try:
            attrs = {k: f.attrs.get(k) for k in ("format_version", "store_id", "shard_index", "start", "count")}
            if attrs["format_version"] != FORMAT_VERSION:
                raise StoreCorruptError(path, f"shard has format version {attrs['format_version']!r}, expected {FORMAT_VERSION}")
            if attrs["store_id"] != self.meta.store_id:
                raise StoreCorruptError(path, f"shard belongs to another store (store id {attrs['store_id']!r}, expected {self.meta.store_id!r})")
            if (attrs["shard_index"], attrs["start"], attrs["count"]) != (info.index, info.start, info.count):
                raise StoreCorruptError(path, "shard's index or image range differs from the manifest")
            n = info.count
            offsets = _read_array(f, "offsets", (n + 1,), np.uint64, path)
            crc = _read_array(f, "crc32", (n,), np.uint32, path)
            labels = _read_array(f, "labels", (n,), np.int32, path)
            sizes = _read_array(f, "sizes", (n, 2), np.uint32, path)
            records = f["records"]
            if records.ndim != 1 or records.dtype != np.uint8:
                raise StoreCorruptError(path, "records dataset has the wrong type")
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
            return _OpenShard(f, records, offsets, crc, labels, sizes, image_ids)
        except StoreError:
            f.close()
            raise
        except Exception as exc:
            f.close()
            raise StoreCorruptError(path, f"unreadable shard structure: {exc}") from None

    def shard_image_ids(self, shard: int) -> list[str]:
        """Open ``shard`` (running the structure checks above; StoreError if they fail) and return
        its image ids, without decoding any record."""
        return self._shard(shard).image_ids

    def verify_shard_checksum(self, shard: int) -> None:
        """Compare the shard file's sha256 with the manifest's (reads the whole file)."""
        info = self.manifest.shards[shard]
        path = self.path / info.file
        if not path.is_file():
            raise StoreCorruptError(path, "shard file is missing")
        try:
            digest = file_sha256(path)
        except OSError as exc:  # permissions, too many open files, I/O errors: name the file
            raise StoreCorruptError(path, f"cannot read shard: {exc.strerror or exc}") from None
        if digest != info.sha256:
            raise StoreCorruptError(path, f"checksum mismatch: sha256 {digest[:16]}..., the manifest recorded {info.sha256[:16]}...")

    # Records --------------------------------------------------------------------------------

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row) of image ``index``."""
        if not 0 <= index < self.meta.num_images:
            raise IndexError(f"image index {index} out of range for a store of {self.meta.num_images} images")
        return divmod(index, self.meta.shard_size)

    def read(self, index: int) -> ImageLabels:
        """Decode image ``index``: boxes, flips and payload of all M crops."""
        shard_no, row = self.locate(index)
        shard = self._shard(shard_no)
        start, stop = int(shard.offsets[row]), int(shard.offsets[row + 1])
        path = self.path / self.manifest.shards[shard_no].file
        try:
            blob = shard.records[start:stop].tobytes()
        except Exception as exc:
            raise StoreCorruptError(path, f"cannot read record {row}: {exc}") from None
        if zlib.crc32(blob) != int(shard.crc32[row]):
            raise StoreCorruptError(path, f"checksum mismatch in the record of image {index} (row {row})")
        expected = self.layout.raw_size
        try:
            declared = zstandard.frame_content_size(blob)
            if declared != expected:
                raise ValueError(f"frame declares {declared} bytes, the layout needs {expected}")
            raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=expected)
            boxes, flips, indices, values = self.layout.unpack(raw)
        except (zstandard.ZstdError, ValueError) as exc:
            raise StoreCorruptError(path, f"undecodable record of image {index} (row {row}): {exc}") from None
        height, width = (int(v) for v in shard.sizes[row])
        return ImageLabels(index, shard.image_ids[row], int(shard.labels[row]), height, width, boxes, flips, indices, values)

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

    def _column(self, name: str) -> np.ndarray:
        parts = []
        for shard_no in range(self.meta.num_shards):
            if shard_no in self.manifest.shards:
                parts.append(getattr(self._shard(shard_no), name))
        return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 ground-truth class per image, -1 where unknown."""
        return self._column("labels").astype(np.int64)

    @property
    def image_sizes(self) -> np.ndarray:
        """(N, 2) int64 original (height, width) per image."""
        return self._column("sizes").astype(np.int64).reshape(-1, 2)


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
