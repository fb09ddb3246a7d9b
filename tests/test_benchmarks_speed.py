"""The training-speed benchmark's ViT rows: ratios per student, and one headline per student."""

from __future__ import annotations

from benchmark_stubs import MACHINE

from benchmarks import report
from benchmarks.speed import bench_train_speed


def test_train_speed_ratios_are_per_student():
    rows = [{"student": student, "mode": mode, "samples_per_s": value}
            for student, values in (("cnn", (100.0, 4.0, 96.0)), ("vit", (30.0, 3.0, 27.0)))
            for mode, value in zip(("supervised", "online-kd", "fkd"), values)]
    bench_train_speed.add_ratios(rows)
    assert [(r["vs_online_kd"], r["vs_supervised"]) for r in rows] == [(25.0, 1.0), (1.0, 0.04), (24.0, 0.96), (10.0, 1.0), (1.0, 0.1), (9.0, 0.9)]
    assert bench_train_speed.STUDENTS[1].label == "vit_tiny_patch16_224 (img_size=32, patch_size=4) @ 32px"


def test_report_shows_one_train_speed_headline_per_student():
    machine = MACHINE
    setting = {"student": "cnn; vit", "teacher": "t", "images": 160, "batch_size": 16, "crops_per_image": 2, "epochs": 2, "workers": 1}
    rows = [{"student": "vit", "mode": "fkd", "samples_per_s": 27.0, "images_per_s": 13.5, "vs_online_kd": 9.0, "vs_supervised": 0.9, "wall_seconds": 5.0}]
    result = {"command": "cmd", "machine": machine, "wall_seconds": 1.0, "setting": setting, "rows": rows, "quoted": [],
              "fkd_over_online_kd_per_student": {"cnn": 24.0, "vit": 9.0}}
    text = report.train_speed(result, "")
    assert "| vit | fkd | 27.0 | 13.5 | 9.0 | 0.90 | 5 |" in text
    assert ("**Headline, cnn: fkd / online-kd = 24.0x training samples/s.**  \n"
            "**Headline, vit: fkd / online-kd = 9.0x training samples/s.**\n") in text
    legacy = {**result, "setting": {**setting, "student": "cnn"}, "rows": [{k: v for k, v in rows[0].items() if k != "student"}],
              "fkd_over_online_kd": 24.0}
    del legacy["fkd_over_online_kd_per_student"]
    legacy_text = report.train_speed(legacy, "")  # a result written before the ViT rows
    assert "| cnn | fkd | 27.0 |" in legacy_text and "**Headline, cnn: fkd / online-kd = 24.0x training samples/s.**\n" in legacy_text
