"""The student: any timm model by name, plus the data settings it expects (size, mean/std, resize).

timm's pretrained config says how a model wants its inputs; flags override each value, because a
model built with ``img_size=32`` (or trained from scratch on CIFAR) still carries its ImageNet config.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass
from typing import Any

import timm
import yaml
from timm.data import resolve_model_data_config
from timm.models import get_pretrained_cfg
from torch import nn

from .errors import SetupError


@dataclass(frozen=True)
class StudentDataConfig:
    """Input side length, normalization, resize filter and eval centre-crop fraction."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float


def parse_model_kwargs(items: "list[str] | None") -> dict[str, Any]:
    """['img_size=32', 'depth=2'] -> {'img_size': 32, 'depth': 2} (values parsed as YAML scalars)."""
    kwargs: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise SetupError(f"--model-kwargs expects key=value items, got {item!r}")
        kwargs[key.strip()] = yaml.safe_load(value)
    return kwargs


def fit_input_size(args: argparse.Namespace) -> None:
    """Make --input-size and the img_size of a fixed-size model (a ViT: timm's ``fixed_input_size``) agree,
    in place, before args.yaml records them.

    Such a model takes inputs of its img_size only (timm asserts at the first step). --input-size
    alone sets img_size (resampling pretrained position embeddings); img_size alone sets the input
    size; both, when they differ, are refused. Models of any input size, and ``dynamic_img_size``
    ViTs, are left as they are."""
    cfg = get_pretrained_cfg(args.model)
    kwargs = parse_model_kwargs(args.model_kwargs)
    if cfg is None or not cfg.fixed_input_size or kwargs.get("dynamic_img_size"):
        return
    img_size = kwargs.get("img_size")
    if img_size is None and args.input_size not in (None, cfg.input_size[-1]):
        args.model_kwargs = [*(args.model_kwargs or []), f"img_size={args.input_size}"]
    elif isinstance(img_size, int) and args.input_size is None:
        args.input_size = img_size
    elif None not in (img_size, args.input_size) and img_size not in (args.input_size, [args.input_size] * 2):
        raise SetupError(
            f"--input-size {args.input_size} differs from --model-kwargs img_size={img_size}: {args.model} takes inputs of its "
            "img_size only; make them equal (or give one of them: the other follows)"
        )


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


def student_data_config(
    model: nn.Module,
    input_size: "int | None" = None,
    mean: "list[float] | None" = None,
    std: "list[float] | None" = None,
    interpolation: "str | None" = None,
    crop_pct: "float | None" = None,
) -> StudentDataConfig:
    """The model's timm data config with any of its values overridden."""
    cfg = resolve_model_data_config(model)
    return StudentDataConfig(
        input_size=int(input_size or cfg["input_size"][-1]),
        mean=tuple(mean or cfg["mean"]),
        std=tuple(std or cfg["std"]),
        interpolation=interpolation or cfg.get("interpolation", "bilinear"),
        crop_pct=float(crop_pct or cfg.get("crop_pct", 0.875)),
    )
