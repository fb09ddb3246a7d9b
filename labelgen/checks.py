"""What fkd-labelgen checks before it labels anything, so a run fails in seconds with one line.

``check_inputs`` runs before Ray starts (tens of seconds on a cluster): the listing, the output
directory, the teacher's names, files and modules, and for ``--target embedding`` the data's class
count and the feature source of every teacher (on its architecture, on the meta device). Once the
workers have loaded the teacher, its class space is known: ``class_space`` then refuses a K the
teacher cannot fill and data whose classes are not the teacher's (fkd.data.classes), before any shard is
planned. An embedding store does not use the teacher's classifier (the teacher may have none, or
one of other classes): it keeps the data's own classes as ground truth.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from fkd.data.classes import ClassSpaceError, apply_class_map, check_class_space, read_class_map, store_class_names
from fkd.data.images import ImageList, list_images
from fkd.teacher.features import FeatureSourceError, check_factory_architecture, check_timm_architecture
from fkd.teacher.options import TeacherSpec
from fkd.teacher.teachers import TeacherError, check_teacher_spec

from .errors import InputError
from .messages import EmbeddingSettings, LabelSettings, TeacherInfo


def check_inputs(
    data: str, out: Path, teacher: TeacherSpec, class_map: "Path | None", embedding: "EmbeddingSettings | None" = None
) -> ImageList:
    """Everything that can be checked before Ray starts: the data listing (returned), the output
    directory, the teacher's names, files and modules, the class map file, the embedding source."""
    try:
        images = list_images(data)
    except (OSError, ValueError) as exc:
        raise InputError(str(exc)) from None
    check_writable(out)
    try:
        check_teacher_spec(teacher.names, teacher.checkpoints, teacher.module)
    except (TeacherError, FileNotFoundError) as exc:
        raise InputError(f"teacher: {exc}") from None
    if class_map is not None and not class_map.is_file():
        raise InputError(f"--class-map {class_map}: no such file")
    if embedding is not None:
        check_embedding(embedding, images, teacher)
    return images


def check_crop_device(crop_device: str, ray_address: "str | None") -> None:
    """--crop-device cuda on a local run needs a GPU this process can see (a cluster's workers are
    checked where they run: they may have the GPUs the driver lacks)."""
    if crop_device == "cuda" and not (ray_address or os.environ.get("RAY_ADDRESS")) and not torch.cuda.is_available():
        raise InputError("--crop-device cuda needs a GPU, but torch sees none on this machine: use --crop-device cpu")


def check_embedding(settings: EmbeddingSettings, images: ImageList, teacher: TeacherSpec) -> None:
    """The data must name at least 2 classes (the store's ground truth, in the data's own space;
    the format's minimum), and every teacher must give a vector at the feature source (its
    architecture on the meta device: timm's without weights, a factory's as the workers call it)."""
    if len(images.class_names) < 2:
        raise InputError(f"--target embedding keeps the data's own classes as ground truth and a store needs at least 2; "
                         f"--data {images.root} has {len(images.class_names)} (unlabeled, or one class)")
    side = teacher.input_size  # fkd-labelgen's --input-size
    size = (side, side) if side else None
    try:
        for name in teacher.names:
            check_timm_architecture(name, settings.source, teacher.num_classes, size)
        if teacher.module:  # the last member: its checkpoint, if any, is the last one
            checkpoint = (teacher.checkpoints or [None])[-1]
            check_factory_architecture(teacher.module, settings.source, checkpoint, teacher.num_classes, size)
    except FeatureSourceError as exc:
        raise InputError(f"--embedding-from: {exc}") from None


def check_writable(out: Path) -> None:
    """--out must be a directory this process can create files in (or create)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    probe_dir = next(p for p in (out, *out.parents) if p.exists())
    if not probe_dir.is_dir():
        raise InputError(f"--out {out}: {probe_dir} is not a directory")
    try:
        tempfile.TemporaryFile(dir=probe_dir).close()
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write in {probe_dir}: {exc.strerror or exc}") from None


def teacher_space(images: ImageList, teacher: TeacherInfo, class_map: "Path | None") -> tuple[ImageList, "dict[str, int] | None"]:
    """The listing with labels in the teacher's class space, and the map that put them there.

    Without ``class_map`` the data's classes must be the teacher's (fkd.data.classes.check_class_space);
    with it, every data class is mapped explicitly. Raises InputError saying what disagrees.
    """
    try:
        if class_map is None:
            check_class_space(images, teacher.num_classes, teacher.class_names)
            return images, None
        mapping = read_class_map(class_map, list(images.class_names), teacher.num_classes, teacher.class_names)
        names = store_class_names(images, teacher.num_classes, teacher.class_names, mapped=True)
        return apply_class_map(images, mapping, names), mapping
    except ClassSpaceError as exc:
        raise InputError(str(exc)) from None


def class_space(
    settings: LabelSettings, images: ImageList, teacher: TeacherInfo, class_map: "Path | None"
) -> tuple[ImageList, "dict[str, int] | None"]:
    """The listing with its labels in the store's class space, and the class map used: the data's
    own classes for embeddings (--class-map is refused there by the command line), else the
    teacher's (``check_top_k``, ``teacher_space``)."""
    if settings.embedding is not None:
        return images, None
    if teacher.num_classes < 2:
        raise InputError(f"the teacher has {teacher.num_classes} classes (no classifier): soft labels need one; "
                         "store its features with --target embedding instead")
    check_top_k(settings, teacher.num_classes)
    return teacher_space(images, teacher, class_map)


def check_top_k(settings: LabelSettings, num_classes: int) -> None:
    """A marginal scheme cannot keep more classes than the teacher has: refuse rather than clamp
    (the saved options would then say one K and the store another)."""
    if settings.scheme.startswith("marginal") and settings.top_k > num_classes:
        raise InputError(f"--top-k {settings.top_k} exceeds the teacher's {num_classes} classes; use --top-k {num_classes} or less "
                         "(or --scheme full to keep every probability)")
