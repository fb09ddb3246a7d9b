"""Tar members that are links (fkd.data.tars): a folder with hard links and symlinks packed with tar lists
and reads like the folder; links that cannot be followed inside the shard are bad images."""

from __future__ import annotations

import io
import os
import re
import tarfile
import zlib
from pathlib import Path

import pytest

from fkd.data import tars
from fkd.data.images import BadImageError, list_images, read_image
from labelgen.errors import BadImage
from labelgen.messages import ImageRef
from labelgen.worker import _load

from conftest import make_image_folder


@pytest.fixture(autouse=True)
def index_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FKD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


def test_a_folder_with_links_packed_with_tar_lists_and_reads_like_the_folder(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "images", classes=3, per_class=2)
    os.link(folder / "c0" / "img000.jpg", folder / "c0" / "hard.jpg")  # packed as a hard-link member
    (folder / "c1" / "sym.jpg").symlink_to("../c0/img001.jpg")
    (folder / "c2" / "more").symlink_to("../c1")  # a folder link: c2/more/sym.jpg is a link reached through it
    shard = tmp_path / "tars" / "all.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        tar.add(folder, arcname=".")  # GNU tar's './c0/img000.jpg' names; links stay links
    (shard.parent / tars.CLASS_LIST_NAME).write_text("c0\nc1\nc2\n")
    with tarfile.open(shard) as tar:
        kinds = {m.name: m.type for m in tar if m.name.endswith(("hard.jpg", "sym.jpg", "more"))}
        assert tar.getmember("./c0/img000.jpg").type == tarfile.LNKTYPE
    assert kinds == {"./c0/hard.jpg": tarfile.REGTYPE, "./c1/sym.jpg": tarfile.SYMTYPE, "./c2/more": tarfile.SYMTYPE}

    plain, packed = list_images(folder), list_images(shard)
    assert packed.image_ids == plain.image_ids == [
        "c0/hard.jpg", "c0/img000.jpg", "c0/img001.jpg", "c1/img000.jpg", "c1/img001.jpg", "c1/sym.jpg",
        "c2/img000.jpg", "c2/img001.jpg", "c2/more/img000.jpg", "c2/more/img001.jpg", "c2/more/sym.jpg",
    ]
    assert packed.labels.tolist() == plain.labels.tolist() and packed.fingerprint() == plain.fingerprint()
    for i in range(len(plain)):
        assert read_image(packed.location(i)).fingerprint == zlib.crc32(plain.path(i).read_bytes()), plain.entries[i]


def test_a_link_member_reads_its_target_whatever_the_kind_of_link(tmp_path: Path) -> None:
    data = {"c0/a.jpg": b"\xff\xd8 first image", "c0/b.jpg": b"\xff\xd8 second, longer image"}
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, payload in data.items():
            add_file(tar, name, payload)
        add_link(tar, "c0/hard.jpg", "./c0/b.jpg", tarfile.LNKTYPE)
        add_link(tar, "c1/chain.jpg", "../c0/hard.jpg")  # symlink -> hard link -> file
        add_link(tar, "c1/dots.jpg", "./././chain.jpg")
        add_link(tar, "c2", "c0")  # a folder link: c2/a.jpg, c2/b.jpg and c2/hard.jpg, listed where the link is
        add_file(tar, "c3/d.jpg", data["c0/a.jpg"])
        add_link(tar, "c3/again", ".")  # a loop: c3/again/d.jpg once, not c3/again/again/... (entered already)
    images = list_images(tmp_path / "s.tar")
    read = {e.image_id: images.location(i).read_bytes() for i, e in enumerate(images.entries)}
    a, b = data["c0/a.jpg"], data["c0/b.jpg"]
    assert list(read.items()) == [*data.items(), ("c0/hard.jpg", b), ("c1/chain.jpg", b), ("c1/dots.jpg", b), ("c2/a.jpg", a),
                                  ("c2/b.jpg", b), ("c2/hard.jpg", b), ("c3/d.jpg", a), ("c3/again/d.jpg", a)]


UNREADABLE = {
    "c0/absolute.jpg": ("/data/images/c0/x.jpg", "a link to /data/images/c0/x.jpg, outside the tar shard "
                        "(pack with tar --dereference to store the files links point to)"),
    "c0/up.jpg": ("../../x.jpg", "a link to ../../x.jpg, outside the tar shard (pack with tar --dereference to store "
                  "the files links point to)"),
    "c0/dangling.jpg": ("gone.jpg", "a link to c0/gone.jpg, which is not a file of the tar shard"),
    "c0/folder.jpg": (".", "a link to c0, which is not a file of the tar shard"),
    "c0/loop-a.jpg": ("loop-b.jpg", "a chain of more than 40 links (a loop?)"),
    "c0/loop-b.jpg": ("loop-a.jpg", "a chain of more than 40 links (a loop?)"),
}


def test_links_that_cannot_be_followed_in_the_shard_are_bad_images(tmp_path: Path) -> None:
    good = (make_image_folder(tmp_path / "images", classes=1, per_class=1) / "c0" / "img000.jpg").read_bytes()
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add_file(tar, "c0/good.jpg", good)
        for name, (target, _) in UNREADABLE.items():
            add_link(tar, name, target)
        add_link(tar, "c0/hard-dangling.jpg", "c0/never-packed.jpg", tarfile.LNKTYPE)
    (tmp_path / tars.CLASS_LIST_NAME).write_text("c0\n")
    images = list_images(tmp_path / "s.tar")
    assert images.image_ids == ["c0/good.jpg", *UNREADABLE, "c0/hard-dangling.jpg"]
    reasons = {name: reason for name, (_, reason) in UNREADABLE.items()}
    reasons["c0/hard-dangling.jpg"] = "a link to c0/never-packed.jpg, which is not a file of the tar shard"
    for i, image_id in enumerate(images.image_ids[1:], 1):
        location = images.location(i)
        with pytest.raises(BadImageError, match="^" + f"cannot read image {tmp_path}/s.tar member {image_id}: "):
            read_image(location)
        # What a labelgen worker records: the run fails with the list of bad files, or --skip-bad leaves them out.
        assert _load(ImageRef(image_id, location, 0)) == BadImage(image_id, reasons[image_id])
    assert read_image(images.location(0)).fingerprint == zlib.crc32(good)


def test_class_members_may_be_links_and_one_that_cannot_be_followed_is_refused_naming_it(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        add_file(tar, "x.jpg", b"abc")
        add_file(tar, "x.cls", b"3\n")
        add_file(tar, "y.jpg", b"def")
        add_link(tar, "y.cls", "x.cls")
    assert list_images(tmp_path / "s.tar").labels.tolist() == [3, 3]
    with tarfile.open(tmp_path / "s.tar", "a") as tar:
        add_file(tar, "z.jpg", b"ghi")
        add_link(tar, "z.cls", "/labels/z.cls")
    refused = f"tar shard {tmp_path}/s.tar: z.cls is a link to /labels/z.cls, outside the tar shard"
    with pytest.raises(ValueError, match="^" + re.escape(refused)):
        list_images(tmp_path / "s.tar")
