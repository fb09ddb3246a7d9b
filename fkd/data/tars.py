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

Link members are followed inside the shard, as a walk of the folder follows them on disk, so a
folder packed with ``tar`` (which stores a file's second name as a hard link, and symlinks as
symlinks) lists and reads like the folder: a hard link or symlink to a file is read as that file's
bytes under its own name, and a symlink to a folder lists the folder's images under the link's name
(where the link is; a folder link met again inside its own folder is not followed). A link with an
image name that leads nowhere in the shard (outside it, to no file, or through more than
``MAX_LINK_HOPS`` links) is a bad image, as a dangling symlink is in a folder; a ``.cls`` link that
leads nowhere is refused. A link without an image name that leads to no folder is ignored.

Each shard is indexed once with ``tarfile`` (member name, data offset, size) and the index is cached
in ``$FKD_CACHE`` (default ``~/.cache/fkd``) under ``tar-index/``, keyed by the shard's absolute
path, size, mtime, inode and ctime. The last two change with the contents even when the size and
mtime are kept (``cp -p`` rewrites the file in place, which sets ctime; ``rsync -a`` renames a new
file over it) and, unlike mtime, no user can set ctime. The key costs one ``stat`` (3 us), as
before. A check of the contents would read every header again: on a 63 MB shard of 4,000 members
(2,000 images and their ``.cls``) in the page cache, the cached listing takes 1.1 ms, hashing the
4,000 header blocks at their offsets 5.6 ms, indexing anew 115 ms; on storage not in the page
cache the hash does the same scattered reads as indexing, most of what the cache saves. A rewrite
within one tick of the clock that stamps ctime would keep it, so a shard changed less than
``SETTLE_NS`` ago is indexed but not cached.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import posixpath
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .sources import UNKNOWN_LABEL, ImageEntry, ImageList, ImageLocation, is_image_file

CLASS_LIST_NAME = "classes.txt"
INDEX_VERSION = 2
MAX_LINK_HOPS = 40
"""Links followed to reach one member (Linux's MAXSYMLINKS): a longer chain is taken for a loop."""
SETTLE_NS = 2_000_000_000
"""A shard changed less than this long ago is not cached: ctime is stamped from a clock that ticks
every few milliseconds (every second or two on some file systems), so a rewrite in the same tick
would keep the key."""
OUTSIDE = "outside the tar shard (pack with tar --dereference to store the files links point to)"
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
    paths = [p.absolute() for p in paths]  # named in full: a relative path hides where it was looked for
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        count = f"{len(missing)} of the {len(paths)} that {text} names"
        raise FileNotFoundError(f"tar shards not found ({count}): {', '.join(missing[:3])}{more}")
    return paths


@dataclass(frozen=True)
class ShardIndex:
    """A shard's image members (name, data offset, size) in tar order, why those that cannot be read
    cannot (links that lead nowhere in the shard), and its ``.cls`` texts by key."""

    images: list[tuple[str, int, int]]
    classes: dict[str, str]
    problems: dict[str, str] = field(default_factory=dict)


def member_key(name: str) -> str:
    folder, _, base = name.rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]


def _is_data(name: str) -> bool:
    return is_image_file(name) or name.endswith(".cls")


def _link_target(name: str, member: tarfile.TarInfo) -> "str | None":
    """The member path a link names (a symlink is relative to its folder, a hard link names a member
    by its path), or None when it is outside the shard."""
    base = posixpath.dirname(name) if member.issym() else ""
    target = posixpath.normpath(posixpath.join(base, member.linkname))
    return None if member.linkname.startswith("/") or target == ".." or target.startswith("../") else target


@dataclass
class MemberTable:
    """A shard's files and links by member name (tar order kept), to follow links inside the shard.
    ``links`` maps a link to its target path (None: outside the shard) and its text as written."""

    names: list[str] = field(default_factory=list)
    files: dict[str, tuple[int, int]] = field(default_factory=dict)
    links: dict[str, "tuple[str | None, str]"] = field(default_factory=dict)

    @classmethod
    def read(cls, tar: tarfile.TarFile) -> "MemberTable":
        table = cls()
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile():
                table.files[name] = (member.offset_data, member.size)
            elif member.issym() or member.islnk():
                table.links[name] = (_link_target(name, member), member.linkname)
            else:
                continue
            table.names.append(name)
        return table

    @cached_property
    def folders(self) -> set[str]:
        return {name[:i] for name in self.names for i, c in enumerate(name) if c == "/"} | {"."}

    def _first_link(self, name: str) -> "str | None":
        """The shortest leading part of ``name`` that is a link (a link may stand for a folder)."""
        parts = name.split("/")
        return next((p for p in ("/".join(parts[: i + 1]) for i in range(len(parts))) if p in self.links), None)

    def follow(self, name: str) -> tuple[str, str]:
        """(the path ``name`` leads to through links, "") or ("", why it leads nowhere in the shard)."""
        hops = 0
        while (link := self._first_link(name)) is not None:
            hops += 1
            target, text = self.links[link]
            if target is None:
                return "", f"a link to {text}, {OUTSIDE}"
            if hops > MAX_LINK_HOPS:
                return "", f"a chain of more than {MAX_LINK_HOPS} links (a loop?)"
            name = posixpath.normpath(target + name[len(link) :])
        return name, ""

    def locate(self, name: str) -> tuple[int, int, str]:
        """(offset, size, "") of the file ``name`` is or leads to, or (0, 0, why it cannot be read)."""
        if name in self.files:
            return (*self.files[name], "")
        target, problem = self.follow(name)
        if not problem and target not in self.files:
            problem = f"a link to {target}, which is not a file of the tar shard"
        return (*self.files.get(target, (0, 0)), problem)

    def listed(self) -> Iterator[str]:
        """The member names in tar order, a link to a folder replaced by the names under it."""
        for name in self.names:
            if name in self.links and not _is_data(name):
                yield from self.under_folder_link(name, frozenset())
            else:
                yield name

    def under_folder_link(self, link: str, entered: frozenset[str]) -> list[str]:
        """What a link to a folder stands for: the folder's members, named under the link, with the
        folder links inside followed too, except into a folder already ``entered`` (a loop)."""
        folder, problem = self.follow(link)
        if problem or folder in entered or folder not in self.folders:
            return []
        inside = "" if folder == "." else folder + "/"
        names = []
        for name in self.names:
            if name.startswith(inside):
                named = f"{link}/{name[len(inside) :]}"
                is_folder_link = name in self.links and not _is_data(name)
                names.extend(self.under_folder_link(named, entered | {folder}) if is_folder_link else [named])
        return names


