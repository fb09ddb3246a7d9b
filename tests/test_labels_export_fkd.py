"""fkd-labels export-fkd: the official FKD one-file-per-image layout, where the official trainer looks
for it, in the types it loads, and imported back by import-fkd with the same crops and labels."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from fkd.data.crops import fixed_to_boxes, replay, sample_crops
from fkd.data.images import list_images
from fkd.labels.cli import main
from fkd.labels.fkd_files import pixel_boxes
from fkd.store import LabelStore

from conftest import CIFAR_DATA, make_image_folder, write_random_store

CROPS, CLASSES = 8, 10
# scheme, K, the label array of one image (M = CROPS), the official trainer's --soft_label_type
SCHEMES = [
    ("hardening", 5, np.int64, (CROPS,), "hard"),
    ("smoothing", 5, np.float32, (CROPS, 2), "smoothing"),
    ("marginal-smoothing", 5, np.float32, (CROPS, 2, 5), "marginal_smoothing_k5"),
    ("marginal-renorm", 3, np.float32, (CROPS, 2, 3), "marginal_renorm"),
    ("full", 5, np.float32, (CROPS, CLASSES), "ori"),
]


def store_for(tmp_path: Path, scheme: str, top_k: int) -> tuple[Path, Path]:
    """Images at .../imagenet/train/<class>/<name>.jpg and a store of their real ids, labels and sizes."""
    data = make_image_folder(tmp_path / "data" / "imagenet" / "train", classes=3, per_class=3)
    images = list_images(data)
    sizes = []
    for i in range(len(images)):
        with Image.open(images.path(i)) as img:
            sizes.append((img.height, img.width))
    store, _ = write_random_store(
        tmp_path / "store", scheme, top_k, CLASSES, CROPS, len(images), shard_size=4, image_ids=images.image_ids,
        sizes=np.array(sizes), labels=images.labels,
    )
    return store, data


def official_label_path(softlabel_path: Path, image_path: Path) -> str:
    """Where the official ImageFolder_FKD looks for an image's labels (its expression, verbatim)."""
    path = str(image_path)
    return os.path.join(str(softlabel_path), "/".join(path.split("/")[-3:]).split(".")[0] + ".tar")


