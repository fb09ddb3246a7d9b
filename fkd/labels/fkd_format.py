"""The official FKD label layout (szq0214/FKD), shared by ``import-fkd`` and ``export-fkd``.

One ``torch.save`` file per image holding ``[coords, flips, labels]``; the file of an image named
``NAME.ext`` is ``NAME.tar`` (the name cut at its first dot) in a directory tree that mirrors the
image's. Both directions name files with ``fkd_file_name`` so that an exported tree imports back.
This module imports nothing heavy: ``fkd-labels --help`` lists its defaults without loading torch.
"""

from __future__ import annotations

FKD_SUFFIX = ".tar"

# The official generator's defaults (FKD_SLG/generate_soft_label.py: --input_size, --min/max_scale_crops,
# its hard-coded bicubic), recorded for files imported without export-fkd's sidecar unless flags say otherwise.
FKD_INPUT_SIZE = 475
FKD_CROP_SCALE = (0.08, 0.936)
FKD_INTERPOLATION = "bicubic"
DEFAULT_TEACHER = "unknown teacher (official FKD soft labels)"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
DEFAULT_SHARD_SIZE = 1000
SIDECAR_NAME = "fkd-store.json"
"""The file ``export-fkd`` writes beside the FKD files: the settings the official format cannot hold."""
IMPORTED_SOURCE = "official FKD soft labels imported from"
"""How ``import-fkd`` marks the teacher of a store it writes from official files (no sidecar): such
crops were drawn unseeded."""


def is_imported(teachers: list[dict]) -> bool:
    """Whether a store's teachers (its metadata) say ``import-fkd`` wrote it."""
    return any(str(t.get("source", "")).startswith(IMPORTED_SOURCE) for t in teachers)


def fkd_file_name(image_name: str) -> str:
    """``n0144/x.JPEG``'s last part ``x.JPEG`` -> ``x.tar``: FKD keeps the name up to its first dot."""
    return image_name.split(".")[0] + FKD_SUFFIX
