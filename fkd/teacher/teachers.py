"""Teachers: one timm model, a model from a user factory, or an ensemble of them, as one module.

Label generation only needs "crop pixels in, class probabilities out". ``Teacher`` hides
everything else: each member's own normalization (timm's data config per model), temperature,
ensemble averaging, arithmetic precision (``fkd.teacher.precision``: fp32 unless asked) and channels_last on
CUDA. Callers feed float crops in [0, 1] at
``teacher.data_config.input_size`` and get probabilities; ``describe()`` records what produced
them (names, checkpoint sha256, sizes, normalization) in the label store.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import timm.models
import torch
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_model_data_config
from torch import nn

from ..store.integrity import file_sha256
from .errors import TeacherError
from .precision import DEFAULT_PRECISION, check_precision, teacher_precision
from .pretrained import create_timm_model


@dataclass(frozen=True)
class DataConfig:
    """What a teacher expects: crop size (H, W), normalization and resize interpolation."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    @classmethod
    def of(cls, model: nn.Module) -> DataConfig:
        """From timm's data config resolution (the model's ``pretrained_cfg``)."""
        cfg = resolve_model_data_config(model)
        _, h, w = cfg["input_size"]
        return cls(
            (int(h), int(w)), tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]), str(cfg["interpolation"])
        )


class NormalizedModel(nn.Module):
    """A model that takes [0, 1] pixels and applies its own mean/std: ensemble members differ."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


@dataclass
class _Member:
    """One loaded model and where it came from."""

    model: nn.Module
    name: str
    checkpoint: Path | None
    module: str | None
    pretrained: str | None  # timm "architecture.tag" when timm's pretrained weights were loaded
    num_classes: int
    data_config: DataConfig
    class_names: list[str] | None  # what each output index means, when the model says


class Teacher(nn.Module):
    """Averaged ``softmax(logits / T)`` of one or more frozen models.

    ``forward`` takes float (B, 3, H, W) in [0, 1] at ``data_config.input_size`` (do not normalize:
    each member does its own) and returns float32 (B, num_classes) probabilities. Wrap calls in
    ``torch.inference_mode()``; the teacher is always in eval mode.
    """

    def __init__(
        self, members: list[_Member], temperature: float, input_size: tuple[int, int], device: torch.device,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        super().__init__()
        first = members[0].data_config
        self.members = nn.ModuleList(NormalizedModel(m.model, m.data_config.mean, m.data_config.std) for m in members)
        self.data_config = DataConfig(input_size, first.mean, first.std, first.interpolation)
        self.num_classes = members[0].num_classes
        self.class_names = next((m.class_names for m in members if m.class_names), None)
        self.temperature = float(temperature)
        self.device = device
        self._descriptions = [_describe(m, input_size) for m in members]
        self.precision = check_precision(precision)
        self.to(device)
        if device.type == "cuda":
            self.members.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """Stay in eval mode: dropout or batch-norm updates would change the labels."""
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Checked crops on the teacher's device, in its memory format (also for fkd.teacher.features)."""
        h, w = self.data_config.input_size
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"teacher input must be (B, 3, {h}, {w}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"teacher input must be float pixels in [0, 1], got {x.dtype}")
        x = x.to(self.device, non_blocking=True).float()
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        total: torch.Tensor | None = None
        with teacher_precision(self.precision, self.device):
            for member in self.members:
                probs = torch.softmax(member(x).float() / self.temperature, dim=-1)
                total = probs if total is None else total + probs
        return total / len(self.members)

    def describe(self) -> list[dict[str, Any]]:
        """Per member: name, checkpoint, sha256, module, pretrained, num_classes, input_size (fed),
        native_input_size, mean, std, interpolation (JSON-safe)."""
        return [dict(d) for d in self._descriptions]


