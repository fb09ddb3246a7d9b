"""``--replay-device cuda`` on a reinforced store: the stored augmentation and pairs rendered on the device.

The DataLoader workers decode the image and, for its mixed crops, each partner image once; the
training device cuts both images' crops (``device_crops.cut_crops``), applies every crop's stored
augmentation (``ViewRenderer.augment``, the exact uint8 ops of ``fkd.data.photometric``) and mixes
the pairs (``mixing.mix_crop``), the very functions the worker path runs on the CPU. Given the same
cut crops the two paths agree bit for bit (``tests/test_reinforced_device.py`` runs this device
code on the CPU); the device's float32 resize moves a cut value by up to two grey levels, which
the continuous ops carry through, while a threshold op (Solarize, Posterize, Equalize,
SolarizeAdd) maps a value that crossed its threshold to another level entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.transforms import InterpolationMode

from ..store import ViewParams
from .crops import fixed_to_boxes
from .device_crops import cut_crops
from .mixing import mix_crop
from .plan import CropPlan
from .views import ViewRenderer

if TYPE_CHECKING:
    from .multicrop import MultiCropDataset


@dataclass
class UncutViews:
    """A reinforced sample's (or batch's) views, to render on the device: the crops' stored
    augmentation with their image ids (n rows, in crop order), and the partner crops to cut and mix
    in: the partner images' flat uint8 pixels, their (H, W) and crop counts, the k partner crops'
    pixel boxes, flips, augmentation, image and crop ids; ``partner_row`` (n,) is each crop's row
    among the k, -1 where it is not mixed."""

    renderer: ViewRenderer
    params: ViewParams
    image_ids: list[str]
    partner_row: np.ndarray
    partner_pixels: torch.Tensor
    partner_shapes: torch.Tensor
    partner_counts: torch.Tensor
    partner_boxes: torch.Tensor
    partner_flips: torch.Tensor
    partner_params: ViewParams
    partner_image_ids: list[str]
    partner_crop_ids: np.ndarray

    def pin_memory(self) -> "UncutViews":
        return UncutViews(**{**{f.name: getattr(self, f.name) for f in fields(self)}, "partner_pixels": self.partner_pixels.pin_memory()})


def uncut_views(dataset: "MultiCropDataset", plan: CropPlan, index: int) -> UncutViews:
    """The views of image ``index``'s planned crops, with every partner image decoded once."""
    rows: dict[int, int] = {}
    pixels, shapes, counts, boxes, flips, params, ids, crop_ids = [], [], [], [], [], [], [], []
    mixed = plan.views.mixed
    for image in ([] if mixed is None else np.unique(plan.views.mix_image[mixed]).tolist()):
        wanted = np.unique(plan.views.mix_crop[mixed & (plan.views.mix_image == image)])
        image_pixels, partner = dataset.decode_partner(image, wanted)
        for crop in wanted.tolist():
            rows[(image, crop)] = len(rows)
        pixels.append(image_pixels.reshape(-1))
        shapes.append(tuple(image_pixels.shape[-2:]))
        counts.append(len(wanted))
        boxes.append(torch.from_numpy(fixed_to_boxes(partner.boxes_fixed, *image_pixels.shape[-2:])))
        flips.append(torch.from_numpy(np.asarray(partner.flips, dtype=bool)))
        params.append(partner.views)
        ids += [dataset.planner.image_ids[image]] * len(wanted)
        crop_ids.append(wanted)
    n = len(plan.crop_ids)
    partner_row = np.array([rows[(int(plan.views.mix_image[r]), int(plan.views.mix_crop[r]))] if mixed is not None and mixed[r] else -1
                            for r in range(n)], dtype=np.int64)
    empty = torch.zeros(0, dtype=torch.uint8)
    return UncutViews(
        dataset.planner.views, plan.views, [dataset.planner.image_ids[index]] * n, partner_row,
        torch.cat(pixels) if pixels else empty, torch.tensor(shapes, dtype=torch.int64).reshape(-1, 2),
        torch.tensor(counts, dtype=torch.int64), torch.cat(boxes) if boxes else torch.zeros((0, 4), dtype=torch.int64),
        torch.cat(flips) if flips else torch.zeros(0, dtype=torch.bool), ViewParams.concat(params) if params else plan.views.take(slice(0, 0)),
        ids, np.concatenate(crop_ids) if crop_ids else np.zeros(0, dtype=np.int64),
    )


def collate_views(views: list[UncutViews]) -> UncutViews:
    """One batch's views: rows concatenated, partner rows renumbered."""
    offsets = np.cumsum([0] + [len(v.partner_crop_ids) for v in views[:-1]])
    return UncutViews(
        views[0].renderer, ViewParams.concat([v.params for v in views]), [i for v in views for i in v.image_ids],
        np.concatenate([np.where(v.partner_row >= 0, v.partner_row + o, -1) for v, o in zip(views, offsets)]),
        torch.cat([v.partner_pixels for v in views]), torch.cat([v.partner_shapes for v in views]),
        torch.cat([v.partner_counts for v in views]), torch.cat([v.partner_boxes for v in views]),
        torch.cat([v.partner_flips for v in views]), ViewParams.concat([v.partner_params for v in views]),
        [i for v in views for i in v.partner_image_ids], np.concatenate([v.partner_crop_ids for v in views]),
    )


def render_views(crops: torch.Tensor, crop_ids: torch.Tensor, views: UncutViews, size: int, interpolation: InterpolationMode,
                 device: "torch.device | str") -> torch.Tensor:
    """The batch's cut crops (N, 3, size, size) on ``device`` rendered as their labels describe them:
    stored augmentation, then the partners' crops (cut here, with their own augmentation) mixed in."""
    out = views.renderer.augment(crops, views.params, views.image_ids, crop_ids.tolist())
    if not len(views.partner_crop_ids):
        return out
    partners = cut_crops(views.partner_pixels, views.partner_shapes, views.partner_counts, views.partner_boxes, views.partner_flips,
                         size, interpolation, device)
    partners = views.renderer.augment(partners, views.partner_params, views.partner_image_ids, views.partner_crop_ids)
    for row in np.flatnonzero(views.partner_row >= 0).tolist():
        out[row] = mix_crop(out[row], partners[views.partner_row[row]], int(views.params.mix_lam[row]), views.params.mix_box[row])
    return out
