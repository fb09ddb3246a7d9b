"""The student: any timm model by name, plus the data settings it expects (size, mean/std, resize).

timm's pretrained config says how a model wants its inputs; flags override each value, because a
model built with ``img_size=32`` (or trained from scratch on CIFAR) still carries its ImageNet config.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import timm
import yaml
from timm.data import resolve_model_data_config
from timm.models import get_pretrained_cfg
from torch import nn

from .config import ModelConfig
from .errors import SetupError


@dataclass(frozen=True)
class StudentDataConfig:
    """Input side length, normalization, resize filter and eval centre-crop fraction."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float


def parse_model_kwargs(items: "Sequence[str] | None") -> dict[str, Any]:
    """['img_size=32', 'depth=2'] -> {'img_size': 32, 'depth': 2} (values parsed as YAML scalars)."""
    kwargs: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise SetupError(f"--model-kwargs expects key=value items, got {item!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    return kwargs


def fit_input_size(model: ModelConfig) -> ModelConfig:
    """``model`` with --input-size and the img_size of a fixed-size model (a ViT: timm's
    ``fixed_input_size``) made to agree, before args.yaml records them.

    Such a model takes inputs of its img_size only (timm asserts at the first step). --input-size
    alone sets img_size (resampling pretrained position embeddings); img_size alone sets the input
    size; both, when they differ, are refused. Models of any input size, and ``dynamic_img_size``
    ViTs, are left as they are."""
    cfg = get_pretrained_cfg(model.model)
    kwargs = parse_model_kwargs(model.model_kwargs)
    if cfg is None or not cfg.fixed_input_size or kwargs.get("dynamic_img_size"):
        return model
    img_size = kwargs.get("img_size")
    if img_size is None and model.input_size not in (None, cfg.input_size[-1]):
        return replace(model, model_kwargs=(*(model.model_kwargs or ()), f"img_size={model.input_size}"))
    if isinstance(img_size, int) and model.input_size is None:
        return replace(model, input_size=img_size)
    if None not in (img_size, model.input_size) and img_size not in (model.input_size, [model.input_size] * 2):
        raise SetupError(
            f"--input-size {model.input_size} differs from --model-kwargs img_size={img_size}: {model.model} takes inputs of its "
            "img_size only; make them equal (or give one of them: the other follows)"
        )
    return model


def create_student(name: str, num_classes: int, pretrained: bool = False, drop_path: "float | None" = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with a clear error for unknown names (and close matches)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise SetupError(f"unknown model {name!r}{hint}")
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as exc:  # a keyword the model's constructor does not take
        raise SetupError(f"cannot build {name} with {kwargs}: {exc}") from None
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise SetupError(f"cannot load pretrained weights for {name} ({exc}); drop --pretrained or make them available offline") from None
        raise


def student_data_config(model: nn.Module, settings: ModelConfig) -> StudentDataConfig:
    """The model's timm data config with any of its values that ``settings`` gives overridden."""
    cfg = resolve_model_data_config(model)
    return StudentDataConfig(
        input_size=int(settings.input_size or cfg["input_size"][-1]),
        mean=tuple(settings.mean or cfg["mean"]),
        std=tuple(settings.std or cfg["std"]),
        interpolation=settings.interpolation or cfg.get("interpolation", "bilinear"),
        crop_pct=float(settings.crop_pct or cfg.get("crop_pct", 0.875)),
    )
