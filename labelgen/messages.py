"""What the driver and the Ray workers send each other: small picklable records, no open files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fkd.data.crops import CropParams
from fkd.data.images import ImageLocation
from fkd.store import RecordLayout, ShardData, ViewSpec

from .errors import BadImage


@dataclass(frozen=True)
class EmbeddingSettings:
    """``--target embedding``: which teacher features to store (``fkd.teacher.features`` source), how."""

    source: str
    dtype: str = "float16"
    normalization: str = "none"


@dataclass(frozen=True)
class LabelSettings:
    """The user's choices that define the labels (or embeddings), besides the teacher and the data."""

    scheme: "str | None"  # None with --target embedding
    top_k: int
    num_crops: int
    seed: int
    crop_params: CropParams
    shard_size: int
    embedding: "EmbeddingSettings | None" = None  # set: store the teacher's features, not soft labels
    views: "ViewSpec | None" = None  # set: each crop's augmentation, applied before the teacher and stored (format 6)


@dataclass(frozen=True)
class ImageRef:
    """One image to read: its id in the store and where this run finds its bytes (a file, or a
    member of a tar shard)."""

    image_id: str
    location: ImageLocation
    label: int = -1


@dataclass
class ShardTask:
    """One shard of work: the images [start, start + len(images)) of the store, in store order.

    ``layout`` comes from the store metadata so that the workers pack records exactly the way the
    reader will unpack them. A store with Mixup/CutMix pairs also sends the images the shard's crops
    are mixed with (``partners``, by store index: they may live in other shards; the worker decodes
    them itself) and the store's image count, which the pairs are drawn over.
    """

    shard: int
    start: int
    images: list[ImageRef]
    layout: RecordLayout
    num_images: int = 0
    partners: dict[int, ImageRef] = field(default_factory=dict)


@dataclass
class ShardOutcome:
    """A labelled shard (``data``), or the images of the shard that could not be decoded."""

    shard: int
    data: "ShardData | None" = None
    bad_images: list[BadImage] = field(default_factory=list)
    teacher_seconds: float = 0.0  # wall time of the teacher's forward passes (device synchronized)


@dataclass(frozen=True)
class TeacherInfo:
    """What the store metadata records about the (ensemble) teacher a worker loaded."""

    num_classes: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    temperature: float
    members: list[dict[str, Any]]
    device: str
    precision: str
    class_names: "list[str] | None"  # what each output index means, when the teacher says
    embedding_dims: "tuple[int, ...] | None" = None  # --target embedding: each member's D, in member order
    crop_device: str = "cpu"  # where the worker cuts the crops (device_batch.CropCutter.crop_device), as the store records it
    batch_size: int = 0  # crops per teacher forward (what --batch-size auto resolved to)
