"""``fkd-store.json``: the settings ``export-fkd`` writes beside the official FKD files for ``import-fkd``.

The official files hold crops and labels only. How the crops were drawn and seen (crop scale and
ratio, flip probability, seed, the teacher's input size, interpolation and normalization), the class
space (names, map), the teachers, temperature and precision are not in them, and an import that
filled them with the official generator's defaults would change training: a store exported from a
bilinear run would come back bicubic, and a class-mapped store would lose its labels' mapping. The
sidecar keeps the exported store's metadata (the ``meta`` object of its ``store.json``, checked by
the same rules when read) so that an import restores every setting:

    {"written_by": "fkd-labels export-fkd", "sidecar_version": 1, "meta": {...}}

The official trainer never opens it (it reads ``<dirs>/<name>.tar`` only).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..store import StoreError, StoreMeta
from ..store.files import atomic_write_bytes
from .errors import LabelsError
from .fkd_format import SIDECAR_NAME

SIDECAR_VERSION = 1
WRITTEN_BY = "fkd-labels export-fkd"
PLAIN_IMPORT_HINT = "delete it to import the files as plain official FKD files"


def write_sidecar(directory: Path, meta: StoreMeta) -> Path:
    """Write ``directory/fkd-store.json`` for the store of ``meta`` (atomically) and return its path."""
    path = directory / SIDECAR_NAME
    directory.mkdir(parents=True, exist_ok=True)
    document = {"written_by": WRITTEN_BY, "sidecar_version": SIDECAR_VERSION, "meta": meta.to_dict()}
    atomic_write_bytes(path, json.dumps(document, indent=1).encode())
    return path


def read_sidecar(path: Path) -> "StoreMeta | None":
    """The store metadata recorded at ``path`` (None when there is no such file); LabelsError for a
    file that is not one ``write_sidecar`` wrote."""
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelsError(f"{path}: not an export-fkd settings file ({exc}); {PLAIN_IMPORT_HINT}") from None
    if not isinstance(document, dict) or document.get("sidecar_version") != SIDECAR_VERSION or "meta" not in document:
        version = document.get("sidecar_version") if isinstance(document, dict) else None
        raise LabelsError(
            f"{path}: not an export-fkd settings file (sidecar_version {version!r}, this fkd reads {SIDECAR_VERSION}); {PLAIN_IMPORT_HINT}"
        )
    try:
        return StoreMeta.from_dict(document["meta"])
    except StoreError as exc:
        raise LabelsError(f"{path}: not an export-fkd settings file ({exc.problem}); {PLAIN_IMPORT_HINT}") from None
