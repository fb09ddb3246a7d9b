"""The ViT block (bench_vit.py): its rows' argv beside the CNN runs', DeiT's and FKD's claims read
with their seed spread, and its README block."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_stubs import MACHINE, argvs

from benchmarks import report
from benchmarks.accuracy import bench_vit, toolkit
from benchmarks.accuracy.toolkit import Run


def test_cnn_runs_keep_their_argv_and_vit_rows_add_their_flags(monkeypatch, tmp_path: Path):
    """Finished runs are cached by argv: the CNN runs' argv must not move when the ViT block's
    options are added; the ViT rows get their recipe, flags, distillation options and epochs."""
    recipe = str(toolkit.RECIPE)
    vit_runs = [run for run, _, _ in bench_vit.vit_rows("/stores/full", 1)]
    argv = argvs(monkeypatch, tmp_path, [Run("online-kd", None, 0, 4, 1), Run("fkd", "full", 10, 2, 0, gt_weight=0.3), *vit_runs], 1280)
    head = ["--data", "/data", "--val-data", "/test", "--output"]
    assert argv["online-kd-n4-seed1"] == ["-c", recipe, "--mode", "online-kd", *head, str(tmp_path / "online-kd-n4-seed1"), "--seed", "1",
                                          "--epochs", "2", "--batch-size", "32", "--crops-per-image", "4",
                                          "--teacher-module", "fkd.zoo.keras_cifar10:create_model", "--kd-alpha", "1.0"]
    assert argv["fkd-full-gt0.3-n2-seed0"] == ["-c", recipe, "--mode", "fkd", *head, str(tmp_path / "fkd-full-gt0.3-n2-seed0"), "--seed", "0",
                                               "--epochs", "4", "--batch-size", "64", "--crops-per-image", "2",
                                               "--store", "/stores/full-k10", "--stored-crops", "cycle", "--gt-weight", "0.3"]
    assert [run.name for run in vit_runs] == [
        "supervised-n4", "online-kd-soft-n4", "online-kd-hard-n4", "online-kd-n4", "online-kd-ra-n4", "fkd-marginal-smoothing-k5-n4",
        "fkd-full-n4", "fkd-full-ra-n4", "fkd-hardening-gt0.5-n4", "deit-full-hard-n4", "deit-full-soft-n4"]
    shared = ["--epochs", "1", "--batch-size", "32", "--crops-per-image", "4", "--model-kwargs", *bench_vit.MODEL_KWARGS, *bench_vit.FLAGS,
              "--warmup-epochs", "0.1"]
    deit_hard = argv["deit-full-hard-n4-seed0"]
    assert deit_hard[:4] == ["-c", str(bench_vit.DEIT_RECIPE), "--mode", "deit"]
    assert deit_hard[12:12 + len(shared)] == shared
    assert deit_hard[12 + len(shared):] == ["--kd", "hard", "--kd-alpha", "0.5", "--store", "/stores/full-k10", "--stored-crops", "cycle"]
    soft = argv["online-kd-soft-n4-seed0"]
    assert soft[1] == str(bench_vit.VIT_RECIPE) and soft[12:12 + len(shared)] == shared
    assert soft[12 + len(shared):] == ["--store", "/stores/full", "--teacher-module", "fkd.zoo.keras_cifar10:create_model",
                                       "--kd", "soft", "--kd-tau", "3", "--kd-alpha", "0.1"]
    assert argv["fkd-hardening-gt0.5-n4-seed0"][-6:] == ["--store", "/stores/hardening-k1", "--stored-crops", "cycle", "--gt-weight", "0.5"]
    pure = argv["online-kd-n4-seed0"]  # fkd full's objective with the teacher in the loop
    assert pure[12 + len(shared):] == ["--store", "/stores/full", "--teacher-module", "fkd.zoo.keras_cifar10:create_model", "--kd-alpha", "1.0"]
    assert argv["fkd-full-n4-seed0"][12 + len(shared):] == ["--store", "/stores/full-k10", "--stored-crops", "cycle"]
    ra = ["--randaugment", "rand-n2-m15-mmax15"]  # the -ra rows: the same argv plus AugReg medium1's RandAugment
    assert argv["fkd-full-ra-n4-seed0"][12 + len(shared):] == [*ra, "--store", "/stores/full-k10", "--stored-crops", "cycle"]
    assert argv["online-kd-ra-n4-seed0"][12 + len(shared):] == ["--store", "/stores/full", *ra, *pure[14 + len(shared):]]



def _vit_row(name: str, top1: float, std: "float | None") -> dict:
    return {"name": name, "top1_mean": top1, "top1_std": std}


def test_vit_claims_read_deit_claims_with_their_seed_spread():
    rows = [_vit_row("deit-full-hard-n4", 40.0, 0.3), _vit_row("deit-full-soft-n4", 39.0, 0.4), _vit_row("online-kd-hard-n4", 38.0, 1.0),
            _vit_row("online-kd-soft-n4", 38.5, 0.0), _vit_row("fkd-hardening-gt0.5-n4", 39.8, 0.2), _vit_row("fkd-full-n4", 37.6, 0.3),
            _vit_row("online-kd-n4", 38.0, 0.4), _vit_row("fkd-full-ra-n4", 33.0, 0.3), _vit_row("online-kd-ra-n4", 38.2, 0.4)]
    claims = bench_vit.vit_claims(rows)
    assert [(c["holds"], c["clear"]) for c in claims] == [(True, True), (False, False), (True, False), (True, False), (True, True), (True, True),
                                                          (False, False)]
    assert claims[5]["measured"] == "fkd-full-n4 37.60 vs fkd-full-ra-n4 33.00: +4.60 points, seed spread 0.42"
    # the ground-truth row against its own objective online (DeiT's hard: 0.5 CE(y) + 0.5 CE(top-1)), not against KL alone
    assert claims[4]["measured"] == "fkd-hardening-gt0.5-n4 39.80 vs online-kd-hard-n4 38.00: +1.80 points, seed spread 1.02"
    assert claims[4]["claim"] == ("FKD with ground truth: stored top-1 labels reach the teacher in the loop within 0.5 points (the same "
                                  "objective: 0.5 CE(y) + 0.5 CE(top-1), class token)")
    assert claims[3]["measured"] == "fkd-full-n4 37.60 vs online-kd-n4 38.00: -0.40 points, seed spread 0.50"
    worse = bench_vit.vit_claims([{**r, "top1_mean": 37.4} if r["name"] == "fkd-full-n4" else r for r in rows])[3]
    assert (worse["holds"], worse["clear"]) == (False, True)  # 0.6 under: beyond the 0.5-point tolerance and the spread
    assert claims[0]["measured"] == "deit-full-hard-n4 40.00 vs deit-full-soft-n4 39.00: +1.00 points, seed spread 0.50"
    assert claims[1]["measured"] == "online-kd-hard-n4 38.00 vs online-kd-soft-n4 38.50: -0.50 points, seed spread 1.00"
    assert bench_vit.verdict(claims[0]) == (
        "- DeiT claim 1: hard distillation beats soft with a convnet teacher (distillation token, stored labels): **holds**, "
        "beyond the seed spread (deit-full-hard-n4 40.00 vs deit-full-soft-n4 39.00: +1.00 points, seed spread 0.50)")
    one_seed = bench_vit.vit_claims([{**r, "top1_std": None} for r in rows])
    assert [(c["holds"], c["clear"], c["spread"]) for c in one_seed] == [(True, False, None), (False, False, None), (True, False, None),
                                                                         (True, False, None), (True, False, None), (True, False, None),
                                                                         (False, False, None)]
    assert bench_vit.verdict(one_seed[2]) == (
        "- DeiT claim 2: the distillation token helps (the same hard objective and stored labels, with vs without the token): **holds**, "
        "no seed spread (one seed) (deit-full-hard-n4 40.00 vs fkd-hardening-gt0.5-n4 39.80: +0.20 points)")


def test_report_renders_the_vit_block(tmp_path: Path, monkeypatch):
    machine = MACHINE
    rows = [{**_vit_row(name, top1, 0.5), "student": "ViT", "targets": "t", "seeds": 2, "steps": 313, "vs_supervised": top1 - 30.0,
             "wall_seconds": 100.0, "train_samples_per_s": 250.0}
            for name, top1 in (("supervised-n4", 30.0), ("online-kd-soft-n4", 31.0), ("online-kd-hard-n4", 32.5), ("deit-full-hard-n4", 33.0),
                               ("deit-full-soft-n4", 31.25), ("fkd-hardening-gt0.5-n4", 33.5), ("online-kd-n4", 30.5), ("fkd-full-n4", 29.5),
                               ("online-kd-ra-n4", 31.0), ("fkd-full-ra-n4", 25.0))]
    result = {"command": "cmd", "machine": machine, "wall_seconds": 1500.0, "teacher_top1": 76.57, "rows": rows,
              "claims": bench_vit.vit_claims(rows),
              "setting": {"model_kwargs": ["depth=4"], "recipes": ["a.yaml", "b.yaml"], "train_images": 10000, "store_crops": 32, "test_images": 10000,
                          "seeds": 2, "steps": 313, "images_per_step": 32, "crops_per_image": 4, "epochs": 1, "warmup_fraction": 0.1,
                          "jobs": 2, "threads": 1}}
    (tmp_path / "accuracy").mkdir()
    (tmp_path / "accuracy" / "accuracy-vit.json").write_text(json.dumps(result))
    monkeypatch.setattr(report, "BENCH_DIR", tmp_path)
    text = report.block("accuracy-vit", *report.BLOCKS["accuracy-vit"])
    assert "#### Quick setting" not in text  # a full-setting-only block
    assert "313 optimizer steps of 32 images x 4 crops (1 epoch(s), warm-up 10% of it)" in text
    assert "| deit-full-hard-n4 | ViT | t | 2 | 313 | 33.00 | 0.50 | +3.00 | 100 | 250 |" in text
    assert (
        "- DeiT claim 2: the distillation token helps (the same hard objective and stored labels, with vs without the token): "
        "**does not hold**, within the seed spread (deit-full-hard-n4 33.00 vs fkd-hardening-gt0.5-n4 33.50: -0.50 points, seed spread 0.71)\n"
    ) in text
    assert (
        "- FKD: stored labels reach the teacher in the loop within 0.5 points (the same objective: KL at tau 1 only): **does not hold**, "
        "beyond the seed spread (fkd-full-n4 29.50 vs online-kd-n4 30.50: -1.00 points, seed spread 0.71)\n"
    ) in text
    assert text.endswith(
        "- RandAugment (medium1) costs online KD: online-kd without it beats online-kd with it: **does not hold**, "
        "within the seed spread (online-kd-n4 30.50 vs online-kd-ra-n4 31.00: -0.50 points, seed spread 0.71)")
    assert "hard distillation beats soft with a convnet teacher (class token only, teacher in the loop): **holds**, beyond the seed spread" in text
