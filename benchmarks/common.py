"""What every benchmark shares: real CIFAR-10 in a cache, balanced subsets, one real-teacher label
store per setting, running the console scripts, machine facts, JSON + table output.

Benchmarks must compare like with like and report only measured figures, so the pieces that decide
*what* is measured live here once: the same subset (fixed seed, balanced per class) and the same
label store feed the storage, accuracy and speed benchmarks, and every figure printed comes from a
JSON file a script wrote.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fkd.store import FORMAT_VERSION
from fkd.zoo import shared_dir

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE = Path(os.environ.get("FKD_BENCH_CACHE", BENCH_DIR / ".cache"))
"""Extracted data, subsets and label stores (git-ignored; safe to delete: everything is rebuilt)."""

CIFAR_ARCHIVE = "data/cifar10-jpeg.tar.gz"
KERAS_TEACHER = "fkd.zoo.keras_cifar10:create_model"
KERAS_TEACHER_TOP1 = 76.57
"""The teacher's CIFAR-10 test top-1 as measured when it was added to ../shared (shared/README.md)."""


# Data -------------------------------------------------------------------------------------------

def cifar10_root() -> Path:
    """``CACHE/cifar10`` with ``train/`` and ``test/`` ImageFolders, extracted once from ../shared."""
    root = CACHE / "cifar10"
    done = root / ".extracted"
    if not done.exists():
        archive = shared_dir() / CIFAR_ARCHIVE
        if not archive.is_file():
            sys.exit(f"CIFAR-10 archive not found: {archive} (set FKD_SHARED to the shared folder)")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(CACHE, filter="data")
        done.touch()
    return root


def balanced_subset(split: str, per_class: int, seed: int = 0) -> Path:
    """An ImageFolder of ``per_class`` images of every class of CIFAR-10 ``split`` (symlinks),
    drawn without replacement by ``seed`` (the whole split when ``per_class`` is its class size).

    The draw is made per class from the sorted file list, so it is the same on every machine."""
    source = cifar10_root() / split
    target = CACHE / "subsets" / f"{split}-{per_class}pc-s{seed}"
    done = target / ".complete"
    if done.exists():
        return target
    if target.exists():
        shutil.rmtree(target)
    rng = np.random.default_rng(seed)
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        if per_class > len(files):
            raise ValueError(f"{class_dir} has {len(files)} images, {per_class} asked for")
        chosen = sorted(rng.choice(len(files), per_class, replace=False))
        (target / class_dir.name).mkdir(parents=True)
        for i in chosen:
            os.symlink(files[i].resolve(), target / class_dir.name / files[i].name)
    done.touch()
    return target


# Running the console scripts ----------------------------------------------------------------------

