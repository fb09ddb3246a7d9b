"""The loader benchmark's harness (benchmarks/speed/loader*.py): both label formats hold the same
labels for the same ImageNet-sized images, the official FKD loader returns what its label file
says, rates are the rounds' totals, and the README block renders. The timed runs are not tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import report
from benchmarks.fkd_official import official_coords, read_official
from benchmarks.speed import loader, loader_data
from fkd.data.images import list_images
from fkd.store import LabelStore

from conftest import make_image_folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> loader_data.LoaderInputs:
    root = tmp_path_factory.mktemp("loader")
    cifar = make_image_folder(root / "cifar", classes=2, per_class=3, size=(32, 32))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loader_data, "balanced_subset", lambda split, per_class: cifar)
        return loader_data.make_inputs(root / "made", count=6, crops=8, classes=2)


def test_images_are_imagenet_sized_and_both_formats_hold_the_same_labels(inputs: loader_data.LoaderInputs) -> None:
    images = list_images(inputs.images)
    assert len(images) == 6 and inputs.jpeg_kib > 0
    store = LabelStore(inputs.store)
    for i, image_id in enumerate(images.image_ids):
        with Image.open(images.path(i)) as img:
            assert (img.format, img.size) == ("JPEG", (500, 375))
        rec = store.read(i)
        coords, flips, soft = read_official(loader_data.official_path(inputs.official, image_id))
        np.testing.assert_array_equal(coords, official_coords(rec.boxes_fixed, 375, 500))
        np.testing.assert_array_equal(flips, rec.flips)
        np.testing.assert_array_equal(soft[:, 0], rec.indices)
        np.testing.assert_array_equal(soft[:, 1], rec.values.astype(np.float32))


def test_official_loader_returns_n_normalized_crops_and_their_labels(inputs: loader_data.LoaderInputs) -> None:
    images = list_images(inputs.images)
    dataset = loader_data.OfficialFKDDataset(images, inputs.official, crops_per_image=3, size=56)
    torch.manual_seed(0)
    crops, label, soft = dataset[4]
    torch.manual_seed(0)
    chosen = torch.randperm(8)[:3].numpy()  # the official loader's draw of crops
    _, _, stored = read_official(loader_data.official_path(inputs.official, images.image_ids[4]))
    assert crops.shape == (3, 3, 56, 56) and crops.dtype == torch.float32 and label == images.entries[4].label
    np.testing.assert_array_equal(soft.numpy(), stored[chosen])
    assert float(crops.min()) < 0 < float(crops.max())  # normalized, not [0, 1]


def test_rates_are_the_rounds_totals() -> None:
    parts = [
        {"loader": "fkd n=4", "crops_per_image": 4, "images": 100, "crops": 400, "wall_s": 2.0, "cpu_s": 0.5, "replay_cpu_s": 0.0},
        {"loader": "fkd n=4", "crops_per_image": 4, "images": 100, "crops": 400, "wall_s": 3.0, "cpu_s": 1.5, "replay_cpu_s": 0.1},
    ]
    row = loader.summarize(parts)
    assert (row["images_per_s"], row["crops_per_s"], row["cpu_ms_per_image"], row["crops_per_cpu_s"]) == (40.0, 160.0, 10.0, 400.0)
    assert row["replay_cpu_ms_per_image"] == pytest.approx(0.5)


def test_the_readme_block_states_the_target_verdict() -> None:
    rows = [{"loader": name, "crops_per_image": n, "images_per_s": 10.0, "crops_per_s": 10.0 * n, "cpu_ms_per_image": 5.0,
             "crops_per_cpu_s": 200.0 * n, "vs_timm": float(n), "vs_timm_uint8": n / 2, "replay_cpu_ms_per_image": 0.25}
            for name, n in (("timm", 1), ("timm uint8", 1), ("fkd n=4", 4), ("fkd n=4 replay-device cuda", 4))]
    result = {
        "command": "loader.py", "wall_seconds": 60.0, "rows": rows, "profile": None,
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 8, "gpu": None, "python": "3.11", "torch": "2", "date": "d",
                    "load_average_at_start": [1, 1, 1], "load_average_at_end": [1, 1, 1]},
        "setting": {"images": 1000, "image_size": [375, 500], "jpeg_kib": 16.5, "crops_stored": 200, "workers": 2, "batch_size": 32,
                    "rounds": 2, "crop_size": 224, "replay_device": "cuda", "source": "real CIFAR-10 JPEGs, upscaled"},
        "target": {"fkd_n4_vs_timm": 4.0, "fkd_n4_vs_timm_uint8": 2.0, "met": True},
    }
    text = report.loader(result, "")
    assert "**Target fkd n=4 >= 3x timm's crops/s per core: met (4.00x; 2.00x timm without colour jitter, uint8 out).**" in text
    assert "| fkd n=4 | 4 | 10.0 | 40.0 | 5.00 | 800.0 | 4.00 | 2.00 |" in text
    assert "the training process spends 0.25 CPU ms per image launching the crops on the GPU" in text
