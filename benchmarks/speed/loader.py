"""Loader speed at ImageNet image sizes: timm's training transform, the official FKD loader and fkd,
side by side, in images/s and crops/s and per CPU core.

Images: real CIFAR-10 train JPEGs upscaled to 500x375 and re-encoded (``loader_data``): ImageNet
sizes, real content, but smoother and smaller files than ImageNet photos, so decoding is cheaper
here than on ImageNet (which understates what one decode for n crops saves). Every loader runs
through a DataLoader with the same workers and batch size (in images), crops at 224 px:

- ``timm``: ``create_transform(224, is_training=True)``: one decode and one RandomResizedCrop per
  sample, flip, colour jitter 0.4, ToTensor, Normalize (float32 out);
- ``timm uint8``: the same without colour jitter and with ``use_prefetcher=True`` (uint8 out,
  normalized on the GPU by timm's prefetcher): the same pixel work as fkd n=1;
- ``official FKD n=4``: the whole per-image label file (M crops) + decode + 4 crops (float32 out);
- ``fkd n=1, 2, 4``: ``fkd-train``'s dataset: one record read + decode + n replayed crops (uint8 out);
- ``fkd n=4 replay-device cuda``: the workers only decode (``DecodeOnlyDataset``); with
  ``--replay-device cuda`` on a CUDA machine the crops are also cut on the GPU, timed in the main
  process, else the CPU side alone is measured;
- ``fkd n=4 stored ...``: the same on reinforced stores (format version 6): the workers also apply
  each crop's stored RandAugment and erasing, or decode each image's partner image and mix its crops
  in (Mixup/CutMix pairs: one more decode per image, whatever n, its extra cost per crop here).

Per core: crops per CPU-second, the CPU time of the main process and of the workers
(``getrusage``), which a shared, busy machine disturbs far less than wall time. The loaders run in
``--rounds`` rounds, alternating their order; figures are over all rounds.

    .venv/bin/python benchmarks/speed/loader.py --quick      # loader-quick.json
    .venv/bin/python benchmarks/speed/loader.py --profile    # loader.json, with the per-stage profile
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.data import ImageDataset, create_transform
from torch.utils.data import DataLoader, Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import markdown_table, ratio, result_path, save_result  # noqa: E402
from benchmarks.speed import loader_profile  # noqa: E402
from benchmarks.speed.loader_data import IMAGE_SIZE, LoaderInputs, OfficialFKDDataset, make_inputs  # noqa: E402
from fkd.data.device_replay import DecodeOnlyDataset, collate_uncut  # noqa: E402
from fkd.data.images import list_images  # noqa: E402
from fkd.data.multicrop import EpochSampler, MultiCropDataset, collate_crops  # noqa: E402
from fkd.data.plan import StoreCropPlanner  # noqa: E402
from fkd.store import LabelStore  # noqa: E402

SIZE = 224
COLUMNS = [
    ("loader", "loader", ""), ("crops_per_image", "crops/image", "d"), ("images_per_s", "images/s", ",.1f"),
    ("crops_per_s", "crops/s", ",.1f"), ("cpu_ms_per_image", "CPU ms/image", ".2f"), ("crops_per_cpu_s", "crops/s per core", ",.1f"),
    ("vs_timm", "vs timm (per core)", ".2f"), ("vs_timm_uint8", "vs timm uint8", ".2f"),
    ("extra_cpu_ms_per_crop", "CPU ms/crop over fkd n=4", "+.2f"),
]


@dataclass
class Loader:
    name: str
    crops_per_image: int
    dataset: Dataset
    collate: "Callable | None"
    epoch_sampler: bool  # fkd datasets take (epoch, index) keys
    uncut: bool = False  # batches of decoded images: cut on the device when it is CUDA


def loaders(inputs: LoaderInputs, device: torch.device) -> list[Loader]:
    images = list_images(inputs.images)
    rows = [
        Loader("timm", 1, ImageDataset(str(inputs.images), transform=create_transform(SIZE, is_training=True)), None, False),
        Loader("timm uint8", 1, ImageDataset(str(inputs.images), transform=create_transform(SIZE, is_training=True, color_jitter=0,
                                                                                             use_prefetcher=True)), None, False),
        Loader("official FKD n=4", 4, OfficialFKDDataset(images, inputs.official, 4, SIZE), None, False),
    ]
    for n in (1, 2, 4):
        rows.append(Loader(f"fkd n={n}", n, MultiCropDataset(inputs.images, StoreCropPlanner(LabelStore(inputs.store), n, seed=0), SIZE, "bilinear"),
                           collate_crops, True))
    for stored, store in inputs.reinforced.items():
        rows.append(Loader(f"fkd n=4 {stored}", 4, MultiCropDataset(inputs.images, StoreCropPlanner(LabelStore(store), 4, seed=0), SIZE,
                                                                     "bilinear"), collate_crops, True))
    name = "fkd n=4 replay-device cuda" + ("" if device.type == "cuda" else " (CPU side)")
    dataset = DecodeOnlyDataset(inputs.images, StoreCropPlanner(LabelStore(inputs.store), 4, seed=0), SIZE, "bilinear")
    rows.append(Loader(name, 4, dataset, partial(collate_uncut, size=SIZE, interpolation="bilinear"), True, uncut=True))
    return rows


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers, once joined)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def measure(loader: Loader, workers: int, batch: int, device: torch.device) -> dict[str, Any]:
    """One pass over the images; workers are not persistent, so they are joined (and their CPU
    time counted) when the pass ends. With a CUDA ``device``, uncut batches are cut there."""
    if loader.epoch_sampler:
        sampler = EpochSampler(loader.dataset, num_replicas=1, rank=0, seed=0)
    else:
        sampler = RandomSampler(loader.dataset, generator=torch.Generator().manual_seed(0))
    data = DataLoader(loader.dataset, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=loader.collate,
                      pin_memory=device.type == "cuda", persistent_workers=False)
    cpu, started = cpu_seconds(), time.perf_counter()
    images = crops = 0
    replay_cpu = 0.0
    for item in data:
        if loader.collate is None:  # timm: (images, targets); official: (crops (B, n, ...), targets, soft labels)
            images += len(item[1])
            crops += len(item[1]) * loader.crops_per_image
            continue
        if device.type == "cuda" and loader.uncut:
            replay_started = time.thread_time()
            item = item.to(device)
            replay_cpu += time.thread_time() - replay_started
        images += len(item.image_index)
        crops += len(item)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"loader": loader.name, "crops_per_image": loader.crops_per_image, "images": images, "crops": crops,
            "wall_s": time.perf_counter() - started, "cpu_s": cpu_seconds() - cpu, "replay_cpu_s": replay_cpu}


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One loader's rounds added up, as rates."""
    total = {k: sum(p[k] for p in parts) for k in ("images", "crops", "wall_s", "cpu_s", "replay_cpu_s")}
    return {
        "loader": parts[0]["loader"], "crops_per_image": parts[0]["crops_per_image"], **total,
        "images_per_s": total["images"] / total["wall_s"], "crops_per_s": total["crops"] / total["wall_s"],
        "cpu_ms_per_image": 1e3 * total["cpu_s"] / total["images"], "crops_per_cpu_s": total["crops"] / total["cpu_s"],
        "replay_cpu_ms_per_image": 1e3 * total["replay_cpu_s"] / total["images"],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="ImageNet-sized images, a multiple of 10 (default 1000)")
    parser.add_argument("--crops", type=int, default=200, help="M stored crops per image, in the store and the FKD files (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of every loader (default 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="passes per loader, in alternating order (default 2)")
    parser.add_argument("--replay-device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: also cut the replay-device row's crops on the GPU and time that in the main process")
    parser.add_argument("--profile", action="store_true", help="add the per-stage CPU profile of fkd n=4, timm and the decode-only worker")
    parser.add_argument("--quick", action="store_true", help="200 images, 1 round")
    parser.add_argument("--out", type=Path, help="JSON results (default: next to this script, -quick for --quick)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.images, args.rounds = 200, 1
    if args.replay_device == "cuda" and not torch.cuda.is_available():
        sys.exit("loader.py: --replay-device cuda needs a CUDA device; this machine has none")
    args.out = args.out or result_path(__file__, args.quick)
    device = torch.device(args.replay_device)
    torch.set_num_threads(1)  # per-core figures: DataLoader workers run single-threaded too
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp), args.images, args.crops)
        print(f"{args.images} CIFAR-10 train JPEGs upscaled to {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} and re-encoded (mean {inputs.jpeg_kib:.1f} KiB), "
              f"M={args.crops}; {args.workers} workers, batches of {args.batch_size} images, crops at {SIZE} px", flush=True)
        candidates = loaders(inputs, device)
        parts: dict[str, list[dict[str, Any]]] = {c.name: [] for c in candidates}
        for round_ in range(args.rounds):
            for loader in candidates if round_ % 2 == 0 else candidates[::-1]:
                parts[loader.name].append(measure(loader, args.workers, args.batch_size, device))
        rows = [summarize(parts[c.name]) for c in candidates]
        base, base_u8 = rows[0]["crops_per_cpu_s"], rows[1]["crops_per_cpu_s"]
        for row in rows:
            row["vs_timm"], row["vs_timm_uint8"] = ratio(row["crops_per_cpu_s"], base), ratio(row["crops_per_cpu_s"], base_u8)
        profile = None
        if args.profile:
            count = min(args.images, 200)
            profile = {
                "images": count,
                "fkd n=4": loader_profile.profile_fkd(inputs, count, 4, SIZE, args.batch_size),
                "fkd n=4 decode only (replay-device cuda)": loader_profile.profile_decode_only(inputs, count, 4, SIZE, args.batch_size),
                "timm": loader_profile.profile_timm(inputs, count, SIZE, args.batch_size),
                "draft": loader_profile.draft_trial(inputs, count, 4, (SIZE, 112)),
                "layout": loader_profile.layout_trial(inputs, count, 4, SIZE),
            }
    fkd4 = next(r for r in rows if r["loader"] == "fkd n=4")
    for row in rows:  # what a reinforced store's rendering costs on top of plain replay, per crop
        if row["loader"].startswith("fkd n=4 stored"):
            row["extra_cpu_ms_per_crop"] = (row["cpu_ms_per_image"] - fkd4["cpu_ms_per_image"]) / 4
    target = {"fkd_n4_vs_timm": fkd4["vs_timm"], "fkd_n4_vs_timm_uint8": fkd4["vs_timm_uint8"], "met": fkd4["vs_timm"] >= 3.0}
    print(markdown_table(rows, COLUMNS))
    print(f"target fkd n=4 >= 3x timm crops/s per core: {'met' if target['met'] else 'not met'} ({fkd4['vs_timm']:.2f}x)")
    if profile is not None:
        for name in ("fkd n=4", "fkd n=4 decode only (replay-device cuda)", "timm"):
            print(f"profile {name}: " + ", ".join(f"{stage} {ms:.2f}" for stage, ms in profile[name].items()) + " (CPU ms per image)")
        print(f"layout trial: {profile['layout']}\ndraft trial: {profile['draft']}")
    setting = {"images": args.images, "image_size": list(IMAGE_SIZE), "jpeg_kib": inputs.jpeg_kib, "crops_stored": args.crops,
               "workers": args.workers, "batch_size": args.batch_size, "rounds": args.rounds, "crop_size": SIZE,
               "replay_device": args.replay_device, "source": "real CIFAR-10 train JPEGs upscaled (bicubic) to 500x375, re-encoded at JPEG quality 90"}
    save_result(args.out, {"setting": setting, "rows": rows, "target": target, "profile": profile})


if __name__ == "__main__":
    main()
