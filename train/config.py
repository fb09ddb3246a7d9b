"""fkd-train's settings as typed records, built once from the parsed command line
(``TrainConfig.from_namespace`` in ``train.cli``): nothing below the CLI sees argparse's Namespace;
each function takes the config, or better the one group it needs.

Every group's fields are named as the destinations of their flags, so ``TrainConfig.to_args``
flattens a config back to exactly the keys and values of the command line: what args.yaml and every
checkpoint record, and what ``-c args.yaml`` reads again. Defaults live in the parser alone (the
groups have none). What a run resolves (``--aug-level``'s values, a ViT's input size, the values
taken from the store and the model) makes a new config with ``dataclasses.replace``: a config never
changes in place. Imports no torch: the CLI builds and checks it before torch is imported.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from fkd.teacher.options import TeacherSpec

G = TypeVar("G")


@dataclass(frozen=True)
class DataConfig:
    """The training images and their crops (a label store's, or drawn afresh in ``crop_scale``;
    ``crop_source``: supervised / online-kd's choice, None: fresh), the validation images, and how
    they are loaded."""

    store: "str | None"
    data: str
    val_data: "str | None"
    crops_per_image: int
    batch_size: int
    crop_scale: "tuple[float, float] | None"
    stored_crops: str
    crop_source: "str | None"
    allow_resized: bool
    workers: int
    replay_device: str


@dataclass(frozen=True)
class AugmentConfig:
    """Per-crop colour augmentation and random erasing, and per-batch Mixup/CutMix. ``mixup`` and
    ``randaugment`` are None until ``aug_levels.apply_aug_level`` resolves them (the CLI does)."""

    color_jitter: float
    randaugment: "str | None"
    aug_level: "str | None"
    reprob: float
    remode: str
    recount: int
    mixup: "float | None"
    cutmix: float
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str


@dataclass(frozen=True)
class ModelConfig:
    """The student: a timm model, its classes, and the inputs it takes (None: the model's own, or
    the store's; args.yaml records the values a run resolved)."""

    model: str
    pretrained: bool
    model_kwargs: "tuple[str, ...] | None"
    drop_path: "float | None"
    num_classes: "int | None"
    input_size: "int | None"
    interpolation: "str | None"
    crop_pct: "float | None"
    mean: "tuple[float, ...] | None"
    std: "tuple[float, ...] | None"
    model_ema: bool
    model_ema_decay: float
    compile: bool


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, per-update schedule, gradient clipping and arithmetic."""

    epochs: int
    opt: str
    lr: float
    weight_decay: float
    momentum: float
    sched: str
    warmup_epochs: float
    warmup_lr: float
    min_lr: float
    clip_grad: "float | None"
    clip_mode: str
    amp: str
    channels_last: "bool | None"


@dataclass(frozen=True)
class DistillConfig:
    """The training mode and its targets: the ground truth's share, smoothing, and online KD / DeiT's
    distillation term."""

    mode: str
    gt_weight: float
    gt_weight_by: str
    smoothing: float
    kd: str
    kd_alpha: float
    kd_tau: float


@dataclass(frozen=True)
class FeatureConfig:
    """Feature distillation: the embedding store (--mode fkd) or the online teacher's source
    (--mode online-fd), the loss and the projector."""

    embed_store: "str | None"
    embed_loss: str
    embed_weight: float
    projector: str
    embedding_from: str


@dataclass(frozen=True)
class RunConfig:
    """Where the run writes, how it starts (fresh, resumed, replacing another), its seed and device,
    and what it prints. ``config``: the -c recipe it was given, recorded as such."""

    output: str
    resume: "str | None"
    overwrite: bool
    keep_checkpoints: int
    seed: int
    deterministic: bool
    device: str
    log_every: int
    no_progress: bool
    config: "str | None"


@dataclass(frozen=True)
class TrainConfig:
    """A whole fkd-train run. ``teacher``: the online teacher of --mode online-kd / online-fd, in
    the record fkd-labelgen builds from the same flags (its class count is the run's)."""

    data: DataConfig
    augment: AugmentConfig
    model: ModelConfig
    optim: OptimConfig
    distill: DistillConfig
    features: FeatureConfig
    teacher: TeacherSpec
    run: RunConfig

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> "TrainConfig":
        """The config of fkd-train's parsed command line (``train.cli.build_parser``); lists become tuples."""
        return cls(
            data=_group(DataConfig, namespace), augment=_group(AugmentConfig, namespace), model=_group(ModelConfig, namespace),
            optim=_group(OptimConfig, namespace), distill=_group(DistillConfig, namespace),
            features=_group(FeatureConfig, namespace), teacher=TeacherSpec.from_namespace(namespace, student=True),
            run=_group(RunConfig, namespace),
        )

    def to_args(self) -> dict[str, Any]:
        """Every option by destination, as plain YAML/JSON values (tuples as lists): the flat record
        of args.yaml and the checkpoints, ``from_namespace``'s inverse."""
        flat: dict[str, Any] = {}
        for group in (self.data, self.augment, self.model, self.optim, self.distill, self.features):
            flat.update({f.name: _plain(getattr(group, f.name)) for f in fields(group)})
        flat.update(self.teacher.to_args(student=True))
        flat.update({f.name: _plain(getattr(self.run, f.name)) for f in fields(self.run)})
        return flat


def _group(cls: "type[G]", namespace: argparse.Namespace) -> G:
    return cls(**{f.name: _frozen(getattr(namespace, f.name)) for f in fields(cls)})  # type: ignore[arg-type]


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value
