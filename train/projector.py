"""The projector of feature distillation: the student's features -> the teacher's D dimensions.

A student's features rarely have the teacher's width (a ResNet-18 student has 512 pre-logits
features, a ViT-B teacher 768), so a small head maps them over; it exists for training only. The
student stays a plain timm model: ``FeatureStudent`` wraps it with the projector for the training
step, evaluation and EMA see the student alone, and checkpoints keep the student's state dict under
``model`` (loadable into ``timm.create_model`` with strict=True, as before) and the projector apart
(``Projector.entry``: under ``projector`` in each checkpoint, and as ``projector.pth``).

Sources of the student's features:

- ``pre-logits`` (embedding stores, and online-fd's pre-logits target): timm's
  ``forward_head(forward_features(x), pre_logits=True)``, width ``head_hidden_size`` (or
  ``num_features``); ``linear`` is one ``nn.Linear``, ``mlp`` timm's two-layer ``Mlp`` (hidden width
  D, GELU).
- ``feature-map`` (online-fd, FD): ``forward_features(x)`` as a (B, C, H, W) map (ViT tokens
  without their class/distillation tokens, reshaped to the square patch grid, as FD's decoder reads
  them); ``linear`` is FD's 1x1 convolution, applied at every position.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.layers import Mlp
from torch import nn

PROJECTOR_KINDS = ("linear", "mlp")
SOURCES = ("pre-logits", "feature-map")


def as_feature_map(features: torch.Tensor, channels: int, prefix_tokens: int = 0) -> torch.Tensor:
    """timm ``forward_features`` output as a (B, C, H, W) map: NCHW as it is, NHWC (Swin-style)
    permuted, ViT tokens (B, N, C) without the ``prefix_tokens`` reshaped to their square grid."""
    if features.ndim == 4 and features.shape[1] == channels:
        return features
    if features.ndim == 4 and features.shape[-1] == channels:
        return features.permute(0, 3, 1, 2)
    if features.ndim == 3 and features.shape[-1] == channels:
        tokens = features[:, prefix_tokens:]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} patch tokens do not form a square grid: no feature map to distill")
        return tokens.transpose(1, 2).reshape(features.shape[0], channels, side, side)
    raise ValueError(f"forward_features gave {tuple(features.shape)}: expected a (B, {channels}, H, W) map or (B, N, {channels}) tokens")


def feature_dim(model: nn.Module, source: str) -> int:
    """Width of a timm model's features of ``source``."""
    if source == "pre-logits":
        return int(getattr(model, "head_hidden_size", None) or model.num_features)
    return int(model.num_features)


class Projector(nn.Module):
    """``kind`` head from ``in_dim`` student features of ``source`` to ``out_dim`` (the teacher's D)."""

    def __init__(self, kind: str, source: str, in_dim: int, out_dim: int):
        super().__init__()
        if kind not in PROJECTOR_KINDS or source not in SOURCES:
            raise ValueError(f"projector kind must be one of {PROJECTOR_KINDS} and source one of {SOURCES}, got {kind!r}, {source!r}")
        if source == "feature-map" and kind != "linear":
            raise ValueError("a feature map is projected by a 1x1 convolution (kind 'linear'), as FD does")
        self.kind, self.source, self.in_dim, self.out_dim = kind, source, int(in_dim), int(out_dim)
        if source == "feature-map":
            self.net: nn.Module = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        elif kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        else:
            self.net = Mlp(in_dim, hidden_features=out_dim, out_features=out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def describe(self) -> str:
        return f"{self.kind} projector {self.source} {self.in_dim} -> {self.out_dim}"

    def entry(self) -> dict[str, Any]:
        """What a checkpoint and ``projector.pth`` keep: the settings and the weights (plain values
        and tensors: ``torch.load(weights_only=True)`` reads them)."""
        return {"kind": self.kind, "source": self.source, "in_dim": self.in_dim, "out_dim": self.out_dim, "state_dict": self.state_dict()}

    def load_entry(self, entry: Any) -> None:
        """Restore from ``entry``; ValueError when it is another projector than this run builds."""
        if not isinstance(entry, dict) or "state_dict" not in entry:
            raise ValueError("the checkpoint has no projector, but this run trains one (feature distillation)")
        theirs = tuple(entry.get(k) for k in ("kind", "source", "in_dim", "out_dim"))
        ours = (self.kind, self.source, self.in_dim, self.out_dim)
        if theirs != ours:
            raise ValueError(f"the checkpoint's projector is {theirs}, this run builds {ours} (kind, source, in, out)")
        self.load_state_dict(entry["state_dict"])


def build_projector(model: nn.Module, kind: str, source: str, out_dim: int, seed: int) -> Projector:
    """The projector for ``model``'s ``source`` features, initialized from ``seed`` alone (the same
    weights on every rank, leaving the global random stream untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Projector(kind, source, feature_dim(model, source), out_dim)


class FeatureStudent(nn.Module):
    """The student and its projector as one training module: ``forward`` returns (logits,
    projected features), running the backbone once and timm's head twice (logits, and pre-logits
    for the projector: the head is cheap, and ``forward_head`` keeps each model's own dropout and
    pooling). Evaluation uses the student alone."""

    def __init__(self, student: nn.Module, projector: Projector):
        super().__init__()
        self.student = student
        self.projector = projector
        self.channels = int(student.num_features)
        self.prefix_tokens = int(getattr(student, "num_prefix_tokens", 0) or 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.student.forward_features(x)
        logits = self.student.forward_head(features)
        if self.projector.source == "pre-logits":
            return logits, self.projector(self.student.forward_head(features, pre_logits=True))
        return logits, self.projector(as_feature_map(features, self.channels, self.prefix_tokens))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The student's own exemptions (position embeddings, tokens), for timm's optimizer factory."""
        names = self.student.no_weight_decay() if hasattr(self.student, "no_weight_decay") else set()
        return {f"student.{n}" for n in names}
