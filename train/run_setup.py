"""What a run trains on and how: the training data (stores, images, crop planner), the mode, and
for feature distillation the projector. Every problem is a ``SetupError`` before the first step.

Stores: ``--store`` is a label store, ``--embed-store`` an embedding store, each read as that payload
only (a store of the other kind is refused in one line). Given both, they must describe the same
crops (``fkd.data.checks.check_paired_stores``); the label store then leads (its class map and crop
interpolation apply) and the planner takes both payloads per crop.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fkd.data.classes import is_numbered
from fkd.data.crops import DEFAULT_RATIO, DEFAULT_SCALE, CropParams
from fkd.payload.embedding_spec import EmbeddingSpec
from fkd.teacher.features import FeatureSourceError, TeacherFeatures
from fkd.data.images import ImageList, list_images
from fkd.data.sources import ImageSource
from fkd.store import LabelStore, StoreMeta, StorePayloadError
from fkd.data.tars import is_tar_data
from fkd.teacher.teachers import Teacher, create_teacher

from fkd.data.plan import RandomCropPlanner, StoreCropPlanner, derived_seed
from .errors import SetupError
from .feature_modes import EmbeddingMode, OnlineFDMode
from .mode_names import STORE_MODES
from .modes import DeiTMode, FKDMode, OnlineKDMode, SupervisedMode, TrainMode
from fkd.data.checks import (
    check_labels_known, check_num_classes, check_paired_stores, check_store_matches_data, in_store_classes, val_in_class_space,
)
from .projector import FeatureStudent, Projector, build_projector
from .student import StudentDataConfig

UNTRAINED_CLASSIFIER = (
    "feature distillation without --store or --gt-weight: the student's classifier gets no training signal, so its val top-1 "
    "stays at chance and best.pth, picked by it, means nothing: use last.pth (to fine-tune or probe)"
)


def list_data(path: "str | None", flag: str) -> ImageList:
    if not path:
        raise SetupError(f"{flag} is required")
    if not Path(path).exists() and not is_tar_data(path):
        raise SetupError(f"{flag} {path}: no such directory or list file")
    try:
        return list_images(path)
    except (OSError, ValueError) as exc:  # OSError: a missing tar shard
        raise SetupError(f"{flag} {path}: {exc}") from None


@dataclass
class TrainData:
    """The training images and how their crops are planned, with the class count they imply;
    ``embedding``: the embedding store's payload, when the run reads one."""

    source: ImageSource
    planner: Any
    num_classes: int
    interpolation: "str | None"
    store: "LabelStore | None"
    warnings: list[str]
    class_names: list[str]
    classes_of: str  # whose classes they are, for messages: "the store's" or "--data's"
    crop_scale: tuple[float, float]  # the area range of the crops: the store's, or the one random crops are drawn from
    embedding: "EmbeddingSpec | None" = None
    member_dims: "tuple[int, ...] | None" = None  # each ensemble member's part of the embedding (StoreMeta.embedding_dims)

RECOLOURED = (
    "{flags} {verb} each crop after the teacher labelled it: a stored target is the teacher's word on the crop before, "
    "not on what the student sees (online KD's teacher sees the recoloured crop). The ViT block of benchmarks/README.md "
    "measures what RandAugment costs stored labels there; leave it out unless your own runs say otherwise"
)


def recolour_warnings(args: argparse.Namespace) -> list[str]:
    """Per-crop colour augmentation moves no pixel, so it passes the stored-box check, but it changes
    what the teacher would have said of the crop: a silent mismatch worth one line at the start."""
    flags = [f for f, on in (("--color-jitter", args.color_jitter > 0), ("--randaugment", bool(args.randaugment))) if on]
    return [RECOLOURED.format(flags=" and ".join(flags), verb="recolour" if len(flags) > 1 else "recolours")] if flags else []


def open_store(path: "str | None", payload: str, flag: str, other_flag: str) -> "LabelStore | None":
    """The store given as ``flag`` (None when not given); one of the other payload is refused
    with the flag that reads it, the usual mix-up between the two."""
    if not path:
        return None
    try:
        return LabelStore(path, payload=payload)
    except StorePayloadError as exc:
        raise SetupError(f"{flag} {exc}; pass it as {other_flag}") from exc


def open_stores(args: argparse.Namespace) -> tuple["LabelStore | None", "LabelStore | None"]:
    """(label store, embedding store), each None when not given; a pair is checked to match."""
    labels = open_store(args.store, "labels", "--store", "--embed-store")
    embeddings = open_store(args.embed_store, "embedding", "--embed-store", "--store")
    if labels is not None and embeddings is not None:
        check_paired_stores(labels, embeddings)
    return labels, embeddings


