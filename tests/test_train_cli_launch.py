"""The documented multi-GPU launch runs the installed fkd-train wherever it is started: `python -m
train.cli` (what torchrun runs without --no-python) imports whatever `train.py` or `train/` the
working directory holds, before the installed package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from train.cli import DESCRIPTION

from conftest import REPO

LAUNCH_DOCS = [*sorted((REPO / "configs").glob("*.yaml")), *sorted((REPO / "scripts").iterdir())]


def test_the_documented_torchrun_launch_ignores_a_train_py_in_the_working_directory(tmp_path: Path) -> None:
    """fkd-train's own help example, with one process and a rendezvous of its own, started from a
    project folder that has its own train.py: the installed fkd-train answers (here with an argument
    error, which it gives before importing torch), the folder's train.py never runs."""
    line = next(line.split() for line in DESCRIPTION.splitlines() if "torchrun" in line)
    launcher = line[: line.index("-c")]  # the recipe is replaced by arguments of this test
    launcher[launcher.index("--nproc_per_node") + 1] = "1"
    (tmp_path / "train.py").write_text("print('the working directory's train.py ran')\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    argv = [*launcher[:1], "--standalone", *launcher[1:], "--data", "d", "--model", "resnet18", "--output", "out", "--gt-weight", "2"]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "fkd-train: error: --gt-weight must be in [0, 1], got 2.0\n" in result.stderr
    assert "train.py ran" not in result.stdout + result.stderr and result.returncode != 0


def test_no_recipe_or_script_documents_python_m_train_cli() -> None:
    """Recipes' and scripts' launch lines name the console script, as fkd-train's help does."""
    documented = {path.name for path in LAUNCH_DOCS if re.search(r"-m train\.cli\b", path.read_text())}
    assert documented == set() and "train.cli" not in DESCRIPTION
