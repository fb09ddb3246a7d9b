"""Storage per quantization scheme: our label store vs the official FKD one-file-per-image format.

Labels are real: the pretrained Keras CIFAR-10 teacher (../shared/models) over a balanced subset of
real CIFAR-10 (../shared/data), generated ONCE with ``fkd-labelgen --scheme full`` and converted to
every scheme and K with ``fkd-labels convert``, so all rows hold the same teacher outputs for the
same crops. For each scheme and K in {1, 5, 10} where it applies this measures:

- our store: bytes per crop and per image (shards + store.json), and the uncompressed record size;
- the same labels written as the official FKD code writes them (one ``torch.save`` file per image):
  file bytes and the file-system space they really take (whole blocks);
- an extrapolation to ImageNet-1K (1,281,167 images, M=200, C=1000): the official format exactly
  (its files are uncompressed pickles, so one file of that shape gives the size), our store as
  estimated from the zstd records our writer makes of synthetic teacher-like C=1000 labels (see
  ``compression.synthetic_probs``; labelled as such) and as its uncompressed record bound.

It also saves the real teacher probabilities (N, M, C) as .npy and runs the zstd-vs-HDF5-filter
comparison of ``compression.py`` on them, and measures the reinforced payloads (``reinforced.py``:
the same images labelled with each stored augmentation, RandAugment, erasing, colour jitter,
Mixup/CutMix pairs; bytes per crop against the plain store, marginal smoothing K=5).

    .venv/bin/python benchmarks/storage/bench_storage.py --quick      # < 10 min on 2 CPU cores
    .venv/bin/python benchmarks/storage/bench_storage.py              # full setting
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import CACHE, LabelSetting, converted_store, full_store, markdown_table, ratio, result_path, save_result, store_bytes  # noqa: E402
from benchmarks.fkd_official import allocated_bytes, official_coords, official_labels, write_official  # noqa: E402
from benchmarks.storage.compression import measure as compression_measure  # noqa: E402
from benchmarks.storage.compression import record_layout, synthetic_probs  # noqa: E402
from benchmarks.storage.reinforced import COLUMNS as REINFORCED_COLUMNS  # noqa: E402
from benchmarks.storage.reinforced import storage_rows as reinforced_rows  # noqa: E402
from fkd.data import crops  # noqa: E402
from fkd.payload import quantize  # noqa: E402
from fkd.payload.quantize import payload_shape  # noqa: E402
from fkd.store import LabelStore, compress_records  # noqa: E402

IMAGENET_IMAGES = 1_281_167
IMAGENET_CROPS = 200
IMAGENET_CLASSES = 1000
VARIANTS: tuple[tuple[str, int], ...] = (
    ("hardening", 1), ("smoothing", 1),
    ("marginal-smoothing", 1), ("marginal-smoothing", 5), ("marginal-smoothing", 10),
    ("marginal-renorm", 1), ("marginal-renorm", 5), ("marginal-renorm", 10),
    ("full", 10),
)
"""(scheme, K) pairs measured: K in {1, 5, 10} where the scheme has a K (full keeps all C)."""

QUOTED = [
    {"what": "official FKD full 1000-class softmax labels, ImageNet-1K, M=500", "figure": "about 2.3 T",
     "source": "FKD maintainer, github.com/szq0214/FKD/issues/7 (2023-10-28)"},
]
"""Figures quoted from FKD's authors, reported apart from anything measured here."""


def official_size(path: Path, scheme: str, k: int, num_crops: int, num_classes: int) -> tuple[int, int]:
    """(file bytes, allocated bytes) of one official-format file of this shape. Its pickled arrays
    are uncompressed, so the size does not depend on the values: exact for any image."""
    shape = payload_shape(scheme, k, num_classes)
    indices = np.zeros((num_crops, max(shape.num_indices, 1)), dtype=np.int64) if shape.num_indices else None
    values = np.full((num_crops, shape.num_values), 0.5, dtype=np.float16) if shape.num_values else None
    size = write_official(path, np.zeros((num_crops, 4), np.float32), np.zeros(num_crops, bool), official_labels(scheme, indices, values))
    return size, allocated_bytes(path)


