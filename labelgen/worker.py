"""The label worker: loads the teacher once, then turns whole shards into compressed records.

Per shard, a thread pool decodes images and cuts their M crops (PIL and torch release the GIL) while
the calling thread runs the teacher on batches of ``batch_size`` crops. Batches are formed from the
shard's crops in store order, so their boundaries depend only on the shard, never on how many
workers share the run. The teacher's intra-op threads (``threads``) are a setting of their own, not
the CPUs a worker happens to reserve: CPU kernels reduce in an order that depends on the thread
count, so tying it to the cluster's shape made labels change with the number of workers. Hence the
guarantee (docs/FORMAT.md): crops and ids are bitwise identical for any number of workers, labels
bitwise identical for the same device type, threads and batch size.

What the teacher computes per batch, soft labels or embeddings, is ``labelgen.targets``'s business: the
worker only sees a forward and an encoder whose payload ``arrays()`` it buffers and packs.

In a reinforced store (``LabelSettings.views``) each crop's augmentation is drawn and applied before
the teacher (``fkd.data.views``), and a paired crop is mixed with its partner's crop, rendered from
the partner image (decoded once per image; the task lists partners of any shard) as training will.

Crops are cut on the CPU by torch's uint8 kernel or, with ``--crop-device cuda`` (the default on a
GPU), on the teacher's device: ``labelgen.device_batch``, which also sizes and halves GPU batches.

The class is plain Python (tests drive it directly); ``labelgen.pool`` runs it as a Ray actor.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from fkd.data.crops import boxes_to_fixed, sample_crops
from fkd.data.images import BadImageError, LoadedImage, read_image
from fkd.data.mixing import render_pairs
from fkd.data.views import ViewRenderer, sample_views
from fkd.store import ShardData, ViewParams, compress_records
from fkd.teacher.options import TeacherSpec

from .batching import CropBatcher, PayloadBuffer
from .device_batch import auto_batch_size, crop_cutter, forward_halving
from .errors import BadImage
from .messages import ImageRef, LabelSettings, ShardOutcome, ShardTask, TeacherInfo
from .targets import BatchTarget, EncodedPayload, batch_target

if TYPE_CHECKING:
    import ray

CRASH_ONCE_ENV = "FKD_LABELGEN_CRASH_ONCE"
"""Fault injection for tests: a file path; the first worker to create it kills itself mid-shard."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class WorkerConfig:
    """Everything a worker needs; identical for every worker of a run."""

    teacher: TeacherSpec
    labels: LabelSettings
    batch_size: "int | None"  # None: --batch-size auto (device_batch.auto_batch_size)
    threads: int = 1  # torch intra-op threads of the teacher (part of what makes labels bitwise repeatable)
    decode_threads: int = 1  # images decoded and cropped in parallel (from the CPUs the worker reserves)
    device: str = "auto"
    crop_device: str = "auto"  # --crop-device: where the crops are cut (device_batch.crop_cutter)
    compile: bool = False  # torch.compile the teacher's forward
    gpu_share: float = 1.0  # the part of its GPU the worker reserves (bounds --batch-size auto)


@dataclass
class PreparedImage:
    """One decoded image's crops, ready for the teacher."""

    views: torch.Tensor  # (M, 3, s, s) uint8, where the crops were cut
    boxes_fixed: np.ndarray  # (M, 4) uint16
    flips: np.ndarray  # (M,) bool
    size: tuple[int, int]  # original (height, width)
    fingerprint: int  # CRC-32 of the image file's bytes
    params: "ViewParams | None" = None  # a reinforced store's augmentation of the M crops, as stored


