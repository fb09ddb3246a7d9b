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

import faulthandler
import json
import re
import shutil
import tempfile
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fkd.labels.verify import verify_store
from fkd.store import LabelStore, StoreCorruptError, StoreError, StoreFormatError
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


# Hostile metadata -----------------------------------------------------------------------------

META_FIELDS = [
    "scheme", "top_k", "num_classes", "class_names", "num_crops", "num_images", "shard_size", "teachers", "temperature",
    "crop_scale", "crop_ratio", "flip_prob", "input_size", "interpolation", "mean", "std", "seed", "data_fingerprint",
    "bad_images", "store_id", "format_version", "embedding",
]
SHARD_FIELDS = ["index", "file", "start", "count", "bytes", "sha256", "records_offset", "records_bytes", "meta_sha256"]
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)


@FUZZ
@given(
    meta_edits=st.dictionaries(st.sampled_from(META_FIELDS), json_value, max_size=3),
    shard_edits=st.dictionaries(st.sampled_from(SHARD_FIELDS), json_value, max_size=2),
)
def test_hostile_manifest_values_give_clean_errors(base: Path, tmp_path: Path, meta_edits: dict, shard_edits: dict) -> None:
    path = fresh_copy(base, tmp_path)
    manifest = json.loads((path / "store.json").read_text())
    manifest["meta"].update(meta_edits)
    manifest["shards"][0].update(shard_edits)
    (path / "store.json").write_text(json.dumps(manifest))
    tracemalloc.start()
    try:
        with watchdog():
            try:
                read_everything(path)
            except StoreError as exc:
                assert exc.problem
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


@pytest.mark.parametrize("change,message", [
    ({"num_images": 10**15}, r"implausible store size: 1000000000000000 images in 333333333333334 shards"),
    ({"num_images": 2**32, "shard_size": 2**32}, r"shard entry 0 does not match the store's image ranges"),
    ({"input_size": [10**6, 10**6]}, r"metadata field input_size must be 2 integers in 1\.\.4096"),
    ({"input_size": ["224", "224"]}, r"metadata field input_size must hold 2 numbers, got \['224', '224'\]"),
    ({"crop_scale": "ab"}, r"metadata field crop_scale must hold 2 numbers, got \['a', 'b'\]"),
    ({"mean": [0.5, 0.5]}, r"metadata field mean must hold 3 numbers"),
    ({"temperature": "hot"}, r"metadata field temperature must be a number, got 'hot'"),
    ({"teachers": "resnet"}, r"metadata field teachers must be a list of objects"),
    ({"class_names": list(range(10))}, r"metadata field class_names must hold strings"),
    ({"top_k": -1}, r"invalid metadata: --top-k must be >= 1 for marginal-smoothing, got -1"),
    ({"shard_size": -5}, r"bad image count 6 or shard size -5"),
])
def test_hostile_metadata_messages(base: Path, tmp_path: Path, change: dict, message: str) -> None:
    path = fresh_copy(base, tmp_path)
    manifest = json.loads((path / "store.json").read_text())
    manifest["meta"].update(change)
    (path / "store.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreFormatError, match=message):
        LabelStore(path)


def test_shard_claiming_more_images_than_its_bytes_can_hold(base: Path, tmp_path: Path) -> None:
    path = fresh_copy(base, tmp_path)
    manifest = json.loads((path / "store.json").read_text())
    manifest["meta"].update(num_images=2**32, shard_size=2**31)
    manifest["shards"] = [dict(manifest["shards"][0], count=2**31)]
    (path / "store.json").write_text(json.dumps(manifest))
    size = (path / SHARD).stat().st_size
    with pytest.raises(StoreCorruptError, match=rf"a shard of {size} bytes cannot hold the 2147483648 images the manifest claims"):
        LabelStore(path, allow_incomplete=True).read(0)


# What is hashed at open ---------------------------------------------------------------------------

def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x40
    path.write_bytes(bytes(data))


def test_metadata_damage_is_refused_before_hdf5_and_record_damage_by_the_record_crc(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = json.loads((base / "store.json").read_text())["shards"][0]
    offset, length = entry["records_offset"], entry["records_bytes"]
    with h5py.File(base / SHARD, "r") as f:
        assert (offset, length) == (f["records"].id.get_offset(), int(f["offsets"][-1]))
    assert entry["meta_sha256"] == file_sha256(base / SHARD, (offset, length)) != entry["sha256"]

    damaged = fresh_copy(base, tmp_path)
    flip_byte(damaged / SHARD, offset + length + 8 if offset + length + 8 < entry["bytes"] else offset - 8)
    with monkeypatch.context() as patched:
        patched.setattr("fkd.store.reader.h5py.File", lambda *a, **k: pytest.fail("HDF5 parsed a shard whose metadata hash differs"))
        with pytest.raises(StoreCorruptError, match=r"shard-00000\.h5: checksum mismatch: sha256 of the HDF5 metadata \(all but the records\)"):
            LabelStore(damaged).read(0)

    in_records = fresh_copy(base, tmp_path)
    flip_byte(in_records / SHARD, offset + 5)
    with LabelStore(in_records) as store:
        store.read(1)  # the shard opens; only the damaged record is refused
        with pytest.raises(StoreCorruptError, match=r"shard-00000\.h5: checksum mismatch in the record of image 0 \(row 0\)"):
            store.read(0)
    assert [s.status for s in verify_store(in_records, progress=False).shards] == ["corrupt", "ok"]  # the whole file's sha256

    older = fresh_copy(base, tmp_path)  # an entry without the metadata hash (format 1, 2): the whole file is hashed at open
    manifest = json.loads((older / "store.json").read_text())
    for name in ("records_offset", "records_bytes", "meta_sha256"):
        del manifest["shards"][0][name]
    (older / "store.json").write_text(json.dumps(manifest))
    flip_byte(older / SHARD, offset + 5)
    with pytest.raises(StoreCorruptError, match=r"shard-00000\.h5: checksum mismatch: sha256 [0-9a-f]{16}\.\.\., the manifest"):
        LabelStore(older).read(1)
    manifest["shards"][0]["meta_sha256"] = "0" * 64
    (older / "store.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreFormatError, match=r"records_offset, records_bytes and meta_sha256 go together"):
        LabelStore(older)
