"""The feature-distillation block (bench_fd.py): its rows' argv and its README block."""

from __future__ import annotations

import json
from pathlib import Path

from benchmark_stubs import MACHINE, argvs

from benchmarks import report
from benchmarks.accuracy import bench_fd, toolkit


def test_fd_rows_share_steps_and_differ_only_in_their_targets(monkeypatch, tmp_path: Path):
    """The FD block's five rows: the same schedule; the embedding and online-FD rows the same
    loss, projector and ground-truth weight; only label rows read the label store."""
    runs = [run for run, _ in bench_fd.fd_rows("/emb", 2)]
    assert [run.name for run in runs] == ["supervised-n4", "fkd-labels-n4", "fkd-embedding-gt0.3-n4", "fkd-labels+embedding-n4", "online-fd-gt0.3-n4"]
    argv = argvs(monkeypatch, tmp_path, runs, 2560)
    head = ["--epochs", "2", "--batch-size", "32", "--crops-per-image", "4"]
    embed = ["--embed-loss", "smooth-l1", "--projector", "linear"]
    labels = ["--store", "/stores/marginal-smoothing-k5", "--stored-crops", "cycle"]
    assert all(a[:4] == ["-c", str(toolkit.RECIPE), "--mode", run.mode] and a[12:18] == head for run, a in zip(runs, argv.values()))
    assert argv["supervised-n4-seed0"][18:] == []
    assert argv["fkd-labels-n4-seed0"][18:] == labels
    assert argv["fkd-embedding-gt0.3-n4-seed0"][18:] == ["--embed-store", "/emb", *embed, "--gt-weight", "0.3"]
    assert argv["fkd-labels+embedding-n4-seed0"][18:] == ["--embed-store", "/emb", *embed, *labels]
    assert argv["online-fd-gt0.3-n4-seed0"][18:] == ["--teacher-module", "fkd.zoo.keras_cifar10:create_model", "--embedding-from", "dense_1_relu",
                                                     *embed, "--gt-weight", "0.3"]


def test_report_renders_the_fd_block(tmp_path: Path, monkeypatch):
    machine = MACHINE
    rows = [{"name": name, "mode": mode, "scheme": scheme, "targets": "t", "seeds": 2, "steps": 160, "top1_mean": top1, "top1_std": 0.5,
             "vs_supervised": top1 - 30.0, "wall_seconds": 100.0, "train_samples_per_s": speed}
            for name, mode, scheme, top1, speed in (("supervised-n4", "supervised", None, 30.0, 800.0), ("fkd-labels-n4", "fkd", "ms", 33.0, 800.0),
                                                    ("fkd-embedding-gt0.3-n4", "fkd", None, 32.0, 700.0),
                                                    ("fkd-labels+embedding-n4", "fkd", "ms", 34.0, 600.0), ("online-fd-gt0.3-n4", "online-fd", None, 32.5, 200.0))]
    bench_fd.stored_bytes(rows, 30.0, 290.0)
    assert [r["stored_bytes_per_crop"] for r in rows] == [None, 30.0, 290.0, 320.0, None]
    assert [r["speed_vs_online_fd"] for r in rows] == [4.0, 4.0, 3.5, 3.0, 1.0]
    stores = [{"store": "labels", "bytes_per_crop": 30.0, "labelgen_seconds": 120.0, "source": "this run's store"},
              {"store": "embedding int8", "bytes_per_crop": 185.7, "labelgen_seconds": None, "source": "storage/embedding.json"}]
    result = {"command": "cmd", "machine": machine, "wall_seconds": 1500.0, "teacher_top1_reference": 76.57, "rows": rows, "stores": stores,
              "setting": {"train_images": 2560, "test_images": 10000, "store_crops": 8, "seeds": 2, "steps": 160, "images_per_step": 32,
                          "crops_per_image": 4, "epochs": 2, "layer": "dense_1_relu", "embed_flags": ["--embed-loss", "smooth-l1"],
                          "recipe": "configs/bench-cifar10.yaml", "jobs": 2, "threads": 1}}
    (tmp_path / "accuracy").mkdir()
    (tmp_path / "accuracy" / "accuracy-fd.json").write_text(json.dumps(result))
    monkeypatch.setattr(report, "BENCH_DIR", tmp_path)
    text = report.block("accuracy-fd", *report.BLOCKS["accuracy-fd"])
    assert text.startswith("Command: `cmd`") and "#### Quick setting" not in text
    assert "160 optimizer steps of 32 images x 4 crops (2 epochs)" in text
    assert "| fkd-labels+embedding-n4 | t | 2 | 160 | 34.00 | 0.50 | +4.00 | 320.0 | 100 | 600 | 3.00 |" in text
    assert "| supervised-n4 | t | 2 | 160 | 30.00 | 0.50 | +0.00 | - | 100 | 800 | 4.00 |" in text
    assert text.endswith("| embedding int8 | 185.7 | - | storage/embedding.json |")
