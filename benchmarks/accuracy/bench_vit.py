"""The ViT block (``bench_accuracy.py --vit``): DeiT's two claims, and FKD, with a ViT student.

DeiT (Touvron et al. 2021) claims that (1) hard distillation beats soft distillation with a convnet
teacher and (2) a distillation token beats distilling through the class token. This block checks
both at a budget that fits 2 CPU cores, on real CIFAR-10 with the real Keras CNN teacher (a convnet).

Setting: the scale block's data and labels (10,000 train images, balanced, seed 0; its full-scheme
M=32 store, re-quantized with ``fkd-labels convert``: no new labelling), the whole test set; every
run is 1 epoch of 32 images x 4 crops per step = 313 optimizer steps (128 crops each), 2 seeds.
Student: the CIFAR ViT recipes (configs/train-cifar10-vit-fkd.yaml, configs/train-cifar10-deit.yaml:
AdamW 1e-3, AugReg medium1's Mixup 0.2 without its RandAugment, drop-path 0.1, clip 1) with a smaller ViT
(``MODEL_KWARGS``: 3 blocks of width 96, 3 heads, 4 px patches: 64 patches + class token,
0.35 M parameters, about the CNN block's 0.37 M student, against 12 blocks of 192 in the recipes;
sized so the 22 runs fit about 40 minutes on 2 cores, see below), warm-up 10 % of the run as in the
recipes (3 of 30 epochs), and, for every row alike: ViT mean/std 0.5, bilinear resizing (the store's),
no label smoothing, fresh crops (supervised, online-kd) drawn with the store's crop area and aspect
ranges. Rows (ViT = class token only; DeiT = the same ViT plus DeiT's distillation token, whose
two heads are averaged at test time):

- supervised ViT: ground truth;
- online-kd soft / hard ViT, teacher in the loop: DeiT's soft (0.9 CE(y) + 0.1 x 3^2 KL at tau 3)
  and hard (0.5 CE(y) + 0.5 CE(teacher top-1)) distillation through the class token;
- online-kd ViT, teacher in the loop: KL at tau 1 only, no ground truth: the fkd full row's objective,
  so the pair reads FKD's claim (stored labels match the teacher in the loop) on a ViT;
- online-kd-ra and fkd-full-ra: the same two rows plus AugReg medium1's RandAugment (colour ops, 2
  layers, magnitude 15), which the recipes leave out: it moves no pixel, but the teacher in the loop
  labels the recoloured crop while a stored label is the teacher's word on the crop before it;
- fkd ViT from stored labels: marginal smoothing K=5 and full (the stored labels only);
- fkd hardening, ground-truth weight 0.5, ViT: 0.5 CE(y) + 0.5 CE(stored top-1) on the class token:
  DeiT's hard objective from the stored labels without the distillation token;
- deit hard / soft DeiT from the full store: the same two objectives as online-kd, the ground truth
  on the class head and the stored labels (hard: their top-1; soft: the teacher at tau 3, rebuilt
  exactly from the full store's log-probabilities, which only a store of format version 5 keeps)
  on the distillation head.

and, from a reinforced store (``fkd-labelgen --randaugment`` with the same spec: format version 6),

- fkd-full-reinforced-ra: the full labels of the teacher on each crop *after* its stored
  RandAugment, which training replays (no RandAugment drawn in training): the stored-label
  counterpart of online-kd-ra. Against online-kd-ra (the same augmentation, the same objective), with
  fkd-full-ra (RandAugment after the teacher) and fkd-full (none) beside it, each pair is read as
  "stored labels within the seed spread of online KD under the same augmentation"
  (``reinforced_claims``). Its store is labelled once (the full store's 10,000 images x 32 crops
  again, RandAugment applied first: about as long as the full store's labelling, 2,637 s there) and
  cached; the row adds 2 runs (about 6 minutes with ``--jobs 2``).

Claim 1 is read twice (token and stored labels: deit hard vs soft; class token and teacher in the
loop: online-kd hard vs soft), claim 2 on deit hard vs fkd hardening gt 0.5: the same stored crops
and the same hard targets, with and without the token (under Mixup, deit takes the top-1 of the
mixed stored label, fkd mixes the two one-hot top-1s: the only difference besides the token).

Time (how the ViT was sized): one fkd-full run used 161 CPU seconds (fkd-train 126, its DataLoader
worker 33; 403 s wall on the 2 cores shared with a load average near 8); online-kd runs the teacher
on top (+87 CPU s measured at width 128). The 22 runs: about 4,300 CPU seconds, so about 40 minutes
with ``--jobs 2`` on 2 otherwise idle cores (an estimate from those figures, not a timed block run).
Without the scale block's store in the cache, it is labelled first (2,637 s on the scale block's run);
stores cached by an fkd that wrote an older format are not reused (``common.label_stores``).

    .venv/bin/python benchmarks/accuracy/bench_accuracy.py --vit --jobs 2            # 22 runs
    FKD_BENCH_CACHE=/tmp/fkd-smoke .venv/bin/python benchmarks/accuracy/bench_accuracy.py --vit --smoke
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from benchmarks.accuracy.toolkit import Block, Run, Size, summarize, teacher_top1, train
from benchmarks.common import (
    CACHE,
    KERAS_TEACHER_TOP1,
    REPO_ROOT,
    LabelSetting,
    balanced_subset,
    converted_store,
    full_store,
    markdown_table,
    result_path,
    save_result,
)
from benchmarks.storage.reinforced import reinforced_store
from fkd.data.images import list_images

VIT_RECIPE = REPO_ROOT / "configs" / "train-cifar10-vit-fkd.yaml"
DEIT_RECIPE = REPO_ROOT / "configs" / "train-cifar10-deit.yaml"
MODEL_KWARGS = ("img_size=32", "patch_size=4", "depth=3", "embed_dim=96", "num_heads=3")
RANDAUGMENT = ("--randaugment", "rand-n2-m15-mmax15")  # AugReg medium1's, which the recipes leave out
HARD = ("--kd", "hard", "--kd-alpha", "0.5")  # DeiT's hard distillation (the CIFAR deit recipe's)
SOFT = ("--kd", "soft", "--kd-tau", "3", "--kd-alpha", "0.1")  # DeiT's soft distillation (its paper's tau and lambda)
FLAGS = ("--interpolation", "bilinear", "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--workers", "1", "--no-progress")
"""Every row alike: the store's resizing, ViT's mean/std for DeiT as well, one DataLoader worker."""
CROPS = 4
WARMUP_FRACTION = 0.1


FULL = Size(per_class=1000, store_crops=32, test_per_class=1000, epochs=1)
SMOKE = Size(per_class=8, store_crops=8, test_per_class=10, epochs=1)
"""Every row for a few steps on 80 images: checks the block end to end, measures nothing."""


def vit_rows(full: str, epochs: int) -> list[tuple[Run, str, str]]:
    """(seed-0 run, student, targets) per row. ``full`` is the full store: the recipes name a store,
    so supervised and online-kd get it too (used only for its crop area and aspect ranges)."""
    common = ("--model-kwargs", *MODEL_KWARGS, *FLAGS, "--warmup-epochs", f"{WARMUP_FRACTION * epochs:g}")
    fresh = (*common, "--store", full)
    vit, deit = "ViT", "DeiT (ViT + distillation token)"
    return [
        (Run("supervised", None, 0, CROPS, 0, recipe=VIT_RECIPE, extra=fresh, epochs=epochs), vit, "ground truth"),
        (Run("online-kd", None, 0, CROPS, 0, recipe=VIT_RECIPE, kd=SOFT, extra=fresh, epochs=epochs), vit,
         "0.9 CE(y) + 0.1 tau^2 KL(teacher, tau 3), teacher in the loop"),
        (Run("online-kd", None, 0, CROPS, 0, recipe=VIT_RECIPE, kd=HARD, extra=fresh, epochs=epochs), vit,
         "0.5 CE(y) + 0.5 CE(teacher top-1), teacher in the loop"),
        (Run("online-kd", None, 0, CROPS, 0, recipe=VIT_RECIPE, extra=fresh, epochs=epochs), vit,
         "KL(teacher) only, tau 1, teacher in the loop: fkd full's objective"),
        (Run("online-kd", None, 0, CROPS, 0, recipe=VIT_RECIPE, extra=(*fresh, *RANDAUGMENT), epochs=epochs, tag="ra"), vit,
         "as online-kd, plus AugReg medium1's RandAugment: the teacher labels the recoloured crop"),
        (Run("fkd", "marginal-smoothing", 5, CROPS, 0, recipe=VIT_RECIPE, extra=common, epochs=epochs), vit, "stored labels, K=5"),
        (Run("fkd", "full", 10, CROPS, 0, recipe=VIT_RECIPE, extra=common, epochs=epochs), vit, "stored labels, full"),
        (Run("fkd", "full", 10, CROPS, 0, recipe=VIT_RECIPE, extra=(*common, *RANDAUGMENT), epochs=epochs, tag="ra"), vit,
         "as fkd full, plus RandAugment: the stored label is the unrecoloured crop's"),
        (Run("fkd", "hardening", 1, CROPS, 0, gt_weight=0.5, recipe=VIT_RECIPE, extra=common, epochs=epochs), vit,
         "0.5 CE(y) + 0.5 CE(stored top-1), class token"),
        (Run("deit", "full", 10, CROPS, 0, recipe=DEIT_RECIPE, kd=HARD, extra=common, epochs=epochs), deit,
         "cls: CE(y); dist: CE(stored top-1); 0.5 / 0.5"),
        (Run("deit", "full", 10, CROPS, 0, recipe=DEIT_RECIPE, kd=SOFT, extra=common, epochs=epochs), deit,
         "cls: CE(y); dist: tau^2 KL(stored at tau 3); 0.9 / 0.1"),
    ]


def reinforced_vit_rows(store: str, epochs: int) -> list[tuple[Run, str, str]]:
    """The row of the reinforced store (``store``: the full scheme, labelled after RANDAUGMENT)."""
    common = ("--model-kwargs", *MODEL_KWARGS, *FLAGS, "--warmup-epochs", f"{WARMUP_FRACTION * epochs:g}")
    return [(Run("fkd", "full", 10, CROPS, 0, recipe=VIT_RECIPE, extra=common, epochs=epochs, store=store, tag="reinforced-ra"), "ViT",
             "stored labels of the RandAugment'd crops (reinforced store: the teacher labelled each crop after its stored RandAugment)")]


def compare(claim: str, rows: dict[str, dict], better: str, worse: str) -> dict:
    """``better`` beats ``worse`` on mean test top-1: holds when the difference is above 0; it is
    called clear when it also exceeds its seed spread, the two rows' seed stds combined (a single
    run's difference spreads that much; with one seed there is no spread and nothing is clear)."""
    a, b = rows[better], rows[worse]
    diff = a["top1_mean"] - b["top1_mean"]
    spread = math.hypot(a["top1_std"], b["top1_std"]) if a["top1_std"] is not None and b["top1_std"] is not None else None
    return {
        "claim": claim, "holds": diff > 0, "difference": diff, "spread": spread, "clear": spread is not None and abs(diff) > spread,
        "measured": f"{better} {a['top1_mean']:.2f} vs {worse} {b['top1_mean']:.2f}: {diff:+.2f} points"
                    + (f", seed spread {spread:.2f}" if spread is not None else ""),
    }