def measure_real(setting: LabelSetting, work: Path) -> tuple[list[dict], np.ndarray]:
    """Bytes of every variant on the real store, ours vs official; also returns the probabilities."""
    rows = []
    probs = None
    for scheme, k in VARIANTS:
        store_dir = converted_store(setting, scheme, k)
        store = LabelStore(store_dir)
        n, m, c = len(store), store.meta.num_crops, store.meta.num_classes
        official_dir = work / f"{scheme}-k{k}"
        file_bytes = alloc = 0
        for i in range(n):
            rec = store.read(i)
            path = official_dir / f"{rec.image_id.rsplit('.', 1)[0]}.tar"
            file_bytes += write_official(path, official_coords(rec.boxes_fixed, rec.height, rec.width), rec.flips,
                                         official_labels(scheme, rec.indices, rec.values, store.meta.full_log_probs))
            alloc += allocated_bytes(path)
        if scheme == "full":  # the teacher's probabilities (exp of a version-5 store's ln p)
            probs = np.stack([store.meta.label_codec().stored_probabilities(store.read(i).values) for i in range(n)])
        store.close()
        ours = store_bytes(store_dir)
        rows.append({
            "scheme": scheme, "k": quantize.stored_top_k(scheme, k, c), "images": n, "crops_per_image": m, "classes": c,
            "ours_bytes": ours, "ours_bytes_per_crop": ours / (n * m), "ours_bytes_per_image": ours / n,
            "raw_bytes_per_crop": store.meta.record_layout().raw_size / m,
            "official_bytes_per_crop": file_bytes / (n * m), "official_bytes_per_image": file_bytes / n,
            "official_allocated_bytes_per_image": alloc / n,
            "official_over_ours": ratio(file_bytes, ours), "official_allocated_over_ours": ratio(alloc, ours),
        })
    return rows, probs


PER_IMAGE_COLUMNS = 8 + 4 + 4 + 8
"""Bytes a shard keeps per image besides its record: offset, crc32, label, (height, width)."""


def estimated_bytes_per_crop(probs: np.ndarray, scheme: str, k: int) -> float:
    """Our store's bytes per crop for these C=1000 labels: the zstd records our writer makes
    (measured) plus the per-image columns and an ImageNet-style image id. The HDF5 container's
    fixed cost per shard (tens of KB per 1000-image shard, < 0.2 B per crop) is left out."""
    n, m, c = probs.shape
    layout = record_layout(m, scheme, k, c)
    boxes, flips = [], []
    for i in range(n):
        crop = crops.sample_crops(f"n{i:08d}/n{i:08d}_{i}.JPEG", 375, 500, m, 0)
        boxes.append(crops.boxes_to_fixed(crop.boxes, 375, 500))
        flips.append(crop.flips)
    payload = quantize.encode(probs.reshape(n * m, c), scheme, k)
    shaped = [None if a is None else a.reshape(n, m, -1) for a in (payload.indices, payload.values)]
    records = compress_records(layout, np.stack(boxes), np.stack(flips), *shaped)
    image_id = len("n01440764/n01440764_10026.JPEG")
    return (sum(len(r) for r in records) + n * (PER_IMAGE_COLUMNS + image_id)) / (n * m)


def extrapolate(rows: list[dict], synthetic_images: int, work: Path) -> list[dict]:
    """ImageNet-1K figures per variant (K as asked, at C=1000)."""
    probs = synthetic_probs(synthetic_images, IMAGENET_CROPS, IMAGENET_CLASSES)
    total_crops = IMAGENET_IMAGES * IMAGENET_CROPS
    out = []
    for scheme, k in VARIANTS:
        k_imagenet = quantize.stored_top_k(scheme, k if scheme != "full" else IMAGENET_CLASSES, IMAGENET_CLASSES)
        raw = record_layout(IMAGENET_CROPS, scheme, k_imagenet, IMAGENET_CLASSES).raw_size / IMAGENET_CROPS
        synthetic = estimated_bytes_per_crop(probs, scheme, k_imagenet)
        size, alloc = official_size(work / f"official-{scheme}-k{k_imagenet}.tar", scheme, k_imagenet, IMAGENET_CROPS, IMAGENET_CLASSES)
        out.append({
            "scheme": scheme, "k": k_imagenet,
            "ours_synthetic_bytes_per_crop": synthetic, "ours_synthetic_gb": synthetic * total_crops / 1e9,
            "ours_raw_bytes_per_crop": raw, "ours_raw_gb": raw * total_crops / 1e9,
            "official_bytes_per_crop": size / IMAGENET_CROPS, "official_gb": size * IMAGENET_IMAGES / 1e9,
            "official_allocated_gb": alloc * IMAGENET_IMAGES / 1e9,
            "official_over_ours": ratio(size * IMAGENET_IMAGES, synthetic * total_crops),
        })
    # The quoted M=500 full-label figure, recomputed from the official format's exact file size.
    size, _ = official_size(work / "official-full-m500.tar", "full", IMAGENET_CLASSES, 500, IMAGENET_CLASSES)
    out.append({"scheme": "full (M=500, as quoted)", "k": IMAGENET_CLASSES, "official_bytes_per_crop": size / 500,
                "official_gb": size * IMAGENET_IMAGES / 1e9})
    return out


