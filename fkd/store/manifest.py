"""``store.json``: the store's metadata plus the shards finished so far, each with the size and
checksums its file must have (docs/FORMAT.md)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StoreFormatError
from .files import atomic_write_bytes
from .format import MANIFEST_NAME, StoreMeta


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
