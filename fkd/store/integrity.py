"""Is a shard file still the one its manifest entry describes? Shared by the reader (at every open),
the writer and resume (which relabel a damaged shard), ``fkd-labels info/verify`` and teachers
(checkpoint hashes): so the reader needs nothing from the writer."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .manifest import ShardInfo


def shard_file_problem(directory: "str | Path", info: ShardInfo, checksum: bool = True, metadata_only: bool = False) -> "str | None":
    """Why a finished shard's file no longer matches its manifest entry (missing, wrong size, and
    with ``checksum`` a sha256 mismatch, which reads the whole file), or None when it does.

    ``metadata_only`` (readers, at every open): where the manifest records it (format version 3),
    hash every byte but the records dataset's, i.e. what HDF5 parses, so the cost does not grow
    with the payload; the records are checked by their CRC-32s as they are read."""
    path = Path(directory) / info.file
    if not path.is_file():
        return "shard file is missing"
    size = path.stat().st_size
    if size != info.bytes:
        return f"shard {'is truncated' if size < info.bytes else 'has the wrong size'}: {size} bytes, the manifest recorded {info.bytes}"
    if not checksum:
        return None
    skip = info.records_range if metadata_only else None
    try:
        digest = file_sha256(path, skip)
    except OSError as exc:  # permissions, too many open files, I/O errors
        return f"cannot read shard: {exc.strerror or exc}"
    expected, what = (info.sha256, "sha256") if skip is None else (info.meta_sha256, "sha256 of the HDF5 metadata (all but the records)")
    if digest != expected:
        return f"checksum mismatch: {what} {digest[:16]}..., the manifest recorded {expected[:16]}..."
    return None


def file_sha256(path: Path, skip: "tuple[int, int] | None" = None) -> str:
    """sha256 of the file's bytes, leaving out the range ``skip`` = (offset, length) when given
    (clipped to the file, so hostile manifest values cannot make it read more than the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start, stop = (size, size) if skip is None else (min(skip[0], size), min(skip[0] + skip[1], size))
        for begin, end in ((0, start), (stop, size)):
            f.seek(begin)
            while begin < end:
                chunk = f.read(min(1 << 20, end - begin))
                if not chunk:
                    break
                h.update(chunk)
                begin += len(chunk)
    return h.hexdigest()