def vit_claims(rows: list[dict]) -> list[dict]:
    """DeiT's two claims, the first read with and without the distillation token."""
    by_name = {r["name"]: r for r in rows}
    hard_soft = "DeiT claim 1: hard distillation beats soft with a convnet teacher"
    return [
        compare(f"{hard_soft} (distillation token, stored labels)", by_name, "deit-full-hard-n4", "deit-full-soft-n4"),
        compare(f"{hard_soft} (class token only, teacher in the loop)", by_name, "online-kd-hard-n4", "online-kd-soft-n4"),
        compare("DeiT claim 2: the distillation token helps (the same hard objective and stored labels, with vs without the token)",
                by_name, "deit-full-hard-n4", "fkd-hardening-gt0.5-n4"),
        stored_matches_online(by_name),
        stored_matches_online(by_name, "fkd-hardening-gt0.5-n4", "online-kd-hard-n4",
                              "FKD with ground truth: stored top-1 labels reach the teacher in the loop within 0.5 points (the same objective: "
                              "0.5 CE(y) + 0.5 CE(top-1), class token)"),
        compare("RandAugment (medium1) costs stored labels: fkd full without it beats fkd full with it", by_name, "fkd-full-n4", "fkd-full-ra-n4"),
        compare("RandAugment (medium1) costs online KD: online-kd without it beats online-kd with it", by_name, "online-kd-n4", "online-kd-ra-n4"),
        *reinforced_claims(by_name),
    ]


