"""What opening a shard costs a reader: the whole file's sha256 (format versions 1-2) vs the sha256
of the bytes HDF5 parses only (version 3), on a large store.

Every process that reads a store (each DataLoader worker of each rank) opens every shard it touches
once and checks it before HDF5 parses it. Hashing whole shards made that cost grow with the payload:
5.6 GB per worker for ImageNet at M=200, K=5, 430 GB for the ``full`` scheme. Version 3 hashes
everything but the records dataset (which the per-record CRC-32s protect), so the cost follows the
image count per shard, not the payload.

The store is the ``full`` scheme with C=1000 classes and M=200 crops: each record is 400 KB raw, and
a shard of 300 images is about 100 MB. Records are real encodings of synthetic teacher-like
probabilities (``benchmarks.storage.compression.synthetic_probs``; a few distinct images tiled, as
what they hold does not change the open cost). Both ways open the same shard files: the "before"
store is a second manifest without the version-3 fields, beside symlinks to the shards. The files
were just written, so both are measured with a warm page cache (reading from disk would add the I/O
of the whole file before, of ~100 KB after).

    .venv/bin/python -m benchmarks.speed.open_time --out benchmarks/speed/open_time.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import save_result
from benchmarks.storage.compression import synthetic_probs
from fkd.data import crops
from fkd.payload import quantize
from fkd.store import LabelStore, ShardData, compress_records, new_meta, open_for_writing, write_shard


def write_store(path: Path, classes: int, num_crops: int, per_shard: int, shards: int, distinct: int) -> Path:
    meta = new_meta(scheme="full", top_k=classes, num_classes=classes, class_names=[str(c) for c in range(classes)],
                    num_crops=num_crops, num_images=per_shard * shards, shard_size=per_shard, teachers=[{"name": "synthetic"}])
    manifest = open_for_writing(path, meta)
    probs = synthetic_probs(distinct, num_crops, classes)
    fixed, flips, values = [], [], []
    for i in range(distinct):
        crop = crops.sample_crops(str(i), 375, 500, num_crops, 0)
        fixed.append(crops.boxes_to_fixed(crop.boxes, 375, 500))
        flips.append(crop.flips)
        values.append(quantize.encode(probs[i], "full", classes).values)
    records = compress_records(meta.record_layout(), np.stack(fixed), np.stack(flips), None, np.stack(values))
    for shard in range(shards):
        start, stop = meta.shard_range(shard)
        ids = [f"n{i // 100:08d}/img{i:08d}.JPEG" for i in range(start, stop)]
        data = ShardData(ids, np.arange(start, stop) % classes, np.tile([375, 500], (stop - start, 1)),
                         [records[i % distinct] for i in range(start, stop)])
        manifest.shards[shard] = write_shard(path, meta, shard, data)
        manifest.save(path)
    return path


def whole_file_copy(store: Path, target: Path) -> Path:
    """The same shards under a manifest without the version-3 fields: readers hash whole files."""
    target.mkdir()
    manifest = json.loads((store / "store.json").read_text())
    for entry in manifest["shards"]:
        (target / entry["file"]).symlink_to(store / entry["file"])
        for name in ("records_offset", "records_bytes", "meta_sha256"):
            del entry[name]
    (target / "store.json").write_text(json.dumps(manifest))
    return target


def open_seconds(store: Path, shard: int) -> float:
    """A fresh reader opening (checking, then loading the index of) one shard."""
    reader = LabelStore(store)
    start = time.perf_counter()
    reader.shard_image_ids(shard)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--crops", type=int, default=200)
    parser.add_argument("--images-per-shard", type=int, default=300)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--distinct", type=int, default=8, help="distinct records tiled over the images (default 8)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        after = write_store(Path(tmp) / "v3", args.classes, args.crops, args.images_per_shard, args.shards, args.distinct)
        before = whole_file_copy(after, Path(tmp) / "whole-file")
        manifest = json.loads((after / "store.json").read_text())
        sizes = [e["bytes"] for e in manifest["shards"]]
        hashed = [e["bytes"] - e["records_bytes"] for e in manifest["shards"]]
        times: dict[str, list[float]] = {"whole_file": [], "metadata_only": []}
        for _ in range(args.repeats):
            for shard in range(args.shards):
                times["whole_file"].append(open_seconds(before, shard))
                times["metadata_only"].append(open_seconds(after, shard))
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "store": {"scheme": "full", "classes": args.classes, "crops": args.crops, "images_per_shard": args.images_per_shard,
                  "shards": args.shards, "shard_bytes": sizes, "bytes_hashed_at_open_after": hashed},
        "open_ms_per_shard": {k: round(v * 1e3, 2) for k, v in medians.items()},
        "open_ms_range": {k: [round(min(v) * 1e3, 2), round(max(v) * 1e3, 2)] for k, v in times.items()},
        "speedup": round(medians["whole_file"] / medians["metadata_only"], 1),
    }
    print(f"shards of {statistics.mean(sizes) / 1e6:.1f} MB ({args.images_per_shard} images, full scheme, C={args.classes}, "
          f"M={args.crops}); hashed at open after: {statistics.mean(hashed) / 1e3:.1f} KB")
    print(f"open per shard: whole-file sha256 {result['open_ms_per_shard']['whole_file']} ms, "
          f"metadata-only {result['open_ms_per_shard']['metadata_only']} ms: {result['speedup']}x")
    save_result(args.out, result)


if __name__ == "__main__":
    main()
