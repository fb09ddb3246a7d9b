"""fkd-train on two "nodes" for real: two ``torchrun --nnodes 2 --nproc-per-node 1`` agents on this
machine meeting through a c10d rendezvous, gloo on the CPU.

The two-node run must split the images disjointly between its ranks, end with the weights of the same
run as one node with two processes (bitwise: the ranks see the same images and reduce the same
gradients wherever torchrun puts them), and, killed in the middle of an epoch, continue with
``--resume auto`` to those same weights. Each worker runs tests/train_recorder.py, which records the
images its rank loaded and can park a rank at a given step so the kill lands at a known point.

Every process started here is SIGKILLed with all its descendants at the end, also on failure. torchrun
starts each worker in a session of its own, so the agent's process group alone would not reach them:
the whole process tree is killed, pid by pid, and any worker that outlived its agent by the pid it
recorded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from test_labelgen_multinode import descendants

from train.checkpoint import read_checkpoint

from conftest import TinyData, free_port, train_args

RECORDER = Path(__file__).with_name("train_recorder.py")
EPOCHS = 3
BATCH = 2  # 12 images: 6 per rank, 3 steps per epoch
TRAIN_EXTRA = (
    "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--drop-path", "0.1", "--mixup", "0.8", "--cutmix", "1.0",
    "--reprob", "0.5", "--color-jitter", "0.3", "--model-ema", "--model-ema-decay", "0.9", "--warmup-epochs", "1",
)
"""Every source of randomness: drop-path draws from the global torch RNG, so an exact resume needs each
rank's RNG state from the checkpoint; mixing and erasing derive from (seed, epoch, rank)."""
WAIT_S = 240


def rendezvous_unavailable() -> str | None:
    """Why a c10d rendezvous with gloo cannot run on this machine at all (None: it can)."""
    if importlib.util.find_spec("torch.distributed.run") is None or not dist.is_available() or not dist.is_gloo_available():
        return "this torch has no torch.distributed.run or no gloo backend"
    try:
        free_port()
    except OSError as exc:
        return f"cannot open a TCP port on 127.0.0.1 for the rendezvous: {exc}"
    return None


@dataclass
class Run:
    """One fkd-train job: its torchrun agents (one per node), output directory and per-rank records."""

    name: str
    agents: list[subprocess.Popen]
    output: Path
    records: Path
    logs: list[Path]

    def log_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in self.logs if log.is_file())

    def record(self, rank: int) -> dict[str, Any]:
        return json.loads((self.records / f"rank{rank}.json").read_text())


