"""``fkd-labels verify``: read every byte of a store and say, per shard, what is wrong.

Each shard is checked in the order that gives the most precise diagnosis: listed in the manifest
(else fkd-labelgen never finished it), present, of the recorded size (truncation), of the recorded
sha256 (bit flips, foreign files; such a file is not parsed further, as HDF5 can hang on damaged
structures), then its HDF5 structure (store id, image ranges) and every record (CRC32,
decompression, layout), and finally the payload values themselves (class indices below C,
probabilities in [0, 1], a version-5 full store's log-probabilities in [LOG_PROB_FLOOR, 0];
embeddings of D finite values, int8 codes in -127..127 with finite, non-negative scales; boxes
inside the image; a reinforced store's op codes, erasing and CutMix boxes and partners), which
catch a shard that is intact but was written wrong. ``--recompute N`` then relabels N stored crops
with the teacher (``fkd.labels.recompute``).

Bad shards are what fkd-labelgen must redo. Rerunning it with the same arguments is the repair for
nearly all of them: it labels the shards the manifest lacks and relabels each finished shard whose
file went missing or no longer has the recorded size and sha256. Only a shard whose file still
matches the manifest but holds bad records (written wrong) passes that check; ``drop_bad_shards``
(``--repair``) removes such shards from the manifest so that the rerun regenerates them too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.crops import FIXED_POINT_SCALE
from ..payload.quantize import LOG_PROB_FLOOR
from ..store import ImageLabels, LabelStore, Manifest, StoreError, StoreMeta, store_lock
from ..store.format import SHARD_PATTERN
from ..store.views import view_problems

MAX_PROBLEMS_PER_SHARD = 5
"""Problems listed per shard; the rest are counted (a broken shard often fails every record)."""

OK, UNFINISHED, MISSING, CORRUPT = "ok", "unfinished", "missing", "corrupt"


@dataclass
class ShardReport:
    """The verdict on one shard: ``status`` is ok / unfinished / missing / corrupt."""

    index: int
    file: str
    start: int
    stop: int
    status: str
    problems: list[str] = field(default_factory=list)
    file_mismatch: bool = False  # the file's size or sha256 differ from the manifest: fkd-labelgen's rerun sees it

    def describe(self) -> str:
        head = f"shard {self.index} ({self.file}, images {self.start}..{self.stop - 1}): {self.status}"
        return head + "".join(f"\n    {p}" for p in self.problems)


@dataclass
class VerifyReport:
    """The verdict on a store. ``ok`` only when every shard is finished and intact and no image id
    repeats; stray files (``extra_files``, ``temp_files``) are reported but harmless."""

    store: str
    num_images: int
    num_crops: int
    shards: list[ShardReport]
    problems: list[str] = field(default_factory=list)
    extra_files: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(s.status == OK for s in self.shards)

    @property
    def redo(self) -> list[int]:
        """Shards fkd-labelgen must (re)generate."""
        return [s.index for s in self.shards if s.status != OK]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok, "redo": self.redo}


def verify_store(path: "str | Path", progress: bool = True) -> VerifyReport:
    """Check the store at ``path`` completely (reads and decodes every record).

    Raises ``StoreError`` only when the manifest itself is unusable (then nothing can be checked).
    """
    path = Path(path)
    manifest = Manifest.load(path)
    meta = manifest.meta
    report = VerifyReport(str(path), meta.num_images, meta.num_crops, [])
    first_seen: dict[str, int] = {}
    duplicates: list[str] = []
    store = LabelStore(path, allow_incomplete=True, verify_checksums=False, payload=None)  # _verify_shard checks them first
    try:
        bar = tqdm(total=meta.num_images, desc="verifying", unit="img", disable=None if progress else True)
        for shard in range(meta.num_shards):
            shard_report, ids = _verify_shard(store, manifest, shard)
            report.shards.append(shard_report)
            for index, image_id in enumerate(ids, start=shard_report.start):
                if image_id in first_seen:
                    duplicates.append(f"image id {image_id!r} is both image {first_seen[image_id]} and image {index}")
                first_seen.setdefault(image_id, index)
            store.close()  # one shard open at a time, whatever the store's size
            bar.update(shard_report.stop - shard_report.start)
        bar.close()
    finally:
        store.close()
    report.problems.extend(duplicates[:MAX_PROBLEMS_PER_SHARD])
    if len(duplicates) > MAX_PROBLEMS_PER_SHARD:
        report.problems.append(f"... {len(duplicates) - MAX_PROBLEMS_PER_SHARD} more duplicate image ids")
    listed = {info.file for info in manifest.shards.values()}
    report.extra_files = sorted(p.name for p in path.glob("shard-*.h5") if p.name not in listed)
    report.temp_files = sorted(p.name for p in path.glob(".*.tmp"))
    return report


def _verify_shard(store: LabelStore, manifest: Manifest, shard: int) -> tuple[ShardReport, list[str]]:
    start, stop = manifest.meta.shard_range(shard)
    info = manifest.shards.get(shard)
    if info is None:
        problem = "not finished: fkd-labelgen has not written it (still running, or its run stopped)"
        return ShardReport(shard, SHARD_PATTERN.format(shard), start, stop, UNFINISHED, [problem]), []
    report = ShardReport(shard, info.file, start, stop, OK)
    file = store.path / info.file
    if not file.is_file():
        report.status, report.problems = MISSING, ["shard file is missing"]
        return report, []
    try:  # size and sha256 before HDF5 parses anything (a damaged heap can hang it)
        store.verify_shard_checksum(shard)
    except StoreError as exc:
        report.status, report.problems, report.file_mismatch = CORRUPT, [exc.problem], True
        return report, []
    try:
        ids = store.shard_image_ids(shard)  # structure
    except StoreError as exc:
        report.status, report.problems = CORRUPT, [exc.problem]
        return report, []
    problems = _verify_records(store, start, stop)
    if problems:
        report.status = CORRUPT
        report.problems = problems[:MAX_PROBLEMS_PER_SHARD]
        if len(problems) > MAX_PROBLEMS_PER_SHARD:
            report.problems.append(f"... and {len(problems) - MAX_PROBLEMS_PER_SHARD} more problems")
    return report, ids


def _verify_records(store: LabelStore, start: int, stop: int) -> list[str]:
    problems = []
    for index in range(start, stop):
        try:
            record = store.read(index)
        except StoreError as exc:
            problems.append(exc.problem)
            continue
        problems.extend(f"image {index} ({record.image_id!r}): {p}" for p in record_problems(record, store.meta))
    return problems


def record_problems(record: ImageLabels, meta: StoreMeta) -> list[str]:
    """Values no writer produces, even in a record whose checksum holds: what makes labels wrong
    rather than unreadable (a class index >= C would crash decoding on the training device)."""
    problems = []
    if record.height < 1 or record.width < 1:
        problems.append(f"image size {record.height}x{record.width} is empty")
    if not -1 <= record.label < meta.num_classes:
        problems.append(f"ground-truth label {record.label} is not in -1..{meta.num_classes - 1}")
    if record.indices is not None and record.indices.size and int(record.indices.max()) >= meta.num_classes:
        problems.append(f"class index {int(record.indices.max())} is not below num_classes {meta.num_classes}")
    if record.values is not None:
        problems.extend(value_problems(record.values, meta.full_log_probs))
    if meta.embedding is not None:
        problems.extend(embedding_problems(record, meta.embedding.dim))
    if meta.augmentation is not None:
        problems.extend(view_problems(record.views, meta.augmentation, meta.num_images, record.index))
    boxes = record.boxes_fixed.astype(np.int64)
    ends = boxes[:, :2] + boxes[:, 2:]
    if np.any(boxes[:, 2:] < 1) or np.any(ends > FIXED_POINT_SCALE + 1):
        problems.append("crop boxes that are empty or extend past the image")
    return problems


def value_problems(values: np.ndarray, log_probs: bool) -> list[str]:
    """Stored label values no writer produces: probabilities outside [0, 1], or (a full store of
    format version 5) log-probabilities outside [LOG_PROB_FLOOR, 0], where ``encode`` clamps them."""
    low, high, what = (LOG_PROB_FLOOR, 0.0, "log-probabilities") if log_probs else (0.0, 1.0, "probabilities")
    values = values.astype(np.float32)
    if np.all(np.isfinite(values)) and values.min(initial=high) >= low and values.max(initial=low) <= high:
        return []
    return [f"stored {what} outside [{low:g}, {high:g}] (or not finite)"]


def embedding_problems(record: ImageLabels, dim: int) -> list[str]:
    """What no embedding writer produces: another dimension, values that decode to NaN or infinity,
    the int8 code -128 (the codec is symmetric), negative scales."""
    if record.embedding is None or record.embedding.shape != (len(record.flips), dim):
        return [f"embedding of shape {getattr(record.embedding, 'shape', None)}, expected ({len(record.flips)}, {dim})"]
    problems = []
    if record.scales is not None:
        if np.any(record.embedding == -128):
            problems.append("int8 code -128 in the embedding (the codec writes -127..127)")
        if not np.all(np.isfinite(record.scales)) or record.scales.min(initial=0) < 0:
            problems.append("per-crop scales that are negative or not finite")
    if not problems and not bool(record.decoded_embedding().isfinite().all()):
        problems.append("embedding values that are not finite")
    return problems


def drop_bad_shards(path: "str | Path", report: VerifyReport) -> list[str]:
    """Make the store resumable after damage: remove the bad shards from the manifest and delete
    their files and the temporary files an interrupted writer left, so rerunning fkd-labelgen with the
    same arguments regenerates exactly those shards. Holds the store's write lock (refused while
    fkd-labelgen writes the store). Returns the deleted file names."""
    path = Path(path)
    deleted = [name for name in report.temp_files if (path / name).exists()]
    with store_lock(path):  # taking the lock also clears the temporary files
        manifest = Manifest.load(path)
        for shard in report.shards:
            if shard.status in (MISSING, CORRUPT):
                manifest.shards.pop(shard.index, None)
        manifest.save(path)
        for shard in report.shards:
            if shard.status == CORRUPT and (path / shard.file).is_file():
                (path / shard.file).unlink()
                deleted.append(shard.file)
    return deleted


def format_report(report: VerifyReport, repair_plan: bool = False) -> str:
    """Per-shard lines for every shard that is not ok, a summary line, and optionally the plan."""
    lines = [s.describe() for s in report.shards if s.status != OK]
    lines.extend(f"store: {p}" for p in report.problems)
    if report.extra_files:
        lines.append(f"note: shard files not listed in the manifest (ignored): {', '.join(report.extra_files)}")
    if report.temp_files:
        lines.append(f"note: temporary files left by an interrupted write: {', '.join(report.temp_files)}")
    bad = report.redo
    if report.ok:
        lines.append(
            f"OK: {report.store}: {len(report.shards)} shards, {report.num_images} images, "
            f"{report.num_images * report.num_crops} crops verified"
        )
    else:
        counts = {status: sum(s.status == status for s in report.shards) for status in (UNFINISHED, MISSING, CORRUPT)}
        described = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        lines.append(
            f"FAILED: {report.store}: {len(bad)} of {len(report.shards)} shards need attention"
            + (f" ({described})" if described else "")
            + (f"; {len(report.problems)} store-level problems" if report.problems else "")
        )
    if repair_plan:
        lines.append(repair_plan_text(report))
    return "\n".join(lines)


def repair_plan_text(report: VerifyReport) -> str:
    bad = report.redo
    if not bad:
        return "repair plan: nothing to redo"
    images = sum(s.stop - s.start for s in report.shards if s.status != OK)
    kept = [s.index for s in report.shards if s.status == CORRUPT and not s.file_mismatch]
    steps = []
    if kept:
        steps.append(f"fkd-labels verify {report.store} --repair   (shards {_ranges(kept)} match the manifest but hold bad "
                     "records, which a rerun would keep: this drops them from the manifest)")
    steps.append("rerun fkd-labelgen with the same arguments and --out: it labels the shards the manifest lacks and "
                 "relabels those whose file is missing or changed")
    return (
        f"repair plan: fkd-labelgen must redo {len(bad)} shards ({images} images): {_ranges(bad)}\n"
        + "\n".join(f"  {i + 1}. {step}" for i, step in enumerate(steps))
    )


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, run = [], [values[0]]
    for v in values[1:]:
        if v == run[-1] + 1:
            run.append(v)
        else:
            parts.append(run)
            run = [v]
    parts.append(run)
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in parts)
