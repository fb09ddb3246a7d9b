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

What the files cannot hold (crop settings, the teacher's view, the class space, ...) comes from
``export-fkd``'s sidecar when there is one, else from the flags or the official defaults
(``import_settings``).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ..data.classes import ClassSpaceError, apply_class_map
from ..data.crops import boxes_to_fixed
from ..data.images import ImageList, fingerprint, list_images
from ..payload.quantize import Scheme, index_dtype, stored_top_k
from ..store import ImageLabels, Manifest, StoreMeta, copy_meta, new_meta
from .builder import image_list_fingerprint, prepare_output, write_store
from .errors import LabelsError
from .fkd_files import FkdPayload, load_fkd_file, payload_kind, pixel_boxes
from .fkd_format import DEFAULT_SHARD_SIZE, SIDECAR_NAME, fkd_file_name
from .fkd_sidecar import PLAIN_IMPORT_HINT, read_sidecar
from .import_settings import ImportOptions

TRAILING_DIRS = (3, 2, 1, 0)
"""Directories of the image path kept under the label root: 3 as the generator writes, 2 as its
trainer reads (``--softlabel_path`` one level down), fewer for flat copies."""

PARALLEL_MIN_IMAGES = 256
"""Below this many images, files are read in-process (worker start-up would cost more)."""


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


def detect_layout(label_root: Path, images: ImageList) -> tuple[int, Path]:
    """The number of trailing image directories the label files use (from the first image that has
    a label file under any of them), and where ``export-fkd`` would have put its sidecar: the top of
    the image-id tree, ``label_root`` itself or (from the trainer's ``--softlabel_path``) a folder below."""
    for i in range(len(images)):
        path = images.path(i)
        for trailing in TRAILING_DIRS:
            file = label_file(label_root, path, trailing)
            if file.is_file():
                depth = len(PurePosixPath(images.entries[i].image_id).parts)
                return trailing, file.parents[min(depth - 1, trailing)] / SIDECAR_NAME
    example = label_file(label_root, images.path(0), 2)
    raise LabelsError(
        f"no FKD soft-label file for any image of the data under {label_root} (looked for e.g. {example}); "
        "pass the --save_path the FKD generator wrote to (or its --softlabel_path) and the image data it labelled"
    )


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


@dataclass(frozen=True)
class ImportResult:
    """The store written, the sidecar its settings came from (None: official files), and the official
    defaults assumed for settings neither a sidecar nor a flag gave (as flags)."""

    manifest: Manifest
    sidecar: "Path | None"
    assumed: list[str]


@dataclass
class ImportPlan:
    """The images that have a label file (as jobs) and those that have none."""

    jobs: list[ImportJob]
    data_labels: list[int]  # the jobs' labels as the data has them (fkd-labelgen fingerprints its listing so)
    missing: list[str]
    bad_images: list[dict[str, str]]  # images the exported store had left out, with its reasons


def plan_jobs(label_root: Path, images: ImageList, labelled: ImageList, trailing: int, num_classes: int,
              left_out: dict[str, dict[str, str]]) -> ImportPlan:
    """One job per image with a label file, labelled in the store's class space (``labelled``)."""
    plan = ImportPlan([], [], [], [])
    for i, (entry, target) in enumerate(zip(images.entries, labelled.entries)):
        path = images.path(i)
        file = label_file(label_root, path, trailing)
        if file.is_file():
            plan.jobs.append(ImportJob(file, path, entry.image_id, target.label, num_classes))
            plan.data_labels.append(entry.label)
        elif entry.image_id in left_out:
            plan.bad_images.append(left_out[entry.image_id])
        else:
            plan.missing.append(entry.image_id)
    return plan


def class_space(images: ImageList, recorded: "StoreMeta | None", options: ImportOptions, sidecar: Path) -> tuple[int, list[str], ImageList]:
    """The store's class count and names, and the listing with its labels in that space: the exported
    store's (a class map moves the data's labels to teacher classes, ``fkd.data.classes``), else the flags' or data's."""
    if recorded is None:
        num_classes = options.num_classes if options.num_classes is not None else len(images.class_names)
        if num_classes < 2:
            raise LabelsError(f"need at least 2 classes, got {num_classes}; pass --num-classes")
        names = images.class_names if len(images.class_names) == num_classes else [str(c) for c in range(num_classes)]
        return num_classes, list(names), images
    if recorded.class_map is None:
        return recorded.num_classes, list(recorded.class_names), images
    try:
        return recorded.num_classes, list(recorded.class_names), apply_class_map(images, recorded.class_map, recorded.class_names)
    except ClassSpaceError as exc:
        raise LabelsError(f"{exc} (the map is recorded in {sidecar})") from None


def check_fits(recorded: StoreMeta, kind: FkdPayload, sidecar: Path, first: Path) -> None:
    """Refuse a sidecar that does not describe the files (left over from another export)."""
    fits = (
        recorded.embedding is None and Scheme.parse(recorded.scheme) in kind.schemes and recorded.num_crops == kind.num_crops
        and stored_top_k(recorded.scheme, recorded.top_k, recorded.num_classes) == kind.top_k
    )
    if not fits:
        raise LabelsError(
            f"{sidecar} describes {recorded.describe_payload()} for {recorded.num_crops} crops, but {first} holds {kind.kind} "
            f"labels (K={kind.top_k}) for {kind.num_crops} crops: it belongs to another export; {PLAIN_IMPORT_HINT}"
        )


def choose_scheme(kind: FkdPayload, scheme: "str | Scheme | None") -> Scheme:
    """``scheme`` if it decodes the files' ``kind`` as FKD does, else LabelsError; None: the kind's default."""
    chosen = Scheme.parse(scheme) if scheme is not None else kind.schemes[0]
    if chosen not in kind.schemes:
        raise LabelsError(
            f"the FKD files hold {kind.kind} labels, which import as {' or '.join(s.value for s in kind.schemes)}, "
            f"not {chosen.value}; import first, then use fkd-labels convert"
        )
    return chosen


def import_fkd(
    label_root: "str | Path",
    data: "str | Path",
    out: "str | Path",
    options: ImportOptions = ImportOptions(),
    shard_size: "int | None" = None,
    skip_missing: bool = False,
    overwrite: bool = False,
    workers: int = min(8, os.cpu_count() or 1),
) -> ImportResult:
    """Write the store ``out`` from the FKD soft labels under ``label_root`` for the images of ``data``,
    with the settings of ``export-fkd``'s sidecar when the files have one, else ``options``."""
    label_root = Path(label_root)
    if not label_root.is_dir():
        raise LabelsError(f"FKD soft-label directory not found: {label_root}")
    try:
        images = list_images(data)
    except (OSError, ValueError) as exc:
        raise LabelsError(f"cannot list the images of --data {data}: {exc}") from None
    images.root = images.root.resolve()  # FKD's layout uses the image's parent directories by name
    trailing, sidecar = detect_layout(label_root, images)
    recorded = read_sidecar(sidecar)
    if recorded is not None:
        options.refuse_conflicts(recorded, sidecar)
    num_classes, class_names, labelled = class_space(images, recorded, options, sidecar)
    prepare_output(out, overwrite, [label_root])
    left_out = {b["image_id"]: b for b in recorded.bad_images} if recorded is not None else {}  # no file, as expected
    plan = plan_jobs(label_root, images, labelled, trailing, num_classes, left_out)
    jobs, missing = plan.jobs, plan.missing
    if missing and not skip_missing:
        raise LabelsError(
            f"{len(missing)} of {len(images)} images have no FKD soft-label file (first: {missing[:3]}, expected e.g. "
            f"{label_file(label_root, images.root / missing[0], trailing)}); pass --skip-missing to import the others"
        )
    _, first_kind = read_image_labels(jobs[0])
    per_import = dict(
        num_images=len(jobs),
        shard_size=shard_size or (recorded.shard_size if recorded is not None else DEFAULT_SHARD_SIZE),
        data_fingerprint=image_list_fingerprint([j.image_id for j in jobs], plan.data_labels),
        image_fingerprint="crc32",
        bad_images=plan.bad_images + [{"image_id": m, "reason": "no FKD soft-label file"} for m in missing],
    )
    assumed: list[str] = []
    if recorded is not None:
        check_fits(recorded, first_kind, sidecar, jobs[0].label_file)
        meta = copy_meta(recorded, **per_import)
    else:
        settings, assumed = options.official_settings(label_root)
        meta = new_meta(
            scheme=choose_scheme(first_kind, options.scheme).value, top_k=first_kind.top_k, num_classes=num_classes,
            class_names=class_names, num_crops=first_kind.num_crops, **settings, **per_import,
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

    manifest = write_store(out, meta, records(), desc="importing FKD labels")
    return ImportResult(manifest, sidecar if recorded is not None else None, assumed)
