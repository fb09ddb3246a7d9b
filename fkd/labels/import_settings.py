"""What ``import-fkd`` records that the official FKD files cannot hold, and where each value comes from.

Files ``export-fkd`` wrote come with its sidecar (``fkd-store.json``, see ``fkd_sidecar``): the
import restores the exported store's settings, and a flag that contradicts them is refused, since
the files were labelled as the sidecar says and the flag could only make the new store's metadata
wrong (``fkd-train --interpolation`` is the way to train otherwise). Files without one (the official
generator's) take these settings from the flags; a setting not given takes the official generator's
value, and the import names, in one line, each assumed default that changes training or what the
store says its teacher saw (input size, crop scale, interpolation). The generator hard-codes its
temperature (1), crop ratio, flip probability and normalization: those are facts, not assumptions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..payload.schemes import Scheme
from ..store import UNKNOWN_PRECISION, StoreMeta
from .errors import LabelsError
from .fkd_format import DEFAULT_TEACHER, FKD_CROP_SCALE, FKD_INPUT_SIZE, FKD_INTERPOLATION, IMPORTED_SOURCE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLAGS = {
    "num_classes": "--num-classes", "scheme": "--scheme", "teacher": "--teacher", "input_size": "--input-size",
    "crop_scale": "--crop-scale", "interpolation": "--interpolation", "temperature": "--temperature",
}
ASSUMED_DEFAULTS = {"input_size": FKD_INPUT_SIZE, "crop_scale": FKD_CROP_SCALE, "interpolation": FKD_INTERPOLATION}
"""The official generator's defaults that official files cannot reveal, named when assumed."""


def flag_text(value: Any) -> str:
    """A value as it is typed after its flag: ``0.08 0.936``, ``bicubic``, ``1.0``."""
    if isinstance(value, (tuple, list)):
        return " ".join(flag_text(v) for v in value)
    return repr(float(value)) if isinstance(value, float) else str(value)


def recorded_values(meta: StoreMeta) -> dict[str, Any]:
    """The store settings the import flags set, in the flags' terms."""
    height, width = meta.input_size
    return {
        "num_classes": meta.num_classes, "scheme": meta.scheme, "teacher": " + ".join(str(t.get("name")) for t in meta.teachers),
        "input_size": height if height == width else f"{height}x{width}", "crop_scale": tuple(float(v) for v in meta.crop_scale),
        "interpolation": meta.interpolation, "temperature": float(meta.temperature),
    }


@dataclass(frozen=True)
class ImportOptions:
    """The settings of an import the official files cannot hold, as given on the command line (None:
    not given)."""

    num_classes: "int | None" = None
    scheme: "str | None" = None
    teacher: "str | None" = None
    input_size: "int | None" = None
    crop_scale: "tuple[float, float] | None" = None
    interpolation: "str | None" = None
    temperature: "float | None" = None

    def given(self) -> dict[str, Any]:
        """The flags given, normalized like ``recorded_values``."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if "scheme" in values:
            values["scheme"] = Scheme.parse(values["scheme"]).value
        if "crop_scale" in values:
            values["crop_scale"] = tuple(float(v) for v in values["crop_scale"])
        if "temperature" in values:
            values["temperature"] = float(values["temperature"])
        return values

    def refuse_conflicts(self, recorded: StoreMeta, sidecar: Path) -> None:
        """LabelsError naming every flag that contradicts the export's ``sidecar``."""
        known = recorded_values(recorded)
        conflicts = [
            f"{FLAGS[name]} {flag_text(value)}: the files were labelled with {flag_text(known[name])}"
            for name, value in self.given().items() if flag_text(value) != flag_text(known[name])
        ]
        if conflicts:
            raise LabelsError(
                f"{'; '.join(conflicts)} (as {sidecar} records, written by export-fkd with the files); leave the flag out, "
                f"or delete {sidecar} to import the files as plain official FKD files"
            )

    def official_settings(self, label_root: Path) -> tuple[dict[str, Any], list[str]]:
        """Metadata settings for files without a sidecar (the flags given, else the official
        generator's values), and the assumed defaults as flags, e.g. ``--interpolation bicubic``."""
        chosen = {name: default if getattr(self, name) is None else getattr(self, name) for name, default in ASSUMED_DEFAULTS.items()}
        assumed = [f"{FLAGS[name]} {flag_text(default)}" for name, default in ASSUMED_DEFAULTS.items() if getattr(self, name) is None]
        settings = {
            "teachers": [{"name": self.teacher or DEFAULT_TEACHER, "source": f"{IMPORTED_SOURCE} {label_root}"}],
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "crop_scale": tuple(chosen["crop_scale"]),
            "input_size": (chosen["input_size"], chosen["input_size"]),
            "interpolation": chosen["interpolation"],
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "teacher_precision": UNKNOWN_PRECISION,
        }
        return settings, assumed
