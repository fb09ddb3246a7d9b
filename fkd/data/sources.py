"""Where a run's images are and what it knows of each: the records both stages share.

An ``ImageList`` is the ordered images of a run (position i = image i of the label store); its
``source`` says where each image's bytes are (``FolderSource``: files under a root;
``fkd.data.tars.TarSource``: members of tar shards), as small picklable ``ImageLocation`` references that
Ray and DataLoader workers read with ``os.pread``. Listing lives in ``fkd.data.images`` (folders, list
files) and ``fkd.data.tars`` (shards); decoding in ``fkd.data.images``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

UNKNOWN_LABEL = -1
"""Label of an image whose class is not known (an unlabeled list)."""


class BadImageError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated or not an image)."""

    def __init__(self, path: "str | os.PathLike | ImageLocation", reason: str) -> None:
        self.path = path if isinstance(path, ImageLocation) else Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


@dataclass(frozen=True)
class ImageLocation:
    """Where one image's bytes are: a whole file, or the byte range of a member of an uncompressed
    tar shard (``member`` names it). Small and picklable, so Ray workers and DataLoader workers get
    references, never open files; the bytes are read with ``os.pread``, nothing is extracted.
    ``problem`` says why a member cannot be read (a link that leads nowhere in its shard): reading
    it raises ``BadImageError``, so it is reported like any corrupt image."""

    path: str
    offset: int = 0
    size: int = -1  # -1: the whole file
    member: str = ""
    problem: str = ""

    def __str__(self) -> str:
        return self.path if self.size < 0 else f"{self.path} member {self.member}"

    def read_bytes(self) -> bytes:
        if self.problem:
            raise BadImageError(self, self.problem)
        if self.size < 0:
            return Path(self.path).read_bytes()
        with open(self.path, "rb") as f:  # opened per read: nothing to share or reopen after fork
            data = os.pread(f.fileno(), self.size, self.offset)
        if len(data) != self.size:
            raise BadImageError(self, f"the shard ends {self.size - len(data)} bytes into the member (changed since it was indexed?)")
        return data


@dataclass(frozen=True)
class FolderSource:
    """Images as files under a root directory: an image id is a path relative to it."""

    root: Path

    def locate(self, image_id: str) -> ImageLocation:
        return ImageLocation(str(self.root / image_id))


class ImageSource(Protocol):
    """Where a listing's images are read from (``FolderSource``, ``fkd.data.tars.TarSource``): the one
    seam through which labelgen, training and ``fkd-labels show`` read image bytes."""

    def locate(self, image_id: str) -> ImageLocation: ...


@dataclass(frozen=True)
class ImageEntry:
    """One image: its id (path relative to the data root, '/' separated) and class index."""

    image_id: str
    label: int = UNKNOWN_LABEL


@dataclass
class ImageList:
    """The ordered images of a run. Position ``i`` here is image index ``i`` in the label store."""

    root: Path
    entries: list[ImageEntry]
    class_names: list[str]
    source: "ImageSource | None" = None  # None: files under ``root`` (made absolute: workers may run elsewhere)

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = FolderSource(Path(self.root).absolute())

    def __len__(self) -> int:
        return len(self.entries)

    def path(self, i: int) -> Path:
        return self.root / self.entries[i].image_id

    def location(self, i: int) -> ImageLocation:
        return self.source.locate(self.entries[i].image_id)

    @property
    def image_ids(self) -> list[str]:
        return [e.image_id for e in self.entries]

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.entries], dtype=np.int64)

    def fingerprint(self) -> str:
        """sha256 of the ordered (id, label) pairs: lets a store refuse to be resumed or trained
        against a different image list, without depending on where the data root lives."""
        digest = hashlib.sha256()
        for e in self.entries:
            digest.update(f"{e.image_id}\t{e.label}\n".encode())
        return digest.hexdigest()


def is_image_file(name: str) -> bool:
    """An image by its extension (torchvision's list, as ImageFolder uses)."""
    return name.lower().endswith(IMG_EXTENSIONS)