@pytest.mark.parametrize("scheme,top_k,dtype,shape,label_type", SCHEMES)
def test_export_is_what_the_official_trainer_loads(
    scheme: str, top_k: int, dtype: type, shape: tuple, label_type: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store_path, data = store_for(tmp_path, scheme, top_k)
    out = tmp_path / "fkd_labels" / "train"  # named like the data folder: --softlabel_path fkd_labels
    assert main(["export-fkd", str(store_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("wrote 9 FKD files (") and f"--soft_label_type {label_type}," in printed
    images = list_images(data)
    with LabelStore(store_path) as store:
        for i in range(len(images)):
            record = store.read(i)
            coords, flips, labels = torch.load(official_label_path(tmp_path / "fkd_labels", images.path(i)), weights_only=False)
            assert coords.dtype == np.float32 and coords.shape == (CROPS, 4)
            assert flips.dtype == np.bool_ and np.array_equal(flips, record.flips)
            assert labels.dtype == dtype and labels.shape == shape
            # RandomResizedCrop_FKD multiplies the fractions by the image size; PIL rounds the corners
            assert np.array_equal(pixel_boxes(coords.astype(np.float64), record.height, record.width),
                                  fixed_to_boxes(record.boxes_fixed, record.height, record.width))
            if scheme == "full":
                assert np.array_equal(labels, np.exp(record.values.astype(np.float32)))  # a version-5 store keeps ln p
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [image_id.rsplit(".", 1)[0] + ".tar" for image_id in images.image_ids] + ["fkd-store.json"]  # + the settings for import-fkd
    )


@pytest.mark.parametrize("scheme,top_k", [("hardening", 5), ("smoothing", 5), ("marginal-smoothing", 5), ("marginal-renorm", 3)])
def test_export_then_import_gives_the_same_store(scheme: str, top_k: int, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store_path, data = store_for(tmp_path, scheme, top_k)
    assert main(["export-fkd", str(store_path), "--out", str(tmp_path / "fkd")]) == 0
    back = tmp_path / "back"
    argv = ["import-fkd", str(tmp_path / "fkd"), "--data", str(data), "--out", str(back), "--num-classes", str(CLASSES)]
    assert main(argv + (["--scheme", scheme] if scheme == "marginal-renorm" else [])) == 0
    capsys.readouterr()
    with LabelStore(store_path) as original, LabelStore(back) as imported:
        assert imported.meta.scheme == scheme and imported.image_ids == original.image_ids
        for i in range(len(original)):
            a, b = original.read(i), imported.read(i)
            assert (a.height, a.width, a.label) == (b.height, b.width, b.label)
            assert np.array_equal(a.boxes_fixed, b.boxes_fixed) and np.array_equal(a.flips, b.flips)
            assert np.array_equal(a.indices, b.indices)
            assert (a.values is None and b.values is None) or np.array_equal(a.values, b.values)


def test_export_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ids = ["c0/a.jpg", "c0/a.png", "c1/b.jpg"]  # a.jpg and a.png would share c0/a.tar
    store_path, _ = write_random_store(tmp_path / "store", num_images=3, image_ids=ids)
    out = tmp_path / "fkd"
    assert main(["export-fkd", str(store_path), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "fkd-labels export-fkd: error: images 'c0/a.jpg' and 'c0/a.png' would both be c0/a.tar in the FKD layout (it keeps "
        "names up to their first dot): export a --subset without one of them\n"
    )
    assert not out.exists()
    assert main(["export-fkd", str(store_path), "--out", str(out), "--subset", "images=c0/a.jpg,c1/b.jpg"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tar")) == ["c0/a.tar", "c1/b.tar"]
    capsys.readouterr()
    assert main(["export-fkd", str(store_path), "--out", str(out), "--subset", "images=c1/b.jpg"]) == 2
    assert capsys.readouterr().err == (
        f"fkd-labels export-fkd: error: --out {out} already exists and is not empty; choose another --out or pass --overwrite\n"
    )


def test_our_replay_is_within_2_of_the_official_pil_replay(tmp_path: Path) -> None:
    """What docs/FORMAT.md claims: on real photos our uint8 tensor replay (what our teacher saw) and the
    official trainer's PIL replay of the same exported crop differ by at most 2/255 per pixel."""
    if not CIFAR_DATA.is_file():
        pytest.skip(f"{CIFAR_DATA} not present")
    worst = {}
    with tarfile.open(CIFAR_DATA) as tar:
        members = [m for m in tar.getmembers()[:200] if m.isfile() and m.name.endswith(".jpg")][:40]
        for member in members:
            pil = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            pixels = torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous()
            h, w = pixels.shape[-2:]
            crops = sample_crops(member.name, h, w, 8, seed=0)
            for box, flip in zip(crops.boxes, crops.flips):
                i, j, bh, bw = (box / np.array([h, w, h, w])).astype(np.float32).tolist()  # the exported coords
                for interpolation in ("bilinear", "bicubic"):
                    ours = replay(pixels, box, bool(flip), 64, interpolation).int()
                    theirs = TF.resized_crop(pil, i * h, j * w, bh * h, bw * w, [64, 64], InterpolationMode(interpolation))
                    theirs = torch.from_numpy(np.array(TF.hflip(theirs) if flip else theirs)).permute(2, 0, 1).int()
                    worst[interpolation] = max(worst.get(interpolation, 0), int((ours - theirs).abs().max()))
    assert len(members) == 40 and worst["bilinear"] <= 2 and worst["bicubic"] <= 2, json.dumps(worst)
