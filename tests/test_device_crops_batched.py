"""The batched device crop kernel (``cut_crops``: two matrix products per image instead of two
resizes per crop) gives the per-crop kernel's crops, and its number of ops does not grow with the
number of crops. Run on the CPU: the kernel takes the device as an argument."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fkd.data import device_crops
from fkd.data.crops import boxes_to_fixed, fixed_to_boxes, parse_interpolation, replay_fixed, sample_crops
from fkd.data.device_crops import cut_crops
from fkd.data.images import list_images, load_image

from conftest import CIFAR_DATA, extract_cifar_test_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_MOVED = 0.001
"""Largest share of values the batched kernel moves from the per-crop one (by one grey level: the
float32 sums in another order flip a rounding; measured 0.0012 % bilinear, 0.0015 % bicubic)."""
MAX_MOVED_JPEG = 0.06
"""Largest share of values the kernel moves from torch's fixed-point uint8 kernel on real JPEGs (as the
per-crop kernel did: measured 4.2 % bilinear, where smooth areas land on half grey levels; 0.37 % bicubic)."""


def per_crop_kernel(image: torch.Tensor, boxes: np.ndarray, flips: np.ndarray, size: int, interpolation: str) -> torch.Tensor:
    """The kernel before batching: per crop, torchvision's antialiased float resize of the columns,
    rounded and clamped, then of the rows; flipped, rounded and clamped."""
    mode = parse_interpolation(interpolation)
    out = []
    for (top, left, h, w), flip in zip(boxes.tolist(), flips.tolist()):
        crop = image[:, top : top + h, left : left + w].float()
        wide = TF.resize(crop, [h, size], interpolation=mode, antialias=True).round_().clamp_(0, 255)
        tall = TF.resize(wide, [size, size], interpolation=mode, antialias=True)
        out.append(tall.flip(-1) if flip else tall)
    return torch.stack(out).round_().clamp_(0, 255).to(torch.uint8)


def random_boxes(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    """Random (top, left, height, width) boxes, and the edge cases: 1x1, one full row, one full
    column, the whole image."""
    h, w = rng.integers(1, height + 1, count), rng.integers(1, width + 1, count)
    top, left = (rng.random(count) * (height - h + 1)).astype(int), (rng.random(count) * (width - w + 1)).astype(int)
    edges = [[height - 1, width - 1, 1, 1], [height // 2, 0, 1, width], [0, width // 2, height, 1], [0, 0, height, width]]
    return np.concatenate([np.stack([top, left, h, w], 1), np.array(edges)]).astype(np.int64)


def batch(images: list[torch.Tensor], boxes: list[np.ndarray], flips: list[np.ndarray]) -> dict:
    """``cut_crops``'s inputs for several images."""
    return {"pixels": torch.cat([i.reshape(-1) for i in images]), "shapes": torch.tensor([list(i.shape[-2:]) for i in images]),
            "counts": torch.tensor([len(b) for b in boxes]), "boxes": torch.from_numpy(np.concatenate(boxes)),
            "flips": torch.from_numpy(np.concatenate(flips))}


