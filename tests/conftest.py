"""Fixtures shared across the suite: tiny generated image folders and label stores, ../shared paths,
and the tiny fkd-train setting (``tiny``, ``train_args``) the training tests share."""

from __future__ import annotations

import csv
import os
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fkd.data import crops
from fkd.data.images import list_images, load_image
from fkd.payload import quantize
from fkd.store import LabelStore, Manifest, ShardData, compress_records, new_meta, open_for_writing, write_shard

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FKD_SHARED", REPO.parent / "shared"))
CIFAR_TEACHER = SHARED / "models" / "cifar10_keras_cnn.h5"
CIFAR_DATA = SHARED / "data" / "cifar10-jpeg.tar.gz"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for rendezvous and Ray nodes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """An ImageFolder of random JPEGs (class subfolders c0, c1, ...), varied sizes around ``size``."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = size[0] + int(rng.integers(0, 9)), size[1] + int(rng.integers(0, 9))
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(d / f"img{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and spinning OpenMP threads make runs crawl
    when other processes share the cores. Modules that train use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


def write_random_store(
    path: Path,
    scheme: str = "marginal-smoothing",
    top_k: int = 5,
    num_classes: int = 10,
    num_crops: int = 16,
    num_images: int = 10,
    shard_size: int = 4,
    seed: int = 0,
    image_ids: "list[str] | None" = None,
    sizes: "np.ndarray | None" = None,
    labels: "np.ndarray | None" = None,
    fingerprints: "np.ndarray | None" = None,
) -> tuple[Path, dict[str, np.ndarray]]:
    """Write a complete store of random teacher probabilities; return it and the arrays written
    (``probs`` (N, M, C), ``boxes`` (N, M, 4) pixel boxes, ``flips``) to compare reads against.
    ``fingerprints`` (N,): the images' CRC-32s, recorded as fkd-labelgen does (else none)."""
    rng = np.random.default_rng(seed)
    image_ids = image_ids or [f"c{i % 3}/img{i:03d}.jpg" for i in range(num_images)]
    sizes = np.asarray(sizes if sizes is not None else [(40 + i % 5, 48 + i % 7) for i in range(num_images)])
    labels = np.asarray(labels if labels is not None else [i % 3 for i in range(num_images)])
    meta = new_meta(
        scheme=scheme, top_k=top_k, num_classes=num_classes, class_names=[f"class{c}" for c in range(num_classes)],
        num_crops=num_crops, num_images=num_images, shard_size=shard_size, teachers=[{"name": "random"}], seed=seed,
        image_fingerprint="none" if fingerprints is None else "crc32",
    )
    manifest = open_for_writing(path, meta)
    layout = meta.record_layout()
    logits = rng.normal(size=(num_images, num_crops, num_classes)) * 2.0
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
    all_boxes = np.zeros((num_images, num_crops, 4), dtype=np.int64)
    all_flips = np.zeros((num_images, num_crops), dtype=bool)
    for shard in range(meta.num_shards):
        start, stop = meta.shard_range(shard)
        fixed, flips, idx, val = [], [], [], []
        for n in range(start, stop):
            h, w = (int(v) for v in sizes[n])
            c = crops.sample_crops(image_ids[n], h, w, num_crops, seed)
            all_boxes[n], all_flips[n] = c.boxes, c.flips
            fixed.append(crops.boxes_to_fixed(c.boxes, h, w))
            flips.append(c.flips)
            payload = quantize.encode(probs[n], scheme, top_k)
            idx.append(payload.indices)
            val.append(payload.values)
        records = compress_records(
            layout, np.stack(fixed), np.stack(flips),
            None if idx[0] is None else np.stack(idx), None if val[0] is None else np.stack(val),
        )
        shard_fingerprints = None if fingerprints is None else np.asarray(fingerprints)[start:stop]
        info = write_shard(path, meta, shard, ShardData(image_ids[start:stop], labels[start:stop], sizes[start:stop], records, shard_fingerprints))
        manifest.shards[shard] = info
        manifest.save(path)
    return path, {"probs": probs, "boxes": all_boxes, "flips": all_flips}


@pytest.fixture
def random_store(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    return write_random_store(tmp_path / "store")


def extract_cifar_test_images(root: Path, per_class: int) -> Path:
    """The first ``per_class`` CIFAR-10 test JPEGs of each class from the shared tarball, as an
    ImageFolder at ``root`` (the test split comes first in the archive: reading stops after it)."""
    counts: dict[str, int] = {}
    with tarfile.open(CIFAR_DATA) as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) > 1 and parts[1] == "train" or len(counts) == 10 and min(counts.values()) >= per_class:
                break
            if member.isfile() and len(parts) == 4 and counts.get(parts[2], 0) < per_class:
                counts[parts[2]] = counts.get(parts[2], 0) + 1
                target = root / parts[2] / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    return root


