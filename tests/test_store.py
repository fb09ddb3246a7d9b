"""Label store: round trips for every scheme, DataLoader workers, atomic writes, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fkd.data.crops import fixed_to_boxes
from fkd.payload import quantize
from fkd.payload.schemes import SCHEMES
from fkd.store import (
    LabelStore,
    Manifest,
    ShardData,
    StoreCorruptError,
    StoreError,
    StoreFormatError,
    StoreIncompleteError,
    StoreMismatchError,
    compress_records,
    new_meta,
    open_for_writing,
    store_lock,
    write_shard,
)

from conftest import write_random_store


def decoded(store: LabelStore, index: int) -> torch.Tensor:
    return store.read(index).decoded_labels(store.meta.label_codec())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_round_trips(tmp_path: Path, scheme: str) -> None:
    path, written = write_random_store(tmp_path / scheme, scheme=scheme, top_k=3, num_images=10, shard_size=4)
    store = LabelStore(path)
    assert len(store) == 10 and store.meta.num_shards == 3 and store.manifest.complete
    assert store.image_ids[5] == "c2/img005.jpg" and store.labels.tolist() == [i % 3 for i in range(10)]
    for n in range(10):
        rec = store.read(n)
        assert np.array_equal(fixed_to_boxes(rec.boxes_fixed, rec.height, rec.width), written["boxes"][n])
        assert np.array_equal(rec.flips, written["flips"][n])
        expected = quantize.encode(written["probs"][n], scheme, 3)
        for got, want in ((rec.indices, expected.indices), (rec.values, expected.values)):
            assert (got is None and want is None) or np.array_equal(got, want)


class DecodedLabels(Dataset):
    def __init__(self, store: LabelStore):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decoded(self.store, i)


def test_dataloader_workers_read_the_same_labels(random_store: tuple[Path, dict]) -> None:
    path, _ = random_store
    store = LabelStore(path)
    direct = torch.stack([decoded(store, i) for i in range(len(store))])  # opens files in the parent
    loader = DataLoader(DecodedLabels(store), batch_size=3, num_workers=2, multiprocessing_context="fork")
    via_workers = torch.cat(list(loader))
    assert torch.equal(direct, via_workers)
    spawned = DataLoader(DecodedLabels(LabelStore(path)), batch_size=5, num_workers=2, multiprocessing_context="spawn")
    assert torch.equal(direct, torch.cat(list(spawned)))


def shard_file(path: Path, shard: int = 1) -> Path:
    return path / f"shard-{shard:05d}.h5"


def test_truncated_shard_is_named(random_store: tuple[Path, dict]) -> None:
    path, _ = random_store
    f = shard_file(path)
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(StoreCorruptError, match=r"shard-00001\.h5: shard is truncated: \d+ bytes, the manifest recorded \d+"):
        LabelStore(path).read(5)
    assert LabelStore(path).read(0).index == 0  # other shards stay readable


def test_flipped_record_bytes_fail_the_record_checksum(random_store: tuple[Path, dict]) -> None:
    path, _ = random_store
    with h5py.File(shard_file(path), "r") as f:
        offset = f["records"].id.get_offset() + int(f["offsets"][2]) + 5
    data = bytearray(shard_file(path).read_bytes())
    data[offset] ^= 0xFF
    shard_file(path).write_bytes(bytes(data))
    # Opening hashes only what HDF5 parses; the records are the record CRCs' to check, as they are read.
    store = LabelStore(path)
    with pytest.raises(StoreCorruptError, match=r"shard-00001\.h5: checksum mismatch in the record of image 6 \(row 2\)"):
        store.read(6)
    assert store.read(5).index == 5
    with pytest.raises(StoreCorruptError, match=r"shard-00001\.h5: checksum mismatch: sha256 [0-9a-f]{16}\.\.\., the manifest recorded"):
        store.verify_shard_checksum(1)  # the whole file, as fkd-labels verify and resumes check it


def test_garbage_shard_is_not_readable_hdf5(random_store: tuple[Path, dict]) -> None:
    path, _ = random_store
    size = shard_file(path).stat().st_size
    shard_file(path).write_bytes(os.urandom(size))
    with pytest.raises(StoreCorruptError, match=r"shard-00001\.h5: checksum mismatch: sha256"):
        LabelStore(path).read(4)
    with pytest.raises(StoreCorruptError, match=r"shard-00001\.h5: not a readable HDF5 shard"):
        LabelStore(path, verify_checksums=False).read(4)


def test_missing_shard_and_foreign_shard(tmp_path: Path) -> None:
    path, _ = write_random_store(tmp_path / "a", seed=0)
    other, _ = write_random_store(tmp_path / "b", seed=1)
    shard_file(path, 2).unlink()
    with pytest.raises(StoreCorruptError, match=r"shard-00002\.h5: shard file is missing"):
        LabelStore(path).read(9)
    # Same size, other store: caught by the store id, not mistaken for ours.
    shard_file(path, 1).write_bytes(shard_file(other, 1).read_bytes())
    with pytest.raises(StoreCorruptError, match="checksum mismatch: sha256"):
        LabelStore(path).read(4)
    with pytest.raises(StoreCorruptError, match="shard belongs to another store"):
        LabelStore(path, verify_checksums=False).read(4)


def test_wrong_format_version_and_hostile_metadata(random_store: tuple[Path, dict]) -> None:
    path, _ = random_store
    manifest_path = path / "store.json"
    original = json.loads(manifest_path.read_text())
    cases = [
        ({"format_version": 99}, r"format version 99 is not supported \(this fkd reads versions 1, 2, 3, 4, 5, 6\)"),
        ({"num_crops": "16"}, "metadata field num_crops must be an integer"),
        ({"num_crops": -3}, "num_crops must be in 1..65535"),
        ({"num_classes": 2**40}, "num_classes must be in"),
        ({"scheme": "zip"}, "unknown label scheme 'zip'"),
        ({"surprise": 1}, r"unknown metadata fields \['surprise'\]"),
    ]
    for change, message in cases:
        data = json.loads(json.dumps(original))
        data["meta"].update(change)
        manifest_path.write_text(json.dumps(data))
        with pytest.raises(StoreFormatError, match=message):
            LabelStore(path)
    manifest_path.write_text("{not json")
    with pytest.raises(StoreFormatError, match="store.json: unreadable manifest"):
        LabelStore(path)
    with pytest.raises(StoreFormatError, match="no label store here"):
        LabelStore(path / "nowhere")


def settings(**changes) -> dict:
    base = dict(
        scheme="hardening", top_k=1, num_classes=4, class_names=list("abcd"), num_crops=2, num_images=3,
        shard_size=2, teachers=[{"name": "t"}],
    )
    base.update(changes)
    return base


def test_incomplete_store_is_refused_and_resume_keeps_finished_shards(tmp_path: Path) -> None:
    path = tmp_path / "s"
    meta = new_meta(**settings())
    manifest = open_for_writing(path, meta)
    layout = meta.record_layout()
    record = compress_records(
        layout, np.zeros((2, 2, 4), np.uint16), np.zeros((2, 2), bool), np.zeros((2, 2, 1), np.uint16), None
    )
    manifest.shards[0] = write_shard(path, meta, 0, ShardData(["a", "b"], np.array([0, 1]), np.ones((2, 2)), record))
    manifest.save(path)
    with pytest.raises(StoreIncompleteError, match=r"1 of 2 shards missing \(first: \[1\]\); rerun fkd-labelgen"):
        LabelStore(path)
    assert len(LabelStore(path, allow_incomplete=True).image_ids) == 3
    # Same settings: the finished shard is kept. Different settings: refused, naming them.
    assert list(open_for_writing(path, new_meta(**settings())).shards) == [0]
    with pytest.raises(StoreMismatchError, match=r"different settings \(num_crops: store has 2, asked 3; seed: store has 0, asked 5\)"):
        open_for_writing(path, new_meta(**settings(num_crops=3, seed=5)))
    assert open_for_writing(path, new_meta(**settings(seed=5)), overwrite=True).shards == {}
    assert not shard_file(path, 0).exists()


def test_shard_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    meta = new_meta(**settings())
    open_for_writing(path, meta)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    data = ShardData(["a", "b"], np.array([0, 1]), np.ones((2, 2)), [b"x", b"y"])
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, meta, 0, data)
    assert sorted(p.name for p in path.iterdir()) == ["store.json"]
    assert Manifest.load(path).shards == {}


def test_one_writer_at_a_time_and_stale_temporary_files_are_cleared(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    (path / ".shard-00000.h5.abc.tmp").write_bytes(b"left by a killed writer")
    with store_lock(path):
        assert not (path / ".shard-00000.h5.abc.tmp").exists()
        with pytest.raises(StoreError, match=rf"s: is being written by pid {os.getpid()} on "):
            with store_lock(path):
                pass
    with store_lock(path):  # released
        pass


def test_store_files_are_readable_by_others_and_teachers_compare_by_checksum(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path, _ = write_random_store(tmp_path / "s")
    finally:
        os.umask(old)
    assert (path / "shard-00000.h5").stat().st_mode & 0o777 == 0o644
    assert (path / "store.json").stat().st_mode & 0o777 == 0o644
    a = new_meta(**settings(teachers=[{"name": "t", "checkpoint": "/abs/t.pth", "sha256": "ab12"}]))
    b = new_meta(**settings(teachers=[{"name": "t", "checkpoint": "t.pth", "sha256": "ab12"}]))
    c = new_meta(**settings(teachers=[{"name": "t", "checkpoint": "t.pth", "sha256": "cd34"}]))
    assert a.differences(b) == [] and a.differences(c) == ["teachers"]
