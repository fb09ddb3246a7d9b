"""The feature-distillation block (``bench_accuracy.py --fd``): stored teacher features against
stored labels and against feature distillation with the teacher in the loop (online FD).

Real CIFAR-10 and the real Keras teacher's 512-d penultimate layer (``dense_1_relu``: the Dense 512
after ReLU, what its classifier reads). Setting (``SIZE``): 2,560 train images (256 per class,
balanced, seed 0), M=8 stored crops per image (crop seed 0, area 0.25-1), the whole 10,000-image
test set, the CNN recipe (configs/bench-cifar10.yaml: timm ``test_resnet`` at 32 px); every run
makes the same 160 optimizer steps of 32 images x 4 crops (2 epochs, so each stored crop is used
once), 2 seeds. Two stores from ``fkd-labelgen`` with the same seed and crop settings, so the same
boxes and flips: the full-scheme label store (converted to marginal smoothing K=5 with
``fkd-labels convert``, as the accuracy block does) and a float16 embedding store. Rows:

- supervised: ground truth only;
- fkd labels: the stored marginal-smoothing K=5 labels;
- fkd embedding: the stored features alone (smooth-L1 on LayerNorm-whitened targets, FD's loss,
  linear projector) with ``--gt-weight 0.3``: the classifier needs the ground truth;
- fkd labels + embedding: CE on the stored labels + 1.0 x the feature loss;
- online FD: ``--mode online-fd`` with the teacher run on every crop, ``--embedding-from
  dense_1_relu`` (not the default ``feature-map``): the same vector, loss, projector and
  ``--gt-weight 0.3`` as the embedding row, so the two differ only in where the features come from
  (stored float16 for the store's fixed crops vs computed on the fly for fresh crops).

Bytes per crop: this run's label and float16 embedding stores as they sit on disk; int8 (and
float16 for reference) from the embedding storage block (benchmarks/storage/embedding.json, the same
teacher layer on 500 images x 8 crops), whose run measures both dtypes without a second labelling.

Time (measured, ``--jobs 2`` on 2 cores shared with other benchmarks, load average 7-9): the two
stores (20,480 teacher crops each) were labelled at once in 133 s and 147 s; offline runs took
94-119 s each, online FD 177 s (the teacher's forward on every crop); the whole block 758 s.

    .venv/bin/python benchmarks/accuracy/bench_accuracy.py --fd --jobs 2
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.accuracy.toolkit import RECIPE, Block, Run, Size, summarize, train
from benchmarks.common import (
    BENCH_DIR,
    CACHE,
    KERAS_TEACHER,
    KERAS_TEACHER_TOP1,
    REPO_ROOT,
    LabelSetting,
    balanced_subset,
    converted_store,
    full_store,
    markdown_table,
    result_path,
    run_logged,
    save_result,
    script,
    store_bytes,
)
from fkd.data.images import list_images

LAYER = "dense_1_relu"
GT_WEIGHT = 0.3
CROPS = 4
LABELS = ("marginal-smoothing", 5)
EMBED = ("--embed-loss", "smooth-l1", "--projector", "linear")
EMBEDDING_JSON = BENCH_DIR / "storage" / "embedding.json"


SIZE = Size(per_class=256, store_crops=8, test_per_class=1000, epochs=2)


@dataclass(frozen=True)
class FdRun(Run):
    """A Run named by its row (the feature flags travel in ``extra``, which Run.name does not show)."""

    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.label}-n{self.crops}"


def embedding_store(setting: LabelSetting, dtype: str = "float16") -> tuple[Path, float | None]:
    """The teacher's ``LAYER`` features over the train subset with the label store's seed and crop
    settings (so the same boxes and flips), generated once with fkd-labelgen and cached. Returns
    (store, labelgen seconds, or None when it came from the cache)."""
    out = CACHE / "accuracy-fd" / "stores" / setting.key / f"embedding-{LAYER}-{dtype}"
    if (out / "store.json").exists() and json.loads((out / "store.json").read_text()).get("complete"):
        return out, None
    data = balanced_subset("train", setting.per_class, setting.seed)
    seconds = run_logged(
        [script("fkd-labelgen"), "--data", str(data), "--out", str(out), "--teacher-module", KERAS_TEACHER, "--target", "embedding",
         "--embedding-from", LAYER, "--embedding-dtype", dtype, "--crops", str(setting.crops), "--seed", str(setting.seed),
         "--crop-scale", *map(str, setting.crop_scale), "--workers", "1", "--cpus-per-worker", "1", "--shard-size", "500", "--no-progress",
         "--overwrite"],
        out.parent / f"labelgen-embedding-{dtype}.log",
    )
    return out, seconds


def fd_rows(embed_store: str, epochs: int) -> list[tuple[FdRun, str]]:
    """(seed-0 run, targets) per row; every row makes the same steps of the same crops per step."""
    scheme, top_k = LABELS
    gt = ("--gt-weight", f"{GT_WEIGHT:g}")
    embed = ("--embed-store", embed_store, *EMBED)
    online = ("--teacher-module", KERAS_TEACHER, "--embedding-from", LAYER, *EMBED, *gt)
    return [
        (FdRun("supervised", None, 0, CROPS, 0, epochs=epochs, label="supervised"), "ground truth"),
        (FdRun("fkd", scheme, top_k, CROPS, 0, epochs=epochs, label="fkd-labels"), f"stored labels ({scheme} K={top_k})"),
        (FdRun("fkd", None, 0, CROPS, 0, epochs=epochs, extra=(*embed, *gt), label=f"fkd-embedding-gt{GT_WEIGHT:g}"),
         f"{1 - GT_WEIGHT:g} x stored-feature loss + {GT_WEIGHT:g} x CE(y)"),
        (FdRun("fkd", scheme, top_k, CROPS, 0, epochs=epochs, extra=embed, label="fkd-labels+embedding"),
         "CE(stored labels) + 1.0 x stored-feature loss"),
        (FdRun("online-fd", None, 0, CROPS, 0, kd=(), epochs=epochs, extra=online, label=f"online-fd-gt{GT_WEIGHT:g}"),
         f"{1 - GT_WEIGHT:g} x feature loss (teacher in the loop) + {GT_WEIGHT:g} x CE(y)"),
    ]


def stored_bytes(rows: list[dict], label_bpc: float, embed_bpc: float) -> None:
    """Each row's stored bytes per crop (None: nothing stored) and its speed against online FD."""
    online = next(r for r in rows if r["mode"] == "online-fd")
    for row in rows:
        labels = row["mode"] == "fkd" and row["scheme"] is not None
        embed = row["name"].startswith(("fkd-embedding", "fkd-labels+embedding"))
        row["stored_bytes_per_crop"] = (label_bpc if labels else 0) + (embed_bpc if embed else 0) if labels or embed else None
        row["speed_vs_online_fd"] = row["train_samples_per_s"] / online["train_samples_per_s"]


