"""``fkd-labels verify STORE --recompute N``: run the store's teacher again on N random stored crops
and compare (TinyViT's ``--check-saved-logits``, for any store of this fkd).

The teacher is rebuilt from the store's metadata (its members' timm names, checkpoints, checked
against their recorded SHA-256, factory modules, temperature, precision, input size), or given
with the teacher options when it cannot be (timm's pretrained weights at another version, a
randomly initialised teacher, a checkpoint that moved). Each chosen crop is rendered as the teacher
saw it, by the code training uses (``fkd.labels.views``: box, flip, a reinforced store's stored
augmentation and pair), relabelled, encoded with the store's scheme and decoded as training
decodes it. The figure reported is the largest difference: of any class probability between the
two decoded labels, or for an embedding store of any feature value relative to its crop's largest
stored value. Beyond ``tolerance`` the check fails (exit 1): the store does not hold what its
metadata says the teacher gives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..payload import embedding_codec, quantize
from ..store import LabelStore, StoreMeta, file_sha256
from ..teacher.errors import TeacherError
from ..teacher.features import TeacherFeatures
from ..teacher.options import TeacherSpec
from ..teacher.precision import DEFAULT_PRECISION
from .errors import LabelsError
from .views import image_locator, render_crops

DEFAULT_TOLERANCE = 0.01
"""Largest accepted difference: float16 storage moves a probability by ~5e-4, another thread
count or batch size by an ulp; bf16 arithmetic by up to 0.021 (the CIFAR-10 teacher): pass a
larger ``--tolerance`` for a store labelled in bf16 or fp16."""


@dataclass
class RecomputeReport:
    """What ``--recompute`` found: the largest difference and where, against ``tolerance``."""

    crops: int
    images: int
    teacher: str
    what: str  # "probability" or "feature value (relative to the crop's largest)"
    largest: float
    where: str
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.largest <= self.tolerance

    def format(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"recompute {verdict}: {self.crops} crops of {self.images} images relabelled by {self.teacher}; largest {self.what} "
                f"difference {self.largest:.3g} ({self.where}), tolerance {self.tolerance:g}")


def metadata_teacher(meta: StoreMeta) -> TeacherSpec:
    """The teacher the metadata describes; LabelsError when it cannot be rebuilt from it."""
    names, checkpoints, module = [], [], None
    for member in meta.teachers:
        name, checkpoint = member.get("name"), member.get("checkpoint")
        if not name or name == "random" or member.get("module") is None and checkpoint is None and member.get("pretrained") is None:
            raise LabelsError(f"the store's teacher {name!r} cannot be rebuilt from its metadata (imported, or randomly initialised): "
                              "give it with --teacher/--checkpoint or --teacher-module")
        if checkpoint is not None:
            if not Path(checkpoint).is_file():
                raise LabelsError(f"the store's teacher checkpoint {checkpoint} is gone: give it with --checkpoint")
            if member.get("sha256") and file_sha256(Path(checkpoint)) != member["sha256"]:
                raise LabelsError(f"the teacher checkpoint {checkpoint} changed since the store was labelled (its SHA-256 differs): "
                                  "give the original with --checkpoint")
        if member.get("module"):
            module = member["module"]
        else:
            names.append(name)
        checkpoints.append(checkpoint)  # the metadata lists timm members first, then the module: TeacherSpec's order
    return TeacherSpec(tuple(names), None if all(c is None for c in checkpoints) else tuple(checkpoints), module,
                       meta.num_classes if meta.embedding is None else None, meta.temperature,
                       DEFAULT_PRECISION if meta.teacher_precision == "unknown" else meta.teacher_precision, True, meta.input_size[0])


def pick_crops(meta: StoreMeta, count: int, seed: int) -> dict[int, np.ndarray]:
    """``count`` distinct (image, crop) pairs drawn uniformly from the store, by image."""
    total = meta.num_images * meta.num_crops
    flat = np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False))
    images, crops = np.divmod(flat, meta.num_crops)
    return {int(i): crops[images == i] for i in np.unique(images)}


def recompute(path: "str | Path", data: "str | Path", count: int, tolerance: float = DEFAULT_TOLERANCE,
              teacher: "TeacherSpec | None" = None, device: str = "cpu", seed: int = 0) -> RecomputeReport:
    """Relabel ``count`` random stored crops of the store at ``path`` (images under ``data``)."""
    with LabelStore(path, payload=None) as store:
        meta = store.meta
        spec = metadata_teacher(meta) if teacher is None else replace(
            teacher, num_classes=teacher.num_classes or (meta.num_classes if meta.embedding is None else None),
            temperature=meta.temperature, input_size=meta.input_size[0])
        try:
            model = spec.create(device).eval()
        except (TeacherError, FileNotFoundError, ValueError) as exc:
            raise LabelsError(f"teacher: {exc}") from None
        forward = model if meta.embedding is None else _embedding_forward(model, meta)
        chosen = pick_crops(meta, count, seed)
        views = render_crops(store, image_locator(data), chosen)
        largest, where = 0.0, "no crop"
        for index, crops in views.items():
            with torch.inference_mode():
                output = forward(crops.float().div_(255.0)).float().cpu()
            record = store.read(index)
            diff = _differences(meta, record, chosen[index], output)
            worst = int(diff.argmax())
            if float(diff[worst]) >= largest:
                largest, where = float(diff[worst]), f"{record.image_id} crop {int(chosen[index][worst])}"
        names = ", ".join(list(spec.names) + ([spec.module] if spec.module else []))
        what = "probability" if meta.embedding is None else "feature value (relative to the crop's largest)"
        return RecomputeReport(sum(len(c) for c in chosen.values()), len(chosen), names, what, largest, where, tolerance)


def _embedding_forward(model: torch.nn.Module, meta: StoreMeta):
    features = TeacherFeatures(model, meta.embedding.source)
    return lambda x: embedding_codec.normalize(features(x), meta.embedding.normalization)


def _differences(meta: StoreMeta, record, crops: np.ndarray, output: torch.Tensor) -> np.ndarray:
    """Per crop: the largest difference between the stored and the recomputed (encoded, decoded) target."""
    if meta.embedding is not None:
        stored = record.decoded_embedding()[crops]
        encoded = embedding_codec.encode(output.numpy(), meta.embedding.dtype)
        again = embedding_codec.decode(torch.from_numpy(np.array(encoded.embedding)),
                                       None if encoded.scales is None else torch.from_numpy(np.array(encoded.scales)))
        scale = stored.abs().amax(dim=1).clamp_min(1e-12)
        return ((stored - again).abs().amax(dim=1) / scale).numpy()
    codec = meta.label_codec()
    stored = record.decoded_labels(codec)[crops]
    payload = quantize.encode(output.numpy(), meta.scheme, meta.top_k)
    again = codec.decode(None if payload.indices is None else torch.from_numpy(payload.indices.astype(np.int64)),
                         None if payload.values is None else torch.from_numpy(payload.values))
    return (stored - again).abs().amax(dim=1).numpy()
