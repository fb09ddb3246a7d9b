"""fkd-train (``train.cli.main``) for one torchrun worker, recording what the test cannot see from outside.

fkd-train writes nothing per rank, so tests/test_train_multinode.py launches this script under real
``torchrun`` processes instead of ``-m train.cli`` (and tests/test_train_ddp.py calls ``run`` in the
ranks it spawns): it wraps ``MultiCropDataset.__getitem__`` and passes its arguments to fkd-train
unchanged.

Environment:
  FKD_TEST_RECORD_DIR  directory for ``rank{RANK}.pid`` at the start (this process's pid, so the test
                       can kill a worker whose agent died first) and ``rank{RANK}.json`` when fkd-train
                       returns: its exit code, every (epoch, image index) this rank loaded in order, and
                       where torchrun placed the rank (node rank, local rank, processes on the node, the
                       torchrun agent's pid).
  FKD_TEST_HANG_AT     ``EPOCH:ITEMS``: when this rank asks for image ITEMS + 1 of (0-based) epoch EPOCH,
                       write ``rank{RANK}.hung`` and sleep until killed, so a test can kill a run at a
                       known step instead of racing it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from fkd.data import multicrop as data
from train.cli import main


def run(argv: "list[str] | None" = None) -> int:
    """fkd-train with ``argv`` (default: this script's arguments), recorded as the module docstring says."""
    record_dir = Path(os.environ["FKD_TEST_RECORD_DIR"])
    rank = os.environ["RANK"]
    (record_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    hang_epoch, hang_items = (int(v) for v in os.environ.get("FKD_TEST_HANG_AT", "-1:0").split(":"))
    seen: list[tuple[int, int]] = []
    original = data.MultiCropDataset.__getitem__

    def recording(self: data.MultiCropDataset, key: tuple[int, int]) -> data.CropSample:
        if key[0] == hang_epoch and sum(epoch == hang_epoch for epoch, _ in seen) == hang_items:
            (record_dir / f"rank{rank}.hung").touch()
            while True:
                time.sleep(60)
        seen.append(key)
        return original(self, key)

    data.MultiCropDataset.__getitem__ = recording
    code = main(sys.argv[1:] if argv is None else argv)
    placement = {name: int(os.environ[name]) for name in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE")}
    record = {"code": code, "seen": seen, "agent_pid": os.getppid(), **placement}
    (record_dir / f"rank{rank}.json").write_text(json.dumps(record))
    return code


if __name__ == "__main__":
    sys.exit(run())
