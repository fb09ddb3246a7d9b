"""Run every benchmark in turn (each in its own process), time each one, then refresh the README.

The issue asks that each benchmark's ``--quick`` finishes in under 10 minutes on a 2-core CPU
machine: this records how long each one really took (wall clock, from process start to exit) in
``run_times[-quick].json``, which report.py shows next to the results.

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
}
QUICK_LIMIT_SECONDS = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="run every benchmark with --quick")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    args = parser.parse_args()
    rows = []
    for name, path in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        argv = [sys.executable, str(BENCH_DIR / path)] + (["--quick"] if args.quick else [])
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
