"""The fkd-labelgen driver: plan the store, run the worker pool over its missing shards, write them.

Only the driver touches the output directory: workers return each shard's compressed records (a
few MB) through Ray, and the driver writes the shard atomically and then records it in store.json.
So the store directory does not need to be shared between the nodes of a cluster, and store.json
has a single writer. A shard is the unit of work, of retry and of resume.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from tqdm import tqdm

from fkd.config import save_args
from fkd.store import Manifest, StoreMeta, StoreMismatchError, open_for_writing, remove_store, shard_file_problem, store_lock, write_shard
from fkd.teacher.options import TeacherSpec

from .checks import check_crop_device, check_inputs, class_space
from .errors import BadImage, BadImagesError, InputError
from .messages import ImageRef, LabelSettings, ShardTask
from .plan import chunks, image_refs, keep_good, pending_shards, previous_scan, store_meta
from .pool import WorkerPool
from .progress import ProgressBoard
from .session import ray_session
from .worker import WorkerConfig

ARGS_FILE = "labelgen-args.yaml"
"""The resolved command-line options, saved next to store.json for reproducibility."""

CPUS_PER_CPU_WORKER = 1
"""Default CPUs per worker when the teacher runs on CPU: each worker computes with ``--threads``
(default 1) intra-op threads, so one narrow worker per CPU uses the machine; torch's intra-op
threads scale poorly on small batches of small crops anyway."""

CHECK_CHUNK = 512
"""Images per pre-pass task: large enough to amortize a Ray call, small enough to balance."""


@dataclass
class RunConfig:
    """A whole fkd-labelgen run (what the command line resolves to)."""

    data: str
    out: Path
    teacher: TeacherSpec
    labels: LabelSettings
    batch_size: "int | None" = 256  # None: --batch-size auto
    threads: int = 1
    class_map: "Path | None" = None
    device: str = "auto"
    crop_device: str = "auto"
    compile: bool = False
    workers: "int | None" = None
    cpus_per_worker: "float | None" = None
    gpus_per_worker: "float | None" = None
    ray_address: "str | None" = None
    overwrite: bool = False
    skip_bad: bool = False
    max_retries: int = 3
    progress: bool = True
    args: "argparse.Namespace | None" = None  # saved as labelgen-args.yaml once the store is opened


@dataclass
class Sizing:
    """The Ray resources of the pool: how many workers and what each one reserves."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float


@dataclass
class Summary:
    """What a run did; ``format()`` is the final report printed by the CLI."""

    out: Path
    images: int
    crops: int
    shards: int
    shards_written: int
    bad_images: int
    bytes: int
    images_labelled: int
    labelling_seconds: float
    seconds: float
    teacher_seconds: float = 0.0  # the teacher's forward passes, summed over workers
    workers: int = 1

    @property
    def bytes_per_crop(self) -> float:
        return self.bytes / self.crops if self.crops else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images_labelled / self.labelling_seconds if self.labelling_seconds > 0 else 0.0

    @property
    def teacher_busy(self) -> float:
        """Fraction of the labelling time the teachers spent in their forward passes (1.0: the
        teacher bounds the run; well below: decoding, cropping or writing does)."""
        return self.teacher_seconds / (self.labelling_seconds * self.workers) if self.labelling_seconds > 0 else 0.0

    def format(self) -> str:
        skipped = self.shards - self.shards_written
        return (
            f"store {self.out}: {self.images} images, {self.crops} crops, {self.shards} shards "
            f"({self.shards_written} written, {skipped} already done), {self.bad_images} bad images skipped\n"
            f"size {self.bytes} bytes ({self.bytes / 2**20:.1f} MiB), {self.bytes_per_crop:.1f} bytes per crop\n"
            f"time {self.seconds:.1f} s; labelled {self.images_labelled} images in {self.labelling_seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s)"
        ) + (
            f"\nteacher busy {self.teacher_seconds:.1f} s over {self.workers} worker(s): {100 * self.teacher_busy:.0f} % of the labelling time"
            if self.teacher_seconds > 0 else ""
        )


def _stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)  # keeps progress bars intact


