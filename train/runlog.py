"""Per-epoch records: OUTPUT/summary.csv (one row per epoch, for plots and spreadsheets) and
OUTPUT/log.jsonl (one JSON object per epoch with every measured value).

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
SUMMARY_FIELDS: tuple[str, ...] = ("epoch", "train_loss", "val_top1", "val_top5", "lr", "samples_per_s", "time")


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
