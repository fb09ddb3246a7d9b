"""The pretrained Keras CIFAR-10 CNN of ``shared/models/cifar10_keras_cnn.h5``, rebuilt in PyTorch.

A real external teacher for the CIFAR-10 pipeline and tests, read with h5py alone (no TensorFlow):
the layers come from the file's own ``model_config`` and the weights from ``model_weights``, so
the rebuild follows the file instead of a hand copy of its architecture. Use it as
``--teacher-module fkd.zoo.keras_cifar10:create_model``.

It expects raw 0..255 pixels (it was trained so); its ``pretrained_cfg`` says mean 0, std 1/255,
so the usual ``(x - mean) / std`` on [0, 1] inputs produces exactly that scale.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from . import shared_dir

CHECKPOINT_RELPATH = "models/cifar10_keras_cnn.h5"
NUM_CLASSES = 10
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PRETRAINED_CFG: dict[str, Any] = {
    "input_size": (3, 32, 32),
    "fixed_input_size": True,  # the Dense layer after Flatten takes exactly the 1x1x64 of a 32x32 input
    "mean": (0.0, 0.0, 0.0),
    "std": (1 / 255, 1 / 255, 1 / 255),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "num_classes": NUM_CLASSES,
    "classifier": "dense_2",
    "label_names": CLASS_NAMES,
}


class ChannelsLastFlatten(nn.Module):
    """Keras' Flatten on (N, C, H, W) tensors: Keras flattens channels-last (H, W, C), so permute
    first; the Dense weights that follow then line up for any spatial size, not only 1x1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


def default_checkpoint() -> Path:
    return shared_dir() / CHECKPOINT_RELPATH


def create_model(checkpoint: str | os.PathLike | None = None, num_classes: int | None = None) -> nn.Sequential:
    """The pretrained CNN in eval mode; its forward takes float (B, 3, 32, 32) in 0..255 and returns
    the 10 ReLU'd logits it was trained with (``from_logits=True``)."""
    if num_classes is not None and num_classes != NUM_CLASSES:
        raise ValueError(f"the Keras CIFAR-10 teacher predicts {NUM_CLASSES} classes, not {num_classes}")
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    if not path.is_file():
        raise FileNotFoundError(
            f"Keras CIFAR-10 checkpoint not found: {path} "
            f"(set FKD_SHARED to the folder holding {CHECKPOINT_RELPATH}, or pass its path)"
        )
    with h5py.File(path, "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
        model = nn.Sequential(_build_modules(layers))
        model.load_state_dict(_read_state_dict(layers, f["model_weights"]), strict=True)
    model.pretrained_cfg = {**PRETRAINED_CFG, "file": str(path)}  # timm's key for a local weights file
    model.num_classes = NUM_CLASSES
    return model.eval()


def _build_modules(layers: list[dict[str, Any]]) -> OrderedDict[str, nn.Module]:
    """PyTorch modules for the Keras Sequential layers, named as in the file, tracking the
    (C, H, W) or (features,) shape to size each layer."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    shape: tuple[int, ...] = ()
    for layer in layers:
        kind, cfg = layer["class_name"], layer["config"]
        name = cfg["name"]
        if "batch_input_shape" in cfg and not shape:
            _, h, w, c = cfg["batch_input_shape"]
            shape = (c, h, w)
        if kind == "InputLayer":
            continue
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ValueError(f"layer {name}: only channels_last Keras models are supported")
        if kind == "Conv2D":
            if cfg["padding"] not in ("valid", "same") or (cfg["padding"] == "same" and tuple(cfg["strides"]) != (1, 1)):
                raise ValueError(f"layer {name}: unsupported padding {cfg['padding']!r} with strides {cfg['strides']}")
            conv = nn.Conv2d(shape[0], cfg["filters"], tuple(cfg["kernel_size"]), tuple(cfg["strides"]),
                             padding=0 if cfg["padding"] == "valid" else "same", bias=cfg["use_bias"])
            modules[name] = conv
            shape = tuple(conv(torch.zeros(1, *shape)).shape[1:])
        elif kind == "BatchNormalization":
            modules[name] = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(shape[0], eps=cfg["epsilon"])
        elif kind == "MaxPooling2D":
            if cfg["padding"] != "valid":
                raise ValueError(f"layer {name}: unsupported pooling padding {cfg['padding']!r}")
            modules[name] = nn.MaxPool2d(tuple(cfg["pool_size"]), tuple(cfg["strides"]))
            shape = tuple(modules[name](torch.zeros(1, *shape)).shape[1:])
        elif kind == "Flatten":
            modules[name] = ChannelsLastFlatten()
            shape = (int(np.prod(shape)),)
        elif kind == "Dense":
            modules[name] = nn.Linear(shape[0], cfg["units"], bias=cfg["use_bias"])
            shape = (cfg["units"],)
        elif kind == "Dropout":
            modules[name] = nn.Dropout(cfg["rate"])
        else:
            raise ValueError(f"layer {name}: unsupported Keras layer type {kind}")
        activation = cfg.get("activation", "linear")
        if activation == "relu":
            modules[f"{name}_relu"] = nn.ReLU()
        elif activation != "linear":
            raise ValueError(f"layer {name}: unsupported activation {activation!r}")
    return modules


def _read_state_dict(layers: list[dict[str, Any]], weights: h5py.Group) -> dict[str, torch.Tensor]:
    """Keras weights under PyTorch names: conv kernels (kh, kw, in, out) -> (out, in, kh, kw),
    dense kernels (in, out) -> (out, in); batch-norm gamma/beta/moving stats as they are."""
    state: dict[str, torch.Tensor] = {}
    for layer in layers:
        kind, name = layer["class_name"], layer["config"]["name"]
        if kind not in ("Conv2D", "Dense", "BatchNormalization"):
            continue
        group = weights[name]
        w = {  # "conv2d/kernel:0" -> "kernel"
            (n.decode() if isinstance(n, bytes) else str(n)).rsplit("/", 1)[-1].split(":")[0]:
                torch.from_numpy(np.asarray(group[n], dtype=np.float32))
            for n in group.attrs["weight_names"]
        }
        if kind == "Conv2D":
            state[f"{name}.weight"] = w["kernel"].permute(3, 2, 0, 1).contiguous()
        elif kind == "Dense":
            state[f"{name}.weight"] = w["kernel"].T.contiguous()
        if kind in ("Conv2D", "Dense") and "bias" in w:
            state[f"{name}.bias"] = w["bias"]
        if kind == "BatchNormalization":
            state[f"{name}.weight"] = w["gamma"]
            state[f"{name}.bias"] = w["beta"]
            state[f"{name}.running_mean"] = w["moving_mean"]
            state[f"{name}.running_var"] = w["moving_variance"]
            state[f"{name}.num_batches_tracked"] = torch.tensor(0)
    return state
