"""Where a loader's CPU time per image goes (``loader.py --profile``), and whether reduced-size
JPEG decoding (PIL's ``Image.draft``) could lift it.

Every stage is timed with the thread's CPU clock in one process, one image at a time, calling the
same functions the loaders call, so the stages add up to a loader's per-image cost without its
DataLoader overhead (worker IPC), and a shared, busy CPU changes them less than wall time.
"""

from __future__ import annotations

import io
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset, create_transform
from torch.utils.data import default_collate

from benchmarks.speed.loader_data import LoaderInputs
from fkd.data.crops import fixed_to_boxes, replay, replay_fixed
from fkd.data.device_replay import DecodeOnlyDataset, collate_uncut
from fkd.data.images import read_image
from fkd.data.multicrop import CropSample, MultiCropDataset, collate_crops
from fkd.data.plan import StoreCropPlanner
from fkd.store import LabelStore


class StageClock:
    """CPU milliseconds per stage, summed over calls."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)

    def __call__(self, stage: str, fn: Callable[[], Any]) -> Any:
        started = time.thread_time()
        out = fn()
        self.ms[stage] += (time.thread_time() - started) * 1e3
        return out

    def per_image(self, images: int) -> dict[str, float]:
        return {stage: ms / images for stage, ms in self.ms.items()} | {"total": sum(self.ms.values()) / images}


def profile_fkd(inputs: LoaderInputs, count: int, n: int, size: int, batch: int) -> dict[str, float]:
    """fkd n crops per image, worker path: label read, file read + CRC, decode, crop + resize,
    payload tensors, collation."""
    dataset = MultiCropDataset(inputs.images, StoreCropPlanner(LabelStore(inputs.store), n, seed=0), size, "bilinear")
    dataset[(0, 0)]  # opens the store, as a worker does once
    clock, samples = StageClock(), []
    for index in range(count):
        location = dataset.source.locate(dataset.planner.image_ids[index])
        clock("file read + CRC-32", lambda: zlib.crc32(location.read_bytes()))
        loaded = clock("decode", lambda: read_image(location))
        height, width = loaded.pixels.shape[-2:]
        plan = clock("label read", lambda: dataset.planner.plan(index, 0, height, width))
        crops = clock("crop + resize", lambda: replay_fixed(loaded.pixels, plan.boxes_fixed, plan.flips, size, dataset.interpolation))
        samples.append(clock("payload tensors", lambda: (crops, dataset.targets(plan, index))))
    for start in range(0, count, batch):
        chunk = [CropSample(images=c, **t) for c, t in samples[start : start + batch]]
        clock("collation", lambda: collate_crops(chunk))
    out = clock.per_image(count)
    out["decode"] -= out["file read + CRC-32"]  # read_image reads the file too
    return out


def profile_decode_only(inputs: LoaderInputs, count: int, n: int, size: int, batch: int) -> dict[str, float]:
    """fkd --replay-device cuda, worker side: decode + label read + boxes, then the flat collation."""
    dataset = DecodeOnlyDataset(inputs.images, StoreCropPlanner(LabelStore(inputs.store), n, seed=0), size, "bilinear")
    dataset[(0, 0)]
    clock = StageClock()
    samples = [clock("decode + label read + boxes", lambda: dataset[(0, index)]) for index in range(count)]
    for start in range(0, count, batch):
        clock("collation", lambda: collate_uncut(samples[start : start + batch], size, "bilinear"))
    return clock.per_image(count)


def profile_timm(inputs: LoaderInputs, count: int, size: int, batch: int) -> dict[str, float]:
    """timm's default training transform, one stage per transform: decode (timm's loader: PIL
    open + convert RGB), RandomResizedCrop + flip, colour jitter, ToTensor + Normalize, collation."""
    dataset = ImageDataset(str(inputs.images))
    crop, flip, jitter, to_tensor, normalize = create_transform(size, is_training=True).transforms
    clock, samples = StageClock(), []
    for index in range(count):
        path, target = dataset.reader[index]
        img = clock("decode", lambda: Image.open(path).convert("RGB"))
        img = clock("crop + resize + flip", lambda: flip(crop(img)))
        img = clock("colour jitter", lambda: jitter(img))
        samples.append((clock("ToTensor + Normalize", lambda: normalize(to_tensor(img))), target))
    for start in range(0, count, batch):
        clock("collation", lambda: default_collate(samples[start : start + batch]))
    return clock.per_image(count)


def layout_trial(inputs: LoaderInputs, count: int, n: int, size: int) -> dict[str, Any]:
    """Why ``fkd.data.images.read_image`` keeps the decoder's (H, W, 3) memory behind its (3, H, W) view:
    a contiguous (3, H, W) copy (what it made before) costs the copy, and torch's uint8 antialiased
    resize then repacks every crop back to channels-last. Same decode, same crops, both layouts:
    CPU ms per image, and whether the crops are bitwise identical."""
    planner = StoreCropPlanner(LabelStore(inputs.store), n, seed=0)
    clock, identical = StageClock(), True
    for index in range(count):
        data = (inputs.images / planner.image_ids[index]).read_bytes()
        hwc = clock("decode, (H, W, 3) memory", lambda: _decode(data, None, contiguous=False))
        chw = clock("decode, (3, H, W) copy", lambda: _decode(data, None))
        plan = planner.plan(index, 0, *chw.shape[-2:])
        fast = clock("crop + resize from (H, W, 3)", lambda: replay_fixed(hwc, plan.boxes_fixed, plan.flips, size))
        slow = clock("crop + resize from (3, H, W)", lambda: replay_fixed(chw, plan.boxes_fixed, plan.flips, size))
        identical = identical and torch.equal(fast, slow)
    ms = {stage: value for stage, value in clock.per_image(count).items() if stage != "total"}
    saved = ms["decode, (3, H, W) copy"] - ms["decode, (H, W, 3) memory"]
    saved += ms["crop + resize from (3, H, W)"] - ms["crop + resize from (H, W, 3)"]
    return {"crops_per_image": n, "images": count, "ms_per_image": ms, "saved_ms_per_image": saved, "identical_crops": identical}


def draft_trial(inputs: LoaderInputs, count: int, n: int, sizes: tuple[int, ...]) -> list[dict[str, float]]:
    """PIL's reduced-size JPEG decoding (DCT scaling by 1/2, 1/4, 1/8) for an image whose n planned
    crops are all at least ``scale`` times the crop size on each side, so that they are still
    shrunk, never enlarged, after the reduction; the boxes are divided by the scale actually
    decoded. Per crop size: the share of images where it applies, the decode + crop time with and
    without it on those, and how far its crops are from the full decode's (grey levels)."""
    planner = StoreCropPlanner(LabelStore(inputs.store), n, seed=0)
    rows = []
    for size in sizes:
        eligible, full_ms, draft_ms, diffs = 0, 0.0, 0.0, []
        for index in range(count):
            data = (inputs.images / planner.image_ids[index]).read_bytes()
            height, width = _jpeg_size(data)
            plan = planner.plan(index, 0, height, width)
            boxes = fixed_to_boxes(plan.boxes_fixed, height, width)
            scale = next((s for s in (8, 4, 2) if (boxes[:, 2:] >= s * size).all()), 1)
            if scale == 1:
                continue
            eligible += 1
            started = time.thread_time()
            full = _decode(data, None)
            want = [replay(full, b, bool(f), size) for b, f in zip(boxes, plan.flips)]
            middle = time.thread_time()
            small = _decode(data, (width // scale, height // scale))
            factor = np.array([height, width, height, width]) / np.array([*small.shape[-2:], *small.shape[-2:]])
            got = [replay(small, np.round(b / factor), bool(f), size) for b, f in zip(boxes, plan.flips)]
            draft_ms += (time.thread_time() - middle) * 1e3
            full_ms += (middle - started) * 1e3
            diffs += [(a.float() - b.float()).abs().mean().item() for a, b in zip(want, got)]
        rows.append({
            "size": size, "crops_per_image": n, "images": count, "eligible_share": eligible / count,
            "full_ms": full_ms / eligible if eligible else None, "draft_ms": draft_ms / eligible if eligible else None,
            "mean_abs_diff": float(np.mean(diffs)) if diffs else None, "max_crop_mean_abs_diff": float(np.max(diffs)) if diffs else None,
        })
    return rows


def _jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size[1], img.size[0]


def _decode(data: bytes, draft: "tuple[int, int] | None", contiguous: bool = True) -> torch.Tensor:
    """An RGB JPEG decoded as ``read_image`` does (optionally drafted; ``contiguous``: copied into (3, H, W) memory)."""
    with Image.open(io.BytesIO(data)) as img:
        if draft is not None:
            img.draft("RGB", draft)
        pixels = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    return pixels.contiguous() if contiguous else pixels
