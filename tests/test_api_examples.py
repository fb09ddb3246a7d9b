"""The examples of README's "Use the store from your own loop", run as a user runs them: one epoch on
the tiny store, each printing its validation top-1; they reach fkd through ``fkd.api`` alone."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TinyData

EXAMPLES = ("own_training_loop.py", "timm_task.py")


def run_example(name: str, tiny: TinyData, data: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(REPO / "examples" / name), "--store", str(tiny.store), "--data", str(data), "--val-data", str(tiny.val),
            "--epochs", "1"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_example_trains_and_prints_val_top1(name: str, tiny: TinyData) -> None:
    done = run_example(name, tiny, tiny.train)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "warning: the store records no image fingerprints (made by an older fkd): images are matched by path and size only"
    found = re.fullmatch(r"epoch 1/1: loss \d+\.\d{4}, val top-1 (\d+\.\d\d) %", lines[1])
    assert found is not None and len(lines) == 2, done.stdout
    assert float(found.group(1)) in {round(100 * k / 6, 2) for k in range(7)}  # scored over all 6 validation images


def test_an_example_refuses_other_data_in_one_line(tiny: TinyData) -> None:
    done = run_example("own_training_loop.py", tiny, tiny.val)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: 6 of the store's 12 images are not in --data {tiny.val} (e.g. 'c0/img002.jpg', 'c0/img003.jpg', 'c1/img002.jpg', "
        "'c1/img003.jpg', 'c2/img002.jpg' and 1 more); was the store made from other images?"
    ]


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_examples_use_fkd_api_alone(name: str) -> None:
    source = (REPO / "examples" / name).read_text()
    tree = ast.parse(source)
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {m for m in modules if m.split(".")[0] in ("fkd", "train", "labelgen")} == {"fkd.api"}
    if name == "own_training_loop.py":
        assert len(source.splitlines()) <= 61  # under ~60 lines
