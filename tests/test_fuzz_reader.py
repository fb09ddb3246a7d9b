"""Fuzzing the store reader: damaged bytes, crafted shards and hostile metadata give clean
``StoreError``s naming the file, within bounded time and memory.

Three layers are attacked separately:
- accidental damage (flipped, cut or appended bytes): refused by size / the sha256 of the bytes HDF5
  parses before it parses them (HDF5 can hang on a damaged global heap, see fkd/store/reader.py), or,
  in the records, by their CRC-32s;
- crafted shards, well-formed HDF5 whose sha256 the manifest matches but whose contents lie (missing
  or mistyped datasets, wrong shapes, huge declared sizes, inconsistent offsets, forged records with
  valid CRCs): refused by the structure and record checks;
- hostile store.json values (huge sizes, negative counts, strings where numbers belong).

A watchdog (faulthandler) turns a hang into a failure with tracebacks instead of a stuck run.
"""

from __future__ import annotations

import re
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zstandard
from hypothesis import event, given
from hypothesis import strategies as st

from fkd.labels.verify import verify_store
from fkd.store import LabelStore, StoreCorruptError, StoreError

from store_fuzzing import FUZZ, ROWS, SHARD, ZSTD_MAGIC, base, fresh_copy, read_everything, record_shard, watchdog  # noqa: F401 (base: a fixture)

# Accidental damage --------------------------------------------------------------------------

damage = st.tuples(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=0, max_size=12),  # (position, xor)
    st.one_of(st.none(), st.integers(1, 4096)),  # bytes cut from the end
    st.binary(max_size=64),  # bytes appended
)


@FUZZ
@given(change=damage)
def test_damaged_shard_bytes_are_refused_before_parsing(base: Path, tmp_path: Path, change: tuple) -> None:
    flips, cut, extra = change
    original = (base / SHARD).read_bytes()
    data = bytearray(original)
    for position, xor in flips:
        data[position % len(data)] ^= xor
    if cut:
        data = data[: max(0, len(data) - cut)]
    data += extra
    if bytes(data) == original:
        return
    path = fresh_copy(base, tmp_path)
    (path / SHARD).write_bytes(bytes(data))
    with watchdog():
        with pytest.raises(StoreCorruptError, match=r"shard-00000\.h5: (shard is truncated|shard has the wrong size|checksum mismatch: sha256|checksum mismatch in the record)"):
            read_everything(path)
        report = verify_store(path, progress=False)
    assert [s.status for s in report.shards] == ["corrupt", "ok"] and report.redo == [0]


# Crafted shards -------------------------------------------------------------------------------

def genuine_contents(base: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with h5py.File(base / SHARD, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        datasets = {k: f[k][...] for k in f}
    return attrs, datasets


hostile_value = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.lists(st.integers(-5, 5), min_size=0, max_size=4).map(lambda v: np.array(v, dtype=np.int64)),
)
hostile_array = st.one_of(
    st.lists(st.integers(0, 2**64 - 1), max_size=6).map(lambda v: np.array(v, dtype=np.uint64)),
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=6).map(lambda v: np.array(v, dtype=np.int32)),
    st.lists(st.floats(width=32, allow_nan=True), max_size=6).map(lambda v: np.array(v, dtype=np.float32)),
    st.lists(st.text(max_size=6), max_size=6).map(lambda v: np.array(v, dtype=object)),
    st.binary(max_size=64).map(lambda b: np.frombuffer(b, dtype=np.uint8)),
    st.just("group"),
    st.just("huge"),
)
ATTRS = ["format_version", "store_id", "shard_index", "start", "count", "codec", "scheme"]
DATASETS = ["image_ids", "labels", "sizes", "offsets", "crc32", "records"]
edit = st.one_of(
    st.tuples(st.just("attr"), st.sampled_from(ATTRS), st.one_of(st.none(), hostile_value)),
    st.tuples(st.just("dataset"), st.sampled_from(DATASETS), st.one_of(st.none(), hostile_array)),
    # forged records that pass the CRC: random bytes, or zstd frames lying about their size
    st.tuples(st.just("records"), st.sampled_from(["random", "huge-frame", "short-frame"]), st.binary(min_size=1, max_size=40)),
)


