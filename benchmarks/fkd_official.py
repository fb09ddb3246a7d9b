"""The official FKD code's on-disk label format, for side-by-side comparisons (never used by fkd).

``FKD_SLG/generate_soft_label.py`` (github.com/szq0214/FKD) writes one ``torch.save`` file per image
holding ``[coords, flip_status, labels]``: ``coords`` float32 (M, 4) = (i/H, j/W, h/H, w/W),
``flip_status`` bool (M,), both numpy arrays, and ``labels`` the numpy output of its
``label_quantization``: int64 (M,) argmax for 'hard', float32 (M, 2) [index, p] for 'smoothing',
float32 (M, 2, K) [indices; probabilities] for the marginal schemes. It has no full-label option;
the full labels its authors distribute (their issue 7) are the float32 softmax, (M, C) here.
``train_FKD.py`` reads a file back with ``torch.load`` (a pickle: numpy arrays are not allowed by
``weights_only=True``), so the reader below does the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fkd.crops import fixed_to_boxes
from fkd.quantize import Scheme


def official_labels(scheme: "str | Scheme", indices: "np.ndarray | None", values: "np.ndarray | None") -> np.ndarray:
    """Our payload of one image's M crops in the layout ``label_quantization`` produces."""
    scheme = Scheme.parse(scheme)
    if scheme is Scheme.FULL:
        return np.asarray(values, dtype=np.float32)
    if scheme is Scheme.HARDENING:
        return np.asarray(indices[:, 0], dtype=np.int64)
    if scheme is Scheme.SMOOTHING:
        return np.stack([indices[:, 0].astype(np.float32), values[:, 0].astype(np.float32)], axis=1)
    return np.stack([indices.astype(np.float32), values.astype(np.float32)], axis=1)


def official_coords(boxes_fixed: np.ndarray, height: int, width: int) -> np.ndarray:
    """Stored fixed-point boxes -> FKD's float32 (i/H, j/W, h/H, w/W)."""
    boxes = fixed_to_boxes(boxes_fixed, height, width)
    return (boxes / np.array([height, width, height, width], dtype=np.float64)).astype(np.float32)


def write_official(path: Path, coords: np.ndarray, flips: np.ndarray, labels: np.ndarray) -> int:
    """Write one image's file the way the official generator does; return its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([np.ascontiguousarray(coords, dtype=np.float32), np.asarray(flips, dtype=bool), labels], path)
    return path.stat().st_size


def read_official(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load one file as ``train_FKD.py`` does (full unpickling)."""
    coords, flips, labels = torch.load(path, map_location="cpu", weights_only=False)
    return coords, flips, labels


def allocated_bytes(path: Path) -> int:
    """Disk space a file really takes (whole file-system blocks): what one-file-per-image costs."""
    return path.stat().st_blocks * 512
