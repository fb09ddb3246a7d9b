"""Reinforced stores for the tests, written exactly as fkd-labelgen writes them (its plan, its worker,
``write_shard``) without starting Ray: the worker is driven directly, shard by shard."""

from __future__ import annotations

from pathlib import Path

from fkd.data.crops import CropParams
from fkd.data.images import list_images
from fkd.store import ViewSpec, open_for_writing, write_shard
from fkd.teacher.options import TeacherSpec
from labelgen.cli import build_parser
from labelgen.messages import EmbeddingSettings, LabelSettings
from labelgen.plan import image_refs, pending_shards, store_meta
from labelgen.worker import LabelWorker, WorkerConfig

FULL_SPEC = ViewSpec(randaugment="rand-m9-mstd0.5-inc1", color_jitter=0.4, reprob=0.5, recount=2, mixup=0.8, cutmix=1.0)
"""Every step at once: jitter, RandAugment (increasing ops, random signs), two erasing boxes, Mixup and CutMix pairs."""


def make_worker(checkpoint: Path, spec: "ViewSpec | None", scheme: "str | None" = "full", num_crops: int = 6, seed: int = 3,
                size: int = 32, batch_size: int = 7) -> LabelWorker:
    """fkd-labelgen's worker for test_resnet ``checkpoint`` at ``size`` px; ``scheme`` None: an
    embedding store (its pre-logits, float16)."""
    args = build_parser().parse_args(["--data", "unused", "--out", "unused", "--teacher", "test_resnet", "--checkpoint", str(checkpoint),
                                      "--no-pretrained", "--input-size", str(size)])
    embedding = None if scheme is not None else EmbeddingSettings("pre-logits")
    labels = LabelSettings(scheme, 2 if scheme else 0, num_crops, seed=seed, crop_params=CropParams(scale=(0.2, 1.0)), shard_size=4,
                           embedding=embedding, views=spec)
    return LabelWorker(WorkerConfig(TeacherSpec.from_namespace(args), labels, batch_size, threads=1, device="cpu"))


def label_store(folder: Path, out: Path, worker: LabelWorker) -> Path:
    """The store fkd-labelgen makes of ``folder`` with ``worker``'s settings (one worker, no Ray)."""
    images = list_images(folder)
    refs = image_refs(images)
    meta = store_meta(worker.config.labels, worker.info(), images, refs, [])
    manifest = open_for_writing(out, meta)
    for task in pending_shards(manifest, refs):
        outcome = worker.label_shard(task)
        manifest.shards[task.shard] = write_shard(out, meta, task.shard, outcome.data)
        manifest.save(out)
    return out
