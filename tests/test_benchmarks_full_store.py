"""The storage benchmarks and the benchmark store cache on full stores of format version 5
(float16 log-probabilities): layouts as the store writes them, probabilities where the benchmarks
need the teacher's, and no reuse of a full store an older fkd cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.fkd_official import official_labels, read_official
from benchmarks.storage import bench_storage
from benchmarks.storage.compression import measure, record_layout, synthetic_probs
from fkd.payload import quantize
from fkd.payload.schemes import SCHEMES
from fkd.store import new_meta

from conftest import write_random_store


def test_benchmark_layouts_are_the_stores() -> None:
    """Before: full records were laid out as probabilities, and a full payload (ln p <= 0) refused."""
    for scheme in SCHEMES:
        meta = new_meta(scheme=scheme, top_k=3, num_classes=10, class_names=[f"c{i}" for i in range(10)], num_crops=4,
                        num_images=1, shard_size=1, teachers=[])
        assert record_layout(4, scheme, 3, 10) == meta.record_layout(), scheme


def test_compression_measures_a_full_payload_of_log_probabilities() -> None:
    """Before: ValueError 'this store keeps probabilities (>= 0), got values down to ...' at the full scheme."""
    rows = measure(synthetic_probs(2, 4, 10), top_k=3, reads=2)
    full = [r for r in rows if r["scheme"] == "full"]
    assert [r["variant"] for r in full] == ["zstd-3", "zstd-9", "zstd-19", "h5-gzip", "h5-lzf", "raw"]
    assert {r["raw_bytes_per_crop"] for r in full} == {(4 * 8 + 1 + 4 * 10 * 2) / 4}


def test_official_full_labels_of_log_probabilities_are_the_softmax() -> None:
    probs = synthetic_probs(1, 4, 10)[0]
    values = quantize.encode(probs, "full").values
    labels = official_labels("full", None, values, log_values=True)
    assert labels.dtype == np.float32 and np.array_equal(labels, np.exp(values.astype(np.float32)))
    np.testing.assert_allclose(labels, probs, rtol=2**-11 * 20, atol=1e-30)


def test_storage_on_real_stores_reads_a_full_store_as_probabilities(tmp_path: Path, monkeypatch) -> None:
    """The teacher probabilities bench_storage saves (and feeds to the codec comparison) and the
    official ``ori`` files it sizes are probabilities. Before: the stored ln p, negative numbers."""
    stores = {}
    for scheme, k in bench_storage.VARIANTS:
        stores[scheme, k], written = write_random_store(tmp_path / f"{scheme}-{k}", scheme=scheme, top_k=k, num_crops=4, num_images=3)
    monkeypatch.setattr(bench_storage, "converted_store", lambda setting, scheme, k: stores[scheme, k])
    rows, probs = bench_storage.measure_real(common.LabelSetting(1, 4), tmp_path / "official")
    np.testing.assert_allclose(probs, written["probs"], rtol=2**-11 * 20, atol=1e-30)  # float16 ln p
    _, _, labels = read_official(tmp_path / "official" / "full-k10" / "c0" / "img000.tar")
    np.testing.assert_allclose(labels, written["probs"][0], rtol=2**-11 * 20, atol=1e-30)
    assert [r["scheme"] for r in rows] == [scheme for scheme, _ in bench_storage.VARIANTS]


def test_a_full_store_an_older_fkd_cached_is_labelled_again(tmp_path: Path, monkeypatch) -> None:
    """Cached stores are keyed by the newest format this fkd writes: the DeiT soft row (tau 3) needs a
    version-5 full store, and one of version 3 in the cache used to be reused as it was."""
    monkeypatch.setattr(common, "CACHE", tmp_path)
    monkeypatch.setattr(common, "balanced_subset", lambda split, per_class, seed: tmp_path / "data")
    labelled = []
    monkeypatch.setattr(common, "run_logged", lambda argv, log, env=None: labelled.append(argv) or 12.5)
    setting = common.LabelSetting(10, 8)
    stale = tmp_path / "stores" / setting.key / "full"  # where fkd cached it before format version 5
    stale.mkdir(parents=True)
    (stale / "store.json").write_text(json.dumps({"complete": True, "meta": {"format_version": 3}}))
    store, seconds = common.full_store(setting)
    assert (store, seconds) == (tmp_path / "stores" / f"v{common.FORMAT_VERSION}" / setting.key / "full", 12.5)
    assert labelled[0][labelled[0].index("--out") + 1] == str(store)
    monkeypatch.setattr(common, "full_store", lambda setting: (store, None))
    converted = common.converted_store(setting, "marginal-smoothing", 5)  # converted from it, beside it
    assert converted == store.parent / "marginal-smoothing-k5" and labelled[1][labelled[1].index("convert") + 1] == str(store)
