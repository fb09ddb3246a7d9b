"""``fkd-labels import-fkd``: migrate soft labels written by the official FKD code into a store.

The official generator (szq0214/FKD, ``FKD_SLG/generate_soft_label.py``) writes one ``torch.save``
file per image holding ``[coords, flips, labels]``:

- ``coords`` float32 (or float16 with ``--use_fp16``) (M, 4): ``(i/H, j/W, h/H, w/W)``, the
  RandomResizedCrop box as fractions of the image size;
- ``flips`` bool (M,);
- ``labels`` by ``--label_type``: ``hard`` (M,) class indices; ``smoothing`` (M, 2) rows
  (index, p_max); ``marginal_*_k{5,10}`` (M, 2, K): row 0 class indices stored as floats, row 1
  their probabilities, in descending order.

The file of image ``.../d1/d2/d3/name.ext`` is ``SAVE_PATH/d1/d2/d3/name.tar`` (the image's last three
directories; the name up to its first dot), and their trainer reads ``SOFTLABEL_PATH/d2/d3/name.tar``.
We accept either: the number of trailing directories is detected once, on the first image. Boxes
become pixels the way their replay cuts them (PIL rounds the box corners), which needs each image's
size: images are listed from ``--data`` and their headers read. Files are loaded with
``torch.load(weights_only=True)``, allowing only the numpy array reconstruction they need.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fkd.crops import boxes_to_fixed
from fkd.images import ImageList, fingerprint, list_images
from fkd.quantize import Scheme, index_dtype
from fkd.store import UNKNOWN_PRECISION, ImageLabels, Manifest, new_meta

from .builder import image_list_fingerprint, prepare_output, write_store
from .errors import LabelsError
from .fkd_format import DEFAULT_SHARD_SIZE, FKD_CROP_SCALE, FKD_INPUT_SIZE, FKD_INTERPOLATION, IMPORTED_SOURCE, fkd_file_name

TRAILING_DIRS = (3, 2, 1, 0)
"""Directories of the image path kept under the label root: 3 as the generator writes, 2 as its
trainer reads (``--softlabel_path`` one level down), fewer for flat copies."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PARALLEL_MIN_IMAGES = 256
"""Below this many images, files are read in-process (worker start-up would cost more)."""

# torch.load(weights_only=True) refuses numpy arrays unless their reconstruction is allowed. The
# function lives in numpy._core (numpy 2) or numpy.core (numpy 1), and files name it by the path of
# the numpy that wrote them: allow both names.
_reconstruct = np.zeros(0).__reduce__()[0]
_PLAIN_DTYPES = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                                               "float16", "float32", "float64")]
SAFE_GLOBALS = [
    (_reconstruct, "numpy._core.multiarray._reconstruct"),
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    *_PLAIN_DTYPES,  # numpy >= 1.25 pickles a dtype's class too; object dtypes stay refused
]


@dataclass(frozen=True)
class FkdPayload:
    """The label kind of a file: ``hard`` (M,), ``smoothing`` (M, 2) or ``marginal`` (M, 2, K)."""

    kind: str
    num_crops: int
    top_k: int

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        """Our schemes that decode this payload as FKD does (the first is the default)."""
        if self.kind == "hard":
            return (Scheme.HARDENING,)
        if self.kind == "smoothing":
            return (Scheme.SMOOTHING,)
        return (Scheme.MARGINAL_SMOOTHING, Scheme.MARGINAL_RENORM)


@dataclass(frozen=True)
class ImportJob:
    """One image to import (picklable, for the worker processes)."""

    label_file: Path
    image_path: Path
    image_id: str
    label: int
    num_classes: int


def label_file(label_root: Path, image_path: Path, trailing_dirs: int) -> Path:
    """Where FKD keeps the labels of ``image_path``: its last ``trailing_dirs`` directories under
    ``label_root``, and its file name cut at the first dot, plus ``.tar``."""
    parts = image_path.parent.parts
    dirs = parts[max(0, len(parts) - trailing_dirs) :] if trailing_dirs else ()
    return label_root.joinpath(*dirs, fkd_file_name(image_path.name))