class Launcher:
    """Starts torchrun jobs (each agent in its own session, its output in a file) and kills them all."""

    def __init__(self, root: Path):
        self.root = root
        self.runs: list[Run] = []

    def start(self, name: str, argv: list[str], nodes: int, procs_per_node: int, hang_at: str | None = None) -> Run:
        """``argv``: fkd-train's arguments; ``hang_at``: FKD_TEST_HANG_AT for every rank (see train_recorder.py)."""
        records = self.root / f"records-{name}"
        records.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FKD_TEST_RECORD_DIR": str(records)}
        if hang_at:
            env["FKD_TEST_HANG_AT"] = hang_at
        rendezvous = [
            "--nnodes", str(nodes), "--nproc-per-node", str(procs_per_node), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", f"{name}-{secrets.token_hex(4)}",
            "--rdzv-conf", "join_timeout=120", "--local-addr", "127.0.0.1", "--max-restarts", "0",
        ]
        run = Run(name, [], Path(argv[argv.index("--output") + 1]), records, [self.root / f"{name}-node{n}.log" for n in range(nodes)])
        self.runs.append(run)
        for log in run.logs:
            with open(log, "w") as out:
                run.agents.append(subprocess.Popen(
                    [sys.executable, "-m", "torch.distributed.run", *rendezvous, str(RECORDER), *argv],
                    env=env, cwd=self.root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                ))
        return run

    def wait(self, run: Run) -> list[int]:
        deadline = time.monotonic() + WAIT_S
        for agent in run.agents:
            try:
                agent.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{run.name} did not finish in {WAIT_S} s\n{run.log_tail()}") from None
        return [agent.returncode for agent in run.agents]

    def kill(self, run: Run) -> None:
        """SIGKILL every agent and worker of ``run`` at once (what losing the machines does)."""
        pids = [pid for agent in run.agents if agent.poll() is None for pid in descendants(agent.pid)]
        pids += [pid for pid in map(int, (f.read_text() for f in run.records.glob("rank*.pid"))) if runs_recorder(pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for agent in run.agents:
            agent.wait(timeout=60)

    def kill_all(self) -> None:
        for run in self.runs:
            self.kill(run)


def runs_recorder(pid: int) -> bool:
    """Whether ``pid`` is (still) a train_recorder.py worker, not a process that reused its pid."""
    try:
        return str(RECORDER) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@contextmanager
def launcher_at(root: Path) -> Iterator[Launcher]:
    reason = rendezvous_unavailable()
    if reason:
        pytest.skip(reason)
    launcher = Launcher(root)
    try:
        yield launcher
    finally:
        launcher.kill_all()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    with launcher_at(tmp_path) as running:
        yield running


@dataclass
class Reference:
    """The uninterrupted runs: two nodes x one process, and one node x two processes."""

    two_nodes: Run
    one_node: Run


@pytest.fixture(scope="module")
def reference(tiny: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:  # noqa: F811
    root = tmp_path_factory.mktemp("reference")
    with launcher_at(root) as launcher:
        runs = Reference(
            launcher.start("two-nodes", train_args(tiny, root / "two-nodes", *TRAIN_EXTRA), nodes=2, procs_per_node=1),
            launcher.start("one-node", train_args(tiny, root / "one-node", *TRAIN_EXTRA), nodes=1, procs_per_node=2),
        )
        for run in (runs.two_nodes, runs.one_node):
            assert launcher.wait(run) == [0] * len(run.agents), run.log_tail()
        yield runs


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = read_checkpoint(a / "last.pth"), read_checkpoint(b / "last.pth")
    assert first["epoch"] == second["epoch"] == EPOCHS
    for key in ("model", "ema"):
        assert first[key].keys() == second[key].keys()
        different = [name for name in first[key] if not torch.equal(first[key][name], second[key][name])]
        assert not different, f"{key} differs in {different}"


def epoch_log(output: Path) -> list[tuple[int, float, float]]:
    """(epoch, train loss, val top-1) per logged epoch: values reduced over all ranks."""
    rows = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["train_loss"], r["val_top1"]) for r in rows]


def images_by_epoch(seen: list[list[int]], epoch: int) -> list[int]:
    return [index for e, index in seen if e == epoch]


def test_two_nodes_split_the_images_and_end_with_the_one_node_weights(reference: Reference) -> None:
    two, one = reference.two_nodes, reference.one_node
    two_records, one_records = [two.record(r) for r in (0, 1)], [one.record(r) for r in (0, 1)]
    # Two agents, one worker each, node ranks 0 and 1 (whichever agent the rendezvous made node 0).
    assert {r["agent_pid"] for r in two_records} == {agent.pid for agent in two.agents}
    assert sorted((r["GROUP_RANK"], r["LOCAL_RANK"], r["LOCAL_WORLD_SIZE"], r["WORLD_SIZE"]) for r in two_records) == [(0, 0, 1, 2), (1, 0, 1, 2)]
    assert {r["agent_pid"] for r in one_records} == {one.agents[0].pid}
    assert sorted((r["GROUP_RANK"], r["LOCAL_RANK"], r["LOCAL_WORLD_SIZE"]) for r in one_records) == [(0, 0, 2), (0, 1, 2)]
    for epoch in range(EPOCHS):
        parts = [images_by_epoch(r["seen"], epoch) for r in two_records]
        assert [len(p) for p in parts] == [6, 6] and sorted(parts[0] + parts[1]) == list(range(12)), (epoch, parts)
    assert len({tuple(images_by_epoch(two_records[0]["seen"], e)) for e in range(EPOCHS)}) == EPOCHS  # reshuffled every epoch
    # Rank r loads the same images in the same order on either layout, so the weights agree bitwise.
    assert [r["seen"] for r in two_records] == [r["seen"] for r in one_records]
    assert_same_weights(two.output, one.output)
    assert epoch_log(two.output) == epoch_log(one.output)


def test_two_nodes_killed_mid_epoch_resume_to_the_uninterrupted_weights(
    tiny: TinyData, reference: Reference, launcher: Launcher, tmp_path: Path  # noqa: F811
) -> None:
    argv = train_args(tiny, tmp_path / "out", *TRAIN_EXTRA)
    # Both ranks park before their second step of epoch 2: one step past the epoch-1 checkpoint.
    killed = launcher.start("killed", argv, nodes=2, procs_per_node=1, hang_at=f"1:{BATCH}")
    hung = [killed.records / f"rank{r}.hung" for r in (0, 1)]
    deadline = time.monotonic() + WAIT_S
    while not all(h.exists() for h in hung):
        assert all(a.poll() is None for a in killed.agents), f"a node ended before the kill\n{killed.log_tail()}"
        assert time.monotonic() < deadline, f"the ranks never reached epoch 2\n{killed.log_tail()}"
        time.sleep(0.1)
    launcher.kill(killed)
    assert [a.returncode for a in killed.agents] == [-9, -9]
    assert read_checkpoint(killed.output / "last.pth")["epoch"] == 1
    assert not list(killed.records.glob("rank*.json"))  # no rank got past the kill

    resumed = launcher.start("resumed", [*argv, "--resume", "auto"], nodes=2, procs_per_node=1)
    assert launcher.wait(resumed) == [0, 0], resumed.log_tail()
    assert f"resumed from {killed.output / 'last.pth'} after epoch 1" in resumed.log_tail()
    straight = reference.two_nodes
    for rank in (0, 1):  # epochs 2 and 3 again, in full, with the uninterrupted run's images
        assert resumed.record(rank)["seen"] == [key for key in straight.record(rank)["seen"] if key[0] >= 1]
    assert_same_weights(killed.output, straight.output)
    assert epoch_log(killed.output) == epoch_log(straight.output)  # each epoch logged once, same values
