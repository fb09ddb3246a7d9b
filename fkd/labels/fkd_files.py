"""Reading one soft-label file of the official FKD layout (``import-fkd``), safely.

``torch.load(weights_only=True)`` with only the numpy array reconstruction the files need allowed, so
a hostile file is refused instead of executed; then the shapes FKD writes are checked, the label kind
told apart (hard, smoothing, marginal) and FKD's box fractions turned into the pixels its replay cuts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..payload.quantize import Scheme
from .errors import LabelsError

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
