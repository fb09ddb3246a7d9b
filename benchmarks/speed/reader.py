"""Label reader speed: our sharded HDF5 store vs the official FKD one-file-per-image format.

Both hold the same labels (marginal-smoothing, K=5). Two access patterns, random image order:

- ``record``: decode one image's whole record (all M crops: boxes, flips, payload);
- ``train``: what a training step's data worker needs: the record of one image and the payload of
  n=4 crops drawn from it (the dense labels are then built batched on the device, the same way for
  both formats, so that part is left out).

Measured in the main process and through a DataLoader (batches of 64 images) with 1 and 2 worker
processes.

    .venv/bin/python benchmarks/speed/reader.py --quick     # writes reader-quick.json next to this script
    .venv/bin/python benchmarks/speed/reader.py             # 500 images, M=200: reader.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fkd.data import crops
from fkd.payload import quantize
from fkd.store import LabelStore, ShardData, compress_records, new_meta, open_for_writing, write_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import result_path, save_result  # noqa: E402
from benchmarks.fkd_official import official_labels, read_official, write_official  # noqa: E402
from benchmarks.storage.compression import synthetic_probs  # noqa: E402

CROPS_PER_STEP = 4


def write_stores(root: Path, probs: np.ndarray, top_k: int, shard_size: int) -> tuple[Path, Path]:
    """Write the labels as an fkd store and as FKD's per-image torch.save files; return both paths."""
    n, m, c = probs.shape
    meta = new_meta(scheme="marginal-smoothing", top_k=top_k, num_classes=c, class_names=[str(i) for i in range(c)],
                    num_crops=m, num_images=n, shard_size=shard_size, teachers=[{"name": "synthetic"}])
    store_dir, fkd_dir = root / "store", root / "fkd_official"
    manifest = open_for_writing(store_dir, meta)
    fkd_dir.mkdir()
    layout = meta.record_layout()
    for shard in range(meta.num_shards):
        start, stop = meta.shard_range(shard)
        fixed, flips, idx, val = [], [], [], []
        for i in range(start, stop):
            crop = crops.sample_crops(str(i), 375, 500, m, 0)
            payload = quantize.encode(probs[i], "marginal-smoothing", top_k)
            fixed.append(crops.boxes_to_fixed(crop.boxes, 375, 500))
            flips.append(crop.flips)
            idx.append(payload.indices)
            val.append(payload.values)
            # FKD's layout: [boxes float32 (M,4) as (i/H, j/W, h/H, w/W), flips bool, labels (M,2,K) float32]
            boxes = (crop.boxes / np.array([375, 500, 375, 500])).astype(np.float32)
            write_official(fkd_dir / f"{i}.tar", boxes, crop.flips, official_labels("marginal-smoothing", payload.indices, payload.values))
        records = compress_records(layout, np.stack(fixed), np.stack(flips), np.stack(idx), np.stack(val))
        manifest.shards[shard] = write_shard(store_dir, meta, shard, ShardData([str(i) for i in range(start, stop)],
                                                                             np.zeros(stop - start), np.tile([375, 500], (stop - start, 1)), records))
        manifest.save(store_dir)
    return store_dir, fkd_dir


class StoreReads(Dataset):
    def __init__(self, store: LabelStore, order: np.ndarray, mode: str):
        self.store, self.order, self.mode = store, order, mode

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        rec = self.store.read(int(self.order[i]))
        if self.mode == "record":
            return rec.indices.shape[0]
        pick = np.random.default_rng(i).choice(rec.indices.shape[0], CROPS_PER_STEP, replace=False)
        return torch.from_numpy(rec.indices[pick].astype(np.int64)), torch.from_numpy(rec.values[pick].astype(np.float32))


class FkdReads(Dataset):
    def __init__(self, root: Path, order: np.ndarray, mode: str):
        self.root, self.order, self.mode = root, order, mode

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        boxes, flips, labels = read_official(self.root / f"{int(self.order[i])}.tar")
        if self.mode == "record":
            return labels.shape[0]
        sel = torch.from_numpy(labels[np.random.default_rng(i).choice(labels.shape[0], CROPS_PER_STEP, replace=False)])
        return sel[:, 0].long(), sel[:, 1]


def timed(dataset: Dataset, workers: int) -> float:
    """Seconds to consume the whole dataset (DataLoader when workers > 0)."""
    t0 = time.perf_counter()
    if workers == 0:
        for i in range(len(dataset)):
            dataset[i]
    else:
        loader = DataLoader(dataset, batch_size=64, num_workers=workers, prefetch_factor=4)
        for _ in loader:
            pass
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--crops", type=int, default=200, help="M crops per image")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--reads", type=int, default=3000, help="random image reads per measurement")
    parser.add_argument("--quick", action="store_true", help="200 images, 4000 reads")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: next to this script, -quick for --quick)")
    args = parser.parse_args()
    args.out = args.out or result_path(__file__, args.quick)
    if args.quick:
        args.images, args.reads = 200, 4000
    probs = synthetic_probs(args.images, args.crops, args.classes)
    order = np.random.default_rng(0).integers(0, args.images, args.reads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store_dir, fkd_dir = write_stores(Path(tmp), probs, args.top_k, shard_size=max(1, args.images // 4))
        store = LabelStore(store_dir)
        for mode in ("record", "train"):
            crops_per_read = args.crops if mode == "record" else CROPS_PER_STEP
            for workers in (0, 1, 2):
                ours = timed(StoreReads(store, order, mode), workers)
                theirs = timed(FkdReads(fkd_dir, order, mode), workers)
                rows.append({"mode": mode, "workers": workers,
                             "fkd_store_crops_per_s": args.reads * crops_per_read / ours,
                             "official_fkd_crops_per_s": args.reads * crops_per_read / theirs,
                             "fkd_store_images_per_s": args.reads / ours, "official_fkd_images_per_s": args.reads / theirs,
                             "ratio": theirs / ours})
    print(f"labels: synthetic C={args.classes}, M={args.crops}, K={args.top_k}, {args.images} images, {args.reads} random reads; "
          f"machine: {platform.machine()}, {torch.get_num_threads()} threads")
    print(f"{'mode':7s} {'workers':>7s} {'fkd store crops/s':>18s} {'FKD files crops/s':>18s} {'ratio':>7s}")
    for r in rows:
        print(f"{r['mode']:7s} {r['workers']:7d} {r['fkd_store_crops_per_s']:18,.0f} {r['official_fkd_crops_per_s']:18,.0f} {r['ratio']:7.1f}x")
    save_result(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})


if __name__ == "__main__":
    main()