def script(name: str) -> str:
    """Path of a console script of this environment (fkd-labelgen, fkd-train, fkd-labels)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        sys.exit(f"{name} not found next to {sys.executable}: install the package (pip install -e .)")
    return str(path)


def run_logged(argv: Sequence[str], log: Path, env: "dict[str, str] | None" = None, append: bool = False) -> float:
    """Run a command with its output in ``log`` (after what it holds when ``append``: a resumed run
    keeps its first part's log); return its wall time in seconds. On failure, print the log's tail
    and stop: a benchmark built on a failed run would report nothing true."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "a" if append else "w") as out:
        proc = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=REPO_ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        sys.exit(f"command failed (exit {proc.returncode}): {' '.join(argv)}\n" + "\n".join(tail) + f"\nfull log: {log}")
    return seconds


def module_env(flags: Sequence[str]) -> dict[str, str]:
    """Environment for a command given a teacher module of this repository's ``benchmarks`` package
    (``--teacher-module benchmarks....``): the console scripts import the installed packages only,
    so the repository goes on their PYTHONPATH (and on Ray's workers', which inherit it)."""
    if not any(str(f).startswith("benchmarks.") for f in flags):
        return {}
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def threads_env(threads: int) -> dict[str, str]:
    """Environment that caps torch's CPU threads in a child process. On a shared machine OpenMP
    threads that outnumber the free cores spin and wait on each other: while other processes kept
    the 2 cores busy, a 1-thread training run here was many times faster than a 2-thread one."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@dataclass(frozen=True)
class LabelSetting:
    """Which real-teacher labels: the train subset, crops per image, crop seed and area range."""

    per_class: int
    crops: int
    seed: int = 0
    crop_scale: tuple[float, float] = (0.25, 1.0)

    @property
    def key(self) -> str:
        return f"train-{self.per_class}pc-M{self.crops}-s{self.seed}-scale{self.crop_scale[0]:g}-{self.crop_scale[1]:g}"


def label_stores(setting: LabelSetting) -> Path:
    """Where a setting's label stores are cached, keyed by the newest store format this fkd writes:
    stores an older fkd wrote (full stores of probabilities before format version 5, which DeiT's
    soft recipe refuses at tau 3) are never reused, their setting is labelled again."""
    return CACHE / "stores" / f"v{FORMAT_VERSION}" / setting.key


@dataclass(frozen=True)
class TeacherRef:
    """A labelling teacher by its fkd-labelgen flags; ``key`` names its stores in the cache."""

    key: str
    flags: tuple[str, ...]


KERAS = TeacherRef("keras", ("--teacher-module", KERAS_TEACHER))


def full_store(setting: LabelSetting, workers: int = 1, teacher: TeacherRef = KERAS, gpus_per_worker: "float | None" = None,
               ) -> tuple[Path, float | None]:
    """The full-scheme store of ``teacher`` (default the real Keras CNN) over the train subset,
    generated once with fkd-labelgen and cached (``workers`` Ray workers of 1 CPU, and
    ``gpus_per_worker`` of a GPU each when given). Returns (store, labelgen seconds, or None when it
    came from the cache)."""
    data = balanced_subset("train", setting.per_class, setting.seed)
    name = "full" if teacher == KERAS else f"full-{teacher.key}"
    out = label_stores(setting) / name
    if (out / "store.json").exists() and json.loads((out / "store.json").read_text()).get("complete"):
        return out, None
    devices = ["--cpus-per-worker", "1"] + (["--gpus-per-worker", f"{gpus_per_worker:g}"] if gpus_per_worker else [])
    seconds = run_logged(
        [script("fkd-labelgen"), "--data", str(data), "--out", str(out), *teacher.flags,
         "--scheme", "full", "--crops", str(setting.crops), "--seed", str(setting.seed),
         "--crop-scale", *map(str, setting.crop_scale), "--workers", str(workers), *devices, "--shard-size", "500", "--no-progress",
         "--overwrite"],
        out.parent / f"labelgen-{name}.log", module_env(teacher.flags),
    )
    return out, seconds


def store_path(setting: LabelSetting, scheme: str, top_k: int) -> Path:
    """Where ``converted_store`` keeps the Keras teacher's ``scheme`` / ``top_k`` store (labelled or
    not): a run's argv names it before anything is labelled."""
    return label_stores(setting) / ("full" if scheme == "full" else f"{scheme}-k{top_k}")


def converted_store(setting: LabelSetting, scheme: str, top_k: int) -> Path:
    """The full store re-quantized to ``scheme`` / ``top_k`` with ``fkd-labels convert`` (cached):
    every scheme gets exactly the same teacher outputs, crops and flips."""
    source, _ = full_store(setting)
    out = store_path(setting, scheme, top_k)
    if out == source:
        return source
    if not (out / "store.json").exists() or not json.loads((out / "store.json").read_text()).get("complete"):
        run_logged([script("fkd-labels"), "convert", str(source), "--scheme", scheme, "--top-k", str(top_k),
                    "--out", str(out), "--overwrite"], out.parent / f"convert-{scheme}-k{top_k}.log")
    return out


def store_bytes(store: Path) -> int:
    """Bytes of a store as it sits on disk: its shards plus store.json."""
    return sum(p.stat().st_size for p in store.iterdir() if p.name == "store.json" or p.suffix == ".h5")


# Machine, output ----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """Facts that make a figure interpretable: CPU model and cores, GPU, versions, date, load."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def command_line() -> str:
    """The command that produced a result, as a user would type it from the repository root."""
    argv = [str(Path(sys.argv[0]).resolve().relative_to(REPO_ROOT))] if Path(sys.argv[0]).resolve().is_relative_to(REPO_ROOT) else [sys.argv[0]]
    return " ".join([".venv/bin/python", *argv, *sys.argv[1:]])


def result_path(script_file: str, quick: bool, name: "str | None" = None, suffix: str = ".json") -> Path:
    """Where a benchmark writes its results: next to the script, ``-quick`` marking quick runs, so
    a quick run never overwrites the full setting's results (the README shows both)."""
    script_path = Path(script_file)
    return script_path.with_name(f"{name or script_path.stem}{'-quick' if quick else ''}{suffix}")


def save_result(path: Path, payload: dict[str, Any]) -> None:
    """Write a benchmark's JSON (with the machine and the command added)."""
    payload = {"command": command_line(), "machine": {**machine_at_start, "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
               "wall_seconds": time.perf_counter() - _STARTED, **payload}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")


machine_at_start = machine()
_STARTED = time.perf_counter()


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0 (a ratio nobody can read otherwise)."""
    return numerator / denominator if denominator else float("nan")


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Rows as a GitHub table; ``columns`` holds (key, header, format spec) triples."""
    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        return format(value, spec) if spec else str(value)

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---:" if s else "---" for _, _, s in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, k, s) for k, _, s in columns) + " |" for r in rows]
    return "\n".join(lines)