def write_random_embedding_store(
    path: Path,
    dim: int = 32,
    dtype: str = "float16",
    num_crops: int = 6,
    num_images: int = 5,
    shard_size: int = 2,
    seed: int = 0,
    image_ids: "list[str] | None" = None,
    sizes: "np.ndarray | None" = None,
    labels: "np.ndarray | None" = None,
) -> tuple[Path, dict[str, np.ndarray]]:
    """Write a complete embedding store of random features (what fkd-labelgen's workers will write:
    ``embedding_codec.encode`` per batch, ``compress_records`` per image, ``write_shard`` per shard);
    return it and the arrays written (``features`` (N, M, D) float32, ``boxes``, ``flips``)."""
    from fkd.payload import embedding_codec
    from fkd.payload.embedding_spec import EmbeddingSpec

    rng = np.random.default_rng(seed)
    image_ids = image_ids or [f"c{i % 3}/img{i:03d}.jpg" for i in range(num_images)]
    sizes = np.asarray(sizes if sizes is not None else [(40 + i % 5, 48 + i % 7) for i in range(num_images)])
    labels = np.asarray(labels if labels is not None else [i % 3 for i in range(num_images)])
    meta = new_meta(
        scheme=None, top_k=0, num_classes=3, class_names=["c0", "c1", "c2"], num_crops=num_crops, num_images=num_images,
        shard_size=shard_size, teachers=[{"name": "random"}], seed=seed, embedding=EmbeddingSpec(dim, dtype, "pre-logits"),
    )
    manifest = open_for_writing(path, meta)
    layout = meta.record_layout()
    features = np.maximum(rng.normal(size=(num_images, num_crops, dim)), 0).astype(np.float32) * 3  # ReLU'd, like pre-logits
    all_boxes = np.zeros((num_images, num_crops, 4), dtype=np.int64)
    all_flips = np.zeros((num_images, num_crops), dtype=bool)
    for shard in range(meta.num_shards):
        start, stop = meta.shard_range(shard)
        fixed = []
        for n in range(start, stop):
            h, w = (int(v) for v in sizes[n])
            c = crops.sample_crops(image_ids[n], h, w, num_crops, seed)
            all_boxes[n], all_flips[n] = c.boxes, c.flips
            fixed.append(crops.boxes_to_fixed(c.boxes, h, w))
        count = stop - start
        payload = embedding_codec.encode(features[start:stop].reshape(count * num_crops, dim), dtype)
        embedding, scales = payload.arrays()
        records = compress_records(
            layout, np.stack(fixed), all_flips[start:stop], embedding.reshape(count, num_crops, dim),
            None if scales is None else scales.reshape(count, num_crops),
        )
        manifest.shards[shard] = write_shard(path, meta, shard, ShardData(image_ids[start:stop], labels[start:stop], sizes[start:stop], records))
        manifest.save(path)
    return path, {"features": features, "boxes": all_boxes, "flips": all_flips}


# fkd-train on a tiny store ------------------------------------------------------------------

NUM_CROPS = 8
SCHEME = "marginal-smoothing"
"""The tiny store's crops per image and scheme (top-2)."""


@dataclass
class TinyData:
    """An ImageFolder, a validation folder and a complete label store over exactly those images."""

    train: Path
    val: Path
    store: Path
    written: dict[str, np.ndarray]


def make_tiny_data(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> TinyData:
    train = make_image_folder(root / "train", classes=classes, per_class=per_class, size=(36, 40), seed=seed)
    val = make_image_folder(root / "val", classes=classes, per_class=2, size=(36, 40), seed=seed + 1)
    images = list_images(train)
    sizes = np.array([tuple(load_image(images.path(i)).shape[-2:]) for i in range(len(images))])
    store, written = write_random_store(
        root / "store", scheme=SCHEME, top_k=2, num_classes=classes, num_crops=NUM_CROPS, num_images=len(images), shard_size=5,
        image_ids=images.image_ids, sizes=sizes, labels=images.labels,
    )
    manifest = Manifest.load(store)  # name the classes like the folders (write_random_store says class0, ...)
    manifest.meta.class_names = list(images.class_names)
    manifest.save(store)
    return TinyData(train, val, store, written)


def with_full_store(tiny: TinyData) -> TinyData:
    """The tiny images with a full store of this fkd (log-probabilities, version 5) in place of the
    tiny store (``tiny.store``'s sibling ``full``)."""
    old = LabelStore(tiny.store)
    store, written = write_random_store(
        tiny.store.parent / "full", scheme="full", num_classes=old.meta.num_classes, num_crops=old.meta.num_crops,
        num_images=len(old), shard_size=5, image_ids=old.image_ids, sizes=old.image_sizes, labels=old.labels,
    )
    manifest = Manifest.load(store)
    manifest.meta.class_names = list(old.meta.class_names)
    manifest.save(store)
    assert manifest.meta.format_version == 5 and manifest.meta.full_log_probs
    return TinyData(tiny.train, tiny.val, store, written)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    return make_tiny_data(tmp_path_factory.mktemp("tiny"))


def train_args(tiny: TinyData, out: Path, *extra: str) -> list[str]:
    return [
        "--store", str(tiny.store), "--data", str(tiny.train), "--val-data", str(tiny.val), "--model", "test_resnet",
        "--input-size", "32", "--epochs", "2", "--batch-size", "4", "--crops-per-image", "2", "--workers", "0",
        "--lr", "0.05", "--no-progress", "--output", str(out), *extra,
    ]


def read_summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))