def create_teacher(
    names: Sequence[str],
    checkpoints: Sequence[str | None] | None = None,
    module: str | None = None,
    num_classes: int | None = None,
    pretrained: bool = True,
    temperature: float = 1.0,
    input_size: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = DEFAULT_PRECISION,
) -> Teacher:
    """Build the teacher: timm models ``names`` then, if given, ``module`` (``pkg.mod:factory``).
    (A command line's teacher options reach it as a ``fkd.teacher.options.TeacherSpec``: ``spec.create``.)

    ``checkpoints`` has one entry per member in that order (None: timm pretrained weights or the
    factory's default), or a single entry for a single member. Every member gets crops of the same
    size: ``input_size`` if given, else the first member's.
    """
    specs = _member_specs(names, checkpoints, module)
    if temperature <= 0:
        raise TeacherError(f"temperature must be > 0, got {temperature}")
    try:
        check_precision(precision)
    except ValueError as exc:
        raise TeacherError(str(exc)) from None
    if input_size is not None and input_size <= 0:
        raise TeacherError(f"teacher input size must be > 0, got {input_size}")
    members = [
        _factory_member(name, path, num_classes) if is_module else _timm_member(name, path, num_classes, pretrained)
        for name, is_module, path in specs
    ]
    counts = {m.num_classes for m in members}
    if len(counts) > 1:
        listing = ", ".join(f"{m.name}: {m.num_classes}" for m in members)
        raise TeacherError(f"ensemble members disagree on the number of classes ({listing})")
    named = [m for m in members if m.class_names]
    if any(m.class_names != named[0].class_names for m in named):
        raise TeacherError(f"ensemble members name their classes differently ({named[0].name} vs "
                           f"{next(m.name for m in named if m.class_names != named[0].class_names)}): averaging them would mix classes")

    size = (input_size, input_size) if input_size is not None else members[0].data_config.input_size
    for m in members:
        if m.model.pretrained_cfg.get("fixed_input_size") and m.data_config.input_size != size:
            raise TeacherError(f"teacher {m.name} only accepts {m.data_config.input_size} inputs, not {size}")
    return Teacher(members, temperature, size, torch.device(device), precision)


def check_teacher_spec(names: Sequence[str], checkpoints: Sequence[str | None] | None = None, module: str | None = None) -> None:
    """What can be checked without building a model (names, files, imports), so that a command
    refuses a typo before it starts a cluster; ``create_teacher`` finds the rest."""
    for name, is_module, _ in _member_specs(names, checkpoints, module):
        if is_module:
            _factory(name)
        else:
            _check_timm_name(name)


def _member_specs(names: Sequence[str], checkpoints: Sequence[str | None] | None, module: str | None) -> list[tuple[str, bool, Path | None]]:
    """(name, is a factory module, checkpoint path) per member: timm names first, then the module."""
    specs = [(n, False) for n in names] + ([(module, True)] if module else [])
    if not specs:
        raise TeacherError("no teacher given: pass --teacher NAME (a timm model) or --teacher-module pkg.mod:factory")
    checkpoints = list(checkpoints or [])
    if checkpoints and len(checkpoints) != len(specs):
        members = ", ".join(name for name, _ in specs)
        raise TeacherError(f"got {len(checkpoints)} checkpoints for {len(specs)} teachers ({members}): give one per teacher, in order")
    return [(name, is_module, _checkpoint_path(c)) for (name, is_module), c in zip(specs, checkpoints or [None] * len(specs))]


def _checkpoint_path(checkpoint: str | os.PathLike | None) -> Path | None:
    if checkpoint is None or str(checkpoint) == "":
        return None
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    return path


def _timm_member(name: str, checkpoint: Path | None, num_classes: int | None, pretrained: bool) -> _Member:
    _check_timm_name(name)
    state_dict = None
    if checkpoint is not None:
        try:
            state_dict = timm.models.load_state_dict(str(checkpoint))
        except Exception as e:  # torch.load / safetensors raise many types for a bad file
            raise TeacherError(f"cannot read teacher checkpoint {checkpoint}: {e}") from e
        if num_classes is None:
            num_classes = _checkpoint_num_classes(name, checkpoint, state_dict)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = create_timm_model(name, pretrained and checkpoint is None, kwargs)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise TeacherError(f"checkpoint {checkpoint} does not fit timm model {name}: {e}") from None
    cfg = model.pretrained_cfg
    tag = f"{cfg.get('architecture')}.{cfg.get('tag')}" if pretrained and checkpoint is None else None
    return _member(model, name, checkpoint, None, tag)