SAME_AUGMENTATION = "stored labels within the seed spread of online KD under the same augmentation"


def within_seed_spread(augmentation: str, by_name: dict[str, dict], stored: str, online: str) -> dict:
    """The reinforced stores' claim for one row pair: the stored-label row is not below the
    online-KD row by more than their combined seed spread (with one seed: not below it at all)."""
    compared = compare(f"{SAME_AUGMENTATION} ({augmentation})", by_name, stored, online)
    return compared | {"holds": compared["difference"] >= -(compared["spread"] or 0.0)}


def reinforced_claims(by_name: dict[str, dict]) -> list[dict]:
    """The RandAugment rows read pair by pair (present only once the reinforced row has run)."""
    if "fkd-full-reinforced-ra-n4" not in by_name:
        return []
    return [
        within_seed_spread("none: plain store, fkd-full vs online-kd", by_name, "fkd-full-n4", "online-kd-n4"),
        within_seed_spread("RandAugment medium1 after the teacher: plain store, fkd-full-ra vs online-kd-ra", by_name, "fkd-full-ra-n4",
                           "online-kd-ra-n4"),
        within_seed_spread("RandAugment medium1 labelled: reinforced store, fkd-full-reinforced-ra vs online-kd-ra", by_name,
                           "fkd-full-reinforced-ra-n4", "online-kd-ra-n4"),
        compare("a reinforced store recovers what RandAugment cost stored labels: reinforced beats RandAugment after the teacher", by_name,
                "fkd-full-reinforced-ra-n4", "fkd-full-ra-n4"),
    ]


