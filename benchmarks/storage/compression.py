"""Choose the store's compression: zstd per image record (application level) vs HDF5 filters.

For every scheme this writes the same labels four ways and reports bytes per crop and random-access
decode speed (crops/s, one process), side by side:

- ``zstd-L``: what fkd ships: one zstd frame per image record in a flat uint8 dataset (levels 3, 9, 19);
- ``h5-gzip``: per-field datasets chunked per image with HDF5's shuffle + gzip(4) filters;
- ``h5-lzf``: the same with shuffle + lzf;
- ``raw``: per-field datasets, chunked per image, no compression.

Labels come from ``--probs``: ``synthetic`` (C=1000, teacher-like peaked distributions: see
``synthetic_probs``) or a ``.npy`` file of real teacher probabilities (N, M, C), e.g. written by
``benchmarks/storage/bench_storage.py`` from the real CIFAR-10 teacher.

    python benchmarks/storage/compression.py --images 300 --crops 200 --out benchmarks/storage/compression.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import zstandard

from fkd.data import crops
from fkd.payload import quantize
from fkd.payload.schemes import SCHEMES, Scheme
from fkd.store.format import RecordLayout
from fkd.store.writer import compress_records


def synthetic_probs(images: int, num_crops: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Teacher-like soft labels: per image a true class and a few confusable classes; per crop
    logits with a crop-dependent sharpness, so top-1 mass spreads over roughly 0.2..0.95 like a
    strong ImageNet teacher's on random-resized crops. Stated as synthetic wherever reported."""
    rng = np.random.default_rng(seed)
    out = np.empty((images, num_crops, num_classes), dtype=np.float32)
    for n in range(images):
        base = rng.normal(0, 1, num_classes)
        confusable = rng.choice(num_classes, 6, replace=False)
        base[confusable] += rng.uniform(3, 6, 6)
        sharp = rng.uniform(0.8, 2.0, (num_crops, 1))
        logits = (base + rng.normal(0, 0.7, (num_crops, num_classes))) * sharp
        p = np.exp(logits - logits.max(1, keepdims=True))
        out[n] = p / p.sum(1, keepdims=True)
    return out


def record_layout(num_crops: int, scheme: str, top_k: int, num_classes: int) -> RecordLayout:
    """The record layout of a store of ``scheme`` as fkd-labelgen writes it (full: log-probabilities)."""
    shape = quantize.payload_shape(scheme, top_k, num_classes)
    return RecordLayout(num_crops, shape.num_indices, shape.num_values, quantize.index_dtype(num_classes),
                        log_values=Scheme.parse(scheme) is Scheme.FULL)


def encode_all(probs: np.ndarray, scheme: str, top_k: int, seed: int = 0) -> dict[str, np.ndarray | None]:
    n, m, c = probs.shape
    boxes = np.stack([crops.boxes_to_fixed(crops.sample_crops(str(i), 375, 500, m, seed).boxes, 375, 500) for i in range(n)])
    flips = np.stack([crops.sample_crops(str(i), 375, 500, m, seed).flips for i in range(n)])
    payload = quantize.encode(probs.reshape(n * m, c), scheme, top_k)
    reshape = lambda a: None if a is None else a.reshape(n, m, -1)  # noqa: E731
    return {"boxes": boxes, "flips": flips, "indices": reshape(payload.indices), "values": reshape(payload.values)}


def write_zstd(path: Path, layout: RecordLayout, arrays: dict, level: int) -> None:
    records = compress_records(layout, arrays["boxes"], arrays["flips"], arrays["indices"], arrays["values"], level=level)
    offsets = np.zeros(len(records) + 1, dtype=np.uint64)
    np.cumsum([len(r) for r in records], out=offsets[1:])
    with h5py.File(path, "w", libver="latest") as f:
        f["offsets"] = offsets
        f["crc32"] = np.array([zlib.crc32(r) for r in records], dtype=np.uint32)
        f["records"] = np.frombuffer(b"".join(records), dtype=np.uint8)


