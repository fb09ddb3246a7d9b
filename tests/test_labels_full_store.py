"""fkd-labels on full stores of format version 5 (float16 log-probabilities) beside older ones
(version 3, float16 probabilities): verify, export-fkd, show, info and merge read each as what it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from PIL import Image

from fkd.data.crops import boxes_to_fixed, sample_crops
from fkd.data.images import list_images, load_image
from fkd.labels.builder import prepare_output, write_store
from fkd.labels.cli import main
from fkd.labels.show import draw
from fkd.payload import quantize
from fkd.store import ImageLabels, LabelStore, Manifest, ShardData, new_meta, write_shard

from conftest import make_image_folder, write_random_store

CLASSES, CROPS = 10, 6


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def teacher_probs(num_images: int, seed: int = 0) -> np.ndarray:
    """(N, M, C) probabilities with a long tail (down to about 1e-9), rows summing to 1."""
    logits = np.random.default_rng(seed).normal(size=(num_images, CROPS, CLASSES)) * 5.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def full_store(path: Path, probs: np.ndarray, format_version: "int | None" = None, first: int = 0) -> Path:
    """A full store of ``probs`` for images ``k0/img{first + i}.jpg``; ``format_version`` 3: of
    float16 probabilities, as fkd wrote full stores before version 5."""
    n, m, c = probs.shape
    meta = new_meta(
        scheme="full", top_k=1, num_classes=c, class_names=[f"k{i}" for i in range(c)], num_crops=m, num_images=n,
        shard_size=4, teachers=[{"name": "test"}], format_version=format_version,
    )
    records = []
    for i in range(n):
        crops = sample_crops(f"img{first + i}", 30, 40, m, seed=0)
        values = probs[i].astype(np.float16) if format_version == 3 else quantize.encode(probs[i], "full").values
        records.append(ImageLabels(i, f"k0/img{first + i}.jpg", 0, 30, 40, boxes_to_fixed(crops.boxes, 30, 40), crops.flips, None, values))
    write_store(prepare_output(path, False), meta, records)
    return path


def test_a_version_5_full_store_verifies_clean_and_a_positive_log_value_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before: every record of a version-5 full store was 'stored probabilities outside [0, 1]'."""
    path = full_store(tmp_path / "s", teacher_probs(8))
    code, out, _ = run(capsys, "verify", str(path), "--quiet")
    assert (code, out) == (0, f"OK: {path}: 2 shards, 8 images, 48 crops verified\n")
    manifest = Manifest.load(path)
    meta = manifest.meta
    store = LabelStore(path)
    records = [store.read(i) for i in range(4)]
    layout = meta.record_layout()
    raw = [layout.pack(r.boxes_fixed, r.flips, None, r.values) for r in records]
    values = np.array(records[1].values)
    values[2, 3] = 0.5  # ln p > 0: p > 1, which the writer's layout refuses: written as bytes
    raw[1] = raw[1][: -values.nbytes] + values.astype("<f2").tobytes()
    shard = [zstandard.ZstdCompressor(write_content_size=True).compress(r) for r in raw]
    store.close()
    ids = [r.image_id for r in records]
    manifest.shards[0] = write_shard(path, meta, 0, ShardData(ids, np.zeros(4), np.full((4, 2), (30, 40)), shard))
    manifest.save(path)
    code, out, _ = run(capsys, "verify", str(path), "--quiet")
    assert code == 1
    assert out.startswith("shard 0 (shard-00000.h5, images 0..3): corrupt\n"
                          "    image 1 ('k0/img1.jpg'): stored log-probabilities outside [-104, 0] (or not finite)\n"
                          f"FAILED: {path}: 1 of 2 shards need attention (1 corrupt)")


def test_an_older_full_store_still_verifies_as_probabilities(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = full_store(tmp_path / "s", teacher_probs(4), format_version=3)
    assert run(capsys, "verify", str(path), "--quiet")[:2] == (0, f"OK: {path}: 1 shards, 4 images, 24 crops verified\n")


def test_export_writes_a_version_5_full_store_as_probabilities(tmp_path: Path) -> None:
    """The official trainer's ``ori`` labels are the softmax: exp of the stored ln p. Before: the
    log-probabilities themselves (negative numbers)."""
    probs = teacher_probs(3)
    path = full_store(tmp_path / "s", probs)
    assert main(["export-fkd", str(path), "--out", str(tmp_path / "fkd")]) == 0
    for i in range(3):
        _, _, labels = torch.load(tmp_path / "fkd" / "k0" / f"img{i}.tar", weights_only=False)
        assert labels.dtype == np.float32 and labels.shape == (CROPS, CLASSES)
        np.testing.assert_allclose(labels.sum(1), 1.0, rtol=0, atol=2e-3)
        np.testing.assert_allclose(labels, probs[i], rtol=2**-11 * 25, atol=1e-7)  # float16 ln p: relative error 2^-11 |ln p|


def test_show_draws_a_version_5_full_store_as_the_teachers_probabilities(tmp_path: Path) -> None:
    """Before: the stored ln p decoded as probabilities, clamped to 0: bars of length 0."""
    data = make_image_folder(tmp_path / "images", classes=3, per_class=2)
    images = list_images(data)
    sizes = np.array([Image.open(images.path(i)).size[::-1] for i in range(len(images))])
    path, written = write_random_store(tmp_path / "s", scheme="full", num_classes=CLASSES, num_crops=CROPS, num_images=len(images),
                                       image_ids=images.image_ids, sizes=sizes, labels=images.labels)
    store = LabelStore(path)
    record = store.read(2)
    fig = draw(store.meta, record, load_image(data / record.image_id), num_boxes=4, num_crops=2)
    for n in range(2):
        bars = fig.axes[2 + 2 * n]
        top = np.sort(written["probs"][2, n])[::-1]  # all 10 classes
        np.testing.assert_allclose([b.get_width() for b in bars.patches], top, rtol=2e-3)


def test_info_says_what_a_full_stores_values_are(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    new = full_store(tmp_path / "new", teacher_probs(2))
    old = full_store(tmp_path / "old", teacher_probs(2), format_version=3)
    out = run(capsys, "info", str(new))[1]
    assert "format v5)\n" in out and f"scheme:       full, K={CLASSES}, float16 log-probabilities\n" in out
    out = run(capsys, "info", str(old))[1]
    assert "format v3)\n" in out and f"scheme:       full, K={CLASSES}, float16 probabilities\n" in out


def test_merging_full_stores_of_probabilities_and_of_log_probabilities_names_the_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: 'format_version: None vs None' (the version is no setting: it was looked up among them)."""
    old = full_store(tmp_path / "old", teacher_probs(2), format_version=3)
    new = full_store(tmp_path / "new", teacher_probs(2, seed=1), first=2)
    code, _, err = run(capsys, "merge", str(old), str(new), "--out", str(tmp_path / "m"))
    assert code == 2 and err == (
        f"fkd-labels merge: error: {new} was made with other settings than {old} (format_version: 3 (probabilities) vs "
        "5 (log-probabilities)); only parts of one run can be merged\n"
    )
