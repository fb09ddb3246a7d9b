"""fkd-labelgen throughput: 1 and 2 Ray workers vs a plain single-process loop (the cost of Ray).

All three label the same real CIFAR-10 images with the same real teacher (the pretrained Keras CNN
of ../shared/models), the same crops (seed, M, scale), the same batch size and the same
quantization and compression, and write a complete store. The plain loop is the shortest correct
program doing that work in one process with every core: decode, cut crops, teacher forward,
``quantize.encode``, ``compress_records``, ``write_shard``; it runs with 1 thread (against one
Ray worker of 1 CPU: the cost of Ray) and with every core. Reported per run: images/s while
labelling (after Ray has started and the teacher is loaded) and end to end (whole command), and
whether the Ray stores hold the same labels as the plain loop's. Then one Ray worker again with
stored augmentation (a reinforced store, format version 6: ``benchmarks/storage/reinforced.py``'s
flags): RandAugment + erasing (the ops' cost), and Mixup/CutMix pairs (each image's partner image
decoded and cut too): what labelling the augmented views costs, against the same worker without;
their boxes and flips must still equal the plain loop's (augmentation draws from its own stream).

    .venv/bin/python benchmarks/speed/bench_labelgen.py --quick    # < 10 min on 2 CPU cores
    .venv/bin/python benchmarks/speed/bench_labelgen.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import CACHE, KERAS_TEACHER, balanced_subset, markdown_table, ratio, result_path, save_result  # noqa: E402
from benchmarks.storage.reinforced import ERASING, PAIRS, RANDAUGMENT  # noqa: E402
from fkd.data.crops import CropParams, boxes_to_fixed, replay_fixed, sample_crops  # noqa: E402
from fkd.data.images import list_images, load_image  # noqa: E402
from fkd.payload import quantize  # noqa: E402
from fkd.store import LabelStore, ShardData, compress_records, new_meta, open_for_writing, write_shard  # noqa: E402
from fkd.teacher.teachers import create_teacher  # noqa: E402
from labelgen import cli as labelgen_cli  # noqa: E402
from labelgen.driver import run as labelgen_run  # noqa: E402

SCHEME, TOP_K, SEED, SCALE, BATCH, SHARD = "marginal-smoothing", 5, 0, (0.25, 1.0), 256, 100


AUGMENTED = {"RandAugment + erasing": (*RANDAUGMENT, *ERASING), "Mixup/CutMix pairs": PAIRS}
"""fkd-labelgen flags of the reinforced rows (a stored augmentation each)."""


def ray_run(data: Path, out: Path, crops: int, workers: int, augment: tuple[str, ...] = ()) -> dict:
    """fkd-labelgen through its own entry point (argument parsing included), timed end to end;
    each worker gets one CPU (one torch thread); ``augment``: fkd-labelgen's augmentation flags."""
    argv = ["--data", str(data), "--out", str(out), "--teacher-module", KERAS_TEACHER, "--scheme", SCHEME, "--top-k", str(TOP_K),
            "--crops", str(crops), "--seed", str(SEED), "--crop-scale", *map(str, SCALE), "--batch-size", str(BATCH),
            "--shard-size", str(SHARD), "--workers", str(workers), "--cpus-per-worker", "1", "--no-progress", *augment]
    if torch.cuda.is_available():  # share the GPUs between the workers
        argv += ["--gpus-per-worker", f"{min(1.0, torch.cuda.device_count() / workers):g}"]
    started = time.perf_counter()
    parser = labelgen_cli.build_parser()
    summary = labelgen_run(labelgen_cli.config_from_args(parser.parse_args(argv), parser), log=lambda message: None)
    return {"images": summary.images, "labelling_seconds": summary.labelling_seconds, "seconds": time.perf_counter() - started}


