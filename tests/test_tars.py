"""Tar-sharded data (fkd.data.tars): listing, the cached member index, and the same store as from a folder."""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from fkd.data import tars
from fkd.data.images import BadImageError, list_images, read_image
from fkd.store import LabelStore
from labelgen.messages import ImageRef
from labelgen.worker import _load

from conftest import CIFAR_DATA, extract_cifar_test_images, make_image_folder
from test_labelgen_worker import save_tiny_teacher


@pytest.fixture(autouse=True)
def index_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tars, "SETTLE_NS", 0)  # cache a shard however recently it was written
    return tmp_path / "cache"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack(folder: Path, out_dir: Path, shards: int, with_cls: bool = True) -> str:
    """``folder`` (an ImageFolder) as ``shards`` WebDataset shards in its listing order, with
    ``KEY.cls`` members (or none) and a classes.txt; returns the brace pattern naming them."""
    images = list_images(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(images) // shards)
    for s in range(shards):
        with tarfile.open(out_dir / f"train-{s:03d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s * per_shard, min((s + 1) * per_shard, len(images))):
                image_id = images.entries[i].image_id
                add_member(tar, image_id, images.path(i).read_bytes())
                if with_cls:
                    add_member(tar, image_id.rsplit(".", 1)[0] + ".cls", f"{images.entries[i].label}\n".encode())
    (out_dir / tars.CLASS_LIST_NAME).write_text("".join(f"{name}\n" for name in images.class_names))
    return str(out_dir / f"train-{{000..{shards - 1:03d}}}.tar")


def test_brace_patterns_expand_zero_padded_in_order() -> None:
    assert tars.expand_braces("s-{08..11}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar", "s-11.tar"]
    assert tars.expand_braces("{0..1}/p{00..01}.tar") == ["0/p00.tar", "0/p01.tar", "1/p00.tar", "1/p01.tar"]
    assert tars.expand_braces("one.tar") == ["one.tar"]
    with pytest.raises(ValueError, match=r"range \{3\.\.1\} runs backwards"):
        tars.expand_braces("s-{3..1}.tar")


def test_tars_list_like_the_folder_they_were_packed_from(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=3)
    pattern = pack(folder, tmp_path / "tars", shards=2)
    plain, packed = list_images(folder), list_images(pattern)
    assert packed.image_ids == plain.image_ids and packed.labels.tolist() == plain.labels.tolist()
    assert packed.class_names == ["c0", "c1", "c2"] and packed.fingerprint() == plain.fingerprint()
    for i in range(len(plain)):
        location = packed.location(i)
        assert location.path.endswith(f"train-{i // 5:03d}.tar") and location.member == plain.entries[i].image_id
        expected = plain.path(i).read_bytes()
        loaded = read_image(location)
        assert loaded.fingerprint == zlib.crc32(expected)
        assert np.array_equal(loaded.pixels, read_image(plain.path(i)).pixels)
    # Without .cls members, classes.txt labels each image by its member's folder; a list file names shards too.
    unlabelled = pack(folder, tmp_path / "no-cls", shards=3, with_cls=False)
    listing = tmp_path / "no-cls" / "shards.txt"
    listing.write_text("# shards\ntrain-000.tar\ntrain-001.tar\ntrain-002.tar\n")
    for data in (unlabelled, listing):
        assert list_images(data).labels.tolist() == plain.labels.tolist()
    (tmp_path / "no-cls" / tars.CLASS_LIST_NAME).unlink()
    assert list_images(unlabelled).labels.tolist() == [-1] * len(plain)


def test_the_index_is_built_once_and_rebuilt_when_a_shard_changes(tmp_path: Path, index_cache: Path, monkeypatch) -> None:
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=2)
    pattern = pack(folder, tmp_path / "tars", shards=1)
    built: list[Path] = []
    real_build = tars.build_index
    monkeypatch.setattr(tars, "build_index", lambda path: built.append(path) or real_build(path))
    first = list_images(pattern)
    assert len(built) == 1 and len(list(index_cache.glob("tar-index/*.json"))) == 1
    assert list_images(pattern).source == first.source and len(built) == 1  # from the cache
    shard = tmp_path / "tars" / "train-000.tar"
    with tarfile.open(shard, "a") as tar:
        add_member(tar, "c1/extra.jpg", (folder / "c0" / "img000.jpg").read_bytes())
        add_member(tar, "c1/extra.cls", b"1")
    again = list_images(pattern)
    assert len(built) == 2 and again.image_ids == first.image_ids + ["c1/extra.jpg"]


def test_bad_tar_data_is_refused_naming_what_is_wrong(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=2)
    pack(folder, tmp_path / "a", shards=1)
    pack(folder, tmp_path / "a2", shards=1)
    (tmp_path / "a2" / "train-000.tar").rename(tmp_path / "a" / "train-001.tar")
    with pytest.raises(ValueError, match=r"image c0/img000.jpg is in two tar shards, .*train-000.tar and .*train-001.tar"):
        list_images(tmp_path / "a" / "train-{000..001}.tar")
    with tarfile.open(tmp_path / "gz.tar", "w:gz") as tar:
        add_member(tar, "c0/x.jpg", b"x")
    with pytest.raises(ValueError, match=r"gz.tar: .*shards must be uncompressed tar files"):
        list_images(tmp_path / "gz.tar")
    with tarfile.open(tmp_path / "cls.tar", "w") as tar:
        add_member(tar, "c0/x.jpg", (folder / "c0" / "img000.jpg").read_bytes())
        add_member(tar, "c0/x.cls", b"cat")
    with pytest.raises(ValueError, match=r"c0/x.cls holds 'cat', not a non-negative integer class"):
        list_images(tmp_path / "cls.tar")


def test_missing_shards_are_named_by_their_full_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_image_folder(tmp_path / "images", classes=2, per_class=2)
    pack(folder, tmp_path / "a", shards=1)
    monkeypatch.chdir(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"tar shards not found (1 of the 2 that train-{{000..001}}.tar names): {tmp_path}/a/train-001.tar")):
        list_images("train-{000..001}.tar")
    (tmp_path / "a" / "shards.txt").write_text("train-000.tar\n../b/train-001.tar\n../b/train-002.tar\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"tar shards not found (2 of the 3 that a/shards.txt names): {tmp_path}/a/../b/train-001.tar, {tmp_path}/a/../b/train-002.tar")):
        list_images("a/shards.txt")
    (tmp_path / "a" / "train-000.tar").rename(tmp_path / "a" / "x-0.tar")
    with pytest.raises(FileNotFoundError, match="^" + re.escape(
            f"tar shards not found (5 of the 6 that a/x-{{0..5}}.tar names): {tmp_path}/a/x-1.tar, {tmp_path}/a/x-2.tar, "
            f"{tmp_path}/a/x-3.tar and 2 more")):
        list_images("a/x-{0..5}.tar")


def test_an_image_without_a_class_member_is_named_with_its_shard(tmp_path: Path) -> None:
    image = (make_image_folder(tmp_path / "images", classes=1, per_class=1) / "c0" / "img000.jpg").read_bytes()
    with tarfile.open(tmp_path / "s-0.tar", "w") as tar:
        add_member(tar, "x.jpg", image)
        add_member(tar, "x.cls", b"1")
    with tarfile.open(tmp_path / "s-1.tar", "w") as tar:
        add_member(tar, "sub/y.jpg", image)
        add_member(tar, "sub/y.txt", b"no class here")
    with pytest.raises(ValueError, match="^" + re.escape(
            f"tar shard {tmp_path}/s-1.tar: sub/y.jpg has no sub/y.cls member while other images have one: "
            "every image needs a class (KEY.cls) or none does")):
        list_images(tmp_path / "s-{0..1}.tar")


def test_a_corrupt_member_is_a_bad_image_named_by_shard_and_member(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add_member(tar, "c0/bad.jpg", b"\xff\xd8 not really a jpeg")
    location = list_images(tmp_path / "s.tar").location(0)
    with pytest.raises(BadImageError, match=rf"cannot read image {tmp_path}/s.tar member c0/bad.jpg: cannot identify"):
        read_image(location)
    bad = _load(ImageRef("c0/bad.jpg", location, 0))  # what a labelgen worker records (or fails the run with)
    assert bad.image_id == "c0/bad.jpg" and "cannot identify image file" in bad.reason


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3 CIFAR-10 test JPEGs per class as a folder, with the links a real folder may hold: a hard
    link and a symlink to other images, a symlink to a class folder (its images are listed again
    under the link) and a dangling symlink (a bad image)."""
    if not CIFAR_DATA.is_file():
        pytest.skip(f"{CIFAR_DATA} not present")
    root = tmp_path_factory.mktemp("cifar-tars")
    folder = extract_cifar_test_images(root / "folder", 3)
    cat = sorted((folder / "cat").iterdir())[0]
    os.link(cat, folder / "cat" / "hard.jpg")
    (folder / "dog" / "sym.jpg").symlink_to(f"../cat/{cat.name}")
    (folder / "cat" / "dogs").symlink_to("../dog")
    (folder / "deer" / "dangling.jpg").symlink_to("gone.jpg")
    return {"root": root, "folder": folder, "teacher": save_tiny_teacher(root / "teacher.pth", num_classes=10)}


def pack_with_tar(folder: Path, out_dir: Path) -> str:
    """``folder`` as tar packs it (links stay links), the first 3 classes in one shard and the rest in
    another, with a classes.txt; returns the brace pattern naming them."""
    classes = sorted(p.name for p in folder.iterdir())
    out_dir.mkdir(parents=True)
    for s, part in enumerate((classes[:3], classes[3:])):
        with tarfile.open(out_dir / f"train-{s:03d}.tar", "w") as tar:
            for name in part:
                tar.add(folder / name, arcname=name)
    (out_dir / tars.CLASS_LIST_NAME).write_text("".join(f"{name}\n" for name in classes))
    return str(out_dir / "train-{000..001}.tar")


def labelgen_argv(cifar: dict[str, Path], data: str, out: Path) -> list[str]:
    return ["--teacher", "test_resnet", "--checkpoint", str(cifar["teacher"]), "--no-pretrained", "--input-size", "32",
            "--data", data, "--out", str(out), "--crops", "4", "--scheme", "marginal-smoothing", "--top-k", "3",
            "--seed", "5", "--shard-size", "8", "--batch-size", "16", "--workers", "1", "--no-progress", "--skip-bad"]


def test_a_store_from_cifar10_tars_equals_the_store_from_the_folder(cifar, tmp_path: Path, capsys) -> None:
    import ray

    from fkd.labels.cli import main as labels_main
    from labelgen.cli import main as labelgen_main
    from train.cli import main as train_main

    pattern = pack_with_tar(cifar["folder"], tmp_path / "tars")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        assert labelgen_main(labelgen_argv(cifar, str(cifar["folder"]), tmp_path / "from-folder")) == 0
        assert labelgen_main(labelgen_argv(cifar, pattern, tmp_path / "from-tars")) == 0
    finally:
        ray.shutdown()
    with LabelStore(tmp_path / "from-folder") as a, LabelStore(tmp_path / "from-tars") as b:
        assert a.meta.settings() == b.meta.settings() and a.image_ids == b.image_ids and len(a) == 36
        bad = [[image["image_id"] for image in store.meta.bad_images] for store in (a, b)]
        assert bad == [["deer/dangling.jpg"]] * 2
        assert {"cat/hard.jpg", "cat/dogs/sym.jpg", "dog/sym.jpg"} < set(b.image_ids)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.image_sizes, b.image_sizes)
        for i in range(len(a)):
            ra, rb = a.read(i), b.read(i)
            assert ra.fingerprint == rb.fingerprint == zlib.crc32((cifar["folder"] / ra.image_id).read_bytes())
            for field in ("boxes_fixed", "flips", "indices", "values"):
                assert np.array_equal(getattr(ra, field), getattr(rb, field)), (i, field)
    png = tmp_path / "show.png"
    assert labels_main(["show", str(tmp_path / "from-tars"), "--image", "3", "--data", pattern, "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    train = ["--store", str(tmp_path / "from-tars"), "--data", pattern, "--model", "test_resnet", "--input-size", "32",
             "--epochs", "1", "--batch-size", "10", "--crops-per-image", "2", "--workers", "0", "--no-progress"]
    assert train_main([*train, "--output", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "last.pth").is_file()
    capsys.readouterr()
    assert train_main([*train, "--data", str(tmp_path / "tars" / "train-{000..002}.tar"), "--output", str(tmp_path / "run2")]) == 2
    assert "--data " in capsys.readouterr().err and not (tmp_path / "run2").exists()