@pytest.mark.parametrize("chunk_bytes", [device_crops.CHUNK_BYTES, 1], ids=["one-chunk", "chunk-per-crop"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_the_batched_kernel_gives_the_per_crop_kernels_crops(interpolation: str, chunk_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Noise images (bicubic overshoots at every pixel) of odd shapes, batched three at a time (the
    middle one without crops); boxes that shrink, enlarge, keep their size; flips."""
    monkeypatch.setattr(device_crops, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(0)
    worst, moved, total = 0, 0, 0
    shapes = [(21, 300), (9, 11), (1, 1), (37, 50), (64, 64), (5, 1), (1, 7), (300, 37)]
    for size in (1, 7, 33, 64):
        images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in shapes]
        boxes = [random_boxes(rng, h, w, 8) for h, w in shapes]
        boxes[1] = boxes[1][:0]  # an image without crops in the middle of a batch
        flips = [rng.random(len(b)) < 0.5 for b in boxes]
        for group in (slice(0, 4), slice(4, 7), slice(7, 8)):
            got = cut_crops(**batch(images[group], boxes[group], flips[group]), size=size, interpolation=interpolation, device="cpu")
            want = torch.cat([per_crop_kernel(i, b, f, size, interpolation)
                              for i, b, f in zip(images[group], boxes[group], flips[group]) if len(b)])
            assert got.dtype == torch.uint8 and got.shape == want.shape
            diff = (got.int() - want.int()).abs()
            worst, moved, total = max(worst, int(diff.max())), moved + int((diff > 0).sum()), total + diff.numel()
    print(f"{interpolation}: largest difference {worst} grey level(s), {moved / total:.4%} of {total} values differ")
    if interpolation == "nearest":
        assert worst == 0
    else:
        assert worst <= 1 and moved / total <= MAX_MOVED, (worst, moved / total)


def test_flipped_crops_mirror_the_unflipped_exactly() -> None:
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 50, 70), dtype=np.uint8))
    boxes = np.array([[3, 5, 40, 31], [3, 5, 40, 31], [0, 60, 7, 10], [0, 60, 7, 10]])
    for interpolation in ("bilinear", "bicubic", "nearest"):
        crops = cut_crops(**batch([image], [boxes], [np.array([False, True, False, True])]), size=24,
                          interpolation=interpolation, device="cpu")
        torch.testing.assert_close(crops[1::2], crops[0::2].flip(-1), rtol=0, atol=0)


@pytest.mark.skipif(not CIFAR_DATA.is_file(), reason="../shared CIFAR-10 data missing")
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_on_real_jpegs_the_kernel_is_within_two_grey_levels_of_the_cpu_replay(interpolation: str, tmp_path: Path) -> None:
    """Real CIFAR-10 JPEGs (32x32), random-resized crops shrunk, kept and enlarged; all ten images
    in one batch, as fkd-train's --replay-device cuda cuts them."""
    images = list_images(extract_cifar_test_images(tmp_path, 1))
    pixels = [load_image(images.path(i)) for i in range(len(images))]
    crops = [sample_crops(images.image_ids[i], 32, 32, 16, 0) for i in range(len(images))]
    fixed = [boxes_to_fixed(c.boxes, 32, 32) for c in crops]
    worst, moved, total = 0, 0, 0
    for size in (24, 32, 56):
        got = cut_crops(**batch(pixels, [fixed_to_boxes(f, 32, 32) for f in fixed], [c.flips for c in crops]),
                        size=size, interpolation=interpolation, device="cpu")
        want = torch.cat([replay_fixed(p, f, c.flips, size, interpolation) for p, f, c in zip(pixels, fixed, crops)])
        diff = (got.int() - want.int()).abs()
        worst, moved, total = max(worst, int(diff.max())), moved + int((diff > 0).sum()), total + diff.numel()
    print(f"{interpolation}: largest difference {worst} grey level(s), {moved / total:.4%} of values differ")
    assert worst <= 2 and moved / total <= MAX_MOVED_JPEG, (worst, moved / total)


class CountOps(TorchDispatchMode):
    """Counts the aten ops run inside it (each one kernel launch on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Callable, types: tuple, args: tuple = (), kwargs: "dict | None" = None) -> object:
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_the_kernels_ops_per_image_do_not_grow_with_the_crops(interpolation: str) -> None:
    """Four crops per image or three hundred: the same ops, fewer than the crops (the per-crop kernel
    ran about thirteen per crop: 111 and 7,641 ops here)."""
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.integers(0, 256, (3, 40, 60), dtype=np.uint8))
    ops = []
    for count in (4, 300):
        boxes = random_boxes(rng, 40, 60, count - 4)
        inputs = batch([image, image], [boxes, boxes], [rng.random(count) < 0.5] * 2)
        with CountOps() as counter:
            cut_crops(**inputs, size=16, interpolation=interpolation, device="cpu")
        ops.append(counter.count)
    assert ops[0] == ops[1] < 2 * 300, ops


def test_an_interpolation_the_kernel_does_not_cut_is_refused_in_one_line() -> None:
    image = torch.zeros((3, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^the device crop kernel resizes bilinear, bicubic or nearest, not 'lanczos'; "
                                         r"cut the crops on the CPU \(--crop-device cpu, --replay-device cpu\)$"):
        cut_crops(**batch([image], [np.array([[0, 0, 8, 8]])], [np.array([False])]), size=4,
                  interpolation=InterpolationMode.LANCZOS, device="cpu")


class EmulateTF32(TorchDispatchMode):
    """Matrix products as TF32 tensor cores compute them: each float32 operand rounded to 10
    mantissa bits, the products summed in float32."""

    PRODUCTS = ("mm", "bmm", "addmm", "baddbmm")

    def __torch_dispatch__(self, func: Callable, types: tuple, args: tuple = (), kwargs: "dict | None" = None) -> object:
        if func.overloadpacket.__name__ in self.PRODUCTS:
            args = tuple(to_tf32(a) if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a for a in args)
        return func(*args, **(kwargs or {}))


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    bits = x.contiguous().view(torch.int32)
    return ((bits + (1 << 12)) & -(1 << 13)).view(torch.float32)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_crops_do_not_change_when_tf32_is_on(interpolation: str) -> None:
    """TF32 is process-wide: a --teacher-precision tf32 call on the teacher's thread turns it on for
    crops cut on a decode thread at that moment. Emulated here, the crops stay those of float32
    products (the kernel before the split moved 1.5 % of these values bilinear, 1.9 % bicubic)."""
    rng = np.random.default_rng(3)
    shapes = [(21, 300), (37, 50), (64, 64), (300, 37)]
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in shapes]
    boxes = [random_boxes(rng, h, w, 12) for h, w in shapes]
    inputs = batch(images, boxes, [rng.random(len(b)) < 0.5 for b in boxes])
    for size in (7, 33, 64):
        want = cut_crops(**inputs, size=size, interpolation=interpolation, device="cpu")
        with EmulateTF32():
            got = cut_crops(**inputs, size=size, interpolation=interpolation, device="cpu")
        torch.testing.assert_close(got, want, rtol=0, atol=0)