def classifier_untrained(args: argparse.Namespace) -> bool:
    """Features alone, no ground truth: nothing trains the student's classifier."""
    features_only = args.mode == "online-fd" or (args.embed_store and not args.store)
    return bool(features_only) and not args.gt_weight


def prepare_train_data(args: argparse.Namespace) -> TrainData:
    labels, embeddings = open_stores(args)
    store = labels or embeddings
    images = in_store_classes(list_data(args.data, "--data"), store, "--data")
    notes = [UNTRAINED_CLASSIFIER] if classifier_untrained(args) else []
    if args.mode in STORE_MODES:
        assert store is not None
        num_classes = check_num_classes(store.meta.num_classes, args.num_classes)
        if args.mode == "deit":
            deit_mode(args, store.meta, num_classes)  # a --kd-tau the store cannot give is refused before the model is built
        warnings = check_store_matches_data(store, images, args.allow_resized, given=args.data)
        if args.mode == "deit" or args.gt_weight > 0:
            check_labels_known(store.labels, store.image_ids, "the store", f"{args.mode} --gt-weight" if args.mode == "fkd" else args.mode)
        planner = StoreCropPlanner(store, args.crops_per_image, args.seed, args.allow_resized, order=args.stored_crops,
                                   paired=embeddings if labels is not None else None)
        spec = None if embeddings is None else embeddings.meta.embedding
        dims = None if embeddings is None else embeddings.meta.embedding_dims
        names, whose = (images.class_names, "--data's") if is_numbered(store.meta.class_names) else (store.meta.class_names, "the store's")
        return TrainData(images.source, planner, num_classes, store.meta.interpolation, store, warnings + recolour_warnings(args) + notes,
                         list(names), whose, store.meta.crop_scale, spec, dims)
    if args.mode != "online-fd" or args.gt_weight:
        check_labels_known(images.labels, images.image_ids, "--data", args.mode)
    num_classes = args.num_classes or len(images.class_names)
    if int(images.labels.max()) >= num_classes:
        raise SetupError(f"--data has labels up to {int(images.labels.max())} but the model has {num_classes} classes")
    scale = tuple(args.crop_scale) if args.crop_scale else (store.meta.crop_scale if store else DEFAULT_SCALE)
    ratio = store.meta.crop_ratio if store else DEFAULT_RATIO
    try:
        params = CropParams(scale=scale, ratio=ratio)
    except ValueError as exc:
        raise SetupError(f"--crop-scale: {exc}") from None
    planner = RandomCropPlanner(images, args.crops_per_image, args.seed, params)
    return TrainData(images.source, planner, num_classes, None, store, notes, list(images.class_names), "--data's", params.scale)


def prepare_val_data(args: argparse.Namespace, data: TrainData) -> "ImageList | None":
    """--val-data (None when not given), labelled in the training class space, every label one of
    the model's classes."""
    if not args.val_data:
        return None
    val = val_in_class_space(list_data(args.val_data, "--val-data"), data.class_names, data.store, data.classes_of)
    check_labels_known(val.labels, val.image_ids, "--val-data", "evaluation")
    if int(val.labels.max()) >= data.num_classes:
        raise SetupError(f"--val-data has labels up to {int(val.labels.max())} but the model has {data.num_classes} classes")
    return val


def crop_interpolation(args: argparse.Namespace, data: TrainData, cfg: StudentDataConfig) -> str:
    """The training crops' resize filter: --interpolation, else the store's (the filter the teacher's
    crops were resized with), else the model's. Validation images use --interpolation or the model's."""
    return args.interpolation or data.interpolation or cfg.interpolation


def resolved_args(args: argparse.Namespace, data: TrainData, cfg: StudentDataConfig) -> tuple[argparse.Namespace, list[str]]:
    """What args.yaml and every checkpoint record: ``args`` with the values this run took from the
    store or the model (input size, mean, std, validation crop_pct, crop scale, class count,
    interpolation), so the record says what was used and ``-c args.yaml`` uses it again. Crops
    resized with the store's filter and validation images with the model's cannot be said with one
    --interpolation: it stays null then, and a note (a comment in args.yaml) names both."""
    crops = crop_interpolation(args, data, cfg)
    notes = [] if crops == cfg.interpolation else [
        f"interpolation null: {crops} for the training crops (the store's), {cfg.interpolation} for validation (the model's); "
        "--interpolation sets both"
    ]
    resolved = {
        "input_size": cfg.input_size, "mean": list(cfg.mean), "std": list(cfg.std), "crop_pct": cfg.crop_pct,
        "crop_scale": list(data.crop_scale), "num_classes": data.num_classes, "interpolation": None if notes else crops,
    }
    return argparse.Namespace(**{**vars(args), **resolved}), notes


