"""fkd: fast offline knowledge distillation (FKD) for image classifiers.

``import fkd`` stays light (no torch); ``fkd.api``, the API for training loops of your own, is
imported on first use."""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"


def __getattr__(name: str) -> ModuleType:
    if name == "api":
        return importlib.import_module(".api", __name__)
    raise AttributeError(f"module 'fkd' has no attribute {name!r}")
