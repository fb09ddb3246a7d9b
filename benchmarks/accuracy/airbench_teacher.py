"""A strong CIFAR-10 teacher for bench_full.py: airbench94 (PyPI ``airbench`` 0.1.8, Keller Jordan's
fast CIFAR-10 training, about 94 % top-1 in seconds on one GPU), trained by the benchmark and run
by fkd as a teacher module:

    fkd-labelgen --teacher-module benchmarks.accuracy.airbench_teacher:create_model --checkpoint NET.pt ...
    fkd-train --mode online-kd --teacher-module benchmarks.accuracy.airbench_teacher:create_model --checkpoint NET.pt ...

(with the repository on PYTHONPATH: ``benchmarks.common.module_env``). airbench's network is float16
and channels_last on CUDA by construction (``make_net94``), its BatchNorms float32: the wrapper feeds
it the crops as fkd's ``Teacher`` normalized them (airbench's CIFAR mean and std, from the
``pretrained_cfg``), in float16 channels_last, and returns float32 logits. It needs CUDA and the
``bench`` extra (``pip install -e .[bench]``).

airbench's data are ``CifarLoader(path)``'s ``path/train.pt`` and ``path/test.pt``:
``{'images': uint8 (N, 32, 32, 3), 'labels': int64 (N,), 'classes': [...]}``; ``write_cifar_tensors``
writes them from the same JPEGs the students train on (airbench would download them otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fkd.data.images import list_images, load_image
from fkd.zoo.keras_cifar10 import CLASS_NAMES

NUM_CLASSES = 10
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
"""airbench.utils' normalization (the values its CifarLoader trains with), repeated so that this
module imports without airbench (tests, CPU machines); a test keeps them equal where it is installed."""


class Airbench94(nn.Module):
    """airbench's float16 network behind a float32 interface: normalized (B, 3, 32, 32) crops in,
    float32 logits out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half().contiguous(memory_format=torch.channels_last)).float()


def create_model(checkpoint: "str | os.PathLike | None" = None, num_classes: "int | None" = None) -> nn.Module:
    """airbench94 with the weights of ``checkpoint`` (a state dict bench_full.py saved), in eval mode."""
    if num_classes is not None and num_classes != NUM_CLASSES:
        raise ValueError(f"airbench94 predicts {NUM_CLASSES} CIFAR-10 classes, not {num_classes}")
    if checkpoint is None:
        raise ValueError("airbench94 has no default weights: pass --checkpoint NET.pt (benchmarks/accuracy/bench_full.py trains one)")
    if not torch.cuda.is_available():
        raise ValueError("airbench94 runs in float16 on CUDA only: run it where a GPU is visible (fkd-labelgen: --gpus-per-worker)")
    from airbench import make_net94

    net = make_net94()
    net.load_state_dict(torch.load(checkpoint, map_location="cuda"))
    model = Airbench94(net)
    model.pretrained_cfg = {"input_size": (3, 32, 32), "fixed_input_size": True, "mean": CIFAR_MEAN, "std": CIFAR_STD,
                            "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": NUM_CLASSES, "label_names": CLASS_NAMES,
                            "file": str(checkpoint)}
    model.num_classes = NUM_CLASSES
    return model.eval()


def write_cifar_tensors(folder: Path, split: "str | os.PathLike", name: str) -> Path:
    """``folder/name`` (``train.pt`` or ``test.pt``) in CifarLoader's layout, from the ImageFolder
    ``split`` (labels by sorted class folder: CIFAR-10's order); written once."""
    out = Path(folder) / name
    if out.exists():
        return out
    images = list_images(split)
    pixels = np.stack([load_image(images.path(i)).permute(1, 2, 0).numpy() for i in range(len(images))])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"images": torch.from_numpy(pixels), "labels": torch.from_numpy(images.labels.astype(np.int64)),
                "classes": list(images.class_names)}, out.with_suffix(".tmp"))
    out.with_suffix(".tmp").rename(out)
    return out
