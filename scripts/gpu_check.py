"""``make gpu-check``: the CUDA paths that CPU-only CI cannot run, in one command, in under 10 minutes.

On a CUDA machine it runs, each step in a subprocess with a timeout, and prints one table (step,
ok/FAILED, key figure, seconds); it exits 1 if any step failed or ran out of time:

1. fkd-labelgen with the GPU teacher, ``--teacher-precision`` fp32 and bf16: the real Keras CIFAR-10
   teacher over 1,000 CIFAR-10 images, and a randomly initialized timm resnet50 at 224 px (a
   realistic GPU load); images/s and the share of the labelling time the teacher's forward is busy;
2. fkd-train with AMP (bf16), channels_last, pinned memory (on whenever the device is CUDA) and
   ``--compile``; then with ``--replay-device cuda`` (crops cut on the GPU);
3. NCCL: init + all_reduce, and fkd-train under torchrun on every GPU (DDP over NCCL; with one GPU
   the run has world size 1, which trains without a process group);
4. the loader benchmark (``benchmarks/speed/loader.py --quick --replay-device cuda``);
5. the labelgen GPU benchmark (``benchmarks/speed/labelgen_gpu.py --short``): fkd-labelgen with
   crops cut on the GPU against the teacher's pure forward (``benchmark_steps``).

Without a CUDA device it says so in one line and exits 0, so it is safe in any ``make`` run.

    .venv/bin/python scripts/gpu_check.py [--work DIR] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KERAS_TEACHER = "fkd.zoo.keras_cifar10:create_model"
LABELGEN_SPEED = re.compile(r"labelled \d+ images in [\d.]+ s \(([\d.]+) images/s\)")
TEACHER_BUSY = re.compile(r"teacher busy [\d.]+ s over \d+ worker\(s\): (\d+) % of the labelling time")
EPOCH = re.compile(r"^epoch (\d+)/(\d+): .* (\d+) crops/s \((\d+) images/s\)", re.M)
NCCL_PROBE = (
    "import torch, torch.distributed as dist\n"
    "dist.init_process_group('nccl', rank=0, world_size=1)\n"
    "t = torch.full((1,), 2.0, device='cuda')\n"
    "dist.all_reduce(t)\n"
    "torch.cuda.synchronize()\n"
    "print(f\"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))} all_reduce ok ({t.item():g})\")\n"
    "dist.destroy_process_group()\n"
)


@dataclass
class Step:
    """One check: a command, its time limit, and how its output becomes the table's key figure
    (``figure`` raises when the output lacks it, which fails the step)."""

    name: str
    argv: list[str]
    timeout: float
    figure: Callable[[str], str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    ok: bool
    figure: str
    seconds: float


def labelgen_figure(output: str) -> str:
    speed, busy = LABELGEN_SPEED.search(output), TEACHER_BUSY.search(output)
    if speed is None or busy is None:
        raise ValueError("no 'labelled ... images/s' and 'teacher busy' lines in the output")
    return f"{float(speed[1]):,.0f} images/s, teacher busy {busy[1]} % of the time"


def train_figure(output: str) -> str:
    epochs = EPOCH.findall(output)
    if not epochs:
        raise ValueError("no 'epoch N/M: ... crops/s' line in the output")
    epoch, total, crops, images = epochs[-1]
    return f"{int(crops):,} crops/s ({int(images):,} images/s), epoch {epoch}/{total}"


def loader_figure(path: Path) -> Callable[[str], str]:
    def figure(output: str) -> str:
        result = json.loads(path.read_text())
        device = next(r for r in result["rows"] if "replay-device" in r["loader"])
        return (f"fkd n=4 {result['target']['fkd_n4_vs_timm']:.2f}x timm per core; GPU replay {device['crops_per_s']:,.0f} crops/s, "
                f"{device['replay_cpu_ms_per_image']:.2f} trainer CPU ms/image")
    return figure


def last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan(work: Path, cifar: Path, cifar_small: Path, gpus: int, cpus: int) -> list[Step]:
    """The steps, in order (the training steps read the store the first step writes)."""
    py = sys.executable
    labelgen = [py, "-m", "labelgen.cli", "--workers", "1", "--gpus-per-worker", "1", "--cpus-per-worker", str(max(1, min(8, cpus - 1))),
                "--shard-size", "500", "--no-progress", "--overwrite"]
    steps = []
    for precision in ("fp32", "bf16"):
        steps.append(Step(f"labelgen Keras CIFAR-10 teacher {precision}", [
            *labelgen, "--data", str(cifar), "--out", str(work / f"keras-{precision}"), "--teacher-module", KERAS_TEACHER,
            "--crops", "32", "--batch-size", "1024", "--teacher-precision", precision], 90, labelgen_figure))
    for precision in ("fp32", "bf16"):
        steps.append(Step(f"labelgen resnet50 @224 {precision}", [
            *labelgen, "--data", str(cifar_small), "--out", str(work / f"r50-{precision}"), "--teacher", "resnet50", "--no-pretrained",
            "--num-classes", "10", "--crops", "16", "--batch-size", "256", "--teacher-precision", precision], 90, labelgen_figure))
    train = ["-m", "train.cli", "--store", str(work / "keras-fp32"), "--data", str(cifar), "--model", "resnet18", "--input-size", "112",
             "--batch-size", "100", "--crops-per-image", "4", "--workers", str(max(1, min(8, cpus // max(gpus, 1) - 1))),
             "--amp", "bf16", "--channels-last", "--no-progress"]
    steps += [
        Step("fkd-train AMP bf16 + channels_last + pinned + --compile", [py, *train, "--epochs", "3", "--compile", "--output",
                                                                         str(work / "train-compile")], 180, train_figure),
        Step("fkd-train --replay-device cuda", [py, *train, "--epochs", "2", "--replay-device", "cuda", "--output", str(work / "train-replay")],
             90, train_figure),
        Step("NCCL init + all_reduce", [py, "-c", NCCL_PROBE], 60, last_line,
             {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}),
        Step(f"DDP torchrun x{gpus} GPU" + (" (world size 1: no process group)" if gpus == 1 else " (NCCL)"), [
            py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus), *train, "--epochs", "2",
            "--output", str(work / "train-ddp")], 120, train_figure),
        Step("loader benchmark --replay-device cuda", [
            py, str(REPO / "benchmarks" / "speed" / "loader.py"), "--quick", "--replay-device", "cuda", "--workers", "4",
            "--out", str(work / "loader-cuda.json")], 150, loader_figure(work / "loader-cuda.json")),
    ]
    return steps


def labelgen_gpu_figure(path: Path) -> Callable[[str], str]:
    def figure(output: str) -> str:
        rows = json.loads(path.read_text())["rows"]
        return "; ".join(f"{r['teacher']} {r['precision']} {r['crops_per_s']:,.0f} crops/s, {r['ratio_to_forward']:.2f} of the forward, "
                         f"teacher busy {r['teacher_busy']:.0f} %" for r in rows)
    return figure


def benchmark_steps(work: Path) -> list[Step]:
    """The GPU benchmarks' short settings, run after ``plan``'s steps."""
    out = work / "labelgen-gpu.json"
    return [Step("labelgen GPU benchmark --short (crops cut on the GPU)", [
        sys.executable, str(REPO / "benchmarks" / "speed" / "labelgen_gpu.py"), "--short", "--out", str(out)], 150, labelgen_gpu_figure(out))]


def run_step(step: Step, deadline: float, logs: Path) -> Outcome:
    """Run one step within its timeout and the overall deadline; its output goes to ``logs``."""
    limit = min(step.timeout, deadline - time.monotonic())
    if limit <= 0:
        return Outcome(step.name, False, "not run: out of time", 0.0)
    log = logs / (re.sub(r"[^A-Za-z0-9]+", "-", step.name).strip("-") + ".log")
    started = time.monotonic()
    try:
        proc = subprocess.run(step.argv, cwd=REPO, env={**os.environ, **step.env}, capture_output=True, text=True, timeout=limit)
        output, failed = proc.stdout + proc.stderr, proc.returncode != 0
        reason = f"exit {proc.returncode}: {last_line(output)[:120]}"
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        failed, reason = True, f"timed out after {limit:.0f} s"
    seconds = time.monotonic() - started
    log.write_text(output)
    if failed:
        return Outcome(step.name, False, f"{reason} (log {log})", seconds)
    try:
        return Outcome(step.name, True, step.figure(output), seconds)
    except (ValueError, OSError, KeyError, StopIteration) as exc:
        return Outcome(step.name, False, f"{exc} (log {log})", seconds)


def table(outcomes: list[Outcome]) -> str:
    lines = ["| step | status | key figure | seconds |", "|---|---|---|---:|"]
    lines += [f"| {o.name} | {'ok' if o.ok else 'FAILED'} | {o.figure.replace('|', '/')} | {o.seconds:.0f} |" for o in outcomes]
    return "\n".join(lines)


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the stores, runs and logs (default: a new folder under the temporary directory)")
    parser.add_argument("--budget", type=float, default=590, help="seconds for all steps together (default 590: under 10 minutes)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing to check")
        return 0
    sys.path.insert(0, str(REPO))
    from benchmarks.common import balanced_subset

    deadline = time.monotonic() + args.budget
    gpus, cpus = torch.cuda.device_count(), os.cpu_count() or 1
    print(f"gpu-check: {gpus} x {torch.cuda.get_device_name(0)}, {cpus} CPUs, torch {torch.__version__}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="fkd-gpu-check-"))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for step in plan(work, balanced_subset("train", 100), balanced_subset("train", 25), gpus, cpus) + benchmark_steps(work):
        outcomes.append(run_step(step, deadline, logs))
        print(f"  {step.name}: {'ok' if outcomes[-1].ok else 'FAILED'} ({outcomes[-1].seconds:.0f} s)", flush=True)
    print(table(outcomes))
    print(f"stores, runs and logs: {work}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
