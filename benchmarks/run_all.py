"""Run every benchmark in turn (each in its own process), time each one, then refresh the README.

The issue asks that each benchmark's ``--quick`` finishes in under 10 minutes on a 2-core CPU
machine: this records how long each one really took (wall clock, from process start to exit) in
``run_times[-quick].json``, which report.py shows next to the results. The full setting also runs
the blocks of ``FULL_ONLY`` (the ViT, scale and FD blocks: 16, 18 and 10 training runs, no quick variant).

    .venv/bin/python benchmarks/run_all.py --quick
    .venv/bin/python benchmarks/run_all.py               # full settings (hours on 2 CPU cores)
    .venv/bin/python benchmarks/run_all.py --quick --only storage accuracy
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import BENCH_DIR, REPO_ROOT, result_path, save_result  # noqa: E402

BENCHMARKS: dict[str, str] = {
    "storage": "storage/bench_storage.py",
    "accuracy": "accuracy/bench_accuracy.py",
    "train-speed": "speed/bench_train_speed.py",
    "reader": "speed/reader.py",
    "labelgen": "speed/bench_labelgen.py",
    "loader": "speed/loader.py --profile",
}
ONE_SETTING: dict[str, str] = {"embedding-storage": "storage/embedding.py"}
"""Blocks with one setting short enough for both: run as they are, without --quick."""
FULL_ONLY: dict[str, str] = {
    "accuracy-vit": "accuracy/bench_accuracy.py --vit --jobs 2",
    "accuracy-fd": "accuracy/bench_accuracy.py --fd --jobs 2",
    "accuracy-scale": "accuracy/bench_accuracy.py --scale --jobs 2",
}
"""Blocks with one setting, too long for a quick one: run by the full setting only."""
QUICK_LIMIT_SECONDS = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="run every benchmark with --quick")
    parser.add_argument("--only", nargs="+", choices=[*BENCHMARKS, *ONE_SETTING, *FULL_ONLY], help="run only these benchmarks")
    args = parser.parse_args()
    rows = []
    for name, path in {**BENCHMARKS, **ONE_SETTING, **({} if args.quick else FULL_ONLY)}.items():
        if args.only and name not in args.only:
            continue
        script, *options = path.split()
        argv = [sys.executable, str(BENCH_DIR / script), *options] + (["--quick"] if args.quick and name in BENCHMARKS else [])
        print(f"== {name}: {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        code = subprocess.run(argv, cwd=REPO_ROOT).returncode
        seconds = time.perf_counter() - started
        rows.append({"benchmark": name, "script": f"benchmarks/{path}", "exit_code": code, "wall_seconds": seconds,
                     "under_10_min": seconds < QUICK_LIMIT_SECONDS if args.quick else None})
        print(f"== {name}: exit {code}, {seconds:.0f} s", flush=True)
    save_result(result_path(__file__, args.quick, "run_times"), {"quick": args.quick, "rows": rows})
    subprocess.run([sys.executable, str(BENCH_DIR / "report.py")], cwd=REPO_ROOT, check=True)
    sys.exit(max((r["exit_code"] for r in rows), default=0))


if __name__ == "__main__":
    main()
