"""Fuzzing the store's metadata: hostile store.json values give clean ``StoreError``s within bounded
time and memory, and what is hashed at open (the HDF5 metadata, apart from the records) is refused
before HDF5 parses it. The damaged bytes and crafted shards are in ``test_fuzz_reader.py``."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import h5py
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fkd.labels.verify import verify_store
from fkd.store import LabelStore, StoreCorruptError, StoreError, StoreFormatError
from fkd.store.integrity import file_sha256

from store_fuzzing import FUZZ, SHARD, base, fresh_copy, read_everything, watchdog  # noqa: F401 (base: a fixture)

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
