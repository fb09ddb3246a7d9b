"""Shared by the benchmark harness tests: what toolkit.train would run, stopped before it runs, and
the machine record a result carries."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import common
from benchmarks.accuracy import toolkit

MACHINE = {"cpu": "CPU", "cores": 2, "memory_gib": 8.0, "gpu": None, "python": "3.11", "torch": "2", "date": "today",
           "load_average_at_start": [1.0, 1.0, 1.0], "load_average_at_end": [2.0, 2.0, 2.0]}


class Stop(Exception):
    pass


def argvs(monkeypatch, tmp_path: Path, runs: list, images: int, samples_per_step: int = 128) -> dict[str, list[str]]:
    """What train() would run for each run (without the script path), stopped before it runs."""
    captured: dict[str, list[str]] = {}

    def capture(argv, log, env=None, append=False):
        captured[Path(argv[argv.index("--output") + 1]).name] = list(argv[1:])
        raise Stop

    monkeypatch.setattr(toolkit, "run_logged", capture)
    monkeypatch.setattr(toolkit, "store_path", lambda setting, scheme, k: Path(f"/stores/{scheme}-k{k}"))
    monkeypatch.setattr(toolkit, "converted_store", lambda setting, scheme, k: Path(f"/stores/{scheme}-k{k}"))
    monkeypatch.setattr(toolkit, "list_images", lambda data: range(images))
    block = toolkit.Block(common.LabelSetting(128, 32), Path("/data"), Path("/test"), tmp_path, samples_per_step, 1)
    for run in runs:
        with pytest.raises(Stop):
            toolkit.train(run, block)
    return captured