def reference_bytes() -> dict[str, float]:
    """float16 and int8 store bytes per crop of the embedding storage block (no normalization)."""
    rows = json.loads(EMBEDDING_JSON.read_text())["rows"]
    return {r["variant"]: r["bytes_per_crop"] for r in rows if r["normalization"] == "none" and r["bytes_per_crop"] is not None}


COLUMNS = [
    ("name", "run", ""), ("targets", "targets", ""), ("seeds", "seeds", "d"), ("steps", "steps", "d"), ("top1_mean", "test top-1 %", ".2f"),
    ("top1_std", "spread (std)", ".2f"), ("vs_supervised", "vs supervised", "+.2f"), ("stored_bytes_per_crop", "stored B/crop", ".1f"),
    ("wall_seconds", "wall s", ".0f"), ("train_samples_per_s", "train samples/s", ".0f"), ("speed_vs_online_fd", "speed / online-fd", ".2f"),
]
STORE_COLUMNS = [("store", "store", ""), ("bytes_per_crop", "B/crop", ".1f"), ("labelgen_seconds", "labelgen s", ".0f"), ("source", "measured on", "")]


def run_fd(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    seeds = range(args.seeds or 2)
    setting = LabelSetting(SIZE.per_class, SIZE.store_crops)
    data, test = balanced_subset("train", SIZE.per_class, setting.seed), balanced_subset("test", SIZE.test_per_class, setting.seed)
    with ThreadPoolExecutor(2 if args.jobs > 1 else 1) as pool:  # the two teacher passes at once
        labels_job, embed_job = pool.submit(full_store, setting), pool.submit(embedding_store, setting)
        (_, label_seconds), (embed, embed_seconds) = labels_job.result(), embed_job.result()
    label_store = converted_store(setting, *LABELS)
    rows = fd_rows(str(embed), SIZE.epochs)
    described = {run.name: targets for run, targets in rows}
    runs = [replace(run, seed=s) for run, _ in rows for s in seeds]
    block = Block(setting, data, test, CACHE / "accuracy-fd" / f"{setting.key}-test{SIZE.test_per_class}-E{SIZE.epochs}", 32 * CROPS, 1, args.threads)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda r: train(r, block), runs))
    table = summarize(results)
    supervised = next(r for r in table if r["mode"] == "supervised")
    crops = len(list_images(data)) * SIZE.store_crops
    label_bpc, embed_bpc = store_bytes(label_store) / crops, store_bytes(embed) / crops
    for row in table:
        row["targets"], row["vs_supervised"] = described[row["name"]], row["top1_mean"] - supervised["top1_mean"]
    stored_bytes(table, label_bpc, embed_bpc)
    reference = reference_bytes()
    stores = [
        {"store": f"labels, {LABELS[0]} K={LABELS[1]} (converted from full)", "bytes_per_crop": label_bpc, "labelgen_seconds": label_seconds,
         "source": "this run's store"},
        {"store": f"embedding {LAYER}, float16", "bytes_per_crop": embed_bpc, "labelgen_seconds": embed_seconds, "source": "this run's store"},
        *({"store": f"embedding {LAYER}, {dtype}", "bytes_per_crop": reference[dtype], "labelgen_seconds": None,
           "source": "storage/embedding.json"} for dtype in ("float16", "int8")),
    ]
    result = {
        "setting": {"train_images": len(list_images(data)), "test_images": len(list_images(test)), "store_crops": SIZE.store_crops,
                    "seeds": len(seeds), "epochs": SIZE.epochs, "steps": table[0]["steps"], "images_per_step": table[0]["images_per_step"],
                    "crops_per_image": CROPS, "layer": LAYER, "gt_weight": GT_WEIGHT, "embed_flags": list(EMBED),
                    "recipe": str(RECIPE.relative_to(REPO_ROOT)), "threads": args.threads, "jobs": args.jobs,
                    "reused_runs": sum(bool(r.get("reused")) for r in results)},
        "teacher_top1_reference": KERAS_TEACHER_TOP1, "rows": table, "stores": stores, "runs": results, "seconds": time.perf_counter() - started,
    }
    print(markdown_table(table, COLUMNS))
    print(markdown_table(stores, STORE_COLUMNS))
    save_result(args.out or result_path(__file__, False, "accuracy-fd"), result)


def describe(r: dict) -> str:
    """The README block's body below its provenance line (benchmarks/report.py)."""
    s = r["setting"]
    return "\n".join([
        f"{s['train_images']} train images (balanced), M={s['store_crops']} stored crops per image, {s['test_images']} test images, "
        f"{s['seeds']} seed(s); every run: {s['steps']} optimizer steps of {s['images_per_step']} images x {s['crops_per_image']} crops "
        f"({s['epochs']} epochs), recipe `{s['recipe']}`. Features: the Keras teacher's `{s['layer']}` (512-d; teacher top-1 "
        f"{r['teacher_top1_reference']} % on the test set), `{' '.join(s['embed_flags'])}`; online FD reads the same layer on the fly. "
        f"Test top-1 is the last epoch's; spread is the sample std over seeds; {s['jobs']} run(s) at a time, {s['threads']} thread(s) "
        "each; wall s and samples/s are per run.", "",
        markdown_table(r["rows"], COLUMNS), "", "Stores (bytes per crop on disk, shards + store.json):", "",
        markdown_table(r["stores"], STORE_COLUMNS),
    ])
