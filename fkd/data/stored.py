"""Training data from a label store, checked and planned once for every trainer: fkd-train's store
modes and ``fkd.api.StoredCrops`` build it with the same function (``plan_stored_crops``), so the
checks before training (store vs data ids, labels, classes, sizes, fingerprints; the class map;
a label store paired with an embedding store) and the crops each epoch replays are the same
whichever loop trains on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..store import LabelStore
from .augment import CropAugment
from .checks import check_paired_stores, check_store_matches_data, checked_val_images, in_store_classes
from .classes import is_numbered
from .errors import ReplayError
from .images import list_images
from .multicrop import CropSample, MultiCropDataset
from .plan import CROP_ORDERS, StoreCropPlanner
from .sources import ImageList
from .targets import StoredTargets
from .tars import is_tar_data
from .views import check_online_augment

__all__ = ["StoredCrops", "StoredData", "list_data", "plan_stored_crops", "validation_images"]


def list_data(path: "str | os.PathLike | None", flag: str) -> ImageList:
    """The images of ``path`` (folder, list file or tar shards); one line naming ``flag`` if there are none."""
    if not path:
        raise ReplayError(f"{flag} is required")
    if not Path(path).exists() and not is_tar_data(path):
        raise ReplayError(f"{flag} {path}: no such directory or list file")
    try:
        return list_images(path)
    except (OSError, ValueError) as exc:  # OSError: a missing tar shard
        raise ReplayError(f"{flag} {path}: {exc}") from None


@dataclass
class StoredData:
    """The images a store's crops are replayed from, checked against it, and how each epoch picks
    them. ``store`` leads (the label store when both are given: its class map and interpolation apply)."""

    store: LabelStore
    images: ImageList  # --data, labelled in the store's class space
    planner: StoreCropPlanner
    warnings: list[str]
    class_names: list[str]
    classes_of: str  # whose class names they are, for messages: "the store's" or "--data's"


def plan_stored_crops(
    labels: "LabelStore | None", embeddings: "LabelStore | None", data: ImageList, crops_per_image: int, seed: int,
    order: str = "cycle", allow_resized: bool = False, given: "str | None" = None,
) -> StoredData:
    """Check a label store and/or an embedding store against ``data`` (its listing as given:
    the store's class map is applied here) and plan their crops: n of M per image and epoch, dealt
    in ``order`` (``fkd.data.plan.stored_crop_choice``). ``given``: how the data was named, for messages."""
    if labels is None and embeddings is None:
        raise ReplayError("no store given: training from stored crops needs a label store and/or an embedding store")
    if order not in CROP_ORDERS:
        raise ReplayError(f"--stored-crops must be one of {', '.join(CROP_ORDERS)}, got {order!r}")
    if labels is not None and embeddings is not None:
        check_paired_stores(labels, embeddings)
    store = labels if labels is not None else embeddings
    images = in_store_classes(data, store, "--data")
    warnings = check_store_matches_data(store, images, allow_resized, given=given)
    planner = StoreCropPlanner(store, crops_per_image, seed, allow_resized, order=order, paired=embeddings if labels is not None else None)
    names, whose = (images.class_names, "--data's") if is_numbered(store.meta.class_names) else (store.meta.class_names, "the store's")
    return StoredData(store, images, planner, warnings, list(names), whose)


def _open(store: "str | os.PathLike | LabelStore", payload: "str | None") -> LabelStore:
    if isinstance(store, LabelStore):
        store.meta.check_payload(payload, store.path)
        return store
    return LabelStore(store, payload=payload)


class StoredCrops(MultiCropDataset):
    """n replayed crops per image with their stored payload: fkd-train's training data, for any loop.

    Indexed by (epoch, image index) pairs, as ``EpochSampler`` yields them (any batch size, any
    number of DataLoader workers, DDP); batch with ``collate_crops``. Before anything is read,
    ``store`` (a label or an embedding store, or a path to one) and ``embed_store`` (an embedding
    store of the same crops beside a label store) are checked against ``data`` exactly as fkd-train
    checks them; every image's fingerprint is checked again as it loads. Crops are resized to
    ``size`` with ``interpolation`` (None: the store's, the filter the teacher's crops were resized
    with); ``stored_crops`` deals n of the M stored crops per epoch (``cycle``: each once before any
    repeats; ``random``); ``augment`` is a per-crop uint8 transform that must move no pixel
    (``fkd.data.augment.build_crop_augment``), seeded per (seed, epoch, image). A reinforced store
    (format version 6) renders each crop with its stored augmentation and pairs instead, the view
    its label describes, and refuses ``augment``.
    """

    def __init__(
        self, store: "str | os.PathLike | LabelStore", data: "str | os.PathLike | ImageList", crops_per_image: int = 4, *, size: int,
        interpolation: "str | None" = None, seed: int = 0, stored_crops: str = "cycle",
        embed_store: "str | os.PathLike | LabelStore | None" = None, augment: "CropAugment | None" = None, allow_resized: bool = False,
    ):
        first = _open(store, None if embed_store is None else "labels")
        paired = None if embed_store is None else _open(embed_store, "embedding")
        labels, embeddings = (first, paired) if first.meta.payload == "labels" else (None, first)
        listing, given = (data, str(data.root)) if isinstance(data, ImageList) else (list_data(data, "--data"), str(data))
        self.stored = plan_stored_crops(labels, embeddings, listing, crops_per_image, seed, stored_crops, allow_resized, given)
        check_online_augment(self.store.meta, self.store.path, ["augment"] if augment is not None else [], batch_mixing=False)
        interpolation = interpolation or self.store.meta.interpolation  # the filter the teacher's crops were resized with
        super().__init__(self.stored.images.source, self.stored.planner, size, interpolation, augment, seed)

    @property
    def store(self) -> LabelStore:
        """The leading store: the label store, else the embedding store."""
        return self.stored.store

    @property
    def num_classes(self) -> int:
        return self.store.meta.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.stored.class_names

    @property
    def warnings(self) -> list[str]:
        """What the checks found worth saying without refusing (e.g. images under ``data`` the store does not cover)."""
        return self.stored.warnings

    def __getitem__(self, key: "tuple[int, int]") -> CropSample:
        if not isinstance(key, tuple):
            raise TypeError(f"StoredCrops is indexed by (epoch, image index) pairs, got {key!r}: sample it with fkd.api.EpochSampler")
        return super().__getitem__(key)

    def stored_targets(self, gt_weight: float = 0.0, smoothing: float = 0.0, gt_weight_by: str = "constant") -> StoredTargets:
        """The decoder of this data's batches (``StoredTargets``); with ``gt_weight`` W > 0 every
        training image must have a ground-truth label (checked here, as fkd-train checks it);
        ``gt_weight_by="confidence"`` gives each crop its own share (fkd-train's --gt-weight-by). On a
        store of stored Mixup/CutMix pairs the ground truth is both images' labels mixed by each
        crop's own share of its view (``batch.partner_labels``, ``batch.own_share``)."""
        return StoredTargets.of_store(self.store, gt_weight, smoothing, gt_weight_by)


def validation_images(val_data: "str | os.PathLike | ImageList", train: StoredCrops) -> ImageList:
    """``val_data`` labelled in ``train``'s class space, as fkd-train maps --val-data: folders by
    name onto the store's classes (a folder of some classes is scored against those), the store's
    class map applied; refused in one line if a folder is no training class or an image has no label."""
    listing = val_data if isinstance(val_data, ImageList) else list_data(val_data, "--val-data")
    return checked_val_images(listing, train.class_names, train.store, train.stored.classes_of, train.num_classes)
