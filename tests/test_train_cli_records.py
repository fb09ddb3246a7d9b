"""What a run reports per epoch: with an EMA, its validation figure (the one best.pth follows) sits in
summary.csv beside the model's, and the printed lines say which figure is whose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.cli import main
from train.runlog import best_line, epoch_line

from conftest import TinyData, read_summary, train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECORD = {
    "epoch": 3, "train_loss": 1.23456, "lr": 2.5e-4, "samples_per_s": 1234.4, "images_per_s": 308.6, "time": 12.34,
    "val_top1": 14.0, "val_top5": 60.0, "val_loss": 2.0,
}


def test_summary_csv_holds_the_ema_top1_that_picks_best_pth(tiny: TinyData, tmp_path: Path) -> None:
    """summary.csv had the model's val_top1 only, while best.pth follows the EMA's figure (in
    log.jsonl alone): a distilled run showed 14.00 per epoch and then 'best val top1 11.00'."""
    out = tmp_path / "ema"
    assert main(train_args(tiny, out, "--model-ema", "--model-ema-decay", "0.5")) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rows = read_summary(out)
    assert [float(row["ema_top1"]) for row in rows] == [entry["ema_top1"] for entry in log]
    assert [float(row["val_top1"]) for row in rows] == [entry["val_top1"] for entry in log]
    assert main(train_args(tiny, tmp_path / "plain", "--epochs", "1")) == 0
    assert [row["ema_top1"] for row in read_summary(tmp_path / "plain")] == [""]


def test_the_epoch_line_names_the_model_and_the_ema_figure() -> None:
    assert epoch_line(RECORD | {"ema_top1": 11.0, "ema_top5": 55.0, "ema_loss": 2.1}, 5) == (
        "epoch 3/5: loss 1.2346 val top1 14.00 top5 60.00 (model) / top1 11.00 top5 55.00 (EMA, picks best.pth) "
        "lr 0.00025 1234 crops/s (309 images/s) 12.3s"
    )
    assert epoch_line(RECORD, 5) == "epoch 3/5: loss 1.2346 val top1 14.00 top5 60.00 lr 0.00025 1234 crops/s (309 images/s) 12.3s"
    no_val = {key: value for key, value in RECORD.items() if not key.startswith("val_")}
    assert epoch_line(no_val, 5) == "epoch 3/5: loss 1.2346 lr 0.00025 1234 crops/s (309 images/s) 12.3s"


def test_the_best_line_says_whose_figure_it_is() -> None:
    assert best_line(11.0, 2, ema=True, output=Path("runs/x")) == "best val top1 11.00 (EMA) at epoch 2; checkpoints in runs/x"
    assert best_line(14.0, 3, ema=False, output=Path("runs/x")) == "best val top1 14.00 at epoch 3; checkpoints in runs/x"