def build_index(path: Path) -> ShardIndex:
    """Read the tar headers of ``path`` (no data is extracted but the ``.cls`` texts)."""
    images, classes, problems = [], {}, {}
    try:
        with tarfile.open(path, "r:") as tar:  # "r:": uncompressed only; compressed tars have no random access
            table = MemberTable.read(tar)
            for name in table.listed():
                if not _is_data(name):
                    continue
                offset, size, problem = table.locate(name)
                if is_image_file(name):
                    images.append((name, offset, size))
                    if problem:
                        problems[name] = problem
                elif problem:
                    raise ValueError(f"tar shard {path}: {name} is {problem}")
                else:
                    classes[member_key(name)] = os.pread(tar.fileobj.fileno(), size, offset).decode("utf-8", "replace").strip()
    except tarfile.ReadError as exc:
        raise ValueError(f"tar shard {path}: {exc} (shards must be uncompressed tar files)") from None
    return ShardIndex(images, classes, problems)


def cache_dir() -> Path:
    return Path(os.environ.get("FKD_CACHE") or Path.home() / ".cache" / "fkd") / "tar-index"


def shard_index(path: Path) -> ShardIndex:
    """The index of ``path``, from the cache when the shard's stat key (module docstring) is the one
    it was built for, else built and, once the shard has settled, cached (atomically; an unwritable
    cache only costs rebuilding next time)."""
    stat = path.stat()  # before reading: a change while the index is built shows at the next listing
    key = {"version": INDEX_VERSION, "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "inode": stat.st_ino, "ctime_ns": stat.st_ctime_ns}
    cached = cache_dir() / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    try:
        saved = json.loads(cached.read_text())
        if saved["key"] == key:
            return ShardIndex([tuple(m) for m in saved["images"]], saved["classes"], saved["problems"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    index = build_index(path)
    if time.time_ns() - stat.st_ctime_ns < SETTLE_NS:
        return index
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "images": index.images, "classes": index.classes, "problems": index.problems}))
        os.replace(tmp, cached)
    except OSError:
        pass
    return index


@dataclass(frozen=True)
class TarSource:
    """Where each image id's bytes are: (shard number, offset, size), shards by absolute path."""

    shards: tuple[str, ...]
    members: dict[str, tuple[int, int, int]]
    problems: dict[str, str] = field(default_factory=dict)  # why an image cannot be read (ShardIndex)

    def locate(self, image_id: str) -> ImageLocation:
        try:
            shard, offset, size = self.members[image_id]
        except KeyError:
            raise FileNotFoundError(f"image {image_id} is in none of the {len(self.shards)} tar shards") from None
        return ImageLocation(self.shards[shard], offset, size, image_id, self.problems.get(image_id, ""))


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
    problems: dict[str, str] = {}
    for s, path in enumerate(paths):
        index = shard_index(path)
        problems.update(index.problems)
        for name, offset, size in index.images:
            if name in members:
                raise ValueError(f"image {name} is in two tar shards, {paths[members[name][0]]} and {path}: ids must be unique")
            members[name] = (s, offset, size)
            entries.append(ImageEntry(name, _label(name, index, class_index, path)))
    if not entries:
        raise ValueError(f"the tar shards of {data} hold no images")
    labels = [e.label for e in entries]
    if UNKNOWN_LABEL in labels and any(label != UNKNOWN_LABEL for label in labels):
        name = entries[labels.index(UNKNOWN_LABEL)].image_id
        raise ValueError(f"tar shard {paths[members[name][0]]}: {name} has no {member_key(name)}.cls member while other "
                         "images have one: every image needs a class (KEY.cls) or none does")
    if class_names is None:
        class_names = [str(c) for c in range(max(labels) + 1)]
    elif max(labels) >= len(class_names):
        raise ValueError(f"tar shards {data}: class {max(labels)} is beyond the {len(class_names)} classes of {CLASS_LIST_NAME}")
    return ImageList(root, entries, class_names, TarSource(tuple(str(p) for p in paths), members, problems))
