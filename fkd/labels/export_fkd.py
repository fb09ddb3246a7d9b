"""``fkd-labels export-fkd``: write a store in the official FKD one-file-per-image layout.

So that labels made here train with the official code (szq0214/FKD ``train_FKD.py``) or any tool
that reads its layout, and so that ``import-fkd`` has a counterpart. Each image gets the file
``OUT/<image id's directories>/<name up to its first dot>.tar``, a ``torch.save`` of
``[coords, flips, labels]`` exactly as the official generator writes it (numpy arrays):

- ``coords`` float32 (M, 4): ``(i/H, j/W, h/H, w/W)``, the stored pixel box as fractions of the
  image size (exact: ``import-fkd`` and PIL's corner rounding give the same pixels back);
- ``flips`` bool (M,);
- ``labels`` as ``label_quantization`` makes them: hardening int64 (M,); smoothing float32 (M, 2)
  ``[index, p_max]``; marginal schemes float32 (M, 2, K) ``[indices; probabilities]`` (raw top-K
  probabilities, descending); full float32 (M, C) probabilities (``exp`` of a version-5 store's
  log-probabilities), the official trainer's ``ori`` type.

The official trainer reads ``SOFTLABEL_PATH/<last two directories of the image>/<name>.tar``: for an
ImageFolder store (ids ``CLASS/NAME.ext``) made from ``.../train``, export to ``SOFTLABEL_PATH/train``.
Beside the files, ``OUT/fkd-store.json`` keeps the store's settings the official format cannot hold
(``fkd_sidecar``), so that ``import-fkd`` gives back a store that trains the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm import tqdm

from ..data.crops import fixed_to_boxes
from ..payload.quantize import LabelCodec, stored_top_k
from ..payload.schemes import Scheme
from ..store import LabelStore, StoreMeta
from .differences import describe_differences
from .errors import LabelsError
from .fkd_format import SIDECAR_NAME, fkd_file_name
from .fkd_sidecar import read_sidecar, write_sidecar
from .subset import StoreSubset, SubsetSpec


@dataclass(frozen=True)
class ExportSummary:
    """What ``export_fkd`` wrote: file count, their bytes, and the official trainer's label type."""

    files: int
    bytes: int
    label_type: str


def official_coords(boxes_fixed: np.ndarray, height: int, width: int) -> np.ndarray:
    """Stored fixed-point boxes -> FKD's float32 (i/H, j/W, h/H, w/W)."""
    boxes = fixed_to_boxes(boxes_fixed, height, width)
    return (boxes / np.array([height, width, height, width], dtype=np.float64)).astype(np.float32)


def official_labels(
    scheme: "str | Scheme", indices: "np.ndarray | None", values: "np.ndarray | None", log_values: bool = False
) -> np.ndarray:
    """One image's stored payload in the layout the official ``label_quantization`` produces.
    ``log_values``: full values are log-probabilities (``StoreMeta.full_log_probs``), written as the
    probabilities ``ori`` holds."""
    scheme = Scheme.parse(scheme)
    if scheme is Scheme.FULL:
        return LabelCodec(scheme, values.shape[-1], log_probs=log_values).stored_probabilities(np.asarray(values))
    if scheme is Scheme.HARDENING:
        return np.asarray(indices[:, 0], dtype=np.int64)
    if scheme is Scheme.SMOOTHING:
        return np.stack([indices[:, 0].astype(np.float32), values[:, 0].astype(np.float32)], axis=1)
    return np.stack([indices.astype(np.float32), values.astype(np.float32)], axis=1)


def official_label_type(scheme: "str | Scheme", top_k: int) -> str:
    """The official trainer's ``--soft_label_type`` that decodes ``scheme`` as we do (its marginal
    smoothing decoder is written for K=5 or 10 only)."""
    scheme = Scheme.parse(scheme)
    if scheme is Scheme.MARGINAL_SMOOTHING:
        return f"marginal_smoothing_k{top_k}" if top_k in (5, 10) else f"none (marginal smoothing K={top_k}; the official code has K=5 and 10)"
    return {Scheme.FULL: "ori", Scheme.HARDENING: "hard", Scheme.SMOOTHING: "smoothing", Scheme.MARGINAL_RENORM: "marginal_renorm"}[scheme]


