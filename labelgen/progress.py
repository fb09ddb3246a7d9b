"""Live progress of the shards being labelled, for the driver's progress bar.

A shard takes minutes; counting only finished shards would leave the bar (and its images/s and
ETA) frozen that long. Workers post, after every teacher batch, how many images of their shard are
finished; the driver reads the board about once a second. Posts are absolute per shard, so a
retried shard simply starts again from zero and nothing is counted twice.
"""

from __future__ import annotations


class ProgressBoard:
    """Images finished so far per shard (run as a zero-CPU Ray actor)."""

    def __init__(self) -> None:
        self._done: dict[int, int] = {}

    def post(self, shard: int, images: int) -> None:
        self._done[shard] = images

    def snapshot(self) -> dict[int, int]:
        return dict(self._done)
