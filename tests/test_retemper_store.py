"""Format version 5: full stores keep float16 log-probabilities; older full stores (probabilities)
still read and decode as before, and the two kinds never mix (resume, derived stores, records)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fkd.data import crops
from fkd.payload import quantize
from fkd.payload.embedding_spec import EmbeddingSpec
from fkd.store import (
    LabelStore,
    ShardData,
    StoreFormatError,
    StoreMismatchError,
    compress_records,
    copy_meta,
    new_meta,
    open_for_writing,
    write_shard,
)

from conftest import write_random_store

IDS = ["a/0.jpg", "a/1.jpg", "b/2.jpg"]
PROBS = np.array([  # (3 images, 2 crops, 4 classes): float16 keeps these exactly
    [[0.5, 0.25, 0.25, 0.0], [0.125, 0.125, 0.25, 0.5]],
    [[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]],
    [[0.0625, 0.4375, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]],
], dtype=np.float32)


def settings(**changes) -> dict:
    base = dict(scheme="full", top_k=4, num_classes=4, class_names=list("wxyz"), num_crops=2, num_images=3, shard_size=3,
                teachers=[{"name": "t"}], temperature=2.0)
    return {**base, **changes}


def write_full_store(path: Path, values: np.ndarray, **meta_changes) -> Path:
    """A one-shard full store whose records hold ``values`` (3, 2, 4) as they are."""
    meta = new_meta(**settings(**meta_changes))
    manifest = open_for_writing(path, meta)
    boxes = [crops.sample_crops(i, 10, 10, 2, 0) for i in IDS]
    fixed = np.stack([crops.boxes_to_fixed(c.boxes, 10, 10) for c in boxes])
    records = compress_records(meta.record_layout(), fixed, np.stack([c.flips for c in boxes]), None, values)
    manifest.shards[0] = write_shard(path, meta, 0, ShardData(IDS, np.array([0, 0, 1]), np.full((3, 2), 10), records))
    manifest.save(path)
    return path


def test_new_full_stores_are_version_5_of_log_probabilities_and_decode_exactly(tmp_path: Path) -> None:
    logp = quantize.encode(PROBS.reshape(6, 4), "full").values.reshape(3, 2, 4)
    store = LabelStore(write_full_store(tmp_path / "s", logp))
    assert (store.meta.format_version, store.meta.full_log_probs) == (5, True)
    assert json.loads((tmp_path / "s" / "store.json").read_text())["meta"]["format_version"] == 5
    with h5py.File(tmp_path / "s" / "shard-00000.h5", "r") as f:
        assert f.attrs["format_version"] == 5
    assert store.meta.label_codec() == quantize.LabelCodec("full", 4, temperature=2.0, log_probs=True)
    record = store.read(0)
    assert np.array_equal(record.values, logp[0]) and record.values[0, 3] == quantize.LOG_PROB_FLOOR
    decoded = record.decoded_labels(store.meta.label_codec())
    assert torch.allclose(decoded, torch.from_numpy(PROBS[0]), rtol=1e-3, atol=1e-40)
    # The other schemes are written as before: version 3, readable by older fkd.
    for scheme in ("hardening", "marginal-renorm"):
        assert new_meta(**settings(scheme=scheme)).format_version == 3


def test_an_older_full_store_of_probabilities_decodes_as_before(tmp_path: Path) -> None:
    """A version-3 full store (float16 probabilities) reads and decodes to the stored probabilities,
    renormalized: exactly what fkd decoded from it before version 5."""
    store = LabelStore(write_full_store(tmp_path / "old", PROBS.astype(np.float16), format_version=3))
    assert (store.meta.format_version, store.meta.full_log_probs) == (3, False)
    assert store.meta.label_codec() == quantize.LabelCodec("full", 4, temperature=2.0, log_probs=False)
    for i in range(3):
        assert torch.equal(store.read(i).decoded_labels(store.meta.label_codec()), torch.from_numpy(PROBS[i]))


def test_the_two_kinds_of_full_values_never_mix(tmp_path: Path) -> None:
    old = write_full_store(tmp_path / "old", PROBS.astype(np.float16), format_version=3)
    # fkd-labelgen resuming an older full store would append log-probabilities to probabilities.
    with pytest.raises(StoreMismatchError, match=r"exists with different settings \(format_version: store has 3 \(probabilities\), asked 5 \(log-probabilities\)\); "
                                                 r"pass --overwrite to replace it or choose another --out"):
        open_for_writing(old, new_meta(**settings()))
    # A record of the other kind is refused when packed.
    legacy_layout = new_meta(**settings(format_version=3)).record_layout()
    with pytest.raises(ValueError, match=r"this store keeps probabilities \(>= 0\), got values down to -0.693: decode log-probabilities"):
        legacy_layout.pack(np.zeros((2, 4)), np.zeros(2), None, np.full((2, 4), np.log(0.5), dtype=np.float16))
    with pytest.raises(ValueError, match=r"this store keeps log-probabilities \(<= 0\), got values up to 0.5: encode probabilities"):
        new_meta(**settings()).record_layout().pack(np.zeros((2, 4)), np.zeros(2), None, PROBS[0].astype(np.float16))


@pytest.mark.parametrize(("source", "changes", "version"), [
    (dict(format_version=3), {}, 3),  # merge / subset of an older full store: its probabilities, copied
    (dict(format_version=3), {"scheme": "full"}, 3),  # convert to full: still rounded probabilities
    ({}, {}, 5),
    ({}, {"scheme": "marginal-renorm", "top_k": 2}, 3),
    (dict(scheme="marginal-smoothing"), {"scheme": "full"}, 3),  # K == C: float16 probabilities
])
def test_derived_stores_keep_their_sources_kind_of_full_values(source: dict, changes: dict, version: int) -> None:
    assert copy_meta(new_meta(**settings(**source)), **changes).format_version == version


def test_embedding_member_dims_come_from_the_teachers_metadata() -> None:
    spec = EmbeddingSpec(8, "float16", "pre-logits")
    base = dict(scheme=None, top_k=0, num_classes=3, class_names=list("abc"), num_crops=2, num_images=3, shard_size=3, embedding=spec)
    two = new_meta(**base, teachers=[{"name": "a", "embedding_dim": 3}, {"name": "b", "embedding_dim": 5}])
    assert two.embedding_dims == (3, 5)
    assert new_meta(**base, teachers=[{"name": "a"}]).embedding_dims == (8,)
    with pytest.raises(StoreFormatError, match=r"the members' embedding_dim must be positive integers summing to D=8, got \[3, 4\]"):
        new_meta(**base, teachers=[{"name": "a", "embedding_dim": 3}, {"name": "b", "embedding_dim": 4}])


def test_random_full_store_round_trips_through_the_codec(tmp_path: Path) -> None:
    path, written = write_random_store(tmp_path / "r", scheme="full", num_images=3, shard_size=2)
    store = LabelStore(path)
    codec = store.meta.label_codec()
    assert codec.log_probs
    for i in range(3):
        got = store.read(i).decoded_labels(codec).double()  # float16 ln p: each p within 2^-11 |ln p| relatively
        assert (0.5 * (got - torch.from_numpy(written["probs"][i])).abs().sum(-1)).max() < 1e-3
