"""Training throughput of fkd vs online-kd vs supervised with a heavy teacher and a light student.

FKD exists because online distillation runs the teacher on every training crop. This measures what
that costs, side by side in one run: ``fkd-train`` with the same student, data (real CIFAR-10
images), crops, batch and number of steps in three modes, for two students: timm ``resnet18`` at
64x64 and the ViT of configs/train-cifar10-vit-fkd.yaml (ViT-Tiny with 4 px patches at 32x32,
the model, arguments and size read from that recipe):

- ``supervised``: ground truth only (the floor: no teacher at all);
- ``online-kd``: timm ``regnety_160`` (random weights: no internet; the cost is the same) runs on
  every crop at its native 224x224 (``--teacher-size``), as in online distillation;
- ``fkd``: labels read from a store (the Keras CIFAR-10 teacher's labels, marginal smoothing K=5:
  which teacher made the stored labels does not change what a training step costs).

Reported: training samples (crops) per second of the last epoch (the first one warms up the
DataLoader and allocator), and per student the headline ratio fkd / online-kd.

    .venv/bin/python benchmarks/speed/bench_train_speed.py --quick    # resnet18 only: < 10 min on 2 CPU cores
    .venv/bin/python benchmarks/speed/bench_train_speed.py            # both students

The quick setting trains resnet18 only: its online-kd row alone runs the regnety_160 teacher for
about 330 s on 2 cores, and the ViT's would take as long again, past the 10-minute limit.

On a GPU machine, a setting sized for it (the README's "On a GPU" table; about 6 minutes on one H200):

    .venv/bin/python benchmarks/speed/bench_train_speed.py --per-class 250 --batch-size 128 --crops-per-image 4 \
        --workers 8 --epochs 3 --threads 4 --out benchmarks/speed/train_speed-gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import (  # noqa: E402
    CACHE,
    REPO_ROOT,
    LabelSetting,
    balanced_subset,
    converted_store,
    markdown_table,
    ratio,
    result_path,
    run_logged,
    save_result,
    script,
    threads_env,
)

TEACHER = "regnety_160"
VIT_RECIPE = REPO_ROOT / "configs" / "train-cifar10-vit-fkd.yaml"


@dataclass(frozen=True)
class Student:
    """A student of the comparison: timm name, extra timm arguments, input side."""

    model: str
    kwargs: tuple[str, ...]
    size: int

    @property
    def label(self) -> str:
        arguments = f" ({', '.join(self.kwargs)})" if self.kwargs else ""
        return f"{self.model}{arguments} @ {self.size}px"


def vit_student() -> Student:
    """The CIFAR ViT recipe's student, as the recipe builds it."""
    recipe = yaml.safe_load(VIT_RECIPE.read_text())
    return Student(recipe["model"], tuple(recipe["model-kwargs"]), int(recipe["input-size"]))


STUDENTS = (Student("resnet18", (), 64), vit_student())
QUOTED = [{"what": "official FKD, ResNet-50, 8x V100, batch 1024: time per epoch", "figure": "FKD 486.77 s, vanilla (no KD) 579.36 s, ReLabel 762.11 s",
           "source": "github.com/szq0214/FKD, FKD/README.md 'Training Speed Comparison'"}]


def train(student: Student, mode: str, args: argparse.Namespace, data: Path, store: Path, root: Path) -> dict:
    out = root / student.model / mode
    argv = [script("fkd-train"), "--mode", mode, "--data", str(data), "--output", str(out), "--model", student.model,
            *(["--model-kwargs", *student.kwargs] if student.kwargs else []),
            "--input-size", str(student.size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--crops-per-image", str(args.crops_per_image), "--workers", str(args.workers), "--crop-scale", "0.25", "1",
            "--no-progress", "--seed", "0"]
    if mode == "online-kd":
        argv += ["--teacher", TEACHER, "--no-pretrained", "--teacher-input-size", str(args.teacher_size)]
    if mode == "fkd":
        argv += ["--store", str(store)]
    if out.exists():
        for stale in out.iterdir():
            stale.unlink()
    wall = run_logged(argv, out / "train.log", threads_env(args.threads))
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    last = epochs[-1]
    print(f"  {student.model} {mode}: {last['samples_per_s']:.1f} samples/s (last epoch), {wall:.0f} s", flush=True)
    return {"student": student.label, "mode": mode, "samples_per_s": last["samples_per_s"], "images_per_s": last["images_per_s"],
            "epoch_samples_per_s": [e["samples_per_s"] for e in epochs], "wall_seconds": wall, "steps_per_epoch": -(-last["images"] // args.batch_size)}


COLUMNS = [("student", "student", ""), ("mode", "mode", ""), ("samples_per_s", "train samples/s", ".1f"), ("images_per_s", "images/s", ".1f"),
           ("vs_online_kd", "vs online-kd", ".1f"), ("vs_supervised", "vs supervised", ".2f"), ("wall_seconds", "wall s", ".0f")]


def add_ratios(rows: list[dict]) -> None:
    """Each row's samples/s over its own student's online-kd and supervised rows."""
    by_key = {(r["student"], r["mode"]): r for r in rows}
    for r in rows:
        r["vs_online_kd"] = ratio(r["samples_per_s"], by_key[r["student"], "online-kd"]["samples_per_s"])
        r["vs_supervised"] = ratio(r["samples_per_s"], by_key[r["student"], "supervised"]["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 images per class, 2 epochs, resnet18 only (< 10 min on 2 cores)")
    parser.add_argument("--per-class", type=int, default=24, help="CIFAR-10 train images per class (default 24)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per mode; the last one is reported (default 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    parser.add_argument("--crops-per-image", type=int, default=2, help="crops per image and step (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (default 1)")
    parser.add_argument("--teacher-size", type=int, default=224, help="online-kd teacher input side (default 224: regnety_160's own)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per training process (default 1: see common.threads_env)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: next to this script, -quick for --quick)")
    args = parser.parse_args()
    args.out = args.out or result_path(__file__, args.quick, 'train_speed')
    if args.quick:
        args.per_class = 16
    setting = LabelSetting(args.per_class, 16)
    data = balanced_subset("train", args.per_class, setting.seed)
    store = converted_store(setting, "marginal-smoothing", 5)
    root = CACHE / "train_speed"
    students = STUDENTS[:1] if args.quick else STUDENTS
    rows = [train(student, mode, args, data, store, root) for student in students for mode in ("supervised", "online-kd", "fkd")]
    add_ratios(rows)
    headlines = {r["student"]: r["vs_online_kd"] for r in rows if r["mode"] == "fkd"}
    result = {"setting": {"student": "; ".join(s.label for s in students), "teacher": f"{TEACHER} (random weights) @ {args.teacher_size}px",
                          "images": args.per_class * 10, "epochs": args.epochs, "batch_size": args.batch_size,
                          "crops_per_image": args.crops_per_image, "workers": args.workers, "threads": args.threads, "quick": args.quick},
              "rows": rows, "fkd_over_online_kd_per_student": headlines, "quoted": QUOTED}
    print(f"\nTraining throughput, {TEACHER} @ {args.teacher_size}px teacher (online-kd only):")
    print(markdown_table(rows, COLUMNS))
    for student, value in headlines.items():
        print(f"headline, {student}: fkd / online-kd = {value:.1f}x samples/s")
    save_result(args.out, result)


if __name__ == "__main__":
    main()