def resolve_sizing(workers: "int | None", cpus: "float | None", gpus: "float | None", device: str = "auto") -> Sizing:
    """Defaults from the Ray cluster: one worker per GPU; without GPUs (or with --device cpu) one
    worker per CPUS_PER_CPU_WORKER CPUs; the cluster's CPUs split evenly between the workers. Refuses a request the cluster cannot hold
    (its actors would wait forever)."""
    resources = ray.cluster_resources()
    total_cpus = float(resources.get("CPU", 1))
    total_gpus = float(resources.get("GPU", 0))
    if gpus is None:
        gpus = 1.0 if total_gpus >= 1 and device != "cpu" else 0.0
    if workers is None:
        workers = max(1, int(total_gpus // gpus)) if gpus > 0 else max(1, int(total_cpus // CPUS_PER_CPU_WORKER))
    if cpus is None:
        cpus = float(max(1, int(total_cpus // workers)))
    if workers < 1 or cpus <= 0 or gpus < 0:
        raise InputError(f"need --workers >= 1, --cpus-per-worker > 0, --gpus-per-worker >= 0 (got {workers}, {cpus}, {gpus})")
    if workers * cpus > total_cpus or workers * gpus > total_gpus:
        raise InputError(
            f"{workers} workers x ({cpus:g} CPUs, {gpus:g} GPUs) do not fit the Ray cluster "
            f"({total_cpus:g} CPUs, {total_gpus:g} GPUs); lower --workers, --cpus-per-worker or --gpus-per-worker"
        )
    return Sizing(workers, cpus, gpus)


def run(config: RunConfig, log: Callable[[str], None] = _stderr) -> Summary:
    """Generate (or finish) the label store ``config.out``."""
    started = time.perf_counter()
    check_crop_device(config.crop_device, config.ray_address)
    listing = check_inputs(config.data, config.out, config.teacher, config.class_map, config.labels.embedding)
    with ray_session(config.ray_address):
        sizing = resolve_sizing(config.workers, config.cpus_per_worker, config.gpus_per_worker, config.device)
        worker_config = WorkerConfig(
            config.teacher, config.labels, config.batch_size, threads=config.threads,
            decode_threads=max(1, int(sizing.cpus_per_worker)), device=config.device, crop_device=config.crop_device,
            compile=config.compile, gpu_share=min(1.0, sizing.gpus_per_worker) or 1.0,
        )
        log(f"fkd-labelgen: {len(listing)} images; starting {sizing.workers} worker(s) with {sizing.cpus_per_worker:g} CPUs, "
            f"{sizing.gpus_per_worker:g} GPUs and {config.threads} teacher thread(s) each")
        with WorkerPool(worker_config, sizing.workers, sizing.cpus_per_worker, sizing.gpus_per_worker, config.max_retries, log) as pool:
            teacher = pool.teacher_info()
            images, class_map = class_space(config.labels, listing, teacher, config.class_map)
            refs = image_refs(images)
            bad = None if config.overwrite else previous_scan(config.out, listing.fingerprint())
            if bad is None:
                bad = check_images(pool, refs, config.progress)
            if bad and not config.skip_bad:
                raise BadImagesError(bad, f"{len(refs)} images")
            kept = keep_good(refs, bad)
            if not kept:
                raise InputError(f"all {len(refs)} images of {config.data} are unreadable")
            with store_lock(config.out):  # one writer per store; created only once there is work to write
                manifest = open_store(config, store_meta(config.labels, teacher, listing, kept, bad, class_map))
                if config.args is not None:
                    # Never --overwrite from a saved file: `-c labelgen-args.yaml` must resume, not delete.
                    save_args({**vars(config.args), "overwrite": False}, config.out / ARGS_FILE)
                drop_damaged_shards(manifest, config.out, log)
                tasks = pending_shards(manifest, kept)
                log(f"fkd-labelgen: teacher on {teacher.device}, input {teacher.input_size}, crops cut on {teacher.crop_device}, "
                    f"batches of {teacher.batch_size}; "
                    f"{manifest.meta.num_shards} shards, {manifest.meta.num_shards - len(tasks)} already done")
                labelling_started = time.perf_counter()
                labelled, teacher_seconds = label_shards(pool, manifest, config.out, tasks, len(kept), config.progress)
                labelling_seconds = time.perf_counter() - labelling_started
    meta = manifest.meta
    return Summary(
        out=config.out,
        images=meta.num_images,
        crops=meta.num_images * meta.num_crops,
        shards=meta.num_shards,
        shards_written=len(tasks),
        bad_images=len(meta.bad_images),
        bytes=sum(info.bytes for info in manifest.shards.values()),
        images_labelled=labelled,
        labelling_seconds=labelling_seconds,
        seconds=time.perf_counter() - started,
        teacher_seconds=teacher_seconds,
        workers=sizing.workers,
    )


def open_store(config: RunConfig, meta: StoreMeta) -> Manifest:
    """open_for_writing, plus one case it cannot see: the same settings but another set of bad
    images (the store's image list differs), possible only when --overwrite checked them again."""
    manifest = open_for_writing(config.out, meta, config.overwrite)
    if manifest.meta.bad_images != meta.bad_images:
        if not config.overwrite:
            raise StoreMismatchError(config.out, "exists with another set of unreadable images; pass --overwrite to replace it")
        remove_store(config.out)
        manifest = open_for_writing(config.out, meta)
    return manifest


def drop_damaged_shards(manifest: Manifest, out: Path, log: Callable[[str], None]) -> None:
    """Resume trusts no file blindly: a finished shard that is now missing, truncated, altered or
    replaced (size and sha256 against the manifest) is dropped from the manifest and labelled again."""
    damaged = {i: problem for i, info in sorted(manifest.shards.items()) if (problem := shard_file_problem(out, info))}
    for shard, problem in damaged.items():
        log(f"fkd-labelgen: {manifest.shards[shard].file}: {problem}; labelling shard {shard} again")
        del manifest.shards[shard]
    if damaged:
        manifest.save(out)


def check_images(pool: WorkerPool, refs: list[ImageRef], progress: bool) -> list[BadImage]:
    """The decode pre-pass: every image of the listing, in parallel on the workers."""
    order = {r.image_id: i for i, r in enumerate(refs)}
    bad: list[BadImage] = []
    with tqdm(total=len(refs), unit="img", desc="checking images", disable=not progress, dynamic_ncols=True) as bar:
        for task, found in pool.map_unordered("check_images", chunks(refs, CHECK_CHUNK), _chunk_name):
            bad.extend(found)
            bar.update(len(task))
    return sorted(bad, key=lambda b: order[b.image_id])


def label_shards(
    pool: WorkerPool, manifest: Manifest, out: Path, tasks: list[ShardTask], total: int, progress: bool
) -> tuple[int, float]:
    """Label the missing shards; write each one and record it in store.json as it arrives. Returns
    the images labelled and the teachers' forward seconds."""
    meta = manifest.meta
    board = ray.remote(num_cpus=0)(ProgressBoard).remote() if progress else None
    finished: set[int] = set()
    labelled = 0
    teacher_seconds = 0.0
    with tqdm(total=total, initial=total - sum(len(t.images) for t in tasks), unit="img", desc="labelling",
              disable=not progress, dynamic_ncols=True) as bar:

        def show(partial: int = 0) -> None:
            target = total - sum(len(t.images) for t in tasks) + labelled + partial
            if target > bar.n:  # a retried shard restarts from zero: never move the bar back
                bar.update(target - bar.n)

        def poll() -> None:
            show(sum(n for shard, n in ray.get(board.snapshot.remote()).items() if shard not in finished))

        for task, outcome in pool.map_unordered(
            "label_shard", tasks, lambda t: f"shard {t.shard}", extra=(board,), poll=poll if progress else None
        ):
            if outcome.bad_images:
                raise BadImagesError(
                    outcome.bad_images, f"the {len(task.images)} images of shard {task.shard}",
                    hint="they were readable when the store was planned; fix them, or rerun with "
                    "--overwrite --skip-bad to check every image again and leave the bad ones out",
                )
            manifest.shards[task.shard] = write_shard(out, meta, task.shard, outcome.data)
            manifest.save(out)
            finished.add(task.shard)
            labelled += len(task.images)
            teacher_seconds += outcome.teacher_seconds
            show()
    if board is not None:
        ray.kill(board)
    return labelled, teacher_seconds


def _chunk_name(chunk: list[ImageRef]) -> str:
    return f"image check of {chunk[0].image_id} (+{len(chunk) - 1} more)"
