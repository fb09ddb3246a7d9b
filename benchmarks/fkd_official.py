"""The official FKD code's on-disk label format, for side-by-side comparisons.

``FKD_SLG/generate_soft_label.py`` (github.com/szq0214/FKD) writes one ``torch.save`` file per image
holding ``[coords, flip_status, labels]``; ``fkd-labels export-fkd`` writes the same files, so the
writer side comes from ``fkd.labels.export_fkd`` (coords, label layouts, the file itself). It has no
full-label option; the full labels its authors distribute (their issue 7) are the float32 softmax,
(M, C) here. ``train_FKD.py`` reads a file back with ``torch.load`` (a pickle: numpy arrays are not
allowed by ``weights_only=True``), so the reader below does the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fkd.labels.export_fkd import official_coords, official_labels, write_official

__all__ = ["allocated_bytes", "official_coords", "official_labels", "read_official", "write_official"]


def read_official(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load one file as ``train_FKD.py`` does (full unpickling)."""
    coords, flips, labels = torch.load(path, map_location="cpu", weights_only=False)
    return coords, flips, labels


def allocated_bytes(path: Path) -> int:
    """Disk space a file really takes (whole file-system blocks): what one-file-per-image costs."""
    return path.stat().st_blocks * 512
