"""Checks before training starts: is the label store about these images, and do the classes agree?

A store trained against the wrong images trains happily on wrong labels, so mismatches are refused
up front, naming what differs: image ids missing under --data, labels or class names that differ,
another class count than the model's, images of another size than the crops were drawn on.
(An incomplete store is already refused by ``LabelStore``.)
"""

from __future__ import annotations

import numpy as np

from fkd.images import UNKNOWN_LABEL, ImageList, load_image
from fkd.store import LabelStore

from .errors import DataMismatchError

SIZE_CHECK_IMAGES = 32
"""How many images (spread over the store) are decoded to compare their size with the store's."""


def _examples(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_num_classes(store_classes: int, requested: "int | None", what: str = "the store") -> int:
    """The class count to build the model with: ``requested`` (--num-classes) must equal ``what``'s."""
    if requested is not None and requested != store_classes:
        raise DataMismatchError(f"--num-classes {requested} differs from {what}, which has {store_classes} classes")
    return store_classes


def check_store_matches_data(store: LabelStore, data: ImageList, allow_resized: bool = False) -> list[str]:
    """Raise DataMismatchError when the store's images are not (all) in ``data`` with the same
    labels and sizes. Returns warnings (e.g. images under --data that the store does not cover)."""
    store_ids = store.image_ids
    data_index = {image_id: i for i, image_id in enumerate(data.image_ids)}
    missing = [i for i in store_ids if i not in data_index]
    if missing:
        raise DataMismatchError(
            f"{len(missing)} of the store's {len(store_ids)} images are not under --data {data.root} "
            f"(e.g. {_examples(missing)}); was the store made from other images?"
        )
    names = (list(store.meta.class_names), list(data.class_names))
    if len(names[0]) == len(names[1]) and names[0] != names[1] and not any(_numbered(n) for n in names):
        diff = [f"{i}: store {a!r} vs data {b!r}" for i, (a, b) in enumerate(zip(*names)) if a != b]
        raise DataMismatchError(f"class names differ between the store and --data ({_examples(diff, 3)})")
    store_labels = store.labels
    data_labels = data.labels[[data_index[i] for i in store_ids]]
    known = (store_labels != UNKNOWN_LABEL) & (data_labels != UNKNOWN_LABEL)
    wrong = np.flatnonzero(known & (store_labels != data_labels))
    if len(wrong):
        diff = [f"{store_ids[i]} (store {store_labels[i]}, data {data_labels[i]})" for i in wrong]
        raise DataMismatchError(f"{len(wrong)} images have another label in the store than under --data: {_examples(diff)}")
    if not allow_resized:
        sizes = store.image_sizes
        for i in np.unique(np.linspace(0, len(store_ids) - 1, min(SIZE_CHECK_IMAGES, len(store_ids))).astype(int)):
            height, width = load_image(data.root / store_ids[i]).shape[-2:]
            if (height, width) != tuple(sizes[i]):
                raise DataMismatchError(
                    f"{store_ids[i]}: the image is {height}x{width} pixels but the store's crops were drawn on "
                    f"{sizes[i][0]}x{sizes[i][1]}; use the data the store was made from, or pass --allow-resized"
                )
    extra = len(data_index) - len(store_ids)
    return [f"{extra} images under --data are not in the store and are not used"] if extra > 0 else []


def _numbered(names: list[str]) -> bool:
    """Class names '0', '1', ... are placeholders (a list file, or a store whose teacher's classes did
    not match the data's folders): nothing to compare."""
    return all(n == str(i) for i, n in enumerate(names))


def check_labels_known(labels: np.ndarray, ids: list[str], source: str, mode: str) -> None:
    """Modes with a ground-truth loss need a label for every training image."""
    unknown = [ids[i] for i in np.flatnonzero(labels == UNKNOWN_LABEL)]
    if unknown:
        raise DataMismatchError(f"--mode {mode} needs ground-truth labels, but {len(unknown)} images of {source} have none (e.g. {_examples(unknown)})")
