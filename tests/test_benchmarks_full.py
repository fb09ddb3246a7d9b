"""bench_full.py (the GPU block: a student that passes its teacher) and its airbench94 teacher: rows
and argv, claims, the teacher module's refusals and data layout, and the --quick setting end to end
on CPU (Keras teacher only, airbench skipped in one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_stubs import argvs
from PIL import Image

from benchmarks import common
from benchmarks.accuracy import airbench_teacher, bench_full

from conftest import CIFAR_DATA, CIFAR_TEACHER, REPO

AIRBENCH_FLAGS = ("--teacher-module", bench_full.AIRBENCH_TEACHER, "--checkpoint", "/nets/airbench94.pt")


def _teachers() -> list[bench_full.BlockTeacher]:
    return [bench_full.BlockTeacher("airbench", AIRBENCH_FLAGS, Path("/stores/airbench"), 94.0, 60.0, 8.0),
            bench_full.BlockTeacher("keras", common.KERAS.flags, Path("/stores/keras"), 76.57, 70.0)]


def test_every_row_trains_the_same_steps_and_online_kd_meets_fkd_at_each_objective(monkeypatch, tmp_path: Path):
    rows = bench_full.full_rows(_teachers(), 8, ())
    assert [(run.name, tag) for run, tag in rows] == [
        ("supervised-n2", "-"), ("online-kd-airbench-n2", "airbench"), ("online-kd-a0.7-airbench-n2", "airbench"),
        ("fkd-full-airbench-n2", "airbench"), ("fkd-full-gt0.3-airbench-n2", "airbench"), ("online-kd-keras-n2", "keras"),
        ("online-kd-a0.7-keras-n2", "keras"), ("fkd-full-keras-n2", "keras"), ("fkd-full-gt0.3-keras-n2", "keras")]
    argv = argvs(monkeypatch, tmp_path, [run for run, _ in rows], 50000, samples_per_step=1024)
    head = ["-c", str(bench_full.RECIPE)]
    schedule = ["--epochs", "8", "--batch-size", "512", "--crops-per-image", "2"]
    assert all(a[:2] == head and a[12:18] == schedule for a in argv.values())
    assert argv["online-kd-a0.7-airbench-n2-seed0"][18:] == [*AIRBENCH_FLAGS, "--kd-alpha", "0.7"]
    assert argv["fkd-full-gt0.3-airbench-n2-seed0"][18:] == ["--store", "/stores/airbench", "--stored-crops", "cycle", "--gt-weight", "0.3"]
    assert argv["online-kd-keras-n2-seed0"][18:] == [*common.KERAS.flags, "--kd-alpha", "1.0"]
    assert argv["fkd-full-keras-n2-seed0"][18:] == ["--store", "/stores/keras", "--stored-crops", "cycle"]


def test_claims_read_each_teacher_against_its_own_online_rows():
    top1 = {"supervised-n2": 80.0, "online-kd-airbench-n2": 85.0, "online-kd-a0.7-airbench-n2": 86.0, "fkd-full-airbench-n2": 84.8,
            "fkd-full-gt0.3-airbench-n2": 85.0, "online-kd-keras-n2": 79.0, "online-kd-a0.7-keras-n2": 82.0, "fkd-full-keras-n2": 79.2,
            "fkd-full-gt0.3-keras-n2": 81.9}
    runs = [{"name": name, "seed": 0, "top1": value} for name, value in top1.items()]
    tags = {name: ("-" if name.startswith("supervised") else name.split("-n2")[0].rsplit("-", 1)[1]) for name in top1}
    rows = [{"name": name, "top1_mean": value, "teacher": tags[name]} for name, value in top1.items()]
    teachers = [{"tag": t.tag, "top1": t.top1} for t in _teachers()]
    pairs, claims = bench_full.full_claims(rows, runs, teachers)
    assert [(p["name"], p["reference"], round(p["mean"], 2)) for p in pairs] == [
        ("fkd-full-airbench-n2", "online-kd-airbench-n2", -0.2), ("fkd-full-gt0.3-airbench-n2", "online-kd-a0.7-airbench-n2", -1.0),
        ("fkd-full-keras-n2", "online-kd-keras-n2", 0.2), ("fkd-full-gt0.3-keras-n2", "online-kd-a0.7-keras-n2", -0.1)]
    assert [(c["claim"], c["holds"]) for c in claims] == [
        ("ground truth alone passes the Keras teacher", True),
        ("fkd full within 0.5 points of online KD at the same objective (W=0, alpha 1, airbench teacher)", True),
        ("fkd full within 0.5 points of online KD at the same objective (W=0.3, alpha 0.7, airbench teacher)", False),
        ("a student passes its teacher (airbench, 94.00 %)", False),
        ("fkd full within 0.5 points of online KD at the same objective (W=0, alpha 1, keras teacher)", True),
        ("fkd full within 0.5 points of online KD at the same objective (W=0.3, alpha 0.7, keras teacher)", True),
        ("a student passes its teacher (keras, 76.57 %)", True)]
    assert claims[-1]["measured"] == "best: online-kd-a0.7-keras-n2 82.00: +5.43"


def test_the_airbench_teacher_module_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="^airbench94 has no default weights: pass --checkpoint NET.pt"):
        airbench_teacher.create_model()
    with pytest.raises(ValueError, match="^airbench94 predicts 10 CIFAR-10 classes, not 100$"):
        airbench_teacher.create_model("net.pt", num_classes=100)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^airbench94 runs in float16 on CUDA only"):
            airbench_teacher.create_model("net.pt")


def test_airbench_normalization_is_airbench_s():
    utils = pytest.importorskip("airbench.utils", reason="the bench extra (airbench) is not installed")
    assert tuple(utils.CIFAR_MEAN.tolist()) == pytest.approx(airbench_teacher.CIFAR_MEAN)
    assert tuple(utils.CIFAR_STD.tolist()) == pytest.approx(airbench_teacher.CIFAR_STD)


def test_cifar_tensors_are_cifar_loader_s_layout(tmp_path: Path):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("c0/a.png", "c0/b.png", "c1/a.png", "c1/b.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(folder / name)
    out = airbench_teacher.write_cifar_tensors(tmp_path / "cifar10", folder, "train.pt")
    data = torch.load(out)
    assert set(data) == {"images", "labels", "classes"} and data["classes"] == ["c0", "c1"]
    assert data["images"].dtype == torch.uint8 and data["images"].shape[0] == 4 and data["images"].shape[-1] == 3
    assert data["labels"].tolist() == [0, 0, 1, 1]
    from fkd.data.images import list_images, load_image

    first = load_image(list_images(folder).path(0))
    assert torch.equal(data["images"][0], first.permute(1, 2, 0))


def _seed_cache(cache: Path, per_class: int) -> None:
    """A benchmark cache holding the first ``per_class`` CIFAR-10 JPEGs of every class of both splits
    (the whole archive takes 15 s to extract on 2 cores; the quick setting needs 40 + 20 images)."""
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_DATA) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and counts.get((parts[1], parts[2]), 0) < per_class:
                counts[parts[1], parts[2]] = counts.get((parts[1], parts[2]), 0) + 1
                target = cache / "cifar10" / parts[1] / parts[2] / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
            if len(counts) == 20 and min(counts.values()) >= per_class:
                break
    (cache / "cifar10" / ".extracted").touch()


@pytest.mark.skipif(not (CIFAR_DATA.is_file() and CIFAR_TEACHER.is_file()), reason="../shared CIFAR-10 data or teacher missing")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU form of --quick (the GPU trains airbench94 too)")
def test_quick_setting_runs_end_to_end_on_cpu(tmp_path: Path):
    cache = tmp_path / "cache"
    _seed_cache(cache, 6)
    out = tmp_path / "full-quick.json"
    env = {**os.environ, "FKD_BENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accuracy" / "bench_full.py"), "--quick", "--jobs", "2", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0] == ("airbench94 needs CUDA: this run (no GPU) skips the airbench teacher and trains from the Keras "
                                           "teacher only.")
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["rows"]] == ["supervised-n2", "online-kd-keras-n2", "online-kd-a0.7-keras-n2", "fkd-full-keras-n2",
                                                   "fkd-full-gt0.3-keras-n2"]
    assert {r["steps"] for r in result["rows"]} == {10} and result["setting"]["train_images"] == 40
    assert [t["tag"] for t in result["teachers"]] == ["keras"] and [len(p["seeds"]) for p in result["pairs"]] == [1, 1]
    assert np.isfinite([r["top1_mean"] for r in result["rows"]]).all()