def read_zstd(path: Path, layout: RecordLayout, order: np.ndarray) -> None:
    dctx = zstandard.ZstdDecompressor()
    with h5py.File(path, "r", locking=False) as f:
        offsets, crc, records = f["offsets"][:], f["crc32"][:], f["records"]
        for i in order:
            blob = records[int(offsets[i]) : int(offsets[i + 1])].tobytes()
            assert zlib.crc32(blob) == crc[i]
            layout.unpack(dctx.decompress(blob))


def write_h5(path: Path, arrays: dict, compression: str | None) -> None:
    opts = {} if compression is None else {"compression": compression, "shuffle": True}
    if compression == "gzip":
        opts["compression_opts"] = 4
    with h5py.File(path, "w", libver="latest") as f:
        for name, a in arrays.items():
            if a is None:
                continue
            a = np.packbits(a, axis=1) if name == "flips" else a
            f.create_dataset(name, data=a, chunks=(1, *a.shape[1:]), **opts)


def read_h5(path: Path, order: np.ndarray) -> None:
    with h5py.File(path, "r", locking=False) as f:
        dsets = [f[k] for k in f]
        for i in order:
            for d in dsets:
                d[int(i)]


def measure(probs: np.ndarray, top_k: int, reads: int) -> list[dict]:
    n, m, c = probs.shape
    rows = []
    rng = np.random.default_rng(0)
    order = rng.integers(0, n, reads)
    for scheme in SCHEMES:
        arrays = encode_all(probs, scheme, top_k)
        layout = record_layout(m, scheme, top_k, c)
        variants = {f"zstd-{lvl}": (lambda p, lvl=lvl: write_zstd(p, layout, arrays, lvl), lambda p: read_zstd(p, layout, order)) for lvl in (3, 9, 19)}
        variants.update({
            "h5-gzip": (lambda p: write_h5(p, arrays, "gzip"), lambda p: read_h5(p, order)),
            "h5-lzf": (lambda p: write_h5(p, arrays, "lzf"), lambda p: read_h5(p, order)),
            "raw": (lambda p: write_h5(p, arrays, None), lambda p: read_h5(p, order)),
        })
        with tempfile.TemporaryDirectory() as tmp:
            for name, (write, read) in variants.items():
                path = Path(tmp) / f"{name}.h5"
                t0 = time.perf_counter()
                write(path)
                write_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                read(path)
                read_s = time.perf_counter() - t0
                rows.append({
                    "scheme": scheme, "k": quantize.stored_top_k(scheme, top_k, c), "variant": name,
                    "bytes_per_crop": path.stat().st_size / (n * m), "raw_bytes_per_crop": layout.raw_size / m,
                    "write_crops_per_s": n * m / write_s, "read_crops_per_s": reads * m / read_s,
                })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probs", default="synthetic", help="'synthetic' (C=1000) or a .npy of probabilities (N, M, C)")
    parser.add_argument("--images", type=int, default=300, help="images for synthetic labels")
    parser.add_argument("--crops", type=int, default=200, help="crops per image for synthetic labels")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--reads", type=int, default=2000, help="random image reads timed per variant")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    probs = synthetic_probs(args.images, args.crops, args.classes) if args.probs == "synthetic" else np.load(args.probs)
    rows = measure(probs, args.top_k, args.reads)
    print(f"labels: {args.probs} {probs.shape}, K={args.top_k}; machine: {platform.processor() or platform.machine()}, 1 process")
    print(f"{'scheme':20s} {'K':>4s} {'variant':8s} {'B/crop':>8s} {'raw B/crop':>10s} {'vs raw':>7s} {'read crops/s':>13s}")
    raw = {r["scheme"]: r["bytes_per_crop"] for r in rows if r["variant"] == "raw"}
    for r in rows:
        print(f"{r['scheme']:20s} {r['k']:4d} {r['variant']:8s} {r['bytes_per_crop']:8.2f} {r['raw_bytes_per_crop']:10.2f} "
              f"{r['bytes_per_crop'] / raw[r['scheme']]:7.3f} {r['read_crops_per_s']:13,.0f}")
    if args.out:
        args.out.write_text(json.dumps({"probs": args.probs, "shape": list(probs.shape), "top_k": args.top_k, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
