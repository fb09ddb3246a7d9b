"""The label-store format: metadata record, manifest, file names and the per-image record layout.

This module is the contract between ``fkd-labelgen`` (writes) and ``fkd-train`` (reads); docs/FORMAT.md
describes the same thing for people. Bump ``FORMAT_VERSION`` on any incompatible change.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..precision import PRECISIONS
from ..quantize import Scheme, index_dtype, payload_shape
from .errors import StoreFormatError
from .files import atomic_write_bytes

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
"""Version 2 added per-image fingerprints, the teacher's precision and the class map (docs/FORMAT.md);
version-1 stores still read, with those fields marked unknown. Version 3 added the shard entries'
``records_offset``, ``records_bytes`` and ``meta_sha256`` (readers of version 2 refuse unknown
fields); older stores are checked by their whole-file sha256 instead."""
FINGERPRINTS = ("crc32", "none")
UNKNOWN_PRECISION = "unknown"
MANIFEST_NAME = "store.json"
SHARD_PATTERN = "shard-{:05d}.h5"
CODEC = "zstd"

# Settings that describe *what* was generated; two stores with equal settings hold the same labels.
# Bookkeeping fields (store id, creation time, tool version) are left out of the comparison.
BOOKKEEPING_FIELDS = ("store_id", "created", "tool_version", "format_version")

# Bounds on what metadata may claim, so a hostile or damaged store.json cannot make a reader loop
# over, or allocate for, images and shards that do not exist (the per-shard structures are bounded
# separately by the shard file's real size).
MAX_IMAGES = 2**32
MAX_SHARDS = 1_000_000
MAX_INPUT_SIDE = 4096


@dataclass
class StoreMeta:
    """Everything needed to interpret a store and to tell whether a rerun matches it."""

    scheme: str
    top_k: int
    num_classes: int
    class_names: list[str]
    num_crops: int
    num_images: int
    shard_size: int
    teachers: list[dict[str, Any]]
    temperature: float = 1.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_prob: float = 0.5
    input_size: tuple[int, int] = (224, 224)
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    seed: int = 0
    data_fingerprint: str = ""
    teacher_precision: str = "fp32"
    class_map: "dict[str, int] | None" = None  # data class name -> teacher class index (fkd.classes)
    image_fingerprint: str = "none"  # "crc32": every shard keeps the CRC-32 of each image file's bytes
    bad_images: list[dict[str, str]] = field(default_factory=list)
    store_id: str = ""
    created: str = ""
    tool_version: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in ("top_k", "num_classes", "num_crops", "num_images", "shard_size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise StoreFormatError(None, f"metadata field {name} must be an integer, got {value!r}")
        self.scheme = Scheme.parse(self.scheme).value
        for name in ("crop_scale", "crop_ratio", "input_size", "mean", "std"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.num_crops < 1 or self.num_crops > 65535:
            raise StoreFormatError(None, f"num_crops must be in 1..65535, got {self.num_crops}")
        if self.num_classes < 2 or self.num_classes > 2**31 - 1:
            raise StoreFormatError(None, f"num_classes must be in 2..2^31-1, got {self.num_classes}")
        if self.num_images < 0 or self.shard_size < 1:
            raise StoreFormatError(None, f"bad image count {self.num_images} or shard size {self.shard_size}")
        if not isinstance(self.class_names, list) or len(self.class_names) != self.num_classes:
            raise StoreFormatError(None, f"class_names must list {self.num_classes} names")
        if self.record_layout().raw_size > 1 << 30:
            raise StoreFormatError(None, "a per-image record over 1 GiB: num_crops x payload is implausible")
        if self.num_images > MAX_IMAGES or self.num_shards > MAX_SHARDS:
            raise StoreFormatError(
                None, f"implausible store size: {self.num_images} images in {self.num_shards} shards "
                f"(at most {MAX_IMAGES} images and {MAX_SHARDS} shards)"
            )
        self._check_settings()

    def _check_settings(self) -> None:
        """Types and ranges of the settings readers use to replay crops (strings where numbers
        belong, wrong lengths, absurd sizes)."""

        def numeric(name: str, count: int) -> tuple[float, ...]:
            value = getattr(self, name)
            if len(value) != count or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
                raise StoreFormatError(None, f"metadata field {name} must hold {count} numbers, got {list(value)!r}")
            return value

        numeric("crop_scale", 2)
        numeric("crop_ratio", 2)
        numeric("mean", 3)
        numeric("std", 3)
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and 1 <= v <= MAX_INPUT_SIDE for v in numeric("input_size", 2)):
            raise StoreFormatError(None, f"metadata field input_size must be 2 integers in 1..{MAX_INPUT_SIDE}, got {list(self.input_size)!r}")
        for name in ("temperature", "flip_prob"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise StoreFormatError(None, f"metadata field {name} must be a number, got {value!r}")
        for name in ("interpolation", "data_fingerprint", "store_id", "created", "tool_version"):
            if not isinstance(getattr(self, name), str):
                raise StoreFormatError(None, f"metadata field {name} must be a string, got {getattr(self, name)!r}")
        if not all(isinstance(n, str) for n in self.class_names):
            raise StoreFormatError(None, "metadata field class_names must hold strings")
        if self.teacher_precision not in PRECISIONS + (UNKNOWN_PRECISION,):
            raise StoreFormatError(None, f"metadata field teacher_precision must be one of {list(PRECISIONS)}, got {self.teacher_precision!r}")
        if self.image_fingerprint not in FINGERPRINTS:
            raise StoreFormatError(None, f"metadata field image_fingerprint must be one of {list(FINGERPRINTS)}, got {self.image_fingerprint!r}")
        if self.class_map is not None and not (
            isinstance(self.class_map, dict)
            and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < self.num_classes
                    for k, v in self.class_map.items())
        ):
            raise StoreFormatError(None, f"metadata field class_map must map class names to class indices in 0..{self.num_classes - 1}")
        for name in ("teachers", "bad_images"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise StoreFormatError(None, f"metadata field {name} must be a list of objects")

    @property
    def num_shards(self) -> int:
        return (self.num_images + self.shard_size - 1) // self.shard_size

    def shard_range(self, shard: int) -> tuple[int, int]:
        """[start, stop) image indices held by ``shard``."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.num_images)

    def settings(self) -> dict[str, Any]:
        """The comparable part of the metadata (JSON-normalized)."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        for key in BOOKKEEPING_FIELDS + ("bad_images",):
            d.pop(key, None)
        # A checkpoint is identified by its sha256: the same file under another path is the same teacher.
        for teacher in d.get("teachers", []):
            if teacher.get("sha256"):
                teacher.pop("checkpoint", None)
        return d

    def differences(self, other: "StoreMeta") -> list[str]:
        """Names of settings that differ, e.g. ['scheme', 'top_k']."""
        a, b = self.settings(), other.settings()
        return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: "Path | None" = None) -> "StoreMeta":
        if not isinstance(data, dict):
            raise StoreFormatError(source, "metadata is not a JSON object")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise StoreFormatError(
                source, f"format version {version!r} is not supported (this fkd reads versions {', '.join(map(str, READABLE_VERSIONS))})"
            )
        if version == 1:  # what version 1 did not record
            data = {**data, "teacher_precision": UNKNOWN_PRECISION, "image_fingerprint": "none"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise StoreFormatError(source, f"unknown metadata fields {unknown}")
        try:
            return cls(**data)
        except StoreFormatError as exc:
            raise StoreFormatError(source, exc.problem) from None
        except (TypeError, ValueError) as exc:
            raise StoreFormatError(source, f"invalid metadata: {exc}") from None

    # Record layout -------------------------------------------------------------------------

    @property
    def index_dtype(self) -> np.dtype:
        return index_dtype(self.num_classes)

    def record_layout(self) -> "RecordLayout":
        shape = payload_shape(self.scheme, self.top_k, self.num_classes)
        return RecordLayout(self.num_crops, shape.num_indices, shape.num_values, self.index_dtype)


@dataclass(frozen=True)
class RecordLayout:
    """Byte layout of one image's uncompressed record (all little-endian, fields back to back):

    ``boxes`` uint16 (M, 4) fixed-point (top, left, height, width) | ``flips`` packed bits
    ceil(M / 8) bytes | ``indices`` (M, Ki) uint16 or uint32 | ``values`` (M, Kv) float16.
    """

    num_crops: int
    num_indices: int
    num_values: int
    index_dtype: np.dtype

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        m = self.num_crops
        return (m * 4 * 2, (m + 7) // 8, m * self.num_indices * self.index_dtype.itemsize, m * self.num_values * 2)

    @property
    def raw_size(self) -> int:
        return sum(self.sizes)

    def pack(self, boxes_fixed: np.ndarray, flips: np.ndarray, indices: "np.ndarray | None", values: "np.ndarray | None") -> bytes:
        m = self.num_crops
        parts = [
            np.ascontiguousarray(boxes_fixed, dtype="<u2").reshape(m, 4).tobytes(),
            np.packbits(np.asarray(flips, dtype=bool).reshape(m)).tobytes(),
        ]
        if self.num_indices:
            parts.append(np.ascontiguousarray(indices, dtype=self.index_dtype.newbyteorder("<")).reshape(m, self.num_indices).tobytes())
        if self.num_values:
            parts.append(np.ascontiguousarray(values, dtype="<f2").reshape(m, self.num_values).tobytes())
        return b"".join(parts)

    def unpack(self, raw: bytes) -> tuple[np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None"]:
        """raw bytes -> (boxes_fixed (M,4) uint16, flips (M,) bool, indices | None, values | None)."""
        m = self.num_crops
        nb, nf, ni, nv = self.sizes
        if len(raw) != nb + nf + ni + nv:
            raise ValueError(f"record holds {len(raw)} bytes, layout expects {nb + nf + ni + nv}")
        buf = memoryview(raw)
        boxes = np.frombuffer(buf[:nb], dtype="<u2").reshape(m, 4)
        flips = np.unpackbits(np.frombuffer(buf[nb : nb + nf], dtype=np.uint8), count=m).astype(bool)
        pos = nb + nf
        indices = values = None
        if ni:
            indices = np.frombuffer(buf[pos : pos + ni], dtype=self.index_dtype.newbyteorder("<")).reshape(m, self.num_indices)
        pos += ni
        if nv:
            values = np.frombuffer(buf[pos : pos + nv], dtype="<f2").reshape(m, self.num_values)
        return boxes, flips, indices, values


@dataclass
class ShardInfo:
    """A finished shard as the manifest records it."""

    index: int
    file: str
    start: int
    count: int
    bytes: int
    sha256: str
    # Where the records dataset lies in the file, and the sha256 of every byte but those: the bytes
    # HDF5 parses, checked at every open at a cost independent of the payload (the records are
    # checked by their CRC-32s as they are read). Absent in stores made before format version 3.
    records_offset: "int | None" = None
    records_bytes: "int | None" = None
    meta_sha256: "str | None" = None

    @property
    def records_range(self) -> "tuple[int, int] | None":
        """(offset, length) of the records dataset in the file, where the manifest records it."""
        return None if self.meta_sha256 is None else (self.records_offset, self.records_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: "Path | None" = None) -> "ShardInfo":
        try:
            info = cls(**data)
        except TypeError as exc:
            raise StoreFormatError(source, f"invalid shard entry {data!r}: {exc}") from None
        optional = ("records_offset", "records_bytes", "meta_sha256")
        present = [getattr(info, name) is not None for name in optional]
        if any(present) and not all(present):
            raise StoreFormatError(source, f"shard entry {data!r}: records_offset, records_bytes and meta_sha256 go together")
        for name in ("index", "start", "count", "bytes") + (optional[:2] if all(present) else ()):
            value = getattr(info, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise StoreFormatError(source, f"shard entry field {name} must be a non-negative integer, got {value!r}")
        if not isinstance(info.file, str) or not isinstance(info.sha256, str) or not isinstance(info.meta_sha256, (str, type(None))):
            raise StoreFormatError(source, f"shard entry {data!r}: file, sha256 and meta_sha256 must be strings")
        if Path(info.file).name != info.file:
            raise StoreFormatError(source, f"shard file name {info.file!r} must not contain a directory")
        return info


@dataclass
class Manifest:
    """``store.json``: the metadata plus the shards finished so far (keyed by shard index)."""

    meta: StoreMeta
    shards: dict[int, ShardInfo] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.meta.num_shards and all(i in self.shards for i in range(self.meta.num_shards))

    def missing_shards(self) -> list[int]:
        return [i for i in range(self.meta.num_shards) if i not in self.shards]

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta.to_dict(),
            "complete": self.complete,
            "shards": [self.shards[i].to_dict() for i in sorted(self.shards)],
        }

    @classmethod
    def load(cls, directory: "str | Path") -> "Manifest":
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise StoreFormatError(path, "no label store here (store.json is missing)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreFormatError(path, f"unreadable manifest: {exc}") from None
        if not isinstance(data, dict) or "meta" not in data or not isinstance(data.get("shards"), list):
            raise StoreFormatError(path, "manifest lacks 'meta' and 'shards'")
        meta = StoreMeta.from_dict(data["meta"], path)
        shards: dict[int, ShardInfo] = {}
        for entry in data["shards"]:
            info = ShardInfo.from_dict(entry, path)
            if info.index >= meta.num_shards or (info.start, info.start + info.count) != meta.shard_range(info.index):
                raise StoreFormatError(path, f"shard entry {info.index} does not match the store's image ranges")
            shards[info.index] = info
        return cls(meta, shards)

    def save(self, directory: "str | Path") -> None:
        atomic_write_bytes(Path(directory) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=1).encode())