def stored_matches_online(by_name: dict[str, dict], stored: str = "fkd-full-n4", online: str = "online-kd-n4",
                          claim: str = "FKD: stored labels reach the teacher in the loop within 0.5 points (the same objective: KL at tau 1 only)",
                          ) -> dict:
    """FKD's claim on a ViT, like for like: stored labels against the teacher in the loop with the
    same objective (the full labels against KL at tau 1 only; the ground-truth row, hardening at
    W 0.5, against DeiT's hard objective online, alpha 0.5); holds within 0.5 points, as the CNN
    block reads it."""
    compared = compare(claim, by_name, stored, online)
    return compared | {"holds": compared["difference"] >= -0.5}


def verdict(claim: dict) -> str:
    """One Markdown line: the verdict, whether the difference is clear of the seed spread, the figures."""
    qualifier = "no seed spread (one seed)" if claim["spread"] is None else "beyond the seed spread" if claim["clear"] else "within the seed spread"
    return f"- {claim['claim']}: **{'holds' if claim['holds'] else 'does not hold'}**, {qualifier} ({claim['measured']})"


COLUMNS = [
    ("name", "run", ""), ("student", "student", ""), ("targets", "targets", ""), ("seeds", "seeds", "d"), ("steps", "steps", "d"),
    ("top1_mean", "test top-1 %", ".2f"), ("top1_std", "spread (std)", ".2f"), ("vs_supervised", "vs supervised", "+.2f"),
    ("wall_seconds", "wall s", ".0f"), ("train_samples_per_s", "train samples/s", ".0f"),
]


def run_vit(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    size = SMOKE if args.smoke else FULL
    seeds = range(1 if args.smoke else args.seeds or 2)
    setting = LabelSetting(size.per_class, size.store_crops)
    data, test = balanced_subset("train", size.per_class, setting.seed), balanced_subset("test", size.test_per_class, setting.seed)
    full, labelgen_seconds = full_store(setting, workers=args.jobs)
    reinforced, reinforced_seconds = reinforced_store(setting, RANDAUGMENT, workers=args.jobs)
    teacher = teacher_top1(test)
    rows = vit_rows(str(full), size.epochs) + reinforced_vit_rows(str(reinforced), size.epochs)
    described = {run.name: (student, targets) for run, student, targets in rows}
    runs = [replace(run, seed=s) for run, _, _ in rows for s in seeds]
    for scheme, top_k in sorted({(r.scheme, r.top_k) for r in runs if r.scheme}):
        converted_store(setting, scheme, top_k)  # one at a time: parallel runs must not convert it twice
    root = CACHE / ("accuracy-vit-smoke" if args.smoke else "accuracy-vit") / f"{setting.key}-test{size.test_per_class}-E{size.epochs}"
    block = Block(setting, data, test, root, 32 * CROPS, 1, args.threads)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda r: train(r, block), runs))
    table = summarize(results)
    supervised = next(r for r in table if r["mode"] == "supervised")
    for row in table:
        row["student"], row["targets"] = described[row["name"]]
        row["vs_supervised"] = row["top1_mean"] - supervised["top1_mean"]
    result = {
        "setting": {"train_images": len(list_images(data)), "test_images": len(list_images(test)), "store_crops": size.store_crops,
                    "seeds": len(seeds), "epochs": size.epochs, "steps": table[0]["steps"], "images_per_step": table[0]["images_per_step"],
                    "crops_per_image": CROPS, "model_kwargs": list(MODEL_KWARGS), "warmup_fraction": WARMUP_FRACTION,
                    "recipes": [str(p.relative_to(REPO_ROOT)) for p in (VIT_RECIPE, DEIT_RECIPE)], "threads": args.threads, "jobs": args.jobs,
                    "labelgen_seconds": labelgen_seconds, "reinforced_labelgen_seconds": reinforced_seconds, "smoke": args.smoke, "reused_runs": sum(bool(r.get("reused")) for r in results)},
        "teacher_top1": teacher, "teacher_top1_reference": KERAS_TEACHER_TOP1, "rows": table, "runs": results,
        "claims": vit_claims(table), "seconds": time.perf_counter() - started,
    }
    print(markdown_table(table, COLUMNS))
    print("\n".join(verdict(c) for c in result["claims"]))
    save_result(args.out or (CACHE / "accuracy-vit-smoke.json" if args.smoke else result_path(__file__, False, "accuracy-vit")), result)
