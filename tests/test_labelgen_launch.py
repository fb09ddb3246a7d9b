"""fkd-labelgen as a user launches it: from any directory, and failing in one line (before Ray
where it can), on a local Ray started the way fkd-labelgen starts it."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack, chdir
from pathlib import Path

import pytest
from torch import nn

from labelgen.cli import main
from labelgen.driver import ray_session

from conftest import make_image_folder
from test_labelgen_worker import save_tiny_teacher


def headless_cnn(checkpoint: "str | None" = None, num_classes: "int | None" = None) -> nn.Sequential:
    """A ``--teacher-module`` teacher without timm's API; ``tokens`` gives (N, C, L) token sequences."""
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, 3, padding=1), relu=nn.ReLU(), tokens=nn.Flatten(2), pool=nn.AdaptiveAvgPool1d(1),
        flat=nn.Flatten(), fc=nn.Linear(8, num_classes or 3),
    ))
    model.pretrained_cfg = {"input_size": (3, 32, 32)}
    return model


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("launch")
    return {"images": make_image_folder(root / "images", classes=2, per_class=2), "teacher": save_tiny_teacher(root / "teacher.pth", 2)}


@pytest.fixture(scope="module")
def above_a_clone(assets, tmp_path_factory) -> Iterator[dict[str, Path]]:
    """The folder above a clone (named fkd, like the package), holding the data and the teacher, with
    Ray started from there the way fkd-labelgen starts it (``ray_session``); Ray's files in a short
    temp dir (its unix socket paths must fit 107 bytes) whose worker logs the tests read."""
    parent = tmp_path_factory.mktemp("above-a-clone")
    for package in ("fkd", "labelgen", "train"):
        (parent / "fkd" / package).mkdir(parents=True)
        (parent / "fkd" / package / "__init__.py").write_text("")
    shutil.copytree(assets["images"], parent / "images")
    shutil.copy(assets["teacher"], parent / "teacher.pth")
    ray_tmp = Path(tempfile.mkdtemp(prefix="fkdl", dir="/tmp"))
    with pytest.MonkeyPatch.context() as patch, ExitStack() as session:
        patch.setenv("RAY_TMPDIR", str(ray_tmp))  # Ray's auth mode stays the suite's: switching it within a process kills the next session's actors
        with chdir(parent):
            session.enter_context(ray_session(None))
        yield {"dir": parent, "ray_tmp": ray_tmp}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def worker_output(ray_tmp: Path) -> str:
    """Everything the session's workers printed (what Ray forwards to the driver's terminal)."""
    return "".join(p.read_text(errors="replace") for p in ray_tmp.glob("ray/session_*/logs/worker-*.err"))


def test_a_module_teacher_without_the_feature_source_is_refused_before_ray(assets, tmp_path, capsys, monkeypatch):
    """The --teacher-module factory is built on the meta device on the driver: a missing timm API
    and an output that is not a vector are refused in a second, without starting Ray."""
    import labelgen.driver

    def no_ray(_address):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(labelgen.driver, "ray_session", no_ray)
    spec = f"{__name__}:headless_cnn"
    run = ["--teacher-module", spec, "--data", str(assets["images"]), "--out", str(tmp_path / "out"), "--target", "embedding"]
    assert main(run) == 2
    assert capsys.readouterr().err == (
        f"fkd-labelgen: error: --embedding-from: teacher {spec} (Sequential) has no timm forward_features/forward_head, "
        "so 'pre-logits' is not defined for it: name one of its modules instead (6 modules; the last ones: relu, tokens, pool, flat, fc)\n"
    )
    assert main([*run, "--embedding-from", "tokens"]) == 2
    assert capsys.readouterr().err == (
        f"fkd-labelgen: error: --embedding-from: teacher {spec} module 'tokens' gives (8, 1024) per image, neither a vector (D,) "
        "nor a map (C, H, W): name a module that pools, or use 'pooled' or 'pre-logits'\n"
    )
    assert not (tmp_path / "out").exists()


def test_runs_from_the_folder_above_a_clone(above_a_clone, capsys, monkeypatch):
    """Ray puts the driver's working directory first on its workers' sys.path: from the folder above
    a clone the workers imported the clone folder as a namespace package ``fkd`` and failed on
    ``from fkd import __version__``. Relative paths still mean what they mean where the user typed them."""
    monkeypatch.chdir(above_a_clone["dir"])
    assert main(["--teacher", "test_resnet", "--checkpoint", "teacher.pth", "--no-pretrained", "--input-size", "32", "--top-k", "2",
                 "--data", "images", "--out", "store", "--crops", "2", "--workers", "1", "--no-progress"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("store store: 4 images, 8 crops, 1 shards (1 written, 0 already done)")


def test_a_teacher_that_fails_in_the_workers_is_one_line(above_a_clone, tmp_path, capsys):
    """What only a worker finds (here a checkpoint file that is not one) ends the run with one line
    naming the worker, and no worker prints its traceback (Ray forwards what workers print)."""
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    assert main(["--teacher", "test_resnet", "--checkpoint", str(broken), "--no-pretrained", "--input-size", "32", "--top-k", "2",
                 "--data", str(above_a_clone["dir"] / "images"), "--out", str(tmp_path / "store"), "--crops", "2", "--workers", "1",
                 "--no-progress"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("fkd-labelgen: 4 images; starting 1 worker(s)")
    assert re.fullmatch(rf"fkd-labelgen: error: worker 1 of 1 \(node [\d.]+\) could not load the teacher: "
                        rf"cannot read teacher checkpoint {re.escape(str(broken))}: .+", lines[1]), lines[1]
    printed = worker_output(above_a_clone["ray_tmp"])
    assert "cannot read teacher checkpoint" not in printed and "Traceback" not in printed
    assert not (tmp_path / "store").exists()


def test_local_workers_run_at_the_command_s_own_priority(above_a_clone):
    """Ray starts its workers 15 nicer than the driver by default, which starves labelling on a
    machine doing anything else; a local instance started by fkd-labelgen adds nothing."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)
