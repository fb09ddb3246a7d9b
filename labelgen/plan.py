"""Planning a run: which images go in the store, its metadata, and the shards still to do.

Bad images are found by a decode pre-pass before anything is planned, so the store's image list
(the data listing minus the bad images) and its shard ranges never change during a run or across
resumes. The pre-pass result is kept in the store metadata (``bad_images``): a rerun on the same
listing reuses it instead of decoding the whole dataset again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fkd.data.classes import store_class_names
from fkd.data.images import ImageList
from fkd.data.mixing import image_partners
from fkd.payload.embedding_spec import EmbeddingSpec
from fkd.store import MANIFEST_NAME, Manifest, RecordLayout, StoreError, StoreMeta, new_meta

from .errors import BadImage
from .messages import ImageRef, LabelSettings, ShardTask, TeacherInfo


def image_refs(images: ImageList) -> list[ImageRef]:
    """The listing as picklable records. Locations are absolute (``ImageList``) because Ray workers
    need not share the driver's working directory (on a cluster they must see the data at this path)."""
    return [ImageRef(e.image_id, images.location(i), int(e.label)) for i, e in enumerate(images.entries)]


def chunks(items: list[ImageRef], size: int) -> list[list[ImageRef]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def previous_scan(out: Path, fingerprint: str) -> "list[BadImage] | None":
    """The bad images recorded by an existing store at ``out`` made from the same listing, if any."""
    if not (out / MANIFEST_NAME).exists():
        return None
    try:
        meta = Manifest.load(out).meta
    except StoreError:
        return None  # open_for_writing reports the unusable store.
    if meta.data_fingerprint != fingerprint:
        return None
    return [BadImage(b["image_id"], b["reason"]) for b in meta.bad_images]


def keep_good(refs: list[ImageRef], bad: list[BadImage]) -> list[ImageRef]:
    bad_ids = {b.image_id for b in bad}
    return [r for r in refs if r.image_id not in bad_ids]


def store_meta(
    settings: LabelSettings, teacher: TeacherInfo, images: ImageList, kept: list[ImageRef], bad: list[BadImage],
    class_map: "dict[str, int] | None" = None,
) -> StoreMeta:
    """Metadata of the store for the listing ``images`` (as on disk: its fingerprint identifies the
    data) whose images ``kept`` are labelled, with ground truth already in the store's class space:
    the teacher's for soft labels, the data's own for embeddings (``checks.class_space``)."""
    return new_meta(
        **_payload_settings(settings, teacher, images, class_map),
        class_map=class_map,
        teacher_precision=teacher.precision,
        image_fingerprint="crc32",
        num_crops=settings.num_crops,
        num_images=len(kept),
        shard_size=settings.shard_size,
        crop_scale=settings.crop_params.scale,
        crop_ratio=settings.crop_params.ratio,
        flip_prob=settings.crop_params.flip_prob,
        input_size=teacher.input_size,
        interpolation=teacher.interpolation,
        mean=teacher.mean,
        std=teacher.std,
        seed=settings.seed,
        augmentation=settings.views,
        crop_device=teacher.crop_device,
        data_fingerprint=images.fingerprint(),
        bad_images=[b.to_dict() for b in bad],
    )


def _payload_settings(
    settings: LabelSettings, teacher: TeacherInfo, images: ImageList, class_map: "dict[str, int] | None"
) -> dict[str, Any]:
    """The metadata that differs between a label store and an embedding store. An embedding's D is
    the sum of the members' (concatenated in member order); each member records its own D."""
    if settings.embedding is None:
        return {
            "scheme": settings.scheme, "top_k": settings.top_k, "num_classes": teacher.num_classes, "teachers": teacher.members,
            "class_names": store_class_names(images, teacher.num_classes, teacher.class_names, mapped=class_map is not None),
            "temperature": teacher.temperature,
        }
    spec, dims = settings.embedding, teacher.embedding_dims or ()
    num_classes = len(images.class_names)
    return {
        "scheme": None, "top_k": 0, "num_classes": num_classes, "class_names": store_class_names(images, num_classes, None, mapped=False),
        "teachers": [{**member, "embedding_dim": dim} for member, dim in zip(teacher.members, dims)],
        "embedding": EmbeddingSpec(sum(dims), spec.dtype, spec.source, spec.normalization),
    }


def pending_shards(manifest: Manifest, kept: list[ImageRef]) -> list[ShardTask]:
    """One task per shard the store does not have yet, in shard order, with the images its crops
    are mixed with when the store pairs crops (``shard_partners``)."""
    meta = manifest.meta
    layout: RecordLayout = meta.record_layout()
    tasks = []
    for shard in manifest.missing_shards():
        start, stop = meta.shard_range(shard)
        tasks.append(ShardTask(shard, start, kept[start:stop], layout, len(kept), shard_partners(meta, kept, start, stop)))
    return tasks


def shard_partners(meta: StoreMeta, kept: list[ImageRef], start: int, stop: int) -> dict[int, ImageRef]:
    """The images that images [start, stop) are paired with (by store index), any shard's: the
    worker decodes each once per image it pairs with (``fkd.data.mixing``). Empty without pairs."""
    spec = meta.augmentation
    if spec is None or not spec.mixes:
        return {}
    wanted = {int(j) for i in range(start, stop) for j in image_partners(spec, meta.seed, kept[i].image_id, i, len(kept))}
    return {j: kept[j] for j in sorted(wanted)}
