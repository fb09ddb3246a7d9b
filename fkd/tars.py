"""Tar-sharded image data (the WebDataset layout), read at random without extracting anything.

Datasets of millions of images live in tar shards, not in millions of files. A shard holds members
``KEY.EXT`` (the key is the member name up to the first dot of its base name, WebDataset's rule):
every member with an image extension is an image, and ``KEY.cls`` (integer text), when present,
is its class. Without ``.cls`` members, a ``classes.txt`` beside the shards (one class name per
line, the line number is the class) labels an image by the first folder of its member name, the
ImageFolder layout packed into a tar; with neither, labels are unknown.

The image id is the member name (``airplane/0001.jpg``), not the shard: crops are drawn from
(seed, image id), so a folder packed into tars, or re-sharded, keeps the same ids and therefore the
same labels, and its store equals the folder's. Ids must be unique over all shards.

Each shard is indexed once with ``tarfile`` (member name, data offset, size) and the index is cached
in ``$FKD_CACHE`` (default ``~/.cache/fkd``) under ``tar-index/``, keyed by the shard's absolute
path and checked against its size and modification time, so a changed shard is indexed again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .sources import UNKNOWN_LABEL, ImageEntry, ImageList, ImageLocation, is_image_file

CLASS_LIST_NAME = "classes.txt"
INDEX_VERSION = 1
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``train-{0000..0099}.tar`` -> the 100 names, zero-padded to the width of the first bound
    (several ranges expand as a product, in order)."""
    parts = _BRACE.split(pattern)
    choices: list[list[str]] = []
    for i in range(1, len(parts), 3):
        low, high = parts[i], parts[i + 1]
        if int(high) < int(low):
            raise ValueError(f"{pattern}: range {{{low}..{high}}} runs backwards")
        choices.append([f"{n:0{len(low)}d}" for n in range(int(low), int(high) + 1)])
    names = []
    for picked in itertools.product(*choices):
        text = parts[0]
        for j, value in enumerate(picked):
            text += value + parts[3 * j + 3]
        names.append(text)
    return names


def is_tar_data(data: "str | os.PathLike") -> bool:
    """Whether ``--data`` names tar shards: a ``.tar`` path or pattern, or a list file of them."""
    text = str(data)
    if text.endswith(".tar"):
        return True
    path = Path(text)
    if not path.is_file():
        return False
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = next((line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")), "")
    return first.endswith(".tar")


def shard_paths(data: "str | os.PathLike") -> list[Path]:
    """The shards ``data`` names, in order: a brace pattern, one ``.tar`` file, or a list file of
    shard paths (relative to the list file's folder), one per line."""
    text = str(data)
    if text.endswith(".tar"):
        paths = [Path(p) for p in expand_braces(text)]
    else:
        lines = Path(text).read_text(encoding="utf-8-sig").splitlines()
        paths = [Path(text).parent / line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(paths)} tar shards of {text} are missing, e.g. {missing[0]}")
    return [p.absolute() for p in paths]


@dataclass(frozen=True)
class ShardIndex:
    """A shard's image members (name, data offset, size) in tar order, and its ``.cls`` texts by key."""

    images: list[tuple[str, int, int]]
    classes: dict[str, str]


def member_key(name: str) -> str:
    folder, _, base = name.rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]


def build_index(path: Path) -> ShardIndex:
    """Read the tar headers of ``path`` (no data is extracted)."""
    images, classes = [], {}
    try:
        with tarfile.open(path, "r:") as tar:  # "r:": uncompressed only; compressed tars have no random access
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")
                if is_image_file(name):
                    images.append((name, member.offset_data, member.size))
                elif name.endswith(".cls"):
                    classes[member_key(name)] = tar.extractfile(member).read().decode("utf-8", "replace").strip()
    except tarfile.ReadError as exc:
        raise ValueError(f"tar shard {path}: {exc} (shards must be uncompressed tar files)") from None
    return ShardIndex(images, classes)


def cache_dir() -> Path:
    return Path(os.environ.get("FKD_CACHE") or Path.home() / ".cache" / "fkd") / "tar-index"


def shard_index(path: Path) -> ShardIndex:
    """The index of ``path``, from the cache when the shard's size and mtime are those it was built
    for, else built and cached (atomically; an unwritable cache only costs rebuilding next time)."""
    stat = path.stat()
    key = {"version": INDEX_VERSION, "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cached = cache_dir() / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    try:
        saved = json.loads(cached.read_text())
        if saved["key"] == key:
            return ShardIndex([tuple(m) for m in saved["images"]], saved["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    index = build_index(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "images": index.images, "classes": index.classes}))
        os.replace(tmp, cached)
    except OSError:
        pass
    return index


@dataclass(frozen=True)
class TarSource:
    """Where each image id's bytes are: (shard number, offset, size), shards by absolute path."""

    shards: tuple[str, ...]
    members: dict[str, tuple[int, int, int]]

    def locate(self, image_id: str) -> ImageLocation:
        try:
            shard, offset, size = self.members[image_id]
        except KeyError:
            raise FileNotFoundError(f"image {image_id} is in none of the {len(self.shards)} tar shards") from None
        return ImageLocation(self.shards[shard], offset, size, image_id)


def read_class_list(folder: Path) -> "list[str] | None":
    path = folder / CLASS_LIST_NAME
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def _label(name: str, index: ShardIndex, class_index: "dict[str, int] | None", shard: Path) -> int:
    text = index.classes.get(member_key(name))
    if text is not None:
        if not text.isdigit():
            raise ValueError(f"tar shard {shard}: {member_key(name)}.cls holds {text!r}, not a non-negative integer class")
        return int(text)
    if class_index is None:
        return UNKNOWN_LABEL
    folder = name.split("/", 1)[0]
    if "/" not in name or folder not in class_index:
        raise ValueError(f"tar shard {shard}: {name} has no .cls member and its folder is not a class of {CLASS_LIST_NAME}")
    return class_index[folder]


def list_tar_images(data: "str | os.PathLike") -> ImageList:
    """The images of the tar shards ``data`` names, shard by shard in tar order."""
    paths = shard_paths(data)
    root = paths[0].parent if paths else Path(str(data)).parent
    class_names = read_class_list(root)
    class_index = None if class_names is None else {n: i for i, n in enumerate(class_names)}
    entries: list[ImageEntry] = []
    members: dict[str, tuple[int, int, int]] = {}
    for s, path in enumerate(paths):
        index = shard_index(path)
        for name, offset, size in index.images:
            if name in members:
                raise ValueError(f"image {name} is in two tar shards, {paths[members[name][0]]} and {path}: ids must be unique")
            members[name] = (s, offset, size)
            entries.append(ImageEntry(name, _label(name, index, class_index, path)))
    if not entries:
        raise ValueError(f"the tar shards of {data} hold no images")
    labels = [e.label for e in entries]
    if UNKNOWN_LABEL in labels and any(label != UNKNOWN_LABEL for label in labels):
        raise ValueError(f"tar shards {data}: every image needs a class (KEY.cls) or none does")
    if class_names is None:
        class_names = [str(c) for c in range(max(labels) + 1)]
    elif max(labels) >= len(class_names):
        raise ValueError(f"tar shards {data}: class {max(labels)} is beyond the {len(class_names)} classes of {CLASS_LIST_NAME}")
    return ImageList(root, entries, class_names, TarSource(tuple(str(p) for p in paths), members))
