"""What a run trains on and how: the training data (stores, images, crop planner), the mode, and
for feature distillation the projector. Every problem is a ``SetupError`` before the first step.

Stores: ``--store`` is a label store, ``--embed-store`` an embedding store, each read as that payload
only (a store of the other kind is refused in one line). Given both, they must describe the same
crops (``fkd.data.checks.check_paired_stores``); the label store then leads (its class map and crop
interpolation apply) and the planner takes both payloads per crop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from fkd.data.checks import check_labels_known, check_num_classes, checked_val_images, in_store_classes
from fkd.data.crops import DEFAULT_RATIO, DEFAULT_SCALE, CropParams
from fkd.data.images import ImageList
from fkd.data.plan import RandomCropPlanner, derived_seed
from fkd.data.sources import ImageSource
from fkd.data.stored import list_data, plan_stored_crops
from fkd.data.views import check_online_augment
from fkd.payload.embedding_spec import EmbeddingSpec
from fkd.store import LabelStore, StoreMeta, StorePayloadError
from fkd.teacher.features import FeatureSourceError, TeacherFeatures
from fkd.teacher.options import TeacherSpec
from fkd.teacher.teachers import Teacher

from .config import AugmentConfig, DistillConfig, TrainConfig
from .errors import SetupError
from .feature_modes import EmbeddingMode, OnlineFDMode
from .mode_names import STORE_MODES, replays_store
from .modes import DeiTMode, FKDMode, OnlineKDMode, SupervisedMode, TrainMode
from .projector import FeatureStudent, Projector, build_projector
from .student import StudentDataConfig

UNTRAINED_CLASSIFIER = (
    "feature distillation without --store or --gt-weight: the student's classifier gets no training signal, so its val top-1 "
    "stays at chance and best.pth, picked by it, means nothing: use last.pth (to fine-tune or probe)"
)


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


def check_reinforced(config: TrainConfig, store: LabelStore) -> None:
    """A reinforced store (format version 6) replays each crop's stored augmentation: per-crop
    augmentation on top, or batch Mixup/CutMix over stored pairs, is refused in one line (the ground
    truth of a stored pair, every mode's, is ``fkd.data.targets.crop_ground_truth``)."""
    augment = config.augment
    per_crop = [flag for flag, on in (("--randaugment", bool(augment.randaugment)), ("--color-jitter", augment.color_jitter > 0),
                                      ("--reprob", augment.reprob > 0)) if on]
    check_online_augment(store.meta, store.path, per_crop, batch_mixing=augment.mixup > 0 or augment.cutmix > 0)


def recolour_warnings(augment: AugmentConfig) -> list[str]:
    """Per-crop colour augmentation moves no pixel, so it passes the stored-box check, but it changes
    what the teacher would have said of the crop: a silent mismatch worth one line at the start."""
    flags = [f for f, on in (("--color-jitter", augment.color_jitter > 0), ("--randaugment", bool(augment.randaugment))) if on]
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


def open_stores(store: "str | None", embed_store: "str | None") -> tuple["LabelStore | None", "LabelStore | None"]:
    """(label store, embedding store), each None when not given (a pair is checked by ``plan_stored_crops``)."""
    return open_store(store, "labels", "--store", "--embed-store"), open_store(embed_store, "embedding", "--embed-store", "--store")


def classifier_untrained(config: TrainConfig) -> bool:
    """Features alone, no ground truth: nothing trains the student's classifier."""
    mode = config.distill.mode
    features_only = mode == "online-fd" or (config.features.embed_store and not config.data.store)
    return bool(features_only) and not config.distill.gt_weight


def prepare_train_data(config: TrainConfig) -> TrainData:
    data, distill, mode, seed = config.data, config.distill, config.distill.mode, config.run.seed
    labels, embeddings = open_stores(data.store, config.features.embed_store)
    store = labels or embeddings
    listing = list_data(data.data, "--data")
    notes = [UNTRAINED_CLASSIFIER] if classifier_untrained(config) else []
    if replays_store(mode, data.crop_source):  # the store modes, and supervised / online-kd with --crop-source store
        assert store is not None
        num_classes = check_num_classes(store.meta.num_classes, config.model.num_classes)
        if mode == "deit":
            deit_mode(distill, store.meta, num_classes)  # a --kd-tau the store cannot give is refused before the model is built
        stored = plan_stored_crops(labels, embeddings, listing, data.crops_per_image, seed, data.stored_crops, data.allow_resized,
                                   given=data.data)  # the checks and crops of fkd.api.StoredCrops
        check_reinforced(config, store)  # a reinforced store's crops carry their augmentation: none is added on top
        if mode != "fkd" or distill.gt_weight > 0:
            check_labels_known(store.labels, store.image_ids, "the store", f"{mode} --gt-weight" if mode == "fkd" else mode)
        spec = None if embeddings is None else embeddings.meta.embedding
        dims = None if embeddings is None else embeddings.meta.embedding_dims
        recoloured = recolour_warnings(config.augment) if mode in STORE_MODES else []  # a live target sees the recoloured crop
        return TrainData(stored.images.source, stored.planner, num_classes, store.meta.interpolation, store,
                         stored.warnings + recoloured + notes, stored.class_names, stored.classes_of, store.meta.crop_scale, spec, dims)
    images = in_store_classes(listing, store, "--data")
    if mode != "online-fd" or distill.gt_weight:
        check_labels_known(images.labels, images.image_ids, "--data", mode)
    num_classes = config.model.num_classes or len(images.class_names)
    if int(images.labels.max()) >= num_classes:
        raise SetupError(f"--data has labels up to {int(images.labels.max())} but the model has {num_classes} classes")
    scale = tuple(data.crop_scale) if data.crop_scale else (store.meta.crop_scale if store else DEFAULT_SCALE)
    ratio = store.meta.crop_ratio if store else DEFAULT_RATIO
    try:
        params = CropParams(scale=scale, ratio=ratio)
    except ValueError as exc:
        raise SetupError(f"--crop-scale: {exc}") from None
    planner = RandomCropPlanner(images, data.crops_per_image, seed, params)
    return TrainData(images.source, planner, num_classes, None, store, notes, list(images.class_names), "--data's", params.scale)


def prepare_val_data(val_data: "str | None", data: TrainData) -> "ImageList | None":
    """--val-data (None when not given), labelled in the training class space, every label one of
    the model's classes."""
    if not val_data:
        return None
    return checked_val_images(list_data(val_data, "--val-data"), data.class_names, data.store, data.classes_of, data.num_classes)


def crop_interpolation(interpolation: "str | None", data: TrainData, cfg: StudentDataConfig) -> str:
    """The training crops' resize filter: --interpolation, else the store's (the filter the teacher's
    crops were resized with), else the model's. Validation images use --interpolation or the model's."""
    return interpolation or data.interpolation or cfg.interpolation


def resolved_config(config: TrainConfig, data: TrainData, cfg: StudentDataConfig) -> tuple[TrainConfig, list[str]]:
    """What args.yaml and every checkpoint record: ``config`` with the values this run took from the
    store or the model (input size, mean, std, validation crop_pct, crop scale, class count,
    interpolation), so the record says what was used and ``-c args.yaml`` uses it again. Crops
    resized with the store's filter and validation images with the model's cannot be said with one
    --interpolation: it stays null then, and a note (a comment in args.yaml) names both."""
    crops = crop_interpolation(config.model.interpolation, data, cfg)
    notes = [] if crops == cfg.interpolation else [
        f"interpolation null: {crops} for the training crops (the store's), {cfg.interpolation} for validation (the model's); "
        "--interpolation sets both"
    ]
    model = replace(config.model, input_size=cfg.input_size, mean=tuple(cfg.mean), std=tuple(cfg.std), crop_pct=cfg.crop_pct,
                    num_classes=data.num_classes, interpolation=None if notes else crops)
    return replace(config, model=model, data=replace(config.data, crop_scale=tuple(data.crop_scale))), notes


def build_teacher(spec: TeacherSpec, num_classes: "int | None", device: torch.device) -> Teacher:
    """The online teacher at temperature 1 (``num_classes`` None: its own classes, for features)."""
    try:
        return replace(spec, num_classes=num_classes, temperature=1.0).create(device)
    except ValueError as exc:  # TeacherError, or a factory refusing its arguments
        raise SetupError(f"teacher: {exc}") from None


def deit_mode(distill: DistillConfig, meta: StoreMeta, num_classes: int) -> DeiTMode:
    """DeiT's mode on a label store's labels, decoded as the store keeps them (its temperature; full
    values as log-probabilities or probabilities). SetupError for a --kd-tau the store cannot give
    exactly (``LabelCodec.retemper_problem``)."""
    return DeiTMode(meta.scheme, num_classes, distill.smoothing, distill.kd, distill.kd_alpha, distill.kd_tau,
                    temperature=meta.temperature, log_probs=meta.full_log_probs)


def build_mode(config: TrainConfig, data: TrainData, device: torch.device) -> TrainMode:
    """The run's mode; a store's labels decode as its metadata says (``StoreMeta.full_log_probs``:
    a full store of format version 5 keeps log-probabilities, which decoded as probabilities would
    be all-zero targets)."""
    meta = None if data.store is None else data.store.meta
    distill, features = config.distill, config.features
    if distill.mode == "fkd" and data.embedding is not None:
        return EmbeddingMode(data.num_classes, data.embedding.dim, features.embed_loss, features.embed_weight, distill.gt_weight,
                             distill.smoothing, scheme=meta.scheme, log_probs=meta.full_log_probs, member_dims=data.member_dims)
    if distill.mode == "fkd":
        return FKDMode(meta.scheme, data.num_classes, distill.gt_weight, distill.smoothing, log_probs=meta.full_log_probs,
                       gt_weight_by=distill.gt_weight_by)
    if distill.mode == "deit":
        return deit_mode(distill, meta, data.num_classes)
    if distill.mode == "supervised":
        return SupervisedMode(data.num_classes, distill.smoothing)
    if distill.mode == "online-fd":
        try:
            teacher_features = TeacherFeatures(build_teacher(config.teacher, None, device), features.embedding_from)
            return OnlineFDMode(teacher_features, data.num_classes, features.embed_loss, features.embed_weight, distill.gt_weight,
                                distill.smoothing)
        except (FeatureSourceError, ValueError) as exc:  # a source the teacher lacks, a map that is no grid
            raise SetupError(f"--embedding-from {features.embedding_from}: {exc}") from None
    teacher = build_teacher(config.teacher, data.num_classes, device)
    if teacher.num_classes != data.num_classes:
        raise SetupError(f"the teacher has {teacher.num_classes} classes but the student is trained on {data.num_classes}")
    return OnlineKDMode(teacher, data.num_classes, distill.smoothing, distill.kd, distill.kd_alpha, distill.kd_tau)


def build_feature_projector(
    config: TrainConfig, model: nn.Module, mode: TrainMode, input_size: int, device: torch.device
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
    projector = build_projector(model, config.features.projector, source, out_dim, derived_seed(config.run.seed, 5)).to(device)
    if source == "feature-map":
        was_training = model.training
        try:
            with torch.no_grad():
                FeatureStudent(model.eval(), projector)(torch.zeros(1, 3, input_size, input_size, device=device))
        except ValueError as exc:
            raise SetupError(f"--mode online-fd: the student {config.model.model} has no feature map to distill ({exc})") from None
        finally:
            model.train(was_training)
    return projector