def detect_layout(label_root: Path, images: ImageList) -> int:
    """The number of trailing image directories the label files use (from the first image that has
    a label file under any of them)."""
    for i in range(len(images)):
        path = images.path(i)
        for trailing in TRAILING_DIRS:
            if label_file(label_root, path, trailing).is_file():
                return trailing
    example = label_file(label_root, images.path(0), 2)
    raise LabelsError(
        f"no FKD soft-label file for any image of the data under {label_root} (looked for e.g. {example}); "
        "pass the --save_path the FKD generator wrote to (or its --softlabel_path) and the image data it labelled"
    )


def load_fkd_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(coords (M, 4) float64, flips (M,) bool, labels)`` from one FKD file; LabelsError if the
    file is not in the FKD layout."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: the file is not one of theirs
        raise LabelsError(f"{path}: not a readable FKD soft-label file: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, (list, tuple)) or len(state) != 3:
        raise LabelsError(f"{path}: expected [coords, flips, labels], got {type(state).__name__}")
    try:
        coords, flips, labels = (np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64) for x in state)
    except (TypeError, ValueError) as exc:
        raise LabelsError(f"{path}: coords, flips and labels must be numeric arrays ({exc})") from None
    if coords.ndim != 2 or coords.shape[1] != 4 or flips.shape != (coords.shape[0],):
        raise LabelsError(f"{path}: coords must be (M, 4) and flips (M,), got {coords.shape} and {flips.shape}")
    if not np.all(np.isfinite(coords)) or coords.min(initial=0) < 0 or coords.max(initial=0) > 1:
        raise LabelsError(f"{path}: crop coordinates must be fractions of the image size in [0, 1]")
    if not np.all((flips == 0) | (flips == 1)):
        raise LabelsError(f"{path}: flips must be booleans")
    return coords, flips.astype(bool), labels


def payload_kind(labels: np.ndarray, num_crops: int, path: Path) -> FkdPayload:
    if labels.shape == (num_crops,):
        return FkdPayload("hard", num_crops, 1)
    if labels.shape == (num_crops, 2):
        return FkdPayload("smoothing", num_crops, 1)
    if labels.ndim == 3 and labels.shape[:2] == (num_crops, 2):
        return FkdPayload("marginal", num_crops, labels.shape[2])
    raise LabelsError(f"{path}: labels of shape {labels.shape} are not FKD's hard (M,), smoothing (M, 2) or marginal (M, 2, K)")


def pixel_boxes(coords: np.ndarray, height: int, width: int) -> np.ndarray:
    """FKD fractions -> pixel boxes (top, left, height, width). Their replay crops with PIL, which
    rounds the corners: top = round(i), bottom = round(i + h); kept inside the image, >= 1 pixel."""
    scale = np.array([height, width], dtype=np.float64)
    start = np.rint(coords[:, :2] * scale)
    end = np.rint((coords[:, :2] + coords[:, 2:]) * scale)
    start = np.clip(start, 0, scale - 1)
    end = np.clip(end, start + 1, scale)
    return np.concatenate([start, end - start], axis=1).astype(np.int64)


def read_image_labels(job: ImportJob) -> tuple[ImageLabels, FkdPayload]:
    """One image's FKD file as a store record (payload in FKD's own order), and its payload kind."""
    coords, flips, labels = load_fkd_file(job.label_file)
    kind = payload_kind(labels, len(coords), job.label_file)
    try:
        data = Path(job.image_path).read_bytes()  # for the fingerprint; the header alone gives the size
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise LabelsError(f"{job.image_path}: cannot read the image size: {exc}") from None
    if kind.kind == "hard":
        raw_indices, values = labels.reshape(-1, 1), None
    elif kind.kind == "smoothing":
        raw_indices, values = labels[:, :1], labels[:, 1:]
    else:
        raw_indices, values = labels[:, 0, :], labels[:, 1, :]
    indices = np.rint(raw_indices)
    if np.any(np.abs(raw_indices - indices) > 1e-3) or indices.min(initial=0) < 0 or indices.max(initial=0) >= job.num_classes:
        raise LabelsError(f"{job.label_file}: class indices must be integers in 0..{job.num_classes - 1} (check --num-classes)")
    if values is not None:
        values = values.astype(np.float32)
        if not np.all(np.isfinite(values)) or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            raise LabelsError(f"{job.label_file}: probabilities must lie in [0, 1]")
        values = values.astype(np.float16)
    boxes = pixel_boxes(coords, height, width)
    record = ImageLabels(
        -1, job.image_id, job.label, height, width, boxes_to_fixed(boxes, height, width), flips,
        indices.astype(index_dtype(job.num_classes)), values, fingerprint(data),
    )
    return record, kind