def write_official(path: Path, coords: np.ndarray, flips: np.ndarray, labels: np.ndarray) -> int:
    """Write one image's file as the official generator does (atomically: a file the official
    loader finds is never half written); return its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save([np.ascontiguousarray(coords, dtype=np.float32), np.asarray(flips, dtype=bool), labels], partial)
    os.replace(partial, path)
    return path.stat().st_size


def official_paths(image_ids: Iterable[str]) -> list[PurePosixPath]:
    """Each image id's file, relative to the output; LabelsError for ids that would leave it or
    collide (``a.jpg`` and ``a.png``, or ``a.b.jpg`` and ``a.c.jpg``, share ``a.tar``)."""
    paths: list[PurePosixPath] = []
    owner: dict[PurePosixPath, str] = {}
    for image_id in image_ids:
        rel = PurePosixPath(image_id)
        if rel.is_absolute() or ".." in rel.parts:
            raise LabelsError(f"image id {image_id!r} is not a relative path inside the data root; it has no place in the FKD layout")
        path = rel.parent / fkd_file_name(rel.name)
        if path in owner:
            raise LabelsError(
                f"images {owner[path]!r} and {image_id!r} would both be {path} in the FKD layout (it keeps names up to their "
                "first dot): export a --subset without one of them"
            )
        owner[path] = image_id
        paths.append(path)
    return paths


def refuse_mixing(out: Path, meta: StoreMeta, store_path: "str | Path") -> None:
    """LabelsError when ``out`` already holds the export of a store with other settings: one
    sidecar could not describe both sets of files (another part of the same store may join them)."""
    try:
        recorded = read_sidecar(out / SIDECAR_NAME)
    except LabelsError:
        return  # not a sidecar to keep: replaced
    details = describe_differences(recorded, meta) if recorded is not None else ""
    if details:
        raise LabelsError(
            f"--out {out} holds the FKD files of a store with other settings (that store vs {store_path}: {details}); "
            "export to another --out"
        )


def export_fkd(store_path: "str | Path", out: "str | Path", subset: "SubsetSpec | None" = None, overwrite: bool = False) -> ExportSummary:
    """Write every image (or the ``subset``) of the complete store at ``store_path`` as an official
    FKD file under ``out``."""
    out = Path(out)
    if out.resolve() == Path(store_path).resolve():
        raise LabelsError(f"--out {out} is the store itself; write the FKD files to another directory")
    if out.exists() and not out.is_dir():
        raise LabelsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LabelsError(f"--out {out} already exists and is not empty; choose another --out or pass --overwrite")
    with LabelStore(store_path) as store:
        view = StoreSubset.from_spec(store, subset) if subset is not None else store
        meta = store.meta
        if meta.augmentation is not None:
            raise LabelsError(f"{store_path} is a reinforced store ({meta.augmentation.describe()}): its labels describe augmented views, "
                              "and the official FKD format keeps boxes and flips only, so its trainer would pair them with other pixels")
        paths = official_paths(view.image_ids)
        refuse_mixing(out, meta, store_path)
        write_sidecar(out, meta)  # first: files never lie about without their settings
        total = 0
        for index in tqdm(range(len(view)), desc="exporting FKD files", unit="img", disable=None):
            record = view.read(index)
            coords = official_coords(record.boxes_fixed, record.height, record.width)
            labels = official_labels(meta.scheme, record.indices, record.values, meta.full_log_probs)
            total += write_official(out / paths[index], coords, record.flips, labels)
    return ExportSummary(len(paths), total, official_label_type(meta.scheme, stored_top_k(meta.scheme, meta.top_k, meta.num_classes)))
