"""Per-epoch records: OUTPUT/summary.csv (one row per epoch, for plots and spreadsheets) and
OUTPUT/log.jsonl (one JSON object per epoch with every measured value).

With --model-ema the model and its EMA are both evaluated and best.pth follows the EMA: the lines
printed after each epoch and at the end say whose figure each is, so the best figure is never taken
for the model's.

Epochs are numbered from 1 (the count of finished epochs, as in the checkpoints). On resume after
epoch e, rows of later epochs (written by the interrupted run after its checkpoint) are dropped
first, so each epoch appears once.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

SUMMARY_NAME = "summary.csv"
LOG_NAME = "log.jsonl"
SUMMARY_FIELDS: tuple[str, ...] = ("epoch", "train_loss", "val_top1", "val_top5", "ema_top1", "lr", "samples_per_s", "time")
"""ema_top1: the EMA's val top-1 (--model-ema), the figure best.pth follows; empty without an EMA."""


class RunLog:
    def __init__(self, output: Path, start_epoch: int):
        self.summary = Path(output) / SUMMARY_NAME
        self.log = Path(output) / LOG_NAME
        self._truncate(start_epoch)

    def _truncate(self, start_epoch: int) -> None:
        if self.summary.is_file():
            with open(self.summary, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= start_epoch]
            self._write_summary(rows, "w")
        if self.log.is_file():
            kept = [line for line in self.log.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] <= start_epoch]
            self.log.write_text("".join(line + "\n" for line in kept))

    def _write_summary(self, rows: list[dict[str, Any]], mode: str) -> None:
        new = mode == "w" or not self.summary.is_file()
        with open(self.summary, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def append(self, record: dict[str, Any]) -> None:
        """``record`` must hold the summary fields; everything in it goes to log.jsonl."""
        self._write_summary([record], "a")
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """What is printed after each epoch, from its ``record``; with an EMA, both validation figures, named."""
    val = ""
    if "val_top1" in record:
        val = f" val top1 {record['val_top1']:.2f} top5 {record['val_top5']:.2f}"
        if "ema_top1" in record:
            val += f" (model) / top1 {record['ema_top1']:.2f} top5 {record['ema_top5']:.2f} (EMA, picks best.pth)"
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}{val} lr {record['lr']:.3g} "
        f"{record['samples_per_s']:.0f} crops/s ({record['images_per_s']:.0f} images/s) {record['time']:.1f}s"
    )


def best_line(top1: float, epoch: int, ema: bool, output: Path) -> str:
    """The run's last line: the best val top-1 (the EMA's with ``ema``) and the epoch it came at (from 1)."""
    return f"best val top1 {top1:.2f}{' (EMA)' if ema else ''} at epoch {epoch}; checkpoints in {output}"
