"""The loader benchmark's inputs and its three kinds of loader (``benchmarks/speed/loader.py``).

Images: real CIFAR-10 train JPEGs upscaled (bicubic) to 500x375 and re-encoded (JPEG quality 90),
i.e. ImageNet-sized images with real content; they are smoother than photographs, so their files
are smaller and decode faster than ImageNet's, which understates what decoding once for n crops
saves. Labels: one random-label fkd store (marginal smoothing, K=5) and the same labels written as
the official FKD files, one ``torch.save`` per image.

- timm: ``timm.data.ImageDataset`` + ``create_transform(224, is_training=True, ...)``;
- official FKD: ``ImageFolder_FKD`` of github.com/szq0214/FKD (``FKD/utils_FKD.py``), rebuilt: per
  image ``torch.load`` of its whole label file, one PIL decode, then for each of n crops drawn by
  ``torch.randperm`` a PIL ``resized_crop`` at the stored coordinates, flip, ``ToTensor``,
  ``Normalize``;
- fkd: ``fkd.data.multicrop.MultiCropDataset`` (crops cut in the workers) or
  ``fkd.data.device_replay.DecodeOnlyDataset`` (``--replay-device cuda``: the workers only decode);
  on reinforced copies of the store (``REINFORCED``: the same records with stored augmentation drawn
  as fkd-labelgen draws it, its labels left random) the workers also render the stored RandAugment
  and erasing, or decode each image's partner image and mix its crops in.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from benchmarks.common import REPO_ROOT, balanced_subset
from benchmarks.fkd_official import official_coords, official_labels, read_official, write_official
from fkd.data.images import ImageList, list_images, read_image
from fkd.data.views import sample_views
from fkd.labels.builder import iter_records, write_store
from fkd.store import LabelStore, ViewSpec, copy_meta

sys.path.insert(0, str(REPO_ROOT / "tests"))
from conftest import write_random_store  # noqa: E402  (the test suite's store writer)

IMAGE_SIZE = (375, 500)
"""(height, width) of the benchmark's images: ImageNet's most common size."""
SCHEME, TOP_K = "marginal-smoothing", 5
REINFORCED = {
    "stored RandAugment + erasing": ViewSpec(randaugment="rand-m9-mstd0.5", reprob=0.25),
    "stored Mixup/CutMix pairs": ViewSpec(mixup=0.8, cutmix=1.0),
}
"""The reinforced copies of the store the loader benchmark reads (benchmarks/storage/reinforced.py's DeiT settings)."""


@dataclass
class LoaderInputs:
    images: Path  # ImageFolder of the ImageNet-sized JPEGs
    store: Path  # fkd label store over them
    official: Path  # the same labels as official FKD files, <class>/<stem>.tar
    jpeg_kib: float  # mean file size
    reinforced: dict[str, Path]  # REINFORCED's copies of ``store``, by name


def make_inputs(root: Path, count: int, crops: int, classes: int = 10) -> LoaderInputs:
    """``count`` CIFAR-10 train images (balanced) made ImageNet-sized, a store of ``crops`` random
    labels per image over them (with their fingerprints) and the same labels as FKD files."""
    source = list_images(balanced_subset("train", count // classes))
    folder = root / "images"
    for i in range(len(source)):
        out = folder / source.image_ids[i]
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source.path(i)) as img:
            img.convert("RGB").resize(IMAGE_SIZE[::-1], Image.Resampling.BICUBIC).save(out, "JPEG", quality=90)
    images = list_images(folder)
    loaded = [read_image(images.path(i)) for i in range(len(images))]
    store, _ = write_random_store(
        root / "store", scheme=SCHEME, top_k=TOP_K, num_classes=classes, num_crops=crops, num_images=len(images), shard_size=1000,
        image_ids=images.image_ids, sizes=np.array([tuple(x.pixels.shape[-2:]) for x in loaded]), labels=images.labels,
        fingerprints=np.array([x.fingerprint for x in loaded], dtype=np.uint32),
    )
    reader = LabelStore(store)
    for i, image_id in enumerate(images.image_ids):
        rec = reader.read(i)
        labels = official_labels(SCHEME, rec.indices, rec.values)
        write_official(official_path(root / "official", image_id), official_coords(rec.boxes_fixed, *IMAGE_SIZE), rec.flips, labels)
    reader.close()
    kib = float(np.mean([images.path(i).stat().st_size for i in range(len(images))])) / 1024
    reinforced = {name: reinforced_copy(store, spec, root / f"reinforced-{i}") for i, (name, spec) in enumerate(REINFORCED.items())}
    return LoaderInputs(folder, store, root / "official", kib, reinforced)


def reinforced_copy(store: Path, spec: ViewSpec, out: Path) -> Path:
    """``store``'s records with the augmentation ``spec`` draws for them at its crop size (the
    views fkd-labelgen would store; the labels stay the plain store's)."""
    with LabelStore(store) as source:
        meta = source.meta
        records = (replace(r, views=sample_views(spec, meta.seed, r.image_id, meta.num_crops, tuple(meta.input_size), r.index, len(source)))
                   for r in iter_records(source, range(len(source))))
        write_store(out, copy_meta(meta, augmentation=spec), records, desc="reinforcing")
    return out


def official_path(root: Path, image_id: str) -> Path:
    """Where FKD keeps an image's labels: the image's path with ``.tar`` for its extension."""
    return root / Path(image_id).with_suffix(".tar")


class OfficialFKDDataset(Dataset):
    """The official FKD training dataset (see the module docstring), returning the n crops as
    normalized float (n, 3, s, s), the class and the n soft labels."""

    def __init__(self, images: ImageList, labels: Path, crops_per_image: int, size: int = 224):
        self.images, self.labels, self.n, self.size = images, labels, crops_per_image, [size, size]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        coords, flips, soft = read_official(official_path(self.labels, self.images.image_ids[index]))
        chosen = torch.randperm(len(soft))[: self.n]
        with open(self.images.path(index), "rb") as f:
            img = Image.open(f).convert("RGB")
        crops = []
        for k in chosen.tolist():
            top, left, h, w = (float(coords[k][d]) * img.size[1 - d % 2] for d in range(4))
            crop = F.resized_crop(img, top, left, h, w, self.size, InterpolationMode.BILINEAR)
            crop = F.hflip(crop) if flips[k] else crop
            crops.append(F.normalize(F.to_tensor(crop), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
        return torch.stack(crops), int(self.images.entries[index].label), torch.from_numpy(soft[chosen.numpy()])