def resolve_device(name: str) -> torch.device:
    """'auto' is the first CUDA device when one is visible (Ray exposes only the worker's GPUs)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} was asked for but this worker sees no CUDA device")
    return device


class LabelWorker:
    """Holds one teacher; labels shards and checks images."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        torch.set_num_threads(max(1, config.threads))
        self.device = resolve_device(config.device)
        self.teacher = config.teacher.create(self.device).eval()
        self.target: BatchTarget = batch_target(self.teacher, config.labels)
        cfg = self.teacher.data_config
        self.input_size = tuple(cfg.input_size)
        self.cutter = crop_cutter(config.crop_device, self.device, self.input_size, cfg.interpolation)
        auto = config.batch_size is None
        self.batch_size = auto_batch_size(self.target.forward, self.input_size, self.device, config.gpu_share) if auto else config.batch_size
        if config.compile:
            self.target = replace(self.target, forward=torch.compile(self.target.forward))
        views = config.labels.views
        self.views = None if views is None else ViewRenderer(views, config.labels.seed, tuple(cfg.mean), tuple(cfg.std))
        self.pool = ThreadPoolExecutor(max(1, config.decode_threads), thread_name_prefix="fkd-decode")

    def info(self) -> TeacherInfo:
        cfg = self.teacher.data_config
        return TeacherInfo(
            num_classes=int(self.teacher.num_classes),
            input_size=tuple(int(v) for v in cfg.input_size),
            mean=tuple(float(v) for v in cfg.mean),
            std=tuple(float(v) for v in cfg.std),
            interpolation=str(cfg.interpolation),
            temperature=float(self.teacher.temperature),
            members=self.teacher.describe(),
            device=str(self.device),
            precision=self.teacher.precision,
            class_names=self.teacher.class_names,
            embedding_dims=self.target.embedding_dims,
            crop_device=self.cutter.crop_device,
            batch_size=self.batch_size,
        )

    # Image checks ---------------------------------------------------------------------------

    def check_images(self, images: list[ImageRef]) -> list[BadImage]:
        """Decode every image; return those that fail (the pre-pass before shards are planned)."""
        results = self._ordered(self._check_one, images, window=4 * self.config.decode_threads)
        return [bad for bad in results if bad is not None]

    @staticmethod
    def _check_one(image: ImageRef) -> "BadImage | None":
        loaded = _load(image)
        return loaded if isinstance(loaded, BadImage) else None

    # Labelling ------------------------------------------------------------------------------

    def label_shard(self, task: ShardTask, board: "ray.actor.ActorHandle | None" = None) -> ShardOutcome:
        """Label every crop of every image of ``task``; stop labelling at the first bad image but
        keep decoding, so the outcome lists all of the shard's bad images. ``board`` (a Ray
        ``ProgressBoard`` actor) hears how many images are finished after every batch."""
        m = self.config.labels.num_crops
        bad: list[BadImage] = []
        fixed: list[np.ndarray] = []
        flips: list[np.ndarray] = []
        sizes: list[tuple[int, int]] = []
        fingerprints: list[int] = []
        params: list[ViewParams] = []
        records: list[bytes] = []
        pending = PayloadBuffer()
        batcher = CropBatcher(self.batch_size)
        teacher_seconds = 0.0

        def run(batch: torch.Tensor) -> None:
            nonlocal teacher_seconds
            payload, seconds = self._label_batch(batch)
            pending.add(payload)
            teacher_seconds += seconds
            done = pending.rows // m
            if done:
                first = len(records)
                per_image = (None if a is None else a.reshape(done, m, *a.shape[1:]) for a in pending.take(done * m))
                views = ViewParams.stack(params[first : first + done]) if params else None
                records.extend(compress_records(
                    task.layout, np.stack(fixed[first : first + done]), np.stack(flips[first : first + done]), *per_image, views=views,
                ))
                if board is not None:
                    board.post.remote(task.shard, len(records))
            _maybe_crash()

        window = self.config.decode_threads + 2
        for item in self._ordered(partial(self._prepare, task=task), enumerate(task.images, start=task.start), window):
            if isinstance(item, BadImage):
                bad.append(item)
            if bad:
                continue
            fixed.append(item.boxes_fixed)
            flips.append(item.flips)
            sizes.append(item.size)
            fingerprints.append(item.fingerprint)
            if item.params is not None:
                params.append(item.params)
            for batch in batcher.add(item.views):
                run(batch)
        if bad:
            return ShardOutcome(task.shard, bad_images=bad)
        for batch in batcher.flush():
            run(batch)
        data = ShardData(
            image_ids=[im.image_id for im in task.images],
            labels=np.array([im.label for im in task.images], dtype=np.int64),
            sizes=np.array(sizes, dtype=np.int64).reshape(-1, 2),
            records=records,
            fingerprints=np.array(fingerprints, dtype=np.uint32),
        )
        return ShardOutcome(task.shard, data=data, teacher_seconds=teacher_seconds)

    def _prepare(self, numbered: tuple[int, ImageRef], task: ShardTask) -> "PreparedImage | BadImage":
        """Store image ``index``: its M crops as the teacher sees them, and what the record keeps."""
        index, image = numbered
        loaded = _load(image)
        if isinstance(loaded, BadImage):
            return loaded
        views, fixed, flips = self._cut(image.image_id, loaded.pixels, None)
        height, width = (int(v) for v in loaded.pixels.shape[-2:])
        if self.views is None:
            return PreparedImage(views, fixed, flips, (height, width), loaded.fingerprint)
        cfg = self.config.labels
        params = sample_views(self.views.spec, cfg.seed, image.image_id, cfg.num_crops, self.input_size, index, task.num_images)
        views = self.views.augment(views, params, image.image_id, np.arange(cfg.num_crops))
        views = render_pairs(views, params, partial(self._partner_crops, task))
        return PreparedImage(views, fixed, flips, (height, width), loaded.fingerprint, params)

    def _cut(self, image_id: str, pixels: torch.Tensor, chosen: "np.ndarray | None") -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Crops ``chosen`` of M (None: all) at the teacher's input size; the M boxes and flips."""
        cfg = self.config.labels
        height, width = (int(v) for v in pixels.shape[-2:])
        crops = sample_crops(image_id, height, width, cfg.num_crops, cfg.seed, cfg.crop_params)
        fixed = boxes_to_fixed(crops.boxes, height, width)
        rows = slice(None) if chosen is None else chosen
        return self.cutter(pixels, fixed[rows], crops.flips[rows]), fixed, crops.flips

    def _partner_crops(self, task: ShardTask, index: int, chosen: np.ndarray) -> torch.Tensor:
        """Crops ``chosen`` of partner image ``index`` with their own augmentation (never mixed again)."""
        image = task.partners[index]
        loaded = _load(image)
        if isinstance(loaded, BadImage):
            raise RuntimeError(f"partner image {image.image_id} (mixed into shard {task.shard}) is unreadable now: {loaded.reason}")
        cfg = self.config.labels
        crops, _, _ = self._cut(image.image_id, loaded.pixels, chosen)
        params = sample_views(self.views.spec, cfg.seed, image.image_id, cfg.num_crops, self.input_size, index, task.num_images)
        return self.views.augment(crops, params.take(chosen), image.image_id, chosen)

    @torch.inference_mode()
    def _label_batch(self, views: torch.Tensor) -> tuple[EncodedPayload, float]:
        """The batch's encoded labels (or embeddings) and the seconds the teacher's forward took: the device is
        synchronized first, so queued crop work is not counted, and the finiteness check waits for
        the forward to finish (the figure behind fkd-labelgen's teacher busy fraction). A batch the
        GPU has no memory for is run in two halves (``forward_halving``)."""
        x = views.to(self.device, non_blocking=True).float().div_(255.0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        output = forward_halving(self.target.forward, x).float()
        finite = bool(torch.isfinite(output).all())
        seconds = time.perf_counter() - started
        if not finite:
            raise RuntimeError(f"the teacher returned non-finite {self.target.what}")
        return self.target.encode(output), seconds

    def _ordered(self, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
        """``map(fn, items)`` on the thread pool, in order, with at most ``window`` items in flight
        (bounds the memory held by decoded crops)."""
        todo = iter(items)
        futures = deque(self.pool.submit(fn, item) for _, item in zip(range(max(1, window)), todo))
        while futures:
            result = futures.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                futures.append(self.pool.submit(fn, nxt))
            yield result


def _load(image: ImageRef) -> "LoadedImage | BadImage":
    """The decoded image and its fingerprint, or why it cannot be used (corrupt, truncated, not an
    image, missing)."""
    try:
        return read_image(image.location)
    except BadImageError as exc:
        return BadImage(image.image_id, exc.reason)
    except FileNotFoundError:
        return BadImage(image.image_id, "file not found")


def _maybe_crash() -> None:
    """Test hook (``FKD_LABELGEN_CRASH_ONCE``): die like an OOM-killed process, once per marker."""
    marker = os.environ.get(CRASH_ONCE_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
