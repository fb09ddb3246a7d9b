"""Image fingerprints: a store knows the bytes of every image it labelled, and training or drawing
from other pictures with the same names and sizes is refused, naming the file."""

from __future__ import annotations

import hashlib
import json
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image, ImageOps

from fkd.data.checks import SIZE_CHECK_IMAGES, check_store_matches_data
from fkd.data.images import ImageMismatchError, list_images, read_image
from fkd.data.multicrop import MultiCropDataset
from fkd.data.plan import StoreCropPlanner
from fkd.labels.cli import main as labels_main
from fkd.labels.convert import convert_store
from fkd.store import LabelStore
from train.cli import main as train_main

from conftest import make_image_folder, write_random_store


def labelled_folder(root: Path, fingerprints: bool = True, classes: int = 3, per_class: int = 3, **folder) -> tuple[Path, Path]:
    """An image folder and a store over it, with (or, as older stores, without) fingerprints."""
    images_dir = make_image_folder(root / "train", classes=classes, per_class=per_class, **folder)
    images = list_images(images_dir)
    loaded = [read_image(images.path(i)) for i in range(len(images))]
    store, _ = write_random_store(
        root / "store", num_classes=classes, top_k=2, num_crops=4, num_images=len(images), shard_size=4, image_ids=images.image_ids,
        sizes=np.array([tuple(x.pixels.shape[-2:]) for x in loaded]), labels=images.labels,
        fingerprints=np.array([x.fingerprint for x in loaded], dtype=np.uint32) if fingerprints else None,
    )
    manifest = json.loads((store / "store.json").read_text())
    manifest["meta"]["class_names"] = list(images.class_names)
    (store / "store.json").write_text(json.dumps(manifest))
    return images_dir, store


def lookalike(images_dir: Path, out: Path, only: "str | None" = None) -> Path:
    """Other pictures under the same relative names and sizes (a test split named like the train split)."""
    shutil.copytree(images_dir, out)
    for path in sorted(out.rglob("*.jpg")):
        if only is None or path.relative_to(out).as_posix() == only:
            with Image.open(path) as img:
                ImageOps.invert(img.convert("RGB")).save(path, quality=90)
    return out


def test_the_fingerprint_is_the_crc32_of_the_files_bytes(tmp_path: Path) -> None:
    path = make_image_folder(tmp_path / "img", classes=1, per_class=1) / "c0" / "img000.jpg"
    loaded = read_image(path)
    assert loaded.fingerprint == zlib.crc32(path.read_bytes())
    with Image.open(path) as img:
        assert np.array_equal(loaded.pixels.permute(1, 2, 0).numpy(), np.asarray(img.convert("RGB")))


def test_fingerprints_survive_the_store_and_derived_stores(tmp_path: Path) -> None:
    images_dir, store_dir = labelled_folder(tmp_path)
    images = list_images(images_dir)
    expected = [zlib.crc32(images.path(i).read_bytes()) for i in range(len(images))]
    with LabelStore(store_dir) as store:
        assert store.meta.image_fingerprint == "crc32"
        assert [store.read(i).fingerprint for i in range(len(store))] == expected
    convert_store(store_dir, tmp_path / "converted", "hardening")
    with LabelStore(tmp_path / "converted") as converted:
        assert converted.meta.image_fingerprint == "crc32"
        assert [converted.read(i).fingerprint for i in range(len(converted))] == expected


def train_argv(store: Path, data: Path, out: Path) -> list[str]:
    return ["--store", str(store), "--data", str(data), "--model", "test_resnet", "--input-size", "32", "--epochs", "1",
            "--batch-size", "3", "--crops-per-image", "2", "--workers", "0", "--no-progress", "--output", str(out)]


