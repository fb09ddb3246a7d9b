"""Teacher architectures that timm lacks, usable with ``--teacher-module fkd.zoo.<module>:create_model``,
and where their pretrained files live (the project's ``shared`` folder, outside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """The shared data/model folder: ``$FKD_SHARED``, else ``shared`` next to the repository root."""
    return Path(os.environ.get("FKD_SHARED", REPO_ROOT.parent / "shared"))
