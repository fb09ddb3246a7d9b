"""Which crops an image gives this epoch, and what they carry: the planners behind the multi-crop dataset.

- ``StoreCropPlanner`` (stored labels): n of the M stored crops, without replacement (by default
  every stored crop once before any repeats), with their stored payload (soft labels, embeddings, or
  both from two stores of the same crops). Replaying a stored box + flip gives the pixels its label
  describes (the teacher saw the same box, resized to its own input size); in a reinforced store the
  plan also carries each crop's stored augmentation (``views``, rendered by ``views.ViewRenderer``)
  and ``partner`` plans the crops of the images they are mixed with.
- ``RandomCropPlanner`` (baselines): n fresh RandomResizedCrop boxes + flips per image and epoch,
  from the same sampler the label generator uses, so baselines see the same crop distribution.

All randomness derives from (seed, epoch, image index), never from worker ids or load order, so a
run is reproducible whatever the number of DataLoader workers, and resuming at epoch e replays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..store import ImageLabels, LabelStore, ViewParams
from .crops import CropParams, boxes_to_fixed, sample_crops
from .errors import DataMismatchError, ReplayError
from .sources import ImageList
from .views import ViewRenderer


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, index, purpose): stable across processes and runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


PAYLOAD_FIELDS: tuple[str, ...] = ("indices", "values", "embedding", "scales")
"""The stored payload arrays a crop can carry (``fkd.store`` layouts' ``payload_names``): soft labels
(``indices``, ``values``) and embeddings (``embedding``, int8 ``scales``); None where absent. Every
step from plan to device batch carries them by these names, and the mode decodes them on the device."""


@dataclass
class CropPlan:
    """The n crops to cut from one image: fixed-point boxes (n, 4) relative to the image size,
    flips (n,), which of the image's crops they are (n,), the stored payload rows (n, ...), the
    fingerprint the image file must have (None: not checked), and in a reinforced store the crops'
    stored augmentation (``views``, n rows)."""

    boxes_fixed: np.ndarray
    flips: np.ndarray
    crop_ids: np.ndarray
    indices: "np.ndarray | None" = None
    values: "np.ndarray | None" = None
    fingerprint: "int | None" = None  # the image file's CRC-32 the labels were made from, to check
    embedding: "np.ndarray | None" = None
    scales: "np.ndarray | None" = None
    views: "ViewParams | None" = None


class CropPlanner(Protocol):
    image_ids: list[str]
    labels: np.ndarray
    views: "ViewRenderer | None"  # a reinforced store's renderer of its stored augmentation

    def plan(self, index: int, epoch: int, height: int, width: int) -> CropPlan: ...


CROP_ORDERS = ("cycle", "random")


def stored_crop_choice(num_crops: int, n: int, seed: int, epoch: int, index: int, order: str = "cycle") -> np.ndarray:
    """Which n of an image's M stored crops epoch ``epoch`` replays (sorted crop indices, no repeats).

    ``cycle``: the crops are dealt from a seeded permutation of the M, n per epoch, so every stored
    crop is used once before any is used again (epochs e*n/M .. cover the store); the next
    permutation starts with the crops the previous one did not reach in a shared epoch, so no epoch
    repeats a crop. ``random``: n of M drawn afresh every epoch (after E epochs some crops are
    replayed several times and others never: at M=32, n=4, E=8, only 21 of 32 on average).
    Both depend on (seed, epoch, index) alone, so any worker, and a resumed run, replays them.
    """
    if order == "random":
        rng = np.random.default_rng(derived_seed(seed, epoch, index, 0))
        return np.sort(rng.choice(num_crops, n, replace=False))
    if order != "cycle":
        raise ValueError(f"unknown crop order {order!r}; choose one of {', '.join(CROP_ORDERS)}")
    start = epoch * n
    dealt = [_cycle_permutation(num_crops, n, seed, index, c) for c in range(start // num_crops, (start + n - 1) // num_crops + 1)]
    sequence = np.concatenate(dealt)
    offset = start - (start // num_crops) * num_crops
    return np.sort(sequence[offset : offset + n])


def _cycle_permutation(num_crops: int, n: int, seed: int, index: int, cycle: int) -> np.ndarray:
    """Permutation number ``cycle`` of an image's crops, with the crops the previous cycle deals in
    the epoch the two share moved to its end (so that epoch has no crop twice)."""
    perm = np.random.default_rng(derived_seed(seed, cycle, index, 3)).permutation(num_crops)
    shared = (cycle * num_crops) % n  # crops of the previous cycle in the epoch where this one starts
    if cycle == 0 or shared == 0:
        return perm
    tail = _cycle_permutation(num_crops, n, seed, index, cycle - 1)[num_crops - shared :]
    taken = np.isin(perm, tail)
    return np.concatenate([perm[~taken], perm[taken]])


class StoreCropPlanner:
    """n of an image's M stored crops per epoch (``stored_crop_choice``: by default every stored crop
    is used once before any repeats).

    The image must be the file the crops were labelled on: same fingerprint (CRC-32 of its bytes,
    when the store records them) and same size. ``allow_resized`` accepts a resized copy instead
    (boxes are fractions of the image size, so they map onto it; its bytes differ, so fingerprints
    are not checked). ``check_fingerprints=False`` exists for the loader benchmark.

    ``paired``: a second store of the same crops (an embedding store beside a label store, checked
    up front by ``fkd.data.checks.check_paired_stores``); each plan takes both stores' payloads, after
    checking that the two records hold the same boxes and flips and were made from the same image
    file (fingerprints, where both record them): a cheap comparison per read, so a store whose
    crops or pictures differ can never pair a label with another crop's embedding.
    """

    def __init__(
        self, store: LabelStore, crops_per_image: int, seed: int, allow_resized: bool = False, check_fingerprints: bool = True,
        order: str = "cycle", paired: "LabelStore | None" = None,
    ):
        if not 1 <= crops_per_image <= store.meta.num_crops:
            raise ReplayError(
                f"--crops-per-image must be in 1..{store.meta.num_crops} (the store holds {store.meta.num_crops} crops per image), got {crops_per_image}"
            )
        self.store = store
        self.crops_per_image = crops_per_image
        self.seed = seed
        self.order = order
        self.allow_resized = allow_resized
        self.check_fingerprints = check_fingerprints and not allow_resized
        self.image_ids = list(store.image_ids)
        self.labels = store.labels
        self.views = ViewRenderer.of(store.meta)
        self.paired = paired
        for opened in (store, paired):
            if opened is not None:
                opened.close()  # DataLoader workers fork from here: no HDF5 handle may be open (they reopen lazily).

    def plan(self, index: int, epoch: int, height: int, width: int) -> CropPlan:
        rec = self._record(index, height, width)
        chosen = stored_crop_choice(len(rec.flips), self.crops_per_image, self.seed, epoch, index, self.order)
        records = [rec] if self.paired is None else [rec, self._paired_record(rec)]
        payload = {name: getattr(r, name)[chosen] for r in records for name in PAYLOAD_FIELDS if getattr(r, name) is not None}
        return self._crops(rec, chosen, **payload)

    def partner(self, index: int, chosen: np.ndarray, height: int, width: int) -> CropPlan:
        """Crops ``chosen`` of image ``index``, which a reinforced store mixes into another image's
        crops: boxes, flips, fingerprint and own augmentation, no payload (the label is the mixed view's)."""
        return self._crops(self._record(index, height, width), np.asarray(chosen))

    def _record(self, index: int, height: int, width: int) -> ImageLabels:
        rec = self.store.read(index)
        if (height, width) != (rec.height, rec.width) and not self.allow_resized:
            raise DataMismatchError(
                f"{rec.image_id}: the image is {height}x{width} pixels but the store's crops were drawn on "
                f"{rec.height}x{rec.width}; use the data the store was made from, or pass --allow-resized"
            )
        return rec

    def _crops(self, rec: ImageLabels, chosen: np.ndarray, **payload: np.ndarray) -> CropPlan:
        return CropPlan(rec.boxes_fixed[chosen], rec.flips[chosen], chosen, fingerprint=rec.fingerprint if self.check_fingerprints else None,
                        views=None if rec.views is None else rec.views.take(chosen), **payload)

    def _paired_record(self, rec: ImageLabels) -> ImageLabels:
        other = self.paired.read(rec.index)
        if not (np.array_equal(other.boxes_fixed, rec.boxes_fixed) and np.array_equal(other.flips, rec.flips)):
            raise DataMismatchError(
                f"{rec.image_id}: the label store and the embedding store hold other crops of this image (boxes or flips "
                "differ): make both with the same crop settings and seed"
            )
        if None not in (rec.fingerprint, other.fingerprint) and rec.fingerprint != other.fingerprint:
            raise DataMismatchError(
                f"{rec.image_id}: the label store and the embedding store were made from other image files "
                f"(CRC-32 {rec.fingerprint:08x} vs {other.fingerprint:08x}): make both from the same images"
            )
        return other


class RandomCropPlanner:
    """n fresh RandomResizedCrop boxes + flips per image and epoch (the baselines' augmentation)."""

    def __init__(self, images: ImageList, crops_per_image: int, seed: int, params: CropParams):
        if crops_per_image < 1:
            raise ReplayError(f"--crops-per-image must be >= 1, got {crops_per_image}")
        self.crops_per_image = crops_per_image
        self.seed = seed
        self.params = params
        self.image_ids = [e.image_id for e in images.entries]
        self.labels = np.array([e.label for e in images.entries], dtype=np.int64)
        self.views: "ViewRenderer | None" = None

    def plan(self, index: int, epoch: int, height: int, width: int) -> CropPlan:
        crops = sample_crops(self.image_ids[index], height, width, self.crops_per_image, derived_seed(self.seed, epoch), self.params)
        return CropPlan(boxes_to_fixed(crops.boxes, height, width), crops.flips, np.arange(self.crops_per_image))
