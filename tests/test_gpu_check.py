"""scripts/gpu_check.py (`make gpu-check`) without a GPU: it bows out in one line, every step's command
parses with the tool it runs, figures are read from the tools' real output lines, and a step that
fails, hangs or finds no time left is reported as FAILED."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402
from torch.distributed.run import get_args_parser  # noqa: E402

from benchmarks.speed.loader import build_parser as loader_parser  # noqa: E402
from labelgen.cli import build_parser as labelgen_parser  # noqa: E402
from train.cli import build_parser as train_parser  # noqa: E402


def test_without_cuda_it_says_so_in_one_line_and_succeeds() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing to check\n"


@pytest.mark.parametrize("gpus", [1, 4])
def test_every_step_parses_with_the_tool_it_runs(tmp_path: Path, gpus: int) -> None:
    steps = gpu_check.plan(tmp_path, tmp_path / "cifar", tmp_path / "small", gpus=gpus, cpus=16)
    assert len(steps) == 9
    for step in steps:
        assert step.argv[0] == sys.executable
        if step.argv[1:3] == ["-m", "labelgen.cli"]:
            args = labelgen_parser().parse_args(step.argv[3:])
            assert args.teacher_precision in ("fp32", "bf16") and args.gpus_per_worker == 1
        elif step.argv[1:3] == ["-m", "train.cli"]:
            args = train_parser().parse_args(step.argv[3:])
            assert (args.amp, args.channels_last) == ("bf16", True)
        elif step.argv[1:3] == ["-m", "torch.distributed.run"]:
            launch = get_args_parser().parse_args(step.argv[3:])
            assert (launch.nproc_per_node, launch.module, launch.training_script) == (str(gpus), True, "train.cli")
            train_parser().parse_args(launch.training_script_args)
        elif step.argv[1] == "-c":
            compile(step.argv[2], "nccl-probe", "exec")
        else:
            assert step.argv[1].endswith("benchmarks/speed/loader.py")
            assert loader_parser().parse_args(step.argv[2:]).replay_device == "cuda"
    compiled = next(s for s in steps if "--compile" in s.argv)
    assert train_parser().parse_args(compiled.argv[3:]).compile


def test_figures_come_from_the_tools_output_lines() -> None:
    labelgen_output = (
        "store /tmp/r50: 20 images, 40 crops, 1 shards (1 written, 0 already done), 0 bad images skipped\n"
        "time 36.4 s; labelled 20 images in 8.1 s (2.5 images/s)\n"
        "teacher busy 8.0 s over 1 worker(s): 99 % of the labelling time\n"
    )
    assert gpu_check.labelgen_figure(labelgen_output) == "2 images/s, teacher busy 99 % of the time"
    train_output = (
        "epoch 1/2: loss 2.3012 lr 0.05 812 crops/s (203 images/s) 4.9s\n"
        "epoch 2/2: loss 2.1000 lr 0 4105 crops/s (1026 images/s) 1.0s\n"
    )
    assert gpu_check.train_figure(train_output) == "4,105 crops/s (1,026 images/s), epoch 2/2"
    with pytest.raises(ValueError, match="teacher busy"):
        gpu_check.labelgen_figure("time 36.4 s; labelled 20 images in 8.1 s (2.5 images/s)\n")
    with pytest.raises(ValueError, match="crops/s"):
        gpu_check.train_figure("fkd-train: error: something\n")


def step(tmp_path: Path, code: str, timeout: float = 60) -> gpu_check.Step:
    return gpu_check.Step("probe", [sys.executable, "-c", code], timeout, gpu_check.last_line)


def test_steps_that_fail_hang_or_find_no_time_are_failed(tmp_path: Path) -> None:
    far = gpu_check.time.monotonic() + 600
    ok = gpu_check.run_step(step(tmp_path, "print('fine')"), far, tmp_path)
    assert (ok.ok, ok.figure) == (True, "fine") and (tmp_path / "probe.log").read_text() == "fine\n"
    failed = gpu_check.run_step(step(tmp_path, "import sys; print('bad input'); sys.exit(2)"), far, tmp_path)
    assert not failed.ok and failed.figure == f"exit 2: bad input (log {tmp_path / 'probe.log'})"
    hung = gpu_check.run_step(step(tmp_path, "import time; time.sleep(30)", timeout=1), far, tmp_path)
    assert not hung.ok and hung.figure.startswith("timed out after 1 s")
    late = gpu_check.run_step(step(tmp_path, "print('never')"), gpu_check.time.monotonic() - 1, tmp_path)
    assert (late.ok, late.figure, late.seconds) == (False, "not run: out of time", 0.0)
    assert gpu_check.table([ok, late]) == (
        "| step | status | key figure | seconds |\n|---|---|---|---:|\n"
        f"| probe | ok | fine | {ok.seconds:.0f} |\n| probe | FAILED | not run: out of time | 0 |"
    )