REAL_COLUMNS = [
    ("scheme", "scheme", ""), ("k", "K", "d"), ("ours_bytes_per_crop", "ours B/crop", ".2f"),
    ("ours_bytes_per_image", "ours B/image", ",.0f"), ("raw_bytes_per_crop", "uncompressed B/crop", ".1f"),
    ("official_bytes_per_crop", "FKD files B/crop", ".1f"), ("official_allocated_bytes_per_image", "FKD files on disk B/image", ",.0f"),
    ("official_over_ours", "FKD files / ours", ".1f"), ("official_allocated_over_ours", "FKD on disk / ours", ".1f"),
]
IMAGENET_COLUMNS = [
    ("scheme", "scheme", ""), ("k", "K", "d"), ("ours_synthetic_bytes_per_crop", "ours B/crop (synthetic C=1000)", ".2f"),
    ("ours_synthetic_gb", "ours GB", ",.1f"), ("ours_raw_gb", "ours uncompressed GB", ",.1f"),
    ("official_bytes_per_crop", "FKD files B/crop", ".1f"), ("official_gb", "FKD files GB", ",.1f"),
    ("official_allocated_gb", "FKD on disk GB", ",.1f"), ("official_over_ours", "FKD / ours", ".1f"),
]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, rows, ours_key, title in (
        (axes[0], result["cifar10"], "ours_bytes_per_crop", f"real CIFAR-10 labels (C=10, M={result['setting']['crops']})"),
        (axes[1], [r for r in result["imagenet"] if "M=500" not in r["scheme"]], "ours_synthetic_bytes_per_crop",
         "ImageNet-1K extrapolation (C=1000, M=200)"),
    ):
        names = [f"{r['scheme']}\nK={r['k']}" for r in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r[ours_key] for r in rows], 0.4, label="fkd store")
        ax.bar(x + 0.2, [r["official_bytes_per_crop"] for r in rows], 0.4, label="official FKD files")
        ax.set_yscale("log")
        ax.set_xticks(x, names, fontsize=7, rotation=45, ha="right")
        ax.set_ylabel("bytes per crop (log)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 images per class, M=32 crops, 20 synthetic images (< 10 min on 2 cores)")
    parser.add_argument("--per-class", type=int, default=50, help="train images per class labelled by the real teacher (default 50)")
    parser.add_argument("--crops", type=int, default=200, help="crops per image M (default 200)")
    parser.add_argument("--synthetic-images", type=int, default=100, help="images of synthetic C=1000 labels for the ImageNet extrapolation")
    parser.add_argument("--workers", type=int, default=1, help="fkd-labelgen workers for the stores not yet cached (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: next to this script, -quick for --quick)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG plot (default: next to this script, -quick for --quick)")
    args = parser.parse_args()
    args.out = args.out or result_path(__file__, args.quick)
    args.plot = args.plot or result_path(__file__, args.quick, 'storage', '.png')
    if args.quick:
        args.per_class, args.crops, args.synthetic_images = 128, 32, 20
    setting = LabelSetting(args.per_class, args.crops)
    started = time.perf_counter()
    store, labelgen_seconds = full_store(setting, workers=args.workers)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rows, probs = measure_real(setting, Path(tmp) / "official")
        imagenet = extrapolate(rows, args.synthetic_images, Path(tmp))
    probs_path = store.parent / "teacher_probs.npy"
    np.save(probs_path, probs)
    codecs = compression_measure(probs, top_k=5, reads=min(500, len(probs)))
    reinforced = reinforced_rows(setting, workers=args.workers)
    result = {
        "setting": {"per_class": args.per_class, "images": rows[0]["images"], "crops": args.crops, "classes": rows[0]["classes"],
                    "crop_scale": list(setting.crop_scale), "teacher": "fkd.zoo.keras_cifar10 (real, pretrained)",
                    "labelgen_seconds": labelgen_seconds, "labelgen_workers": args.workers, "quick": args.quick, "teacher_probs": str(probs_path)},
        "cifar10": rows, "imagenet": imagenet, "codecs_real_labels": codecs, "reinforced": reinforced, "quoted": QUOTED,
        "seconds": time.perf_counter() - started,
    }
    print(f"\nReal CIFAR-10 labels: {rows[0]['images']} images x M={args.crops} crops, C=10 (Keras teacher)")
    print(markdown_table(rows, REAL_COLUMNS))
    print(f"\nReinforced stores (format version 6), the same images, marginal smoothing K=5, M={args.crops}:")
    print(markdown_table(reinforced, REINFORCED_COLUMNS))
    print(f"\nImageNet-1K extrapolation: {IMAGENET_IMAGES:,} images x M={IMAGENET_CROPS}, C={IMAGENET_CLASSES}")
    print(markdown_table(imagenet, IMAGENET_COLUMNS))
    print("\nQuoted (not measured here):")
    for q in QUOTED:
        print(f"- {q['what']}: {q['figure']} ({q['source']})")
    save_result(args.out, result)
    plot(result, args.plot)


if __name__ == "__main__":
    main()
