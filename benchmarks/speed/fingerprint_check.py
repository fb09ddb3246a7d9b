"""What checking every image's fingerprint costs fkd-train's loader (it must be within noise).

fkd-train compares the CRC-32 of each image file's bytes with the one fkd-labelgen recorded, so a
store is never trained against other pictures with the same names and sizes. The bytes are read
anyway; the CRC runs at GB/s. This runs fkd-train's own dataset (``MultiCropDataset`` over a label
store, n=4 crops per image, DataLoader with 0 workers, one thread) with the check and without it
(no CRC computed at all: ``fkd.data.images.fingerprint`` is replaced by a constant and the comparison is
off), alternating, several times, and reports images/s and the ratio of the medians, on real
CIFAR-10 JPEGs (32 px, student 32 px) and ImageNet-sized JPEGs (about 500x375 random pixels,
student 224 px).

    .venv/bin/python -m benchmarks.speed.fingerprint_check --out benchmarks/speed/fingerprint_check.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

import fkd.data.images as images_module
from benchmarks.common import balanced_subset, save_result
from benchmarks.speed.multicrop import build_store, make_image_folder, measure


@contextmanager
def no_crc(active: bool) -> Iterator[None]:
    """The loader as it was before fingerprints: no CRC of the file's bytes."""
    original = images_module.fingerprint
    if active:
        images_module.fingerprint = lambda data: 0
    try:
        yield
    finally:
        images_module.fingerprint = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar-per-class", type=int, default=200, help="CIFAR-10 train images per class (default 200)")
    parser.add_argument("--large-images", type=int, default=120, help="ImageNet-sized images (default 120)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed epochs per setting (default 5)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        large = make_image_folder(tmp / "large", classes=10, per_class=args.large_images // 10, size=(375, 500))
        for name, images_dir, size, batch in (
            ("cifar10-32px", balanced_subset("train", args.cifar_per_class), 32, 64),
            ("random-500x375-to-224px", large, 224, 16),
        ):
            store = build_store(images_dir, tmp / f"store-{name}", num_crops=16)
            runs: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
                for check in (False, True):
                    with no_crc(not check):
                        runs[check].append(measure(images_dir, store, 4, size, 0, batch, check_fingerprints=check)["images_per_s"])
            off, on = statistics.median(runs[False]), statistics.median(runs[True])
            row = {"images_set": name, "size": size, "repeats": args.repeats, "images_per_s_unchecked": off, "images_per_s_checked": on,
                   "ratio_checked_to_unchecked": on / off, "spread_unchecked": (min(runs[False]), max(runs[False])),
                   "spread_checked": (min(runs[True]), max(runs[True]))}
            rows.append(row)
            print(f"{name:26s} unchecked {off:8.1f} images/s (range {min(runs[False]):.1f}-{max(runs[False]):.1f}), "
                  f"checked {on:8.1f} images/s (range {min(runs[True]):.1f}-{max(runs[True]):.1f}): ratio {on / off:.3f}", flush=True)
    save_result(args.out, {"results": rows})


if __name__ == "__main__":
    main()