def _read_all(jobs: list[ImportJob], workers: int) -> Iterator[tuple[ImageLabels, FkdPayload]]:
    if workers <= 1 or len(jobs) < PARALLEL_MIN_IMAGES:
        yield from map(read_image_labels, jobs)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(read_image_labels, jobs, chunksize=64)


def import_fkd(
    label_root: "str | Path",
    data: "str | Path",
    out: "str | Path",
    num_classes: "int | None" = None,
    scheme: "str | Scheme | None" = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    teacher: str = "unknown teacher (official FKD soft labels)",
    input_size: int = FKD_INPUT_SIZE,
    crop_scale: tuple[float, float] = FKD_CROP_SCALE,
    temperature: float = 1.0,
    skip_missing: bool = False,
    overwrite: bool = False,
    workers: int = min(8, os.cpu_count() or 1),
) -> Manifest:
    """Write the store ``out`` from the FKD soft labels under ``label_root`` for the images of ``data``."""
    label_root = Path(label_root)
    if not label_root.is_dir():
        raise LabelsError(f"FKD soft-label directory not found: {label_root}")
    try:
        images = list_images(data)
    except (OSError, ValueError) as exc:
        raise LabelsError(f"cannot list the images of --data {data}: {exc}") from None
    images.root = images.root.resolve()  # FKD's layout uses the image's parent directories by name
    num_classes = num_classes if num_classes is not None else len(images.class_names)
    if num_classes < 2:
        raise LabelsError(f"need at least 2 classes, got {num_classes}; pass --num-classes")
    class_names = images.class_names if len(images.class_names) == num_classes else [str(c) for c in range(num_classes)]
    prepare_output(out, overwrite, [label_root])
    trailing = detect_layout(label_root, images)
    jobs, missing = [], []
    for i, entry in enumerate(images.entries):
        path = images.path(i)
        file = label_file(label_root, path, trailing)
        if file.is_file():
            jobs.append(ImportJob(file, path, entry.image_id, entry.label, num_classes))
        else:
            missing.append(entry.image_id)
    if missing and not skip_missing:
        raise LabelsError(
            f"{len(missing)} of {len(images)} images have no FKD soft-label file (first: {missing[:3]}, expected e.g. "
            f"{label_file(label_root, images.root / missing[0], trailing)}); pass --skip-missing to import the others"
        )
    _, first_kind = read_image_labels(jobs[0])
    schemes = first_kind.schemes
    chosen = Scheme.parse(scheme) if scheme is not None else schemes[0]
    if chosen not in schemes:
        raise LabelsError(
            f"the FKD files hold {first_kind.kind} labels, which import as {' or '.join(s.value for s in schemes)}, "
            f"not {chosen.value}; import first, then use fkd-labels convert"
        )
    meta = new_meta(
        scheme=chosen.value,
        top_k=first_kind.top_k,
        num_classes=num_classes,
        class_names=list(class_names),
        num_crops=first_kind.num_crops,
        num_images=len(jobs),
        shard_size=shard_size,
        teachers=[{"name": teacher, "source": f"{IMPORTED_SOURCE} {label_root}"}],
        temperature=temperature,
        crop_scale=tuple(crop_scale),
        input_size=(input_size, input_size),
        interpolation=FKD_INTERPOLATION,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        data_fingerprint=image_list_fingerprint([j.image_id for j in jobs], [j.label for j in jobs]),
        teacher_precision=UNKNOWN_PRECISION,
        image_fingerprint="crc32",
        bad_images=[{"image_id": m, "reason": "no FKD soft-label file"} for m in missing],
    )

    def records() -> Iterator[ImageLabels]:
        for job, (record, kind) in zip(jobs, _read_all(jobs, workers)):
            if kind != first_kind:
                raise LabelsError(
                    f"{job.label_file}: {kind.kind} labels for {kind.num_crops} crops (K={kind.top_k}), but "
                    f"{jobs[0].label_file} holds {first_kind.kind} labels for {first_kind.num_crops} crops (K={first_kind.top_k}); "
                    "a store needs the same M and K for every image"
                )
            yield record

    return write_store(out, meta, records(), desc="importing FKD labels")
