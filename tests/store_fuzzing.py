"""What the store fuzzing tests share (``test_fuzz_reader.py``, ``test_fuzz_manifest.py``): a small
genuine store, fresh copies of it, a watchdog against hangs, and the reads a training reader makes."""

from __future__ import annotations

import faulthandler
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import pytest
from hypothesis import HealthCheck, settings

from fkd.store import LabelStore
from fkd.store.integrity import file_sha256

from conftest import write_random_store

SHARD = "shard-00000.h5"
ROWS = 3  # images in shard 0
ZSTD_MAGIC = bytes([0x28, 0xB5, 0x2F, 0xFD])
FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)


@contextmanager
def watchdog(seconds: float = 60) -> Iterator[None]:
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = write_random_store(tmp_path_factory.mktemp("fuzz") / "base", num_images=6, shard_size=ROWS, num_crops=8, top_k=3)
    return path


def fresh_copy(base: Path, tmp_path: Path) -> Path:
    """A new directory per example: HDF5 shares open files by inode, so rewriting a file another
    handle still has open is a different (and unrealistic) experiment."""
    target = Path(tempfile.mkdtemp(dir=tmp_path)) / "store"
    shutil.copytree(base, target)
    return target


def read_everything(path: Path) -> None:
    """Everything a training reader touches; StoreError is the only acceptable failure."""
    with LabelStore(path) as store:
        for i in range(len(store)):
            store.read(i)
        assert len(store.image_ids) == len(store) and len(store.labels) == len(store)
        assert store.image_sizes.shape == (len(store), 2)


def record_shard(path: Path, shard: int = 0) -> None:
    """Make the manifest match the shard file as it is now (what a crafted store would do)."""
    manifest_path = path / "store.json"
    manifest = json.loads(manifest_path.read_text())
    entry = next(e for e in manifest["shards"] if e["index"] == shard)
    entry["bytes"] = (path / entry["file"]).stat().st_size
    entry["sha256"] = file_sha256(path / entry["file"])
    with h5py.File(path / entry["file"], "r") as f:  # crafted records may be missing or not contiguous
        records = f.get("records")
        offset = records.id.get_offset() if isinstance(records, h5py.Dataset) and records.ndim == 1 else None
        length = records.shape[0] if offset is not None else 0
    for name in ("records_offset", "records_bytes", "meta_sha256"):
        entry.pop(name, None)  # then the whole file's sha256 is checked at open, as in older stores
    if offset is not None:
        entry.update(records_offset=offset, records_bytes=length, meta_sha256=file_sha256(path / entry["file"], (offset, length)))
    manifest_path.write_text(json.dumps(manifest))
