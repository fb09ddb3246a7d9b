"""fkd-train --replay-device cuda: workers decode only and the device cuts the crops. Its kernel
(``cut_crops``) takes the device as an argument, so these tests run the CUDA path's arithmetic on
the CPU and hold it to the worker path's crops; the option is refused where it cannot work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fkd.data.augment import build_crop_augment
from fkd.data.crops import boxes_to_fixed, fixed_to_boxes, replay_fixed, sample_crops
from fkd.data.device_crops import cut_crops
from fkd.data.device_replay import DecodeOnlyDataset, UncutBatch, collate_uncut, training_dataset
from fkd.data.errors import ReplayError
from fkd.data.images import list_images, read_image
from fkd.data.multicrop import CropBatch, EpochSampler, MultiCropDataset, collate_crops
from fkd.data.plan import StoreCropPlanner
from fkd.store import LabelStore
from train.cli import main

from conftest import make_image_folder, write_random_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_LEVELS = 2
"""Largest difference (grey levels) between a device-cut crop and the worker's, bilinear and bicubic."""
MAX_MOVED = 0.03
"""Largest fraction of pixel values that differ at all (measured on these noise images: 1.7 % bilinear, 0.5 % bicubic)."""


def one_image_batch(image: torch.Tensor, fixed: np.ndarray, flips: np.ndarray) -> dict:
    height, width = image.shape[-2:]
    return {"pixels": image.reshape(-1), "shapes": torch.tensor([[height, width]]), "counts": torch.tensor([len(flips)]),
            "boxes": torch.from_numpy(fixed_to_boxes(fixed, height, width)), "flips": torch.from_numpy(flips)}


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_device_crops_match_the_worker_path(interpolation: str) -> None:
    """Noise images (the hardest case: bicubic overshoots at every pixel) of many sizes; crops
    that shrink, enlarge and keep their size, flipped and not."""
    rng = np.random.default_rng(0)
    worst, moved, total = 0, 0, 0
    for trial, (height, width) in enumerate([(21, 300), (375, 500), (64, 64), (300, 37), (123, 250)]):
        image = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
        crops = sample_crops(str(trial), height, width, 6, trial)
        fixed = boxes_to_fixed(crops.boxes, height, width)
        for size in (16, 33, 224):
            want = replay_fixed(image, fixed, crops.flips, size, interpolation)
            got = cut_crops(**one_image_batch(image, fixed, crops.flips), size=size, interpolation=interpolation, device="cpu")
            assert got.dtype == torch.uint8 and got.shape == want.shape
            diff = (got.int() - want.int()).abs()
            worst, moved, total = max(worst, int(diff.max())), moved + int((diff > 0).sum()), total + diff.numel()
    if interpolation == "nearest":
        assert worst == 0
    else:
        assert worst <= MAX_LEVELS and moved / total <= MAX_MOVED, (worst, moved / total)


def test_flips_mirror_the_crop_exactly() -> None:
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 50, 70), dtype=np.uint8))
    fixed = boxes_to_fixed(np.array([[3, 5, 40, 30], [3, 5, 40, 30]]), 50, 70)
    crops = cut_crops(**one_image_batch(image, fixed, np.array([False, True])), size=24, interpolation="bilinear", device="cpu")
    torch.testing.assert_close(crops[1], crops[0].flip(-1), rtol=0, atol=0)


@pytest.fixture(scope="module")
def store_and_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("replay")
    images_dir = make_image_folder(root / "images", classes=3, per_class=3, size=(60, 80))
    images = list_images(images_dir)
    loaded = [read_image(images.path(i)) for i in range(len(images))]
    store, _ = write_random_store(
        root / "store", num_images=len(images), image_ids=images.image_ids, labels=images.labels,
        sizes=np.array([tuple(x.pixels.shape[-2:]) for x in loaded]), fingerprints=np.array([x.fingerprint for x in loaded], dtype=np.uint32),
    )
    return store, images_dir


def batches(dataset: MultiCropDataset, collate, epoch: int) -> list:
    sampler = EpochSampler(dataset, num_replicas=1, rank=0, seed=0)
    sampler.set_epoch(epoch)
    return list(DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=0, collate_fn=collate))


def test_decode_only_batches_become_the_worker_batches(store_and_images: tuple[Path, Path]) -> None:
    """Same images, crops, labels and payload rows in the same order; pixels within the kernel's tolerance."""
    store, images_dir = store_and_images
    worker = MultiCropDataset(images_dir, StoreCropPlanner(LabelStore(store), 3, seed=0), 32, "bilinear")
    dataset, collate = training_dataset("cuda", torch.device("cuda"), images_dir, StoreCropPlanner(LabelStore(store), 3, seed=0),
                                        32, "bilinear", None, 0)  # building it touches no GPU
    assert isinstance(dataset, DecodeOnlyDataset)
    for epoch in (0, 1):
        uncut = batches(dataset, collate, epoch)
        for want, got in zip(batches(worker, collate_crops, epoch), uncut, strict=True):
            assert isinstance(got, UncutBatch) and len(got) == len(want) == 3 * len(want.image_index)
            cut = got.to(torch.device("cpu"))
            assert isinstance(cut, CropBatch)
            for name in ("indices", "values", "labels", "image_index", "crop_ids"):
                torch.testing.assert_close(getattr(cut, name), getattr(want, name), rtol=0, atol=0)
            assert int((cut.images.int() - want.images.int()).abs().max()) <= MAX_LEVELS


def test_uncut_batches_carry_each_image_once_in_one_buffer(store_and_images: tuple[Path, Path]) -> None:
    store, images_dir = store_and_images
    dataset = DecodeOnlyDataset(images_dir, StoreCropPlanner(LabelStore(store), 2, seed=0), 32, "bilinear")
    samples = [dataset[(0, i)] for i in (4, 0)]
    batch = collate_uncut(samples, 32, "bilinear")
    assert batch.pixels.shape == (sum(s.image.numel() for s in samples),) and batch.counts.tolist() == [2, 2]
    assert batch.shapes.tolist() == [list(s.image.shape[-2:]) for s in samples]
    torch.testing.assert_close(batch.pixels[samples[0].image.numel():].view_as(samples[1].image), samples[1].image, rtol=0, atol=0)


def test_per_crop_augmentation_is_refused_on_the_device(store_and_images: tuple[Path, Path]) -> None:
    store, images_dir = store_and_images
    planner = StoreCropPlanner(LabelStore(store), 2, seed=0)
    with pytest.raises(ReplayError, match=r"^--color-jitter and --randaugment .* use --replay-device cpu$"):
        training_dataset("cuda", torch.device("cuda"), images_dir, planner, 32, "bilinear", build_crop_augment(0.4), 0)
    with pytest.raises(ReplayError, match=r"^--replay-device cuda needs a CUDA training device \(this run uses cpu\); use --replay-device cpu$"):
        training_dataset("cuda", torch.device("cpu"), images_dir, planner, 32, "bilinear", None, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_replay_device_cuda_without_cuda_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = make_image_folder(tmp_path / "train", classes=2, per_class=2, size=(36, 40))
    out = tmp_path / "run"
    code = main(["--mode", "supervised", "--data", str(images), "--model", "test_resnet", "--input-size", "32", "--epochs", "1",
                 "--batch-size", "2", "--workers", "0", "--no-progress", "--output", str(out), "--replay-device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err == "fkd-train: error: --replay-device cuda needs a CUDA training device (this run uses cpu); use --replay-device cpu\n"
    assert not out.exists()