def build_teacher(args: argparse.Namespace, num_classes: "int | None", device: torch.device) -> Teacher:
    """The online teacher at temperature 1 (``num_classes`` None: its own classes, for features)."""
    try:
        return create_teacher(
            names=args.teacher or [], checkpoints=args.checkpoint, module=args.teacher_module, num_classes=num_classes,
            pretrained=args.teacher_pretrained, temperature=1.0, input_size=args.teacher_input_size, device=device,
            precision=args.teacher_precision,
        )
    except ValueError as exc:  # TeacherError, or a factory refusing its arguments
        raise SetupError(f"teacher: {exc}") from None


def deit_mode(args: argparse.Namespace, meta: StoreMeta, num_classes: int) -> DeiTMode:
    """DeiT's mode on a label store's labels, decoded as the store keeps them (its temperature; full
    values as log-probabilities or probabilities). SetupError for a --kd-tau the store cannot give
    exactly (``LabelCodec.retemper_problem``)."""
    return DeiTMode(meta.scheme, num_classes, args.smoothing, args.kd, args.kd_alpha, args.kd_tau,
                    temperature=meta.temperature, log_probs=meta.full_log_probs)


def build_mode(args: argparse.Namespace, data: TrainData, device: torch.device) -> TrainMode:
    """The run's mode; a store's labels decode as its metadata says (``StoreMeta.full_log_probs``:
    a full store of format version 5 keeps log-probabilities, which decoded as probabilities would
    be all-zero targets)."""
    meta = None if data.store is None else data.store.meta
    if args.mode == "fkd" and data.embedding is not None:
        return EmbeddingMode(data.num_classes, data.embedding.dim, args.embed_loss, args.embed_weight, args.gt_weight, args.smoothing,
                             scheme=meta.scheme, log_probs=meta.full_log_probs, member_dims=data.member_dims)
    if args.mode == "fkd":
        return FKDMode(meta.scheme, data.num_classes, args.gt_weight, args.smoothing, log_probs=meta.full_log_probs)
    if args.mode == "deit":
        return deit_mode(args, meta, data.num_classes)
    if args.mode == "supervised":
        return SupervisedMode(data.num_classes, args.smoothing)
    if args.mode == "online-fd":
        try:
            features = TeacherFeatures(build_teacher(args, None, device), args.embedding_from)
            return OnlineFDMode(features, data.num_classes, args.embed_loss, args.embed_weight, args.gt_weight, args.smoothing)
        except (FeatureSourceError, ValueError) as exc:  # a source the teacher lacks, a map that is no grid
            raise SetupError(f"--embedding-from {args.embedding_from}: {exc}") from None
    teacher = build_teacher(args, data.num_classes, device)
    if teacher.num_classes != data.num_classes:
        raise SetupError(f"the teacher has {teacher.num_classes} classes but the student is trained on {data.num_classes}")
    return OnlineKDMode(teacher, data.num_classes, args.smoothing, args.kd, args.kd_alpha, args.kd_tau)


def build_feature_projector(
    args: argparse.Namespace, model: nn.Module, mode: TrainMode, input_size: int, device: torch.device
) -> "Projector | None":
    """The projector a feature mode trains (None for the other modes), on ``device``, initialized
    from the seed alone. A feature-map student is probed once (one image, eval mode) so a model
    without a usable map is refused before training."""
    if isinstance(mode, EmbeddingMode):
        source, out_dim = "pre-logits", mode.dim
    elif isinstance(mode, OnlineFDMode):
        source, out_dim = ("feature-map" if mode.is_map else "pre-logits"), mode.out_dim
    else:
        return None
    projector = build_projector(model, args.projector, source, out_dim, derived_seed(args.seed, 5)).to(device)
    if source == "feature-map":
        was_training = model.training
        try:
            with torch.no_grad():
                FeatureStudent(model.eval(), projector)(torch.zeros(1, 3, input_size, input_size, device=device))
        except ValueError as exc:
            raise SetupError(f"--mode online-fd: the student {args.model} has no feature map to distill ({exc})") from None
        finally:
            model.train(was_training)
    return projector