def _check_timm_name(name: str) -> None:
    """Fail early with suggestions: timm's own error for a typo names no alternatives."""
    source, model_name = timm.models.parse_model_name(name)
    if source is not None or timm.is_model(model_name):
        return
    base = model_name.split(".")[0]
    close = timm.list_models(f"{base}*")[:8] or difflib.get_close_matches(base, timm.list_models(), n=8)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise TeacherError(f"unknown timm model {name!r}{hint}")


def _checkpoint_num_classes(name: str, checkpoint: Path, state_dict: dict[str, torch.Tensor]) -> int:
    """Classes = rows of the classifier weight, found under timm's ``classifier`` name for the model."""
    cfg = timm.models.get_pretrained_cfg(timm.models.parse_model_name(name)[1])
    classifier = cfg.classifier if cfg is not None else None
    if isinstance(classifier, (list, tuple)):  # distilled models have (head, head_dist)
        classifier = classifier[0]
    key = f"{classifier}.weight"
    if classifier is None or key not in state_dict:
        raise TeacherError(f"cannot infer the number of classes of {name} from {checkpoint} (no {key!r} in it): pass --num-classes")
    return int(state_dict[key].shape[0])


def _factory(spec: str) -> Any:
    """The factory function named by ``pkg.mod:factory``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise TeacherError(f"bad teacher module {spec!r}: expected 'package.module:factory'")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        raise TeacherError(f"cannot import teacher module {module_name!r} (from {spec!r}): {e}") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise TeacherError(f"module {module_name!r} has no factory function {attr!r} (from {spec!r})")
    return factory


def factory_model(spec: str, checkpoint: str | os.PathLike | None = None, num_classes: int | None = None) -> nn.Module:
    """``FACTORY(checkpoint=..., num_classes=...)`` of ``pkg.mod:factory``, an nn.Module with a ``pretrained_cfg``."""
    kwargs: dict[str, Any] = {"checkpoint": None if checkpoint is None else str(checkpoint)}
    model = _factory(spec)(**kwargs, **({} if num_classes is None else {"num_classes": num_classes}))
    if not isinstance(model, nn.Module):
        raise TeacherError(f"teacher factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    if not hasattr(model, "pretrained_cfg"):
        model.pretrained_cfg = {}  # timm's defaults apply: 224 px, ImageNet mean/std, bicubic
    return model


def _factory_member(spec: str, checkpoint: Path | None, num_classes: int | None) -> _Member:
    model = factory_model(spec, checkpoint, num_classes)
    if checkpoint is None and model.pretrained_cfg.get("file"):  # the factory's default weights file
        checkpoint = Path(model.pretrained_cfg["file"])
    member = _member(model, spec, checkpoint, spec, None)
    if num_classes is not None and member.num_classes != num_classes:
        raise TeacherError(f"teacher factory {spec!r} made a model with {member.num_classes} classes, not {num_classes}")
    return member


def _member(model: nn.Module, name: str, checkpoint: Path | None, module: str | None, pretrained: str | None) -> _Member:
    model.eval()
    data_config = DataConfig.of(model)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:  # a plain module: ask it
        with torch.no_grad():
            num_classes = model(torch.zeros(1, 3, *data_config.input_size)).shape[-1]
    return _Member(model, name, checkpoint, module, pretrained, int(num_classes), data_config, _class_names(model, pretrained, int(num_classes)))


def _class_names(model: nn.Module, pretrained: str | None, num_classes: int) -> list[str] | None:
    """The model's own ``pretrained_cfg['label_names']``, else, for timm's pretrained ImageNet
    weights, the ImageNet synsets (the class folder names of an ImageNet train directory)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    if names is None and pretrained is not None:
        subset = infer_imagenet_subset(cfg)
        names = ImageNetInfo(subset).label_names() if subset is not None else None
    return [str(n) for n in names] if names is not None and len(names) == num_classes else None


def _describe(member: _Member, input_size: tuple[int, int]) -> dict[str, Any]:
    cfg = member.data_config
    return {
        "name": member.name,
        "checkpoint": None if member.checkpoint is None else str(member.checkpoint),
        "sha256": None if member.checkpoint is None else file_sha256(member.checkpoint),
        "module": member.module,
        "pretrained": member.pretrained,
        "num_classes": member.num_classes,
        "input_size": list(input_size),
        "native_input_size": list(cfg.input_size),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "interpolation": cfg.interpolation,
    }
