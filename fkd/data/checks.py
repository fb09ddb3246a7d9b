"""Is the label store about these images, and do the classes agree? Checked before training starts
(by fkd-train and by ``fkd.api``'s dataset alike).

A store trained against the wrong images trains happily on wrong labels, so mismatches are refused
up front, naming what differs: image ids missing under --data, labels or class names (folders)
that differ, another class count than the model's, image files other than those labelled
(fingerprints) or of another size than the crops were drawn on; validation folders that are no
training class; a label store and an embedding store used together that do not describe the same
crops of the same image files.
(An incomplete store is already refused by ``LabelStore``.)
"""

from __future__ import annotations

import numpy as np

from ..store import LabelStore
from .classes import ClassSpaceError, apply_class_map, folder_difference, is_numbered, quoted
from .errors import DataMismatchError
from .images import UNKNOWN_LABEL, ImageList, ImageMismatchError, check_fingerprint, read_image
from .sources import ImageSource
from .tars import TarSource

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


def _missing_hint(data: ImageList) -> str:
    """Tar data is often given shard by shard: the usual cause is a shard left out, not other images."""
    if isinstance(data.source, TarSource):
        return "are all the store's tar shards given (e.g. 'train-{0000..0099}.tar')?"
    return "was the store made from other images?"


def check_store_matches_data(store: LabelStore, data: ImageList, allow_resized: bool = False, given: "str | None" = None) -> list[str]:
    """Raise DataMismatchError when the store's images are not (all) in ``data`` with the same
    labels and sizes. Returns warnings (e.g. images under --data that the store does not cover)."""
    store_ids = store.image_ids
    data_index = {image_id: i for i, image_id in enumerate(data.image_ids)}
    missing = [i for i in store_ids if i not in data_index]
    if missing:
        raise DataMismatchError(
            f"{len(missing)} of the store's {len(store_ids)} images are not in --data {given or data.root} "
            f"(e.g. {_examples(missing)}); {_missing_hint(data)}"
        )
    names = (list(store.meta.class_names), list(data.class_names))
    if not is_numbered(names[1]) and len(names[1]) != len(names[0]):
        named = "" if is_numbered(names[0]) else f"; {folder_difference(names[1], names[0])}"
        raise DataMismatchError(
            f"--data has {len(names[1])} classes ({_examples(names[1], 3)}) but the store's labels cover {len(names[0])} "
            f"({_examples(names[0], 3)}){named}: a student would learn one class space and be scored in another; label the data "
            "with a teacher of its classes, or with fkd-labelgen --class-map"
        )
    if len(names[0]) == len(names[1]) and names[0] != names[1] and not any(is_numbered(n) for n in names):
        diff = [f"{i}: store {a!r} vs data {b!r}" for i, (a, b) in enumerate(zip(*names)) if a != b]
        raise DataMismatchError(f"class names differ between the store and --data ({_examples(diff, 3)})")
    store_labels = store.labels
    data_labels = data.labels[[data_index[i] for i in store_ids]]
    known = (store_labels != UNKNOWN_LABEL) & (data_labels != UNKNOWN_LABEL)
    wrong = np.flatnonzero(known & (store_labels != data_labels))
    if len(wrong):
        diff = [f"{store_ids[i]} (store {store_labels[i]}, data {data_labels[i]})" for i in wrong]
        raise DataMismatchError(f"{len(wrong)} images have another label in the store than under --data: {_examples(diff)}")
    warnings = []
    if not allow_resized:
        check_sample_images(store, data.source)
        if store.meta.image_fingerprint == "none":
            warnings.append("the store records no image fingerprints (made by an older fkd): images are matched by path and size only")
    extra = len(data_index) - len(store_ids)
    return warnings + ([f"{extra} images under --data are not in the store and are not used"] if extra > 0 else [])


def check_sample_images(store: LabelStore, source: ImageSource) -> None:
    """Decode SIZE_CHECK_IMAGES images spread over the store: each must be the file the labels were
    made from (fingerprint, where recorded) and of the size its crops were drawn on. Training checks
    every image's fingerprint as it loads it; this fails the run before the first step instead."""
    ids, sizes = store.image_ids, store.image_sizes
    for i in np.unique(np.linspace(0, len(ids) - 1, min(SIZE_CHECK_IMAGES, len(ids))).astype(int)):
        path = source.locate(ids[i])
        loaded = read_image(path)
        try:
            check_fingerprint(path, loaded.fingerprint, store.read(int(i)).fingerprint)
        except ImageMismatchError as exc:
            raise DataMismatchError(str(exc)) from None
        height, width = loaded.pixels.shape[-2:]
        if (height, width) != tuple(sizes[i]):
            raise DataMismatchError(
                f"{ids[i]}: the image is {height}x{width} pixels but the store's crops were drawn on "
                f"{sizes[i][0]}x{sizes[i][1]}; use the data the store was made from, or pass --allow-resized"
            )


def in_store_classes(images: ImageList, store: "LabelStore | None", flag: str) -> ImageList:
    """The listing with labels in the store's class space: a store labelled with ``--class-map``
    records the map, and the training and validation folders are moved through it alike."""
    if store is None or store.meta.class_map is None:
        return images
    try:
        return apply_class_map(images, store.meta.class_map, store.meta.class_names)
    except ClassSpaceError as exc:
        raise DataMismatchError(f"{flag}: {exc}") from None