def forged_records(kind: str, seed: bytes, raw_size: int) -> list[bytes]:
    """Record bytes to forge: random, or zstd frame headers declaring 2^40 bytes or one too few."""
    if kind == "random":
        return [seed, seed[::-1], seed + seed]
    size = 2**40 if kind == "huge-frame" else raw_size - 1
    header = ZSTD_MAGIC + bytes([0xE0]) + size.to_bytes(8, "little")  # single segment, 8-byte content size
    assert zstandard.frame_content_size(header + seed) == size
    return [header + seed for _ in range(ROWS)]


def write_crafted(path: Path, attrs: dict[str, Any], datasets: dict[str, Any]) -> None:
    with h5py.File(path, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for key, value in datasets.items():
            if isinstance(value, str) and value == "group":
                f.create_group(key)
            elif isinstance(value, str) and value == "huge":  # declared 2^40 elements, nothing stored
                f.create_dataset(key, shape=(2**40,), dtype=np.uint64 if key != "records" else np.uint8, chunks=(1024,))
            elif value.dtype == object:
                f.create_dataset(key, data=value, dtype=h5py.string_dtype())
            else:
                f.create_dataset(key, data=value)


@FUZZ
@given(edits=st.lists(edit, min_size=1, max_size=5))
def test_crafted_shards_give_clean_errors(base: Path, tmp_path: Path, edits: list[tuple]) -> None:
    attrs, datasets = genuine_contents(base)
    store_meta = LabelStore(base).meta
    for kind, key, value in edits:
        if kind == "attr":
            attrs.pop(key, None) if value is None else attrs.__setitem__(key, value)
        elif kind == "dataset":
            datasets.pop(key, None) if value is None else datasets.__setitem__(key, value)
        else:  # forged records with matching offsets and CRCs
            records = forged_records(key, value, store_meta.record_layout().raw_size)
            lengths = np.array([len(r) for r in records], dtype=np.uint64)
            datasets["records"] = np.frombuffer(b"".join(records), dtype=np.uint8)
            datasets["offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
            datasets["crc32"] = np.array([zlib.crc32(r) for r in records], dtype=np.uint32)
    path = fresh_copy(base, tmp_path)
    write_crafted(path / SHARD, attrs, datasets)
    record_shard(path)
    tracemalloc.start()
    try:
        with watchdog():
            try:
                read_everything(path)
                event("read")
            except StoreError as exc:
                assert exc.path is not None and exc.problem
                event(re.sub(r"[\d'\"(\[].*", "", exc.problem))  # the kind of refusal, for --hypothesis-show-statistics
            report = verify_store(path, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"reading a crafted shard allocated {peak} bytes"
    assert report.shards[1].status == "ok" and report.shards[0].status in ("ok", "corrupt")


def test_forged_frames_are_refused_without_allocating(base: Path, tmp_path: Path) -> None:
    """Records whose CRC holds but whose zstd frame declares 2^40 bytes (or too few)."""
    attrs, datasets = genuine_contents(base)
    raw_size = LabelStore(base).meta.record_layout().raw_size
    for kind, message in [("huge-frame", f"frame declares {2**40} bytes, the layout needs {raw_size}"),
                          ("short-frame", f"frame declares {raw_size - 1} bytes, the layout needs {raw_size}")]:
        records = forged_records(kind, b"x", raw_size)
        datasets["records"] = np.frombuffer(b"".join(records), dtype=np.uint8)
        datasets["offsets"] = np.concatenate([[0], np.cumsum([len(r) for r in records])]).astype(np.uint64)
        datasets["crc32"] = np.array([zlib.crc32(r) for r in records], dtype=np.uint32)
        path = fresh_copy(base, tmp_path)
        write_crafted(path / SHARD, attrs, datasets)
        record_shard(path)
        with pytest.raises(StoreCorruptError, match=rf"undecodable record of image 1 \(row 1\): {message}"):
            LabelStore(path).read(1)


def test_huge_declared_datasets_are_refused_without_allocating(base: Path, tmp_path: Path) -> None:
    attrs, datasets = genuine_contents(base)
    datasets["records"] = "huge"
    datasets["offsets"] = np.array([0, 10, 20, 2**40], dtype=np.uint64)
    path = fresh_copy(base, tmp_path)
    write_crafted(path / SHARD, attrs, datasets)
    record_shard(path)
    tracemalloc.start()
    try:
        # A dataset declared 2^40 bytes long can only be chunked (it is not in the file): refused as such.
        with pytest.raises(StoreCorruptError, match=r"records dataset must be a contiguous, unfiltered uint8 array"):
            LabelStore(path).read(0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
