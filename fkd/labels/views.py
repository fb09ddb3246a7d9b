"""Chosen stored crops rendered as training renders them, for ``fkd-labels show`` and ``verify
--recompute``: the very dataset code fkd-train runs (``fkd.data.multicrop``), with a planner that
replays the crops asked for instead of an epoch's, at the size asked for (the teacher's input
size: the view the teacher labelled), stored augmentation and pairs included."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data.images import ImageLocation, list_images
from ..data.multicrop import MultiCropDataset
from ..data.plan import CropPlan, StoreCropPlanner
from ..data.tars import is_tar_data
from ..store import LabelStore, StoreMeta, ViewParams
from ..store.views import FRACTION_SCALE, NEGATED, OP_MASK
from .errors import LabelsError


def image_locator(data: "str | Path") -> Callable[[str], ImageLocation]:
    """Where an image's bytes are, by id: ids are relative to the data root (an ImageFolder
    directory, or the folder of a list file), or name a member of the tar shards ``data`` names
    (indexed once here). LabelsError, naming ``--data``, when it is not the store's data."""
    if is_tar_data(data):
        try:
            source = list_images(data).source
        except (OSError, ValueError) as exc:
            raise LabelsError(f"--data {data}: {exc}; pass the --data the store was generated from") from None

        def in_tars(image_id: str) -> ImageLocation:
            try:
                return source.locate(image_id)
            except (OSError, ValueError, KeyError) as exc:
                raise LabelsError(f"--data {data}: {exc}; pass the --data the store was generated from") from None

        return in_tars
    data = Path(data)
    if not data.exists():  # else the message below would name data.parent / image_id, without the missing folder
        raise LabelsError(f"--data {data}: no such directory or list file; pass the --data the store was generated from")
    root = data if data.is_dir() else data.parent

    def in_folder(image_id: str) -> ImageLocation:
        path = root / image_id
        if not path.is_file():
            raise LabelsError(f"image file {path} not found; pass the --data the store was generated from")
        return ImageLocation(str(path))

    return in_folder


class ChosenCrops:
    """A planner replaying ``chosen[index]`` (crop indices) of each image, and any crops of the images
    they are mixed with; every record read goes through ``StoreCropPlanner``'s checks."""

    def __init__(self, store: LabelStore, chosen: dict[int, np.ndarray], allow_resized: bool = False):
        self.store_planner = StoreCropPlanner(store, 1, 0, allow_resized=allow_resized)
        self.chosen = chosen
        self.image_ids = self.store_planner.image_ids
        self.labels = self.store_planner.labels
        self.views = self.store_planner.views

    def plan(self, index: int, epoch: int, height: int, width: int) -> CropPlan:
        return self.store_planner.partner(index, self.chosen[index], height, width)

    def partner(self, index: int, chosen: np.ndarray, height: int, width: int) -> CropPlan:
        return self.store_planner.partner(index, chosen, height, width)


class LocatedImages:
    """An ``ImageSource`` over a function from image id to its location (``image_locator``)."""

    def __init__(self, locate: Callable[[str], ImageLocation]):
        self.locate = locate


def render_crops(store: LabelStore, locate: Callable[[str], ImageLocation], chosen: dict[int, np.ndarray],
                 allow_resized: bool = False) -> dict[int, torch.Tensor]:
    """Image index -> its ``chosen`` crops (k, 3, H, W) uint8 at the teacher's input size and
    interpolation, as the teacher saw them (fingerprints checked)."""
    meta = store.meta
    height, width = meta.input_size
    dataset = MultiCropDataset(LocatedImages(locate), ChosenCrops(store, chosen, allow_resized), (height, width), meta.interpolation)
    return {index: dataset[(0, index)].images for index in chosen}


def describe_view(meta: StoreMeta, params: ViewParams, row: int, partner_ids: "list[str] | None" = None) -> str:
    """One crop's stored augmentation in a few words, e.g. ``Solarize m7.1, Color+ m3.5; erased; mixup 0.63 with c1/x.jpg #4``."""
    spec, parts = meta.augmentation, []
    if spec is None:
        return ""
    if params.jitter is not None:
        parts.append("jitter " + "/".join(str(int(c)) for c in params.jitter[row, :3]))
    if params.ra_ops is not None:
        ra = spec.randaugment_spec
        ops = [f"{ra.ops[(code & OP_MASK) - 1].replace('Increasing', '')}{'-' if code & NEGATED else ''} m{mag * ra.upper / 255:.1f}"
               for code, mag in zip(params.ra_ops[row].tolist(), params.ra_mags[row].tolist()) if code]
        parts.append(", ".join(ops) or "no RandAugment op")
    if params.erase is not None and params.erase[row, :, 2].any():
        parts.append("erased")
    mixed = params.mixed
    if mixed is not None and mixed[row]:
        image = int(params.mix_image[row])
        partner = f"image {image}" if partner_ids is None else partner_ids[image]
        kind = "cutmix" if params.mix_box[row, 2] else f"mixup {params.mix_lam[row] / FRACTION_SCALE:.2f}"
        parts.append(f"{kind} with {partner} #{int(params.mix_crop[row])}")
    return "; ".join(parts)
