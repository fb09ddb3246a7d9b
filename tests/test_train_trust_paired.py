"""A label store and an embedding store used together must come from the same image files: their
per-image fingerprints (CRC-32 of the file's bytes) are compared, all of them, before training and
again at every read; boxes and flips, which depend on (seed, id, size) only, cannot tell."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fkd.data.checks import SIZE_CHECK_IMAGES, check_paired_stores
from fkd.data.errors import DataMismatchError
from fkd.data.images import list_images, read_image
from fkd.data.plan import StoreCropPlanner
from fkd.labels.builder import write_store
from fkd.store import LabelStore, Manifest

from conftest import NUM_CROPS, TinyData, write_random_embedding_store, write_random_store


def fingerprinted(src: Path, dst: Path, payload: str, fingerprints: np.ndarray) -> LabelStore:
    """``src`` rewritten as a store that records ``fingerprints`` (as fkd-labelgen does)."""
    with LabelStore(src, payload=payload) as store:
        meta = replace(store.meta, image_fingerprint="crc32")
        write_store(dst, meta, (replace(store.read(i), fingerprint=int(fingerprints[i])) for i in range(len(store))))
    return LabelStore(dst, payload=payload)


def pair(root: Path, num_images: int, label_prints: np.ndarray, embed_prints: np.ndarray, **images) -> tuple[LabelStore, LabelStore]:
    """A label store and an embedding store of the same crops and classes over ``num_images`` images,
    recording the given fingerprints."""
    labels, _ = write_random_store(root / "labels-raw", top_k=2, num_classes=3, num_crops=NUM_CROPS, num_images=num_images, shard_size=5,
                                   **images)
    manifest = Manifest.load(labels)
    manifest.meta.class_names = ["c0", "c1", "c2"]
    manifest.save(labels)
    embeddings, _ = write_random_embedding_store(root / "embed-raw", dim=8, num_crops=NUM_CROPS, num_images=num_images, shard_size=5, **images)
    return fingerprinted(labels, root / "labels", "labels", label_prints), fingerprinted(embeddings, root / "embed", "embedding", embed_prints)


def test_stores_of_other_image_files_are_refused_up_front_beyond_the_sample(tmp_path: Path) -> None:
    """40 images, one of them (not among the SIZE_CHECK_IMAGES the boxes are compared on) another file."""
    n = 40
    sampled = set(np.linspace(0, n - 1, SIZE_CHECK_IMAGES).astype(int).tolist())
    other = min(set(range(n)) - sampled)
    prints = np.arange(1000, 1000 + n, dtype=np.uint32)
    changed = prints.copy()
    changed[other] += 1
    labels, embeddings = pair(tmp_path, n, prints, changed)
    check_paired_stores(labels, fingerprinted(tmp_path / "embed-raw", tmp_path / "same", "embedding", prints))  # the same files pair
    with pytest.raises(DataMismatchError) as info:
        check_paired_stores(labels, embeddings)
    assert str(info.value) == (f"--store and --embed-store were made from other image files: the fingerprints of 1 images differ "
                               f"(e.g. {labels.image_ids[other]!r}); make both from the same images")


def test_every_read_compares_the_two_records_fingerprints(tiny: TinyData, tmp_path: Path) -> None:
    """An embedding store made from another picture of the same size holds the same boxes and flips:
    only the fingerprints tell, and the planner compares them for every image it reads."""
    images = list_images(tiny.train)
    prints = np.array([read_image(images.path(i)).fingerprint for i in range(len(images))], dtype=np.uint32)
    changed = prints.copy()
    changed[3] ^= 0xFFFF
    sizes = np.array([tuple(read_image(images.path(i)).pixels.shape[-2:]) for i in range(len(images))])
    labels, embeddings = pair(tmp_path, len(images), prints, changed, image_ids=images.image_ids, sizes=sizes, labels=images.labels)
    planner = StoreCropPlanner(labels, 2, seed=0, paired=embeddings)
    for index in (0, 3):
        rec, emb = labels.read(index), embeddings.read(index)
        assert np.array_equal(rec.boxes_fixed, emb.boxes_fixed) and np.array_equal(rec.flips, emb.flips)
    planner.plan(0, 0, *sizes[0])
    with pytest.raises(DataMismatchError) as info:
        planner.plan(3, 0, *sizes[3])
    assert str(info.value) == (f"{images.image_ids[3]}: the label store and the embedding store were made from other image files "
                               f"(CRC-32 {prints[3]:08x} vs {changed[3]:08x}): make both from the same images")
