"""``fkd-labels info``: what a store holds and what it costs, from its manifest alone.

Reading only ``store.json`` (plus each shard's presence and size) keeps ``info`` instant on a store of
any size and usable on incomplete or damaged stores; ``verify`` is the command that reads the shards.
A deleted or truncated shard is cheap to see, so ``info`` never calls such a store complete.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..payload.quantize import Scheme, stored_top_k
from ..store import MANIFEST_NAME, LabelStore, Manifest, ViewSpec, shard_file_problem
from .differences import full_values
from .fkd_format import is_imported
from .subset import StoreSubset, SubsetSpec


@dataclass
class StoreInfo:
    """The facts ``info`` reports (``--json`` prints exactly these fields)."""

    path: str
    store_id: str
    created: str
    tool_version: str
    format_version: int
    payload: str  # "labels" or "embedding"
    scheme: str | None  # None for an embedding store
    top_k: int  # the K the records hold (1 for hardening/smoothing, C for full; 0 for an embedding store)
    full_values: str | None  # a full store's float16 values: "log-probabilities" (format 5) or "probabilities" (older)
    embedding: dict[str, Any] | None  # dim, dtype, source, normalization of an embedding store
    num_classes: int
    class_names: list[str]
    num_images: int
    num_crops: int  # M, crops per image
    total_crops: int
    shards_total: int
    shards_done: int
    missing_shards: list[int]
    damaged_shards: dict[str, str]  # finished shard file -> why it no longer matches the manifest (missing, wrong size)
    complete: bool  # every shard finished and its file present at the recorded size
    images_done: int  # images in finished shards
    shard_bytes: int  # finished shards, as the manifest recorded them
    disk_bytes: int  # manifest + shard files present in the directory
    bytes_per_crop: float | None  # shard_bytes / (images_done * M)
    raw_bytes_per_crop: float  # uncompressed record bytes per crop
    teachers: list[dict[str, Any]]
    teacher_precision: str
    class_map: dict[str, int] | None
    image_fingerprint: str
    temperature: float
    input_size: list[int]
    interpolation: str
    crop_scale: list[float]
    crop_ratio: list[float]
    flip_prob: float
    seed: int | None  # None for stores imported from the official FKD format, whose crops were drawn unseeded
    bad_images: int
    augmentation: dict[str, Any] | None = None  # a reinforced store's (format version 6) per-crop augmentation
    crop_device: str = "cpu"  # where fkd-labelgen cut the crops: "cpu" (training's CPU replay, bit for bit) or "cuda"
    subset: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def store_info(path: "str | Path", subset: "SubsetSpec | None" = None) -> StoreInfo:
    """Collect ``StoreInfo`` for the store at ``path`` (with ``subset``: also the selected images)."""
    path = Path(path)
    manifest = Manifest.load(path)
    meta = manifest.meta
    layout = meta.record_layout()
    images_done = sum(info.count for info in manifest.shards.values())
    shard_bytes = sum(info.bytes for info in manifest.shards.values())
    disk = (path / MANIFEST_NAME).stat().st_size + sum(p.stat().st_size for p in path.glob("shard-*.h5") if p.is_file())
    damaged = {
        info.file: problem for _, info in sorted(manifest.shards.items()) if (problem := shard_file_problem(path, info, checksum=False))
    }
    info = StoreInfo(
        path=str(path),
        store_id=meta.store_id,
        created=meta.created,
        tool_version=meta.tool_version,
        format_version=meta.format_version,
        payload=meta.payload,
        scheme=meta.scheme,
        top_k=0 if meta.embedding is not None else stored_top_k(meta.scheme, meta.top_k, meta.num_classes),
        full_values=full_values(meta) if meta.scheme == Scheme.FULL.value else None,
        embedding=None if meta.embedding is None else dataclasses.asdict(meta.embedding),
        num_classes=meta.num_classes,
        class_names=list(meta.class_names),
        num_images=meta.num_images,
        num_crops=meta.num_crops,
        total_crops=meta.num_images * meta.num_crops,
        shards_total=meta.num_shards,
        shards_done=len(manifest.shards),
        missing_shards=manifest.missing_shards(),
        damaged_shards=damaged,
        complete=manifest.complete and not damaged,
        images_done=images_done,
        shard_bytes=shard_bytes,
        disk_bytes=disk,
        bytes_per_crop=shard_bytes / (images_done * meta.num_crops) if images_done else None,
        raw_bytes_per_crop=layout.raw_size / meta.num_crops,
        teachers=list(meta.teachers),
        teacher_precision=meta.teacher_precision,
        class_map=meta.class_map,
        image_fingerprint=meta.image_fingerprint,
        temperature=meta.temperature,
        input_size=list(meta.input_size),
        interpolation=meta.interpolation,
        crop_scale=list(meta.crop_scale),
        crop_ratio=list(meta.crop_ratio),
        flip_prob=meta.flip_prob,
        seed=None if is_imported(meta.teachers) else meta.seed,
        bad_images=len(meta.bad_images),
        augmentation=None if meta.augmentation is None else meta.augmentation.to_dict(),
        crop_device=meta.crop_device,
    )
    if subset is not None:
        with LabelStore(path, allow_incomplete=True, payload=None) as store:
            view = StoreSubset.from_spec(store, subset)
            labels = view.labels
            per_class = {meta.class_names[c]: int((labels == c).sum()) for c in sorted(set(labels.tolist())) if c >= 0}
            info.subset = {"spec": subset.describe(), "images": len(view), "crops": len(view) * meta.num_crops, "per_class": per_class}
    return info


def payload_line(info: StoreInfo) -> str:
    """The label scheme (a full store's with what its values are), or what the embedding vectors are
    and how they are stored."""
    if info.embedding is None:
        return f"scheme:       {info.scheme}, K={info.top_k}" + (f", float16 {info.full_values}" if info.full_values else "")
    e = info.embedding
    scale = " (a float32 scale per crop)" if e["dtype"] == "int8" else ""
    return f"embedding:    D={e['dim']}, {e['dtype']}{scale}, from {e['source']}, normalization {e['normalization']}"


def format_info(info: StoreInfo) -> str:
    """The human-readable report."""

    def size(n: float) -> str:
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if n < 1024 or unit == "TiB":
                return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
            n /= 1024
        raise AssertionError("unreachable")

    names = ", ".join(info.class_names[:10]) + (f", ... ({info.num_classes} in all)" if info.num_classes > 10 else "")
    problems = [f"INCOMPLETE: {len(info.missing_shards)} shards missing (first: {info.missing_shards[:10]})"] if info.missing_shards else []
    if info.damaged_shards:
        listed = "; ".join(f"{file}: {problem}" for file, problem in list(info.damaged_shards.items())[:3])
        problems.append(f"DAMAGED: {len(info.damaged_shards)} finished shards ({listed}); 'fkd-labels verify {info.path} "
                        "--repair-plan' says what to redo")
    state = "; ".join(problems) or "complete"
    seed = f"seed {info.seed}" if info.seed is not None else "unseeded (imported from the official FKD format)"
    per_crop = f"{info.bytes_per_crop:.1f} B" if info.bytes_per_crop is not None else "n/a (no finished shard)"
    lines = [
        f"store:        {info.path}",
        f"id:           {info.store_id} (created {info.created}, fkd {info.tool_version}, format v{info.format_version})",
        f"status:       {state}",
        payload_line(info),
        f"classes:      {info.num_classes} ({names})",
        f"images:       {info.num_images} ({info.images_done} in finished shards, {info.bad_images} bad images left out)",
        f"crops:        {info.num_crops} per image, {info.total_crops} in all",
        f"shards:       {info.shards_done} of {info.shards_total} finished",
        f"size on disk: {size(info.disk_bytes)} (shards {size(info.shard_bytes)})",
        f"per crop:     {per_crop} stored, {info.raw_bytes_per_crop:.1f} B uncompressed",
        f"crop params:  scale {tuple(info.crop_scale)}, ratio {tuple(round(r, 4) for r in info.crop_ratio)}, "
        f"flip p={info.flip_prob}, {seed}",
        f"teacher view: {info.input_size[0]}x{info.input_size[1]} {info.interpolation}, "
        + ("" if info.embedding is not None else f"temperature {info.temperature}, ")  # features are taken before any softmax
        + f"precision {info.teacher_precision}",
        "crops cut:    " + ("on the GPU (device kernel: within 2 grey levels of the CPU replay training uses)" if info.crop_device == "cuda"
                            else "on the CPU (torch's uint8 kernel: the CPU replay training uses, bit for bit)"),
        "augmentation: " + ("none (box and flip only: training augmentation comes after the teacher)" if info.augmentation is None
                            else f"{ViewSpec.from_dict(info.augmentation).describe()}, labelled as augmented"),
        "fingerprints: " + ("CRC-32 of every image file (checked by fkd-train and show)" if info.image_fingerprint == "crc32"
                            else "none (older store: images are matched by path and size only)"),
    ]
    if info.class_map is not None:
        mapped = ", ".join(f"{k} -> {info.class_names[v]}" for k, v in list(info.class_map.items())[:6])
        lines.append(f"class map:    {mapped}{', ...' if len(info.class_map) > 6 else ''} ({len(info.class_map)} data classes)")
    for i, teacher in enumerate(info.teachers):
        described = ", ".join(f"{k}={v}" for k, v in teacher.items() if k in ("name", "checkpoint", "module", "sha256") and v)
        lines.append(f"teacher {i}:    {described or teacher}")
    if info.subset is not None:
        lines.append(f"subset:       {info.subset['spec']}: {info.subset['images']} images, {info.subset['crops']} crops")
        lines.extend(f"  {name}: {count}" for name, count in info.subset["per_class"].items())
    return "\n".join(lines)
