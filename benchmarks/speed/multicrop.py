"""Multi-crop loading: what decoding each image once for n crops saves in fkd-train's data pipeline.

Runs fkd-train's own dataset (``fkd.data.multicrop.MultiCropDataset`` over a label store: read the record,
decode the JPEG, replay n stored boxes + flips, resize to the student size) through a DataLoader
for one epoch at n=1 and n=4 crops per image, and reports images/s and crops/s. Labels do not
affect loading speed, so the store holds random labels over the real images.

Two image sets: real CIFAR-10 JPEGs (32x32, student size 32) and ImageNet-sized JPEGs (about
500x375 random pixels, student size 224; noise is the slow case for a JPEG decoder).

    .venv/bin/python -m benchmarks.speed.multicrop --out benchmarks/speed/multicrop.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.common import REPO_ROOT, balanced_subset, save_result
from fkd.data.images import list_images, read_image
from fkd.data.multicrop import EpochSampler, MultiCropDataset, collate_crops
from fkd.data.plan import StoreCropPlanner
from fkd.store import LabelStore

sys.path.insert(0, str(REPO_ROOT / "tests"))
from conftest import make_image_folder, write_random_store  # noqa: E402  (the test suite's store writer)


def build_store(images_dir: Path, store_dir: Path, num_crops: int) -> Path:
    """A store of random labels over the real images, with their fingerprints as fkd-labelgen records them."""
    images = list_images(images_dir)
    loaded = [read_image(images.path(i)) for i in range(len(images))]
    write_random_store(
        store_dir, num_classes=10, top_k=5, num_crops=num_crops, num_images=len(images), shard_size=1000,
        image_ids=images.image_ids, sizes=np.array([tuple(x.pixels.shape[-2:]) for x in loaded]), labels=images.labels,
        fingerprints=np.array([x.fingerprint for x in loaded], dtype=np.uint32),
    )
    return store_dir


def measure(
    images_dir: Path, store: Path, n: int, size: int, workers: int, batch: int, check_fingerprints: bool = True
) -> dict[str, float]:
    planner = StoreCropPlanner(LabelStore(store), n, seed=0, check_fingerprints=check_fingerprints)
    dataset = MultiCropDataset(images_dir, planner, size, "bilinear")
    loader = DataLoader(dataset, batch_size=batch, sampler=EpochSampler(dataset, num_replicas=1, rank=0, seed=0),
                        num_workers=workers, collate_fn=collate_crops, persistent_workers=workers > 0)
    next(iter(loader))  # start the workers and open the shards before timing
    start = time.perf_counter()
    images = crops = 0
    for batch_ in loader:
        images += len(batch_.image_index)
        crops += len(batch_)
    seconds = time.perf_counter() - start
    return {"n": n, "workers": workers, "images": images, "crops": crops, "seconds": seconds,
            "images_per_s": images / seconds, "crops_per_s": crops / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar-per-class", type=int, default=200, help="CIFAR-10 train images per class (default 200)")
    parser.add_argument("--large-images", type=int, default=240, help="ImageNet-sized images (default 240)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to measure (default 0 2)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-core figures: DataLoader workers run single-threaded too
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        large = make_image_folder(tmp / "large", classes=10, per_class=args.large_images // 10, size=(375, 500))
        sets = [
            ("cifar10-32px", balanced_subset("train", args.cifar_per_class), 32, 64),
            ("random-500x375-to-224px", large, 224, 16),
        ]
        for name, images_dir, size, batch in sets:
            store = build_store(images_dir, tmp / f"store-{name}", num_crops=16)
            for workers in args.workers:
                for n in (1, 4):
                    row = {"images_set": name, "size": size, **measure(images_dir, store, n, size, workers, batch)}
                    results.append(row)
                    print(f"{name:26s} workers {workers} n={n}: {row['images_per_s']:8.1f} images/s {row['crops_per_s']:8.1f} crops/s", flush=True)
    save_result(args.out, {"results": results})


if __name__ == "__main__":
    main()
