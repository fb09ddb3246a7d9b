"""fkd-train under DDP: 2 gloo processes on the CPU, launched like torchrun (RANK/WORLD_SIZE env)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from train.checkpoint import read_checkpoint

from conftest import TinyData, free_port, train_args

WORLD_SIZE = 2


def _rank_main(rank: int, port: int, argv: list[str], record_dir: str) -> None:
    """One rank, as torchrun would start it, running fkd-train under tests/train_recorder.py."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank), GROUP_RANK="0", LOCAL_WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), FKD_TEST_RECORD_DIR=record_dir)
    torch.set_num_threads(1)
    import train_recorder

    train_recorder.run(argv)


def test_two_gloo_ranks_train_on_disjoint_images_covering_the_store(tiny: TinyData, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = train_args(tiny, out, "--batch-size", "2", "--model-ema")
    mp.spawn(_rank_main, args=(free_port(), argv, str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert [r["code"] for r in records] == [0, 0]
    for epoch in (0, 1):
        parts = [{i for e, i in r["seen"] if e == epoch} for r in records]
        assert all(len(p) == 6 for p in parts)  # 12 images split evenly, every step ran on both ranks
        assert not parts[0] & parts[1] and parts[0] | parts[1] == set(range(12))
    ckpt = read_checkpoint(out / "last.pth")
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == WORLD_SIZE
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # each rank keeps its own stream
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in log] == [24, 24]  # summed over ranks: 12 images x 2 crops
