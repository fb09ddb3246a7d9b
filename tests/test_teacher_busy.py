"""fkd-labelgen reports how busy the teacher was: the seconds of its forward passes, summed per
shard by the worker and over shards by the driver, as a fraction of the labelling time (what
`make gpu-check` shows for the GPU teacher)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest

import labelgen.worker
from fkd.data.images import list_images
from labelgen.driver import Summary
from labelgen.messages import ShardTask
from labelgen.plan import image_refs

from test_labelgen_worker import layout_for, make_worker, tiny  # noqa: F401  (tiny is a fixture)


def test_a_shard_counts_the_teacher_seconds_of_each_batch(tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A clock that ticks once per reading: every batch's forward lasts exactly one tick."""
    ticks = itertools.count()
    monkeypatch.setattr(labelgen.worker, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    folder, checkpoint = tiny
    worker = make_worker(checkpoint, "marginal-smoothing")  # 9 images x 6 crops in batches of 5: 11 batches
    outcome = worker.label_shard(ShardTask(0, 0, image_refs(list_images(folder)), layout_for(worker)))
    assert outcome.data is not None and outcome.teacher_seconds == 11.0


def test_summary_reports_the_teacher_busy_fraction() -> None:
    summary = Summary(
        out=Path("s"), images=100, crops=3200, shards=1, shards_written=1, bad_images=0, bytes=2**20,
        images_labelled=100, labelling_seconds=20.0, seconds=30.0, teacher_seconds=24.0, workers=2,
    )
    assert summary.teacher_busy == 0.6
    assert summary.format().splitlines()[-1] == "teacher busy 24.0 s over 2 worker(s): 60 % of the labelling time"