def test_training_on_lookalike_images_is_refused_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images_dir, store = labelled_folder(tmp_path)
    other = lookalike(images_dir, tmp_path / "test")
    assert train_main(train_argv(store, other, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert f"fkd-train: error: {other}/c0/img000.jpg is not the image the label store was made from (CRC-32 of its bytes" in err
    assert "point --data at the images the store was labelled from" in err and "Traceback" not in err


def test_every_loaded_image_is_checked_not_only_the_preflight_sample(tmp_path: Path) -> None:
    images_dir, store = labelled_folder(tmp_path)
    other = lookalike(images_dir, tmp_path / "test", only="c2/img001.jpg")
    dataset = MultiCropDataset(other, StoreCropPlanner(LabelStore(store), 2, seed=0), 16, "bilinear")
    dataset[(0, 0)]  # an unchanged image loads
    with pytest.raises(ImageMismatchError, match=rf"^{other}/c2/img001.jpg is not the image the label store was made from"):
        dataset[(0, 7)]
    unchecked = MultiCropDataset(other, StoreCropPlanner(LabelStore(store), 2, seed=0, allow_resized=True), 16, "bilinear")
    assert unchecked[(0, 7)].images.shape == (2, 3, 16, 16)  # a resized copy has other bytes: not checked


def test_a_lookalike_past_the_preflight_sample_stops_training_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Training checks every image as a DataLoader worker loads it, not only the images preflight samples."""
    images_dir, store = labelled_folder(tmp_path, classes=2, per_class=20, size=(24, 24))
    images = list_images(images_dir)
    sampled = set(np.linspace(0, len(images) - 1, SIZE_CHECK_IMAGES).astype(int).tolist())
    unsampled = images.image_ids[min(set(range(len(images))) - sampled)]
    other = lookalike(images_dir, tmp_path / "test", only=unsampled)
    argv = train_argv(store, other, tmp_path / "run")
    argv[argv.index("--workers") + 1] = "1"
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fkd-train: error: {other}/{unsampled} is not the image the label store was made from (CRC-32 of its bytes "
                   f"{zlib.crc32((other / unsampled).read_bytes()):08x}, recorded {zlib.crc32((images_dir / unsampled).read_bytes()):08x}); "
                   "point --data at the images the store was labelled from"]


def test_show_refuses_a_lookalike_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images_dir, store = labelled_folder(tmp_path)
    other = lookalike(images_dir, tmp_path / "test")
    code = labels_main(["show", str(store), "--image", "c1/img000.jpg", "--data", str(other), "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert f"{other}/c1/img000.jpg is not the image the label store was made from" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_stores_without_fingerprints_still_load_with_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A format-1 store (before fingerprints): read as before, and the user is told once."""
    images_dir, store = labelled_folder(tmp_path, fingerprints=False)
    manifest = json.loads((store / "store.json").read_text())
    for key in ("teacher_precision", "class_map", "image_fingerprint"):
        del manifest["meta"][key]
    manifest["meta"]["format_version"] = 1
    (store / "store.json").write_text(json.dumps(manifest))
    for shard in sorted(store.glob("shard-*.h5")):
        with h5py.File(shard, "r+") as f:
            f.attrs["format_version"] = 1
        entry = next(e for e in manifest["shards"] if e["file"] == shard.name)
        entry["bytes"], entry["sha256"] = shard.stat().st_size, hashlib.sha256(shard.read_bytes()).hexdigest()
        for key in ("records_offset", "records_bytes", "meta_sha256"):  # what format 3 added to shard entries
            entry.pop(key, None)
    (store / "store.json").write_text(json.dumps(manifest))

    with LabelStore(store) as old:
        assert (old.meta.format_version, old.meta.teacher_precision, old.meta.image_fingerprint) == (1, "unknown", "none")
        assert old.read(0).fingerprint is None
        warnings = check_store_matches_data(old, list_images(images_dir))
    assert warnings == ["the store records no image fingerprints (made by an older fkd): images are matched by path and size only"]
    assert labels_main(["show", str(store), "--image", "0", "--data", str(images_dir), "--out", str(tmp_path / "x.png")]) == 0
    assert capsys.readouterr().err.count("no image fingerprints") == 1
