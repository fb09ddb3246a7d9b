"""Writing label stores: record compression (worker side) and atomic shard + manifest writes (driver).

The split matters for Ray: workers turn crops and payloads into compressed per-image records, which
are small and cheap to ship; only the driver touches the output directory, so it need not be shared
between nodes and there is exactly one writer of ``store.json``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import zstandard

from .. import __version__
from ..payload.schemes import Scheme
from .errors import StoreError, StoreMismatchError
from .files import default_file_mode, fsync_dir
from .format import CODEC, LABELS_FORMAT_VERSION, MANIFEST_NAME, SHARD_PATTERN, StoreMeta
from .integrity import file_sha256
from .layout import PayloadLayout
from .manifest import Manifest, ShardInfo
from .views import ViewParams

ZSTD_LEVEL = 9
"""Compression level of per-image records (see benchmarks/storage for the measurements)."""


def compress_records(
    layout: PayloadLayout,
    boxes_fixed: np.ndarray,
    flips: np.ndarray,
    *payload: "np.ndarray | None",
    views: "ViewParams | None" = None,
    level: int = ZSTD_LEVEL,
) -> list[bytes]:
    """One zstd frame per image from arrays with a leading image axis: boxes (N, M, 4) uint16,
    flips (N, M), and the payload arrays in ``layout.payload_names`` order, None where absent:
    labels ``indices`` (N, M, Ki), ``values`` (N, M, Kv); embeddings ``embedding`` (N, M, D),
    ``scales`` (N, M) (``embedding_codec.encode``'s arrays, reshaped per image); in a reinforced
    store the crops' augmentation ``views`` (N, M, ...) (``ViewParams.stack``)."""
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return [
        compressor.compress(layout.pack(boxes_fixed[n], flips[n], *(None if a is None else a[n] for a in payload),
                                        views=None if views is None else views.take(n)))
        for n in range(len(boxes_fixed))
    ]


@dataclass
class ShardData:
    """The contents of one shard, in image order."""

    image_ids: list[str]
    labels: np.ndarray  # (N,) int, -1 where unknown
    sizes: np.ndarray  # (N, 2) original (height, width)
    records: list[bytes]  # compressed, from compress_records
    fingerprints: "np.ndarray | None" = None  # (N,) CRC-32 of each image file's bytes (fkd.data.images.read_image)

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if not (len(self.labels) == len(self.sizes) == len(self.records) == n):
            raise ValueError("image_ids, labels, sizes and records must have the same length")
        if self.fingerprints is not None and len(self.fingerprints) != n:
            raise ValueError("fingerprints must have one entry per image")


def new_meta(**settings) -> StoreMeta:
    """A StoreMeta with fresh bookkeeping (store id, creation time, tool version)."""
    return StoreMeta(
        **settings,
        store_id=uuid.uuid4().hex,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tool_version=__version__,
    )


def open_for_writing(directory: "str | Path", meta: StoreMeta, overwrite: bool = False) -> Manifest:
    """The manifest to continue: an existing store with the same settings (its finished shards kept,
    for resume), or a new empty one. An existing store with other settings is refused with the
    names of the differing settings unless ``overwrite``, which deletes it first."""
    directory = Path(directory)
    if (directory / MANIFEST_NAME).exists():
        existing = Manifest.load(directory)
        diff = existing.meta.differences(meta)
        if not diff:
            return existing
        if not overwrite:
            details = "; ".join(f"{k}: store has {_setting(existing.meta, k)}, asked {_setting(meta, k)}" for k in diff)
            raise StoreMismatchError(
                directory, f"exists with different settings ({details}); pass --overwrite to replace it or choose another --out"
            )
        remove_store(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(meta)
    manifest.save(directory)
    return manifest


def _setting(meta: StoreMeta, name: str) -> str:
    """A setting's value as ``differences`` compares it, for a message (``format_version``, not in
    ``settings``, differs only between full stores of probabilities and of log-probabilities)."""
    if name == "format_version":
        return f"{meta.format_version} ({'log-probabilities' if meta.full_log_probs else 'probabilities'})"
    return repr(meta.settings().get(name))


LOCK_NAME = ".lock"


@contextmanager
def store_lock(directory: "str | Path") -> Iterator[None]:
    """Hold an exclusive lock on ``STORE/.lock`` while writing a store, so two writers never
    interleave shards and manifests; then clear the temporary files a killed writer left behind
    (only a lock holder can know they are stale). The lock is released when the process dies."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreError(directory, f"is being written by {holder}; wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        for stale in directory.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


def remove_store(directory: Path) -> None:
    """Delete a store's manifest and shard files (nothing else in the directory)."""
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    for shard in directory.glob("shard-*.h5"):
        shard.unlink()


def write_shard(directory: "str | Path", meta: StoreMeta, shard: int, data: ShardData) -> ShardInfo:
    """Write shard ``shard`` atomically (temporary name, fsync, rename) and return its manifest entry.

    The caller records the entry with ``Manifest.shards[shard] = info; manifest.save(directory)``;
    until then the shard is not part of the store, so a crash in between costs only a redo.
    """
    directory = Path(directory)
    start, stop = meta.shard_range(shard)
    if len(data.image_ids) != stop - start:
        raise ValueError(f"shard {shard} holds images [{start}, {stop}), got {len(data.image_ids)} records")
    if (data.fingerprints is not None) != (meta.image_fingerprint == "crc32"):
        raise ValueError(f"the store's image_fingerprint is {meta.image_fingerprint!r}: shard data must "
                         f"{'' if meta.image_fingerprint == 'crc32' else 'not '}carry fingerprints")
    name = SHARD_PATTERN.format(shard)
    lengths = np.fromiter((len(r) for r in data.records), dtype=np.uint64, count=len(data.records))
    offsets = np.zeros(len(lengths) + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    blob = np.frombuffer(b"".join(data.records), dtype=np.uint8)
    crc = np.fromiter((zlib.crc32(r) for r in data.records), dtype=np.uint32, count=len(data.records))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.fchmod(fd, default_file_mode())
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update(
                {
                    "format_version": meta.format_version,
                    "store_id": meta.store_id,
                    "shard_index": shard,
                    "start": start,
                    "count": stop - start,
                    "codec": CODEC,
                    **meta.shard_attrs(),
                }
            )
            f.create_dataset("image_ids", data=np.array(data.image_ids, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("labels", data=np.asarray(data.labels, dtype=np.int32))
            f.create_dataset("sizes", data=np.asarray(data.sizes, dtype=np.uint32).reshape(-1, 2))
            f.create_dataset("offsets", data=offsets)
            f.create_dataset("crc32", data=crc)
            if data.fingerprints is not None:
                f.create_dataset("fingerprints", data=np.asarray(data.fingerprints, dtype=np.uint32))
            records = f.create_dataset("records", data=blob)
            records_range = (int(records.id.get_offset() or 0), int(blob.size))  # allocated when written
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        digest = file_sha256(Path(tmp))
        meta_digest = file_sha256(Path(tmp), skip=records_range) if meta.format_version >= 3 else None
        size = os.path.getsize(tmp)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    ranges = records_range if meta_digest is not None else (None, None)
    return ShardInfo(index=shard, file=name, start=start, count=stop - start, bytes=size, sha256=digest,
                     records_offset=ranges[0], records_bytes=ranges[1], meta_sha256=meta_digest)


def copy_meta(meta: StoreMeta, **changes) -> StoreMeta:
    """A copy of ``meta`` with some settings changed and fresh bookkeeping (for derived stores).

    Its format version is the one this fkd writes for the payload, except for a full store derived
    from anything but a full store of log-probabilities: that one keeps probabilities (version 3), as
    its source's values are, because log-probabilities come from the teacher alone (fkd-labelgen),
    never from probabilities that float16 has already rounded."""
    settings = {k: v for k, v in dataclasses.asdict(meta).items() if k not in ("store_id", "created", "tool_version", "format_version")}
    settings.update(changes)
    probabilities = settings["scheme"] is not None and Scheme.parse(settings["scheme"]) is Scheme.FULL and not meta.full_log_probs
    return new_meta(**settings, **({"format_version": LABELS_FORMAT_VERSION} if probabilities else {}))


__all__ = ["ShardData", "compress_records", "copy_meta", "new_meta", "open_for_writing", "remove_store", "store_lock", "write_shard"]
