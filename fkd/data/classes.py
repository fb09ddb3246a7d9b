"""The class space contract: the data's classes must be the teacher's, or be mapped onto them.

A label store holds teacher probabilities over the teacher's C classes and, per image, its ground
truth class. Both must index the same classes, or a student learns one space and is scored in the
other (2 class folders labelled by a 10-class teacher ended at val top-1 0.00 without a warning).
So ``fkd-labelgen`` refuses data whose classes disagree with the teacher's (in count, and in names
where the teacher has them) unless the user gives an explicit ``--class-map FILE``; the store then
records the map, and ``fkd-train`` applies it to ``--data`` and ``--val-data`` alike.

Class-map file: one ``DATA_CLASS TEACHER_CLASS`` per line (whitespace or a comma between them, '#'
comments), every data class once; TEACHER_CLASS is a teacher class name (when the teacher has names)
or an index. Several data classes may map to one teacher class.
"""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

from .images import UNKNOWN_LABEL, ImageEntry, ImageList


class ClassSpaceError(ValueError):
    """The data's classes and the teacher's class space disagree, or a class map is invalid."""


MAP_HINT = "pass --class-map FILE (one 'DATA_CLASS TEACHER_CLASS' per line) to map each data class to a teacher class"


def _examples(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def quoted(names: list[str], limit: int = 4) -> str:
    """Class names as a user finds them on disk: quoted, the first ``limit`` of them."""
    return _examples([repr(n) for n in names], limit)


def folder_difference(names: list[str], reference: list[str]) -> str:
    """Which class folders ``names`` has beyond ``reference`` and which of its classes have none,
    by name ('' when the sets agree): a count alone leaves the user hunting for the 11th folder."""
    known, present = set(reference), set(names)
    extra = [n for n in names if n not in known]
    missing = [n for n in reference if n not in present]
    parts = [f"extra class folder{'s' if len(extra) > 1 else ''} {quoted(extra)}"] if extra else []
    return ", ".join(parts + ([f"no class folder for {quoted(missing)}"] if missing else []))


def has_labels(images: ImageList) -> bool:
    return any(e.label != UNKNOWN_LABEL for e in images.entries)


def is_numbered(names: list[str]) -> bool:
    """Names '0', '1', ... carry no meaning (a list file's integer labels): indices, not names."""
    return all(n == str(i) for i, n in enumerate(names))


def check_class_space(images: ImageList, num_classes: int, teacher_names: "list[str] | None") -> None:
    """Raise ClassSpaceError unless the data's labels can be used as indices of the teacher's classes.

    Folder data: as many class folders as the teacher has classes, named like the teacher's classes
    when it has names. List data (integer labels): labels below the teacher's class count. Data
    without labels: nothing to check.
    """
    if not has_labels(images):
        return
    data_names = list(images.class_names)
    teacher = f"the teacher's {num_classes} classes" + (f" ({_examples(teacher_names)})" if teacher_names else "")
    if is_numbered(data_names):
        top = max(e.label for e in images.entries)
        if top >= num_classes:
            raise ClassSpaceError(f"--data has labels up to {top} but the teacher predicts {num_classes} classes; {MAP_HINT}")
        return
    if len(data_names) != num_classes:
        named = f": {folder_difference(data_names, list(teacher_names))}" if teacher_names else ""
        raise ClassSpaceError(f"--data has {len(data_names)} classes ({_examples(data_names)}), not {teacher}{named}; {MAP_HINT}")
    if teacher_names and data_names != list(teacher_names):
        diff = [f"{i}: data {a!r} vs teacher {b!r}" for i, (a, b) in enumerate(zip(data_names, teacher_names)) if a != b]
        order = " (the same names in another order)" if sorted(data_names) == sorted(teacher_names) else ""
        raise ClassSpaceError(f"the class names of --data differ from the teacher's{order}: {'; '.join(diff[:3])}; {MAP_HINT}")


def store_class_names(images: ImageList, num_classes: int, teacher_names: "list[str] | None", mapped: bool) -> list[str]:
    """The names a store records for its class space: the teacher's, else the data's when they are
    the same classes, else '0', '1', ..."""
    if teacher_names:
        return list(teacher_names)
    if not mapped and len(images.class_names) == num_classes and not is_numbered(images.class_names):
        return list(images.class_names)
    return [str(c) for c in range(num_classes)]


def read_class_map(path: "str | os.PathLike", data_names: list[str], num_classes: int, teacher_names: "list[str] | None") -> dict[str, int]:
    """Parse a class-map file into {data class name: teacher class index}, checking that it maps
    every data class exactly once onto a real teacher class."""
    path = Path(path)
    if not path.is_file():
        raise ClassSpaceError(f"--class-map {path}: no such file")
    by_name = {n: i for i, n in enumerate(teacher_names or [])}
    mapping: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = next(csv.reader([line])) if "," in line else line.split()
            if len(fields) != 2:
                raise ClassSpaceError(f"{path}:{lineno}: expected 'DATA_CLASS TEACHER_CLASS', got {line!r}")
            source, target = (x.strip() for x in fields)
            if source not in data_names:
                raise ClassSpaceError(f"{path}:{lineno}: {source!r} is not a class of --data ({_examples(data_names)})")
            if source in mapping:
                raise ClassSpaceError(f"{path}:{lineno}: data class {source!r} is mapped twice")
            if target in by_name:
                mapping[source] = by_name[target]
            elif target.isdigit() and int(target) < num_classes:
                mapping[source] = int(target)
            else:
                names = f" or one of its names ({_examples(teacher_names)})" if teacher_names else ""
                raise ClassSpaceError(f"{path}:{lineno}: {target!r} is not a teacher class: give an index in 0..{num_classes - 1}{names}")
    unmapped = [n for n in data_names if n not in mapping]
    if unmapped:
        raise ClassSpaceError(f"--class-map {path} does not map the data classes {_examples(unmapped)}")
    return mapping


def apply_class_map(images: ImageList, mapping: dict[str, int], class_names: list[str]) -> ImageList:
    """The listing with its labels moved into the teacher's class space (``class_names``)."""
    missing = [n for n in images.class_names if n not in mapping]
    if missing and has_labels(images):
        raise ClassSpaceError(f"the store's class map does not cover the classes {_examples(missing)} of {images.root}")
    target = [mapping.get(n, UNKNOWN_LABEL) for n in images.class_names]
    entries = [e if e.label == UNKNOWN_LABEL else ImageEntry(e.image_id, target[e.label]) for e in images.entries]
    return replace(images, entries=entries, class_names=list(class_names))
