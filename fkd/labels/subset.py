"""Reading only some images of a store: by ground-truth class or by image id.

``--subset classes=cat,dog`` or ``--subset images=@ids.txt`` selects images; ``StoreSubset`` is a
read-only view with the ``LabelStore`` reading API over just those images, so every command (and a
training reader) can work on part of a store without copying it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import LabelsError

if TYPE_CHECKING:  # the CLI parses --subset with this module: no store (torch, h5py) imports for that
    from ..store import ImageLabels, LabelStore, StoreMeta

SUBSET_HELP = (
    "'classes=NAME,NAME' (class names or indices, matched against each image's ground-truth label) "
    "or 'images=ID,ID' / 'images=@FILE' (image ids, one per line in FILE)"
)


@dataclass(frozen=True)
class SubsetSpec:
    """Which images to keep: those whose class is in ``classes``, or whose id is in ``images``."""

    kind: str  # "classes" or "images"
    items: tuple[str, ...]

    def describe(self) -> str:
        shown = ", ".join(self.items[:5]) + (f", ... ({len(self.items)} in all)" if len(self.items) > 5 else "")
        return f"{self.kind}={shown}"


def parse_subset(text: str) -> SubsetSpec:
    """Parse ``classes=...`` / ``images=...`` / ``images=@FILE``; ValueError says the accepted forms."""
    kind, sep, rest = text.partition("=")
    kind = kind.strip()
    if not sep or kind not in ("classes", "images"):
        raise ValueError(f"subset {text!r} must be 'classes=NAME,...', 'images=ID,...' or 'images=@FILE'")
    rest = rest.strip()
    if rest.startswith("@"):
        path = Path(rest[1:])
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read subset file {path}: {exc.strerror or exc}") from None
        items = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        items = [item.strip() for item in rest.split(",") if item.strip()]
    if not items:
        raise ValueError(f"subset {text!r} lists no {kind}")
    return SubsetSpec(kind, tuple(dict.fromkeys(items)))


def class_indices(names: list[str], wanted: "tuple[str, ...]") -> list[int]:
    """Class names (or integer indices) -> indices into ``names``; LabelsError names unknown ones."""
    lookup = {name: i for i, name in enumerate(names)}
    found, unknown = [], []
    for item in wanted:
        if item in lookup:
            found.append(lookup[item])
        elif item.isdigit() and int(item) < len(names):
            found.append(int(item))
        else:
            unknown.append(item)
    if unknown:
        listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise LabelsError(f"unknown classes {unknown} in --subset; the store's classes are: {listed}")
    return found


def select(store: LabelStore, spec: SubsetSpec) -> np.ndarray:
    """Store indices (ascending) of the images ``spec`` selects; LabelsError if none or unknown ids."""
    if spec.kind == "classes":
        wanted = class_indices(store.meta.class_names, spec.items)
        chosen = np.flatnonzero(np.isin(store.labels, wanted))
    else:
        position = {image_id: i for i, image_id in enumerate(store.image_ids)}
        unknown = [item for item in spec.items if item not in position]
        if unknown:
            raise LabelsError(f"{len(unknown)} image ids in --subset are not in the store (first: {unknown[:5]})")
        chosen = np.array(sorted(position[item] for item in spec.items), dtype=np.int64)
    if chosen.size == 0:
        raise LabelsError(f"--subset {spec.describe()} selects no image of the store")
    return chosen


class StoreSubset:
    """Images ``indices`` of ``store`` as a store of their own: position ``i`` here is image
    ``indices[i]`` there. ``read`` returns the underlying record (its ``index`` is the index in the
    full store). Pickles like ``LabelStore`` (no open file handles travel)."""

    def __init__(self, store: LabelStore, indices: np.ndarray):
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or (indices.size and (indices.min() < 0 or indices.max() >= len(store))):
            raise IndexError(f"subset indices must lie in 0..{len(store) - 1}")
        self.store = store
        self.indices = indices

    @classmethod
    def from_spec(cls, store: LabelStore, spec: SubsetSpec) -> "StoreSubset":
        return cls(store, select(store, spec))

    @property
    def meta(self) -> StoreMeta:
        return self.store.meta

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, i: int) -> ImageLabels:
        return self.store.read(int(self.indices[i]))

    @property
    def image_ids(self) -> list[str]:
        ids = self.store.image_ids
        return [ids[i] for i in self.indices]

    @property
    def labels(self) -> np.ndarray:
        return self.store.labels[self.indices]

    @property
    def image_sizes(self) -> np.ndarray:
        return self.store.image_sizes[self.indices]

    def close(self) -> None:
        self.store.close()
