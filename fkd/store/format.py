"""The label-store format: the metadata record and file names (record layouts: ``layout.py``; the
manifest of finished shards: ``manifest.py``).

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

from ..payload.embedding_spec import EmbeddingSpec
from ..payload.quantize import LabelCodec, Scheme, index_dtype, payload_shape, stored_top_k
from ..teacher.precision import PRECISIONS
from .errors import StoreFormatError, StorePayloadError
from .layout import EmbeddingLayout, PayloadLayout, RecordLayout, view_layout_fields
from .views import ViewSpec

LABELS_FORMAT_VERSION = 3
EMBEDDING_FORMAT_VERSION = 4
LOG_PROBS_FORMAT_VERSION = 5
REINFORCED_FORMAT_VERSION = 6
FORMAT_VERSION = REINFORCED_FORMAT_VERSION
"""The newest version this fkd writes: stores with per-crop augmentation (reinforced) are written
as version 6 whatever their payload; without it ``full`` label stores as 5, the other label stores
as 3, embedding stores as 4."""
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
"""Version 2 added per-image fingerprints, the teacher's precision and the class map (docs/FORMAT.md);
version-1 stores still read, with those fields marked unknown. Version 3 added the shard entries'
``records_offset``, ``records_bytes`` and ``meta_sha256`` (readers of version 2 refuse unknown
fields); older stores are checked by their whole-file sha256 instead. Version 4 added the embedding
payload (``embedding``); label stores stay version 3, unchanged, so older fkd keeps reading
them and refuses embedding stores by their version instead of misreading them. Version 5 stores
``full`` labels as float16 log-probabilities instead of probabilities (``fkd.payload.quantize``): only
full stores are written as 5, so an older fkd refuses them by their version instead of reading
log-probabilities as probabilities; older full stores still read, as probabilities. Version 6 adds
each crop's augmentation (metadata ``augmentation``, record fields after the payload:
``fkd.store.views``); only stores made with augmentation are version 6, so the others keep their
version and bytes, and an older fkd refuses a reinforced store instead of replaying its crops
without the augmentation its labels describe."""
PAYLOADS = ("labels", "embedding")
PAYLOAD_NAMES = {"labels": "soft labels", "embedding": "embeddings"}
FINGERPRINTS = ("crc32", "none")
CROP_DEVICES = ("cpu", "cuda")
"""Where fkd-labelgen cut the crops (``crop_device``): "cpu" is torch's uint8 kernel, the very replay of
fkd-train's workers; "cuda" the device kernel (``fkd.data.device_crops``), within 2 grey levels of it.
An optional field: "cpu" is not written, so those stores keep the bytes and readers they had."""
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
    class_map: "dict[str, int] | None" = None  # data class name -> teacher class index (fkd.data.classes)
    image_fingerprint: str = "none"  # "crc32": every shard keeps the CRC-32 of each image file's bytes
    embedding: "EmbeddingSpec | None" = None  # the payload is embeddings (format 4) instead of soft labels; scheme None, top_k 0
    augmentation: "ViewSpec | None" = None  # per-crop augmentation decided at generation (format 6, fkd.store.views)
    crop_device: str = "cpu"  # where labelgen cut the crops the teacher saw: "cpu" (absent in store.json) or "cuda" (docs/FORMAT.md)
    bad_images: list[dict[str, str]] = field(default_factory=list)
    store_id: str = ""
    created: str = ""
    tool_version: str = ""
    format_version: "int | None" = None  # None: the version this fkd writes for the payload

    def __post_init__(self) -> None:
        for name in ("top_k", "num_classes", "num_crops", "num_images", "shard_size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise StoreFormatError(None, f"metadata field {name} must be an integer, got {value!r}")
        given_version = self.format_version
        self._check_payload()
        self._check_augmentation(given_version)
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

    def _check_payload(self) -> None:
        """Soft labels (a scheme) or an embedding (no scheme, top_k 0, format version 4)."""
        if self.embedding is None:
            self.scheme = Scheme.parse(self.scheme).value
            if self.format_version is None:
                self.format_version = LOG_PROBS_FORMAT_VERSION if self.scheme == Scheme.FULL.value else LABELS_FORMAT_VERSION
            return
        if not isinstance(self.embedding, EmbeddingSpec):
            try:
                self.embedding = EmbeddingSpec.from_dict(self.embedding)
            except (TypeError, ValueError) as exc:
                raise StoreFormatError(None, f"metadata field {exc}") from None
        if self.format_version is None:
            self.format_version = EMBEDDING_FORMAT_VERSION
        if self.format_version < EMBEDDING_FORMAT_VERSION:
            raise StoreFormatError(
                None, f"an embedding payload needs format version {EMBEDDING_FORMAT_VERSION}, the metadata says {self.format_version}"
            )
        if self.scheme is not None or self.top_k != 0:
            raise StoreFormatError(
                None, f"an embedding store has no label scheme (scheme null, top_k 0), got {self.scheme!r}, {self.top_k!r}"
            )

    def _check_augmentation(self, given_version: "int | None") -> None:
        """A reinforced store (augmentation given) is version 6; an empty augmentation is none."""
        if self.augmentation is None:
            return
        if not isinstance(self.augmentation, ViewSpec):
            try:
                self.augmentation = ViewSpec.from_dict(self.augmentation)
            except (TypeError, ValueError) as exc:
                raise StoreFormatError(None, f"metadata field {exc}") from None
        if not self.augmentation.active:
            self.augmentation = None
            return
        if given_version is not None and given_version < REINFORCED_FORMAT_VERSION:
            raise StoreFormatError(None, f"per-crop augmentation needs format version {REINFORCED_FORMAT_VERSION}, "
                                         f"the metadata says {given_version}")
        self.format_version = REINFORCED_FORMAT_VERSION

    @property
    def reinforced(self) -> bool:
        """Each crop's label describes its view after the stored augmentation (format version 6)."""
        return self.augmentation is not None

    @property
    def full_log_probs(self) -> bool:
        """The store keeps ``full`` labels as log-probabilities (format version 5 and later)."""
        return self.scheme == Scheme.FULL.value and (self.format_version or 0) >= LOG_PROBS_FORMAT_VERSION

    def label_codec(self) -> LabelCodec:
        """How this label store's values decode (and re-temper): ``fkd.payload.quantize.LabelCodec``."""
        self.check_payload("labels")
        return LabelCodec(self.scheme, self.num_classes, self.temperature, self.full_log_probs)

    @property
    def embedding_dims(self) -> tuple[int, ...]:
        """Each ensemble member's part of an embedding store's D, in ``teachers`` order (their
        ``embedding_dim``); (D,) for a store whose teachers do not record it."""
        self.check_payload("embedding")
        assert self.embedding is not None
        dims = tuple(int(t["embedding_dim"]) for t in self.teachers if t.get("embedding_dim") is not None)
        return dims or (self.embedding.dim,)

    @property
    def payload(self) -> str:
        """``labels`` (soft labels of a scheme) or ``embedding``."""
        return "labels" if self.embedding is None else "embedding"

    def describe_payload(self) -> str:
        """E.g. ``soft labels (marginal-smoothing, K=5)`` or ``embeddings (D=512, int8, ...)``."""
        if self.embedding is not None:
            return f"{PAYLOAD_NAMES['embedding']} ({self.embedding.describe()})"
        return f"{PAYLOAD_NAMES['labels']} ({self.scheme}, K={stored_top_k(self.scheme, self.top_k, self.num_classes)})"

    def check_payload(self, wanted: "str | None", source: "Path | None" = None) -> None:
        """Refuse a store whose payload is not ``wanted`` (None: any), in one line saying what it holds,
        so a tool never reads embeddings as labels or the reverse."""
        if wanted is not None and wanted not in PAYLOADS:
            raise ValueError(f"payload must be one of {list(PAYLOADS)} or None, got {wanted!r}")
        if wanted is not None and wanted != self.payload:
            article = "a label" if wanted == "labels" else "an embedding"
            raise StorePayloadError(
                source, f"holds {self.describe_payload()}, not {PAYLOAD_NAMES[wanted]}: this command needs {article} store"
            )

    def shard_attrs(self) -> dict[str, Any]:
        """The payload's description each shard file carries (informative; readers go by the manifest)."""
        if self.embedding is None:
            return {"scheme": self.scheme, "top_k": self.top_k, "num_crops": self.num_crops, "num_classes": self.num_classes}
        return {"payload": self.payload, "embedding_dim": self.embedding.dim, "embedding_dtype": self.embedding.dtype,
                "num_crops": self.num_crops, "num_classes": self.num_classes}

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
        if self.crop_device not in CROP_DEVICES:
            raise StoreFormatError(None, f"metadata field crop_device must be one of {list(CROP_DEVICES)}, got {self.crop_device!r}")
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
        dims = [t.get("embedding_dim") for t in self.teachers]
        if self.embedding is not None and any(d is not None for d in dims) and not (
            all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims) and sum(dims) == self.embedding.dim
        ):
            raise StoreFormatError(None, f"metadata field teachers: the members' embedding_dim must be positive integers "
                                         f"summing to D={self.embedding.dim}, got {dims!r}")

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
        """Names of settings that differ, e.g. ['scheme', 'top_k']; ``format_version`` too when two
        full stores keep their values differently (log-probabilities or probabilities), so their
        records never mix."""
        a, b = self.settings(), other.settings()
        names = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if self.scheme == other.scheme == Scheme.FULL.value and self.full_log_probs != other.full_log_probs:
            names.append("format_version")
        return names

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``store.json``; a label store's has no ``embedding`` key, as in version 3,
        and a store without augmentation no ``augmentation`` key, as before version 6; crops cut on the CPU no ``crop_device``."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        for optional in ("embedding", "augmentation"):
            if d[optional] is None:
                del d[optional]
        if d["crop_device"] == "cpu":
            del d["crop_device"]
        return d

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

    def record_layout(self) -> PayloadLayout:
        """The byte layout of this store's per-image records (``RecordLayout`` or ``EmbeddingLayout``)."""
        views = view_layout_fields(self.augmentation)
        if self.embedding is not None:
            return EmbeddingLayout(self.num_crops, self.embedding.dim, self.embedding.dtype, views)
        shape = payload_shape(self.scheme, self.top_k, self.num_classes)
        return RecordLayout(self.num_crops, shape.num_indices, shape.num_values, self.index_dtype, self.full_log_probs, views)
