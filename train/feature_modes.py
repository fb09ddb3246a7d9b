"""Feature-distillation modes: the student's projected features learn the teacher's.

Both take the output of ``train.projector.FeatureStudent``, ``(logits, projected features)``, and
share one formula with the ground truth's share W (``--gt-weight``):

    loss = (1 - W) * distill + W * CE(logits, one-hot(label))

- ``EmbeddingMode`` (``--mode fkd`` with ``--embed-store``): ``distill = embed_weight *
  feature_loss(projected, stored embedding)``, plus, with a label store of the same crops too,
  ``CE(logits, stored soft labels)`` (weight 1), so W keeps the meaning it has for label stores
  alone (``FKDMode``: target ``(1 - W) * stored + W * one-hot``). The targets are one dense row per
  crop, [stored labels (C) | ground truth (C) | embedding (D)] with the parts the run uses, so
  Mixup/CutMix mix all of them with the image's lambda. For the embedding that linear mix is an
  approximation: the teacher never saw the mixed image, and its features are not linear in the
  pixels (the same approximation as mixing stored soft labels). The stored values are decoded on
  the device (``embedding_codec.decode``); ``smooth-l1`` whitens the (mixed) target in the loss,
  each ensemble member's slice on its own (``member_dims``, the store's ``embedding_dims``).
- ``OnlineFDMode`` (``--mode online-fd``): the teacher runs every step on the student's mixed
  crops (resized to its input size, in eval mode, under no_grad, at ``--teacher-precision``), and
  its features are the target (``fkd.teacher.features.TeacherFeatures``). ``feature-map`` is FD's setting:
  the teacher's ``forward_features`` map against the student's map through a 1x1 convolution,
  average-pooled to the teacher's H x W when they differ (pooling commutes with a 1x1 convolution),
  ``smooth-l1`` whitening every position over the channels, beta 2.0. Any vector source
  (``pre-logits``, ``pooled``, a module) is the online counterpart of an embedding store of that
  source: the student's pre-logits through ``--projector``, an ensemble's members whitened apart.

What differs from FD's code: FD pre-trains with the feature loss alone and fine-tunes afterwards,
on ViT/Swin token maps of equal size; here any timm student and teacher (CNN maps, ViT tokens
without their class tokens), maps of unequal size pooled, optional ground truth and Mixup/CutMix in
the same run, and the teacher at its own input size and normalization.

Without W (and without stored labels) the student's classifier gets no gradient at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fkd.data.multicrop import CropBatch
from fkd.data.targets import crop_ground_truth
from fkd.losses.features import feature_loss, feature_map_loss
from fkd.losses.labels import soft_target_cross_entropy
from fkd.payload.embedding_codec import decode as decode_embedding
from fkd.payload.quantize import LabelCodec
from fkd.teacher.features import FEATURE_MAP, TeacherFeatures

from .modes import resize_for_teacher
from .projector import as_feature_map


def with_ground_truth(distill: torch.Tensor, logits: torch.Tensor, truth: "torch.Tensor | None", gt_weight: float) -> torch.Tensor:
    """``(1 - W) * distill + W * CE(logits, truth)``; ``distill`` alone when W is 0."""
    if not gt_weight:
        return distill
    return (1.0 - gt_weight) * distill + gt_weight * soft_target_cross_entropy(logits, truth)


class GroundTruthShare:
    """The ground-truth part both modes share: a (smoothed) one-hot target when W > 0."""

    def __init__(self, num_classes: int, gt_weight: float, smoothing: float):
        self.num_classes = num_classes
        self.gt_weight = gt_weight
        self.smoothing = smoothing

    def truth(self, batch: CropBatch) -> "list[torch.Tensor]":
        return [crop_ground_truth(batch, self.num_classes, self.smoothing)] if self.gt_weight else []


class EmbeddingMode(GroundTruthShare):
    """Stored embeddings (and, with ``scheme``, the stored soft labels of the same crops;
    ``log_probs``: a full label store of format version 5). ``member_dims``: each ensemble member's
    part of D (None: one teacher)."""

    def __init__(
        self, num_classes: int, dim: int, embed_loss: str, embed_weight: float = 1.0, gt_weight: float = 0.0,
        smoothing: float = 0.0, scheme: "str | None" = None, *, log_probs: bool = False, member_dims: "tuple[int, ...] | None" = None,
    ):
        super().__init__(num_classes, gt_weight, smoothing)
        if member_dims is not None and sum(member_dims) != dim:
            raise ValueError(f"the members' dims {list(member_dims)} do not add up to D={dim}")
        self.dim = dim
        self.embed_loss = embed_loss
        self.embed_weight = embed_weight
        self.codec = None if scheme is None else LabelCodec(scheme, num_classes, log_probs=log_probs)
        self.member_dims = member_dims

    def targets(self, batch: CropBatch) -> torch.Tensor:
        if batch.embedding is None:
            raise ValueError("the batch carries no stored embeddings")
        stored = [] if self.codec is None else [self.codec.decode(batch.indices, batch.values)]
        return torch.cat([*stored, *self.truth(batch), decode_embedding(batch.embedding, batch.scales)], dim=1)

    def loss(self, output: "tuple[torch.Tensor, torch.Tensor]", images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, projected = output
        c = self.num_classes
        with_labels = self.codec is not None
        parts = targets.split([c] * with_labels + [c] * bool(self.gt_weight) + [self.dim], dim=1)
        distill = self.embed_weight * feature_loss(projected, parts[-1], self.embed_loss, segments=self.member_dims)
        if with_labels:
            distill = distill + soft_target_cross_entropy(logits, parts[0])
        return with_ground_truth(distill, logits, parts[-2] if self.gt_weight else None, self.gt_weight)


class OnlineFDMode(GroundTruthShare):
    """The teacher's features of the same (mixed) crops, every step."""

    def __init__(
        self, features: TeacherFeatures, num_classes: int, embed_loss: str, embed_weight: float = 1.0, gt_weight: float = 0.0,
        smoothing: float = 0.0,
    ):
        super().__init__(num_classes, gt_weight, smoothing)
        self.features = features
        self.embed_loss = embed_loss
        self.embed_weight = embed_weight
        self.teacher_size = tuple(features.teacher.data_config.input_size)
        self.is_map = features.source == FEATURE_MAP
        model = features.teacher.members[0].model
        self.map_channels = int(getattr(model, "num_features", 0) or 0)
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.target_shape = tuple(self.target(torch.zeros(1, 3, *self.teacher_size)).shape[1:]) if self.is_map else features.shape

    @property
    def out_dim(self) -> int:
        """What the projector must produce: the map's channels, or the vector's D."""
        return int(self.target_shape[0])

    @torch.no_grad()
    def target(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's features of ``images`` (float32): a (B, C, H, W) map, or (B, D) vectors."""
        out = self.features(resize_for_teacher(images, self.teacher_size))
        return as_feature_map(out, self.map_channels, self.prefix_tokens) if self.is_map else out

    def targets(self, batch: CropBatch) -> torch.Tensor:
        truth = self.truth(batch)
        return truth[0] if truth else torch.zeros(len(batch), 0, device=batch.labels.device)

    def loss(self, output: "tuple[torch.Tensor, torch.Tensor]", images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, projected = output
        target = self.target(images)
        if self.is_map:
            if projected.shape[-2:] != target.shape[-2:]:
                projected = F.adaptive_avg_pool2d(projected, target.shape[-2:])
            distill = feature_map_loss(projected, target, self.embed_loss)
        else:
            distill = feature_loss(projected, target, self.embed_loss, segments=self.features.dims)
        return with_ground_truth(self.embed_weight * distill, logits, targets, self.gt_weight)
