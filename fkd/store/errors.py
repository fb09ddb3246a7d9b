"""Errors raised for bad stores: each names the file and says what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """A label store (or one of its files) cannot be used. ``path`` names the file at fault."""

    def __init__(self, path: "str | Path | None", problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class StoreFormatError(StoreError):
    """Not a store of a format version this fkd reads, or metadata that makes no sense."""


class StoreCorruptError(StoreError):
    """A shard is missing, truncated, unreadable, foreign to this store, or fails its checksum."""


class StoreIncompleteError(StoreError):
    """Shards are still missing (fkd-labelgen has not finished, or a run died)."""


class StoreMismatchError(StoreError):
    """An existing store was made with other settings than the ones asked for."""


class StorePayloadError(StoreError):
    """The store holds another payload (soft labels or embeddings) than the command reads: a wrong
    request, not a damaged store."""