def val_in_class_space(val: ImageList, class_names: list[str], store: "LabelStore | None", whose: str) -> ImageList:
    """--val-data with labels in the training class space (``class_names``, ``whose`` they are).

    Validation folders are matched by name, so a folder of some of the classes is scored against
    those classes (numbered in their own folder order, 5 of 10 CIFAR-10 folders were scored against
    5 other classes); a store's class map moves them as it moves --data. A list file's integer
    labels are class indices already; where the training classes have no names either, folders go
    by position, as --data's do, and only a folder for every class can."""
    if store is not None and store.meta.class_map is not None:
        return in_store_classes(val, store, "--val-data")
    names = list(val.class_names)
    if is_numbered(names) or (is_numbered(class_names) and len(names) == len(class_names)):
        return val
    if is_numbered(class_names):
        raise DataMismatchError(f"--val-data {val.root} has {len(names)} class folders but {whose} {len(class_names)} classes have no "
                                "names to match them by: give a folder for every class, or a list file of class indices")
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise DataMismatchError(f"--val-data {val.root}: class folder{'s' if len(unknown) > 1 else ''} {quoted(unknown)} "
                                f"{'are' if len(unknown) > 1 else 'is'} not among {whose} classes ({quoted(class_names)}); "
                                "name validation folders like the training classes")
    index = {n: i for i, n in enumerate(class_names)}
    return apply_class_map(val, {n: index[n] for n in names}, class_names)


def checked_val_images(val: ImageList, class_names: list[str], store: "LabelStore | None", whose: str, num_classes: int) -> ImageList:
    """--val-data ready to score a model of ``num_classes`` classes trained on ``class_names``
    (``val_in_class_space``): every image labelled, every label one of the model's classes."""
    val = val_in_class_space(val, class_names, store, whose)
    check_labels_known(val.labels, val.image_ids, "--val-data", "evaluation")
    if int(val.labels.max()) >= num_classes:
        raise DataMismatchError(f"--val-data has labels up to {int(val.labels.max())} but the model has {num_classes} classes")
    return val


def check_labels_known(labels: np.ndarray, ids: list[str], source: str, mode: str) -> None:
    """Modes with a ground-truth loss need a label for every training image."""
    unknown = [ids[i] for i in np.flatnonzero(labels == UNKNOWN_LABEL)]
    if unknown:
        raise DataMismatchError(f"--mode {mode} needs ground-truth labels, but {len(unknown)} images of {source} have none (e.g. {_examples(unknown)})")


PAIRED_SETTINGS = ("num_crops", "seed", "crop_scale", "crop_ratio", "flip_prob", "num_classes", "class_names", "class_map")
"""Metadata a label store and an embedding store used together must share: the crop settings that
decide every box and flip (``fkd.data.crops.sample_crops``) and the class space."""


def check_paired_stores(labels: LabelStore, embeddings: LabelStore) -> None:
    """Refuse (one line) a label store and an embedding store that do not describe the same crops:
    the same crop settings and classes, the same image ids in the same order with the same sizes,
    labels and image fingerprints (every image's, where both record them: boxes and flips depend on
    seed, id and size alone, so a store made from another picture of the same size has the same
    ones), and, on SIZE_CHECK_IMAGES images spread over the stores, the same boxes and flips.
    ``StoreCropPlanner`` compares every image's boxes, flips and fingerprints again as it reads
    them, so a difference elsewhere still fails the run, never pairs a label with another crop's
    embedding."""
    differ = [name for name in PAIRED_SETTINGS if getattr(labels.meta, name) != getattr(embeddings.meta, name)]
    if differ:
        shown = ", ".join(f"{n} {getattr(labels.meta, n)!r} vs {getattr(embeddings.meta, n)!r}" for n in differ[:3])
        raise DataMismatchError(f"--store and --embed-store were not made with the same crops or classes ({shown}): make both from one setting")
    ids = (labels.image_ids, embeddings.image_ids)
    if ids[0] != ids[1]:
        diff = [f"{a!r} vs {b!r}" for a, b in zip(*ids) if a != b] or [f"{len(ids[0])} vs {len(ids[1])} images"]
        raise DataMismatchError(f"--store and --embed-store hold other images ({_examples(diff, 3)}): make both from the same data")
    for name in ("image_sizes", "labels"):
        wrong = np.flatnonzero(np.any((getattr(labels, name) != getattr(embeddings, name)).reshape(len(ids[0]), -1), axis=1))
        if len(wrong):
            raise DataMismatchError(f"--store and --embed-store disagree on the {name.replace('_', ' ')} of {len(wrong)} images "
                                    f"(e.g. {_examples([ids[0][i] for i in wrong])})")
    prints = (labels.fingerprints, embeddings.fingerprints)
    if prints[0] is not None and prints[1] is not None:
        wrong = np.flatnonzero(prints[0] != prints[1])
        if len(wrong):
            raise DataMismatchError(f"--store and --embed-store were made from other image files: the fingerprints of {len(wrong)} images "
                                    f"differ (e.g. {_examples([ids[0][i] for i in wrong])}); make both from the same images")
    for i in np.unique(np.linspace(0, len(ids[0]) - 1, min(SIZE_CHECK_IMAGES, len(ids[0]))).astype(int)):
        a, b = labels.read(int(i)), embeddings.read(int(i))
        if not (np.array_equal(a.boxes_fixed, b.boxes_fixed) and np.array_equal(a.flips, b.flips)):
            raise DataMismatchError(f"{a.image_id}: --store and --embed-store hold other boxes or flips for this image: make both from the same "
                                    "images with the same crop settings and seed")
