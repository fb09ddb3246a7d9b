"""A student that passes its teacher (one GPU): all 50,000 CIFAR-10 training images, a real student,
stored labels against online KD at the same objective, from a weak and a strong teacher.

The accuracy blocks of benchmarks/README.md fit 2 CPU cores, so their students stay far below the
76.57 % Keras teacher. This block trains timm resnet18 (``output_stride=8`` at 32 px; recipe
``full-recipe.yaml``) on the whole training split for 8 epochs of 512 images x 2 crops per step
(784 steps of 1,024 crops), long enough for ground truth alone to pass the Keras teacher, and at the
same steps, from each teacher: online KD at alpha 1 and 0.7 (tau 1) and fkd from a full store of
M=16 crops per image (every stored crop used once) at W=0 and W=0.3, the scale block's W; each fkd
row is read against the online row with its objective. Teachers: airbench94 (PyPI ``airbench``
0.1.8, about 94 %), trained here on the same JPEGs (``airbench_teacher.py``; the ``bench`` extra),
and the Keras CNN. Rows: supervised + 4 per teacher = 9 runs, 1 seed (``--seeds``).

Time on one H200 with 16 cores (an estimate, not yet timed: the loader, 12 workers, bounds every
run at tens of thousands of crops/s): airbench under a minute with its first-call warm-up; fkd-
labelgen 800,000 crops per teacher, about a minute each; 9 runs of 800,000 crops, about 40 s each
with start-up and evaluation: about 10 minutes in all.

    .venv/bin/pip install -e '.[bench]'                                   # airbench 0.1.8
    .venv/bin/python benchmarks/accuracy/bench_full.py                     # one GPU: the block
    .venv/bin/python benchmarks/accuracy/bench_full.py --quick --jobs 2    # CPU: CI-sized, Keras teacher only

``--quick`` trains every row for a few steps on 40 images (the pipeline end to end, no figure worth
reading) and writes to the cache, not next to this script; without CUDA it skips airbench and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch  # noqa: E402

from benchmarks.accuracy.airbench_teacher import write_cifar_tensors  # noqa: E402
from benchmarks.accuracy.paired import interval, objective_text, paired_difference  # noqa: E402
from benchmarks.accuracy.toolkit import Block, Run, Size, summarize, teacher_top1, train  # noqa: E402
from benchmarks.common import (  # noqa: E402
    CACHE,
    KERAS,
    KERAS_TEACHER_TOP1,
    REPO_ROOT,
    LabelSetting,
    TeacherRef,
    balanced_subset,
    full_store,
    markdown_table,
    result_path,
    save_result,
)

RECIPE = Path(__file__).with_name("full-recipe.yaml")
AIRBENCH_TEACHER = "benchmarks.accuracy.airbench_teacher:create_model"
GT_WEIGHT = 0.3
CROPS = 2
FULL = Size(per_class=5000, store_crops=16, test_per_class=1000, epochs=8)
QUICK = Size(per_class=4, store_crops=2, test_per_class=2, epochs=1)
STEP = {FULL: 1024, QUICK: 8}
"""Crops per optimizer step: 512 (quick: 4) images x 2 crops."""


@dataclass(frozen=True)
class BlockTeacher:
    """A teacher of the block: its fkd flags (module, checkpoint), its store and top-1 here."""

    tag: str
    flags: tuple[str, ...]
    store: Path
    top1: float
    labelgen_seconds: "float | None"
    train_seconds: "float | None" = None


def train_airbench(folder: Path, checkpoint: Path, seed: int) -> float:
    """airbench94 with its own defaults (``train94()``: 9.9 epochs, batch 1024, flip + translate 2);
    its loaders read ``cifar10/train.pt`` and ``cifar10/test.pt`` under the working directory."""
    try:
        import airbench
    except ImportError:
        sys.exit("airbench is not installed: pip install -e '.[bench]' (airbench==0.1.8)")
    torch.manual_seed(seed)
    started = time.perf_counter()
    with contextlib.chdir(folder):
        net = airbench.train94(verbose=False)
    torch.save(net.state_dict(), checkpoint)
    return time.perf_counter() - started


def airbench_teacher(data: Path, test: Path, setting: LabelSetting, workers: int, seed: int) -> BlockTeacher:
    """airbench94 trained once per seed on ``data`` (cached), its full store and top-1 on ``test``."""
    folder = CACHE / "airbench"
    checkpoint = folder / f"airbench94-{setting.per_class}pc-seed{seed}.pt"
    seconds = None
    if not checkpoint.exists():
        write_cifar_tensors(folder / "cifar10", data, "train.pt")
        write_cifar_tensors(folder / "cifar10", test, "test.pt")
        seconds = train_airbench(folder, checkpoint, seed)
    flags = ("--teacher-module", AIRBENCH_TEACHER, "--checkpoint", str(checkpoint))
    store, labelgen = full_store(setting, workers, TeacherRef(checkpoint.stem, flags), gpus_per_worker=1 / workers)
    return BlockTeacher("airbench", flags, store, teacher_top1(test, AIRBENCH_TEACHER, checkpoint, "cuda"), labelgen, seconds)


def full_rows(teachers: list[BlockTeacher], epochs: int, extra: tuple[str, ...]) -> list[tuple[Run, str]]:
    """(seed-0 run, teacher tag) per row: supervised, then per teacher online KD at alpha 1 and 0.7
    and fkd at W 0 and 0.3 (the same two objectives)."""
    common = {"recipe": RECIPE, "extra": extra, "epochs": epochs}
    rows = [(Run("supervised", None, 0, CROPS, 0, **common), "-")]
    for t in teachers:
        rows += [(Run("online-kd", None, 0, CROPS, 0, teacher=t.flags, tag=t.tag, **common), t.tag),
                 (Run("online-kd", None, 0, CROPS, 0, teacher=t.flags, kd=("--kd-alpha", f"{1 - GT_WEIGHT:g}"), tag=f"a{1 - GT_WEIGHT:g}-{t.tag}",
                      **common), t.tag),
                 (Run("fkd", "full", 10, CROPS, 0, store=str(t.store), tag=t.tag, **common), t.tag),
                 (Run("fkd", "full", 10, CROPS, 0, gt_weight=GT_WEIGHT, store=str(t.store), tag=t.tag, **common), t.tag)]
    return rows


def full_claims(rows: list[dict], runs: list[dict], teachers: list[dict]) -> tuple[list[dict], list[dict]]:
    """(paired comparisons, claims): fkd against online KD at each objective, per teacher; ground
    truth against the Keras teacher; each teacher against its best student."""
    by_name = {r["name"]: r for r in rows}
    supervised, keras = by_name[f"supervised-n{CROPS}"], next(t for t in teachers if t["tag"] == "keras")
    claims = [{"claim": "ground truth alone passes the Keras teacher", "holds": supervised["top1_mean"] > keras["top1"],
               "measured": f"{supervised['top1_mean']:.2f} vs {keras['top1']:.2f}: {supervised['top1_mean'] - keras['top1']:+.2f}"}]
    pairs = []
    for t in teachers:
        tag = t["tag"]
        alpha = f"{1 - GT_WEIGHT:g}"
        for fkd, online, what in ((f"fkd-full-{tag}-n{CROPS}", f"online-kd-{tag}-n{CROPS}", "W=0, alpha 1"),
                                  (f"fkd-full-gt{GT_WEIGHT:g}-{tag}-n{CROPS}", f"online-kd-a{alpha}-{tag}-n{CROPS}", f"W={GT_WEIGHT:g}, alpha {alpha}")):
            pair = paired_difference(runs, fkd, online) | {"differs": f"stored vs live labels ({tag} teacher), {what}"}
            pairs.append(pair)
            claims.append({"claim": f"fkd full within 0.5 points of online KD at the same objective ({what}, {tag} teacher)",
                           "holds": pair["mean"] >= -0.5, "measured": f"paired difference {interval(pair)} points over {len(pair['seeds'])} seed(s)"})
        best = max((r for r in rows if r["teacher"] == tag), key=lambda r: r["top1_mean"])
        claims.append({"claim": f"a student passes its teacher ({tag}, {t['top1']:.2f} %)", "holds": best["top1_mean"] > t["top1"],
                       "measured": f"best: {best['name']} {best['top1_mean']:.2f}: {best['top1_mean'] - t['top1']:+.2f}"})
    return pairs, claims


COLUMNS = [("name", "run", ""), ("teacher", "teacher", ""), ("objective", "objective", ""), ("seeds", "seeds", "d"), ("steps", "steps", "d"),
           ("top1_mean", "test top-1 %", ".2f"), ("vs_supervised", "vs supervised", "+.2f"), ("wall_seconds", "wall s", ".0f"),
           ("train_samples_per_s", "train samples/s", ".0f")]
TEACHER_COLUMNS = [("tag", "teacher", ""), ("top1", "test top-1 %", ".2f"), ("train_seconds", "trained here, s", ".0f"),
                   ("labelgen_seconds", "fkd-labelgen s", ".0f")]
PAIR_COLUMNS = [("name", "run", ""), ("reference", "against", ""), ("differs", "what differs", ""), ("text", "difference, points", "")]


def verdict(claim: dict) -> str:
    return f"- {claim['claim']}: **{'holds' if claim['holds'] else 'does not hold'}** ({claim['measured']})"


def describe(result: dict) -> str:
    """The README block below the provenance line."""
    s = result["setting"]
    return "\n".join([
        f"Student {s['student']} (recipe `{s['recipe']}`), {s['train_images']} train images, {s['test_images']} test images, {s['seeds']} "
        f"seed(s); every run: {s['steps']} optimizer steps of {s['images_per_step']} images x {s['crops_per_image']} crops ({s['epochs']} "
        f"epochs); fkd from full stores of M={s['store_crops']} crops per image, every stored crop used once. {s['note']}", "",
        markdown_table(result["teachers"], TEACHER_COLUMNS), "", markdown_table(result["rows"], COLUMNS), "",
        "Paired differences (same seed), each fkd row against online KD with its teacher and objective:", "",
        markdown_table([p | {"text": interval(p)} for p in result["pairs"]], PAIR_COLUMNS), "", "Claims:", "",
        *(verdict(c) for c in result["claims"]),
    ])


def run_full(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    size = QUICK if args.quick else FULL
    cuda = torch.cuda.is_available()
    data, test = balanced_subset("train", size.per_class), balanced_subset("test", size.test_per_class)
    setting = LabelSetting(size.per_class, size.store_crops)
    workers = args.labelgen_workers or (8 if cuda else 1)
    teachers = [airbench_teacher(data, test, setting, workers, args.teacher_seed)] if cuda else []
    note = "" if cuda else "airbench94 needs CUDA: this run (no GPU) skips the airbench teacher and trains from the Keras teacher only."
    if note:
        print(note, flush=True)
    store, seconds = full_store(setting, workers, KERAS, gpus_per_worker=1 / workers if cuda else None)
    teachers.append(BlockTeacher("keras", KERAS.flags, store, teacher_top1(test, device="cuda" if cuda else "cpu"), seconds))
    rows = full_rows(teachers, args.epochs or size.epochs, ("--workers", "0") if args.quick else ())
    tags = {run.name: tag for run, tag in rows}
    runs = [replace(run, seed=s) for run, _ in rows for s in range(args.seeds)]
    root = CACHE / ("accuracy-full-quick" if args.quick else "accuracy-full") / f"{setting.key}-S{STEP[size]}"
    block = Block(setting, data, test, root, STEP[size], 1, args.threads)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda run: train(run, block), runs))
    table = summarize(results)
    supervised = table[0]["top1_mean"]
    for row in table:
        row |= {"teacher": tags[row["name"]], "objective": objective_text(row), "vs_supervised": row["top1_mean"] - supervised}
    described = [{"tag": t.tag, "top1": t.top1, "train_seconds": t.train_seconds, "labelgen_seconds": t.labelgen_seconds,
                  "flags": list(t.flags)} for t in teachers]
    pairs, claims = full_claims(table, results, described)
    result = {
        "setting": {"train_images": size.per_class * 10, "test_images": size.test_per_class * 10, "seeds": args.seeds,
                    "store_crops": size.store_crops,
                    "crops_per_image": CROPS, "images_per_step": STEP[size] // CROPS, "epochs": table[0]["epochs"], "steps": table[0]["steps"],
                    "recipe": str(RECIPE.relative_to(REPO_ROOT)), "student": "timm resnet18, output_stride=8, 32x32", "quick": args.quick,
                    "cuda": cuda, "note": note, "keras_reference_top1": KERAS_TEACHER_TOP1},
        "teachers": described, "rows": table, "runs": results, "pairs": pairs, "claims": claims, "seconds": time.perf_counter() - started,
    }
    print(describe(result))
    save_result(args.out or (CACHE / "accuracy-full-quick.json" if args.quick else result_path(__file__, False, "accuracy-full")), result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every row for a few steps on 40 images (CI-sized; CPU: Keras teacher only)")
    parser.add_argument("--seeds", type=int, default=1, help="student seeds per row (default 1)")
    parser.add_argument("--teacher-seed", type=int, default=0, help="airbench94's training seed (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default 8; --quick 1)")
    parser.add_argument("--labelgen-workers", type=int, default=None, help="fkd-labelgen Ray workers (default: 8 sharing the GPU, 1 on CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per training process (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once (default 1: one GPU; CI's 2 CPU cores: 2)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: accuracy-full.json next to this script; --quick: the cache)")
    run_full(parser.parse_args())


if __name__ == "__main__":
    main()