@torch.inference_mode()
def plain_run(data: Path, out: Path, crops: int, threads: int) -> dict:
    """The same labels in one process with ``threads`` torch threads: no Ray, no actors, no pre-pass."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _plain_run(data, out, crops)
    finally:
        torch.set_num_threads(previous)


def _plain_run(data: Path, out: Path, crops: int) -> dict:
    started = time.perf_counter()
    images = list_images(data)
    teacher = create_teacher([], module=KERAS_TEACHER, device="cuda" if torch.cuda.is_available() else "cpu")
    cfg = teacher.data_config
    labelling_started = time.perf_counter()
    meta = new_meta(scheme=SCHEME, top_k=TOP_K, num_classes=teacher.num_classes, class_names=images.class_names, num_crops=crops,
                    num_images=len(images), shard_size=SHARD, teachers=teacher.describe(), crop_scale=SCALE,
                    input_size=cfg.input_size, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, seed=SEED)
    manifest = open_for_writing(out, meta)
    layout = meta.record_layout()
    params = CropParams(scale=SCALE)
    for shard in range(meta.num_shards):
        start, stop = meta.shard_range(shard)
        views, fixed, flips, sizes = [], [], [], []
        for i in range(start, stop):
            pixels = load_image(images.path(i))
            h, w = pixels.shape[-2:]
            drawn = sample_crops(images.entries[i].image_id, h, w, crops, SEED, params)
            fixed.append(boxes_to_fixed(drawn.boxes, h, w))
            flips.append(drawn.flips)
            sizes.append((h, w))
            views.append(replay_fixed(pixels, fixed[-1], drawn.flips, cfg.input_size, cfg.interpolation))
        batch = torch.cat(views)
        probs = torch.cat([teacher(batch[b : b + BATCH].float().div_(255)).cpu() for b in range(0, len(batch), BATCH)]).numpy()
        payload = quantize.encode(probs, SCHEME, TOP_K)
        n = stop - start
        records = compress_records(layout, np.stack(fixed), np.stack(flips), payload.indices.reshape(n, crops, -1), payload.values.reshape(n, crops, -1))
        ids = [images.entries[i].image_id for i in range(start, stop)]
        manifest.shards[shard] = write_shard(out, meta, shard, ShardData(ids, images.labels[start:stop], np.array(sizes), records))
        manifest.save(out)
    end = time.perf_counter()
    return {"images": len(images), "labelling_seconds": end - labelling_started, "seconds": end - started}


def same_labels(a: Path, b: Path) -> dict:
    """Do two stores hold the same crops and labels? (Batches may run through different kernels,
    so probabilities are compared with a float16 tolerance.) A reinforced store labels other views,
    so its labels differ: its ``stored_augmentation`` says so; only its crops must be the same."""
    with LabelStore(a) as sa, LabelStore(b) as sb:
        boxes = indices = True
        worst = 0.0
        for i in range(len(sa)):
            ra, rb = sa.read(i), sb.read(i)
            boxes &= bool(np.array_equal(ra.boxes_fixed, rb.boxes_fixed) and np.array_equal(ra.flips, rb.flips))
            indices &= bool(np.array_equal(ra.indices, rb.indices))
            worst = max(worst, float(np.abs(ra.values.astype(np.float32) - rb.values.astype(np.float32)).max()))
        augmentation = sb.meta.augmentation.describe() if sb.meta.reinforced else None
    return {"same_boxes_and_flips": boxes, "same_top_k_classes": indices, "max_abs_probability_difference": worst,
            "stored_augmentation": augmentation}


COLUMNS = [
    ("runner", "runner", ""), ("images", "images", "d"), ("labelling_images_per_s", "labelling images/s", ".1f"),
    ("labelling_crops_per_s", "labelling crops/s", ",.0f"), ("vs_plain_labelling", "vs plain (labelling)", ".2f"),
    ("seconds", "end-to-end s", ".1f"), ("images_per_s", "end-to-end images/s", ".1f"), ("vs_plain", "vs plain (end to end)", ".2f"),
    ("vs_unaugmented_labelling", "vs 1 worker unaugmented (labelling)", ".2f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 images per class, M=32 (< 10 min on 2 cores)")
    parser.add_argument("--per-class", type=int, default=50, help="CIFAR-10 train images per class (default 50)")
    parser.add_argument("--crops", type=int, default=64, help="crops per image M (default 64)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: next to this script, -quick for --quick)")
    args = parser.parse_args()
    args.out = args.out or result_path(__file__, args.quick, 'labelgen')
    if args.quick:
        args.per_class, args.crops = 40, 32
    data = balanced_subset("train", args.per_class, SEED)
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        cores = os.cpu_count() or 1
        runs = {"plain loop, 1 thread": lambda out: plain_run(data, out, args.crops, 1)}
        if cores > 1:
            runs[f"plain loop, {cores} threads"] = lambda out: plain_run(data, out, args.crops, cores)
        runs.update({f"fkd-labelgen, {w} Ray worker{'s' if w > 1 else ''} x 1 CPU": (lambda out, w=w: ray_run(data, out, args.crops, w)) for w in (1, 2)})
        runs.update({f"fkd-labelgen, 1 Ray worker x 1 CPU, stored {name}": (lambda out, flags=flags: ray_run(data, out, args.crops, 1, flags))
                     for name, flags in AUGMENTED.items()})
        for i, (name, fn) in enumerate(runs.items()):
            out = Path(tmp) / f"store{i}"
            row = {"runner": name, **fn(out), "store": out}
            print(f"  {name}: {row['images'] / row['labelling_seconds']:.1f} images/s labelling, {row['seconds']:.1f} s end to end", flush=True)
            rows.append(row)
        plain = rows[0]
        for row in rows:
            row["labelling_images_per_s"] = row["images"] / row["labelling_seconds"]
            row["labelling_crops_per_s"] = row["labelling_images_per_s"] * args.crops
            row["images_per_s"] = row["images"] / row["seconds"]
            row["vs_plain_labelling"] = ratio(row["labelling_images_per_s"], plain["labelling_images_per_s"])
            row["vs_plain"] = ratio(row["images_per_s"], plain["images_per_s"])
            row["labels_vs_plain"] = same_labels(plain["store"], row["store"]) if row is not plain else None
        unaugmented = next(r for r in rows if r["runner"] == "fkd-labelgen, 1 Ray worker x 1 CPU")
        for row in rows:
            row["vs_unaugmented_labelling"] = ratio(row["labelling_images_per_s"], unaugmented["labelling_images_per_s"])
        for row in rows:
            del row["store"]
    result = {"setting": {"images": rows[0]["images"], "crops": args.crops, "scheme": SCHEME, "top_k": TOP_K, "batch_size": BATCH,
                          "shard_size": SHARD, "teacher": "fkd.zoo.keras_cifar10 (real, pretrained, 32x32)", "quick": args.quick},
              "rows": rows}
    print(f"\nfkd-labelgen vs a plain loop: {rows[0]['images']} CIFAR-10 images x M={args.crops}, Keras teacher, {SCHEME} K={TOP_K}")
    print(markdown_table(rows, COLUMNS))
    for row in rows[1:]:
        print(f"{row['runner']}: labels vs plain loop: {row['labels_vs_plain']}")
    save_result(args.out, result)


if __name__ == "__main__":
    main()
