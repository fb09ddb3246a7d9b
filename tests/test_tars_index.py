"""The cached member index of a tar shard (fkd.data.tars) is never used for other contents than it was
built from: shards rewritten with their size and mtime kept (cp -p, rsync -a) are indexed again."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from fkd.data import tars
from fkd.data.images import list_images

from conftest import make_image_folder


@pytest.fixture(autouse=True)
def index_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FKD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The shards indexed from their headers (not from the cache), in order."""
    built: list[Path] = []
    real_build = tars.build_index
    monkeypatch.setattr(tars, "build_index", lambda path: built.append(path) or real_build(path))
    return built


def shard_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def layouts(tmp_path: Path) -> tuple[dict[str, bytes], bytes, bytes]:
    """Two images, and two shards of the same size holding them in the two orders."""
    folder = make_image_folder(tmp_path / "images", classes=1, per_class=2)
    images = {"c0/a.jpg": (folder / "c0" / "img000.jpg").read_bytes(), "c0/b.jpg": (folder / "c0" / "img001.jpg").read_bytes()}
    first = shard_bytes(images)
    second = shard_bytes(dict(reversed(images.items())))
    assert len(first) == len(second) and first != second
    return images, first, second


def read_all(shard: Path) -> dict[str, bytes]:
    listing = list_images(shard)
    return {e.image_id: listing.location(i).read_bytes() for i, e in enumerate(listing.entries)}


def keep_times(shard: Path, before: os.stat_result) -> None:
    """Put the shard's mtime back, as cp -p and rsync -a do; the kernel sets ctime to now, repeated
    until its clock tick has moved on (shards settle for tars.SETTLE_NS before their index is cached)."""
    for _ in range(1_000_000):  # a clock tick is some thousands of calls
        os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
        if shard.stat().st_ctime_ns != before.st_ctime_ns:
            return
    raise AssertionError(f"{shard}: the file system does not move ctime")


def test_a_shard_rewritten_in_place_with_size_and_mtime_kept_is_indexed_again(tmp_path, layouts, builds, monkeypatch) -> None:
    monkeypatch.setattr(tars, "SETTLE_NS", 0)  # cache a shard however recently it was written
    images, first, second = layouts
    shard = tmp_path / "s.tar"
    shard.write_bytes(first)
    assert read_all(shard) == images and read_all(shard) == images and len(builds) == 1  # the second from the cache
    before = shard.stat()
    with open(shard, "r+b") as f:  # cp -p onto an existing file: same inode, same size, mtime put back
        f.write(second)
    keep_times(shard, before)
    after = shard.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert read_all(shard) == images and len(builds) == 2
    assert read_all(shard) == images and len(builds) == 2


def test_a_shard_replaced_with_size_and_mtime_kept_is_indexed_again(tmp_path, layouts, builds, monkeypatch) -> None:
    monkeypatch.setattr(tars, "SETTLE_NS", 0)
    images, first, second = layouts
    shard, tmp = tmp_path / "s.tar", tmp_path / ".s.tar.partial"
    shard.write_bytes(first)
    assert read_all(shard) == images and len(builds) == 1
    before = shard.stat()
    tmp.write_bytes(second)  # rsync -a: a new file with the old times, renamed over the shard
    os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp, shard)
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert read_all(shard) == images and len(builds) == 2


def test_a_shard_changed_in_the_last_seconds_is_not_cached(tmp_path, layouts, builds, index_cache) -> None:
    """A rewrite within the same clock tick as the previous one keeps ctime: only a shard that has
    settled is cached, so such a rewrite cannot meet a cached index."""
    images, first, second = layouts
    shard = tmp_path / "s.tar"
    shard.write_bytes(first)
    assert read_all(shard) == images and len(builds) == 1
    assert not list(index_cache.glob("tar-index/*")) and tars.SETTLE_NS == 2_000_000_000
    before = shard.stat()
    with open(shard, "r+b") as f:
        f.write(second)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # ctime may well be unchanged here
    assert read_all(shard) == images and len(builds) == 2
