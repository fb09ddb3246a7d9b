"""fkd-labelgen on a real two-node Ray cluster (head + second node, both on this machine, started
with ``ray start``), losing the second node part way: the run must finish on the survivor and make
the same store as a local run (the determinism guarantee, docs/FORMAT.md).

Every process the test starts is killed by pid at the end, also on failure: the ``ray start
--block`` processes (each in its own session) and all their descendants. ``ray stop`` is never used:
it would stop every Ray instance on the machine, not only this test's.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_labelgen_e2e import assert_same_store

from conftest import free_port, make_image_folder
from test_labelgen_worker import save_tiny_teacher

RAY = Path(sys.executable).with_name("ray")
LABELGEN = Path(sys.executable).with_name("fkd-labelgen")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc), children last-found first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a ``ray start --block`` process and everything it started (what losing its machine does)."""
    for pid in reversed(descendants(process.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)


class Cluster:
    """A head and a second node, each a ``ray start --block`` in its own session and temp dir."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.port = root, env, free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cpus: int, *extra: str) -> None:
        temp = self.root / name
        temp.mkdir()
        argv = [str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--temp-dir", str(temp),
                "--disable-usage-stats", "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()), *extra]
        log = open(self.root / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (self.root / f"{name}.log").read_text():
            if self.nodes[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start:\n{(self.root / f'{name}.log').read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self, name: str) -> None:
        kill_tree(self.nodes.pop(name))

    def stop_all(self) -> None:
        for name in list(self.nodes):
            self.stop(name)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="fkdr", dir="/tmp"))  # short: Ray's unix socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    cluster = Cluster(root, env)
    try:
        # One CPU per node: one worker lands on each, and the lost one's replacement has nowhere to go.
        cluster.start("head", 1, "--head", "--port", str(cluster.port), "--include-dashboard", "false")
        cluster.start("node2", 1, "--address", cluster.address)
        yield cluster
    finally:
        cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def labelgen_argv(data: Path, teacher: Path, out: Path) -> list[str]:
    return [str(LABELGEN), "--teacher", "test_resnet", "--checkpoint", str(teacher), "--no-pretrained", "--input-size", "32",
            "--data", str(data), "--out", str(out), "--crops", "24", "--scheme", "marginal-smoothing", "--top-k", "2",
            "--seed", "7", "--shard-size", "4", "--batch-size", "32", "--no-progress"]


def finished_shards(store: Path) -> int:
    try:
        return len(json.loads((store / "store.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def test_losing_the_second_node_part_way_finishes_on_the_survivor_with_the_local_store(cluster: Cluster, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images", classes=3, per_class=12, size=(96, 128))
    teacher = save_tiny_teacher(tmp_path / "teacher.pth", num_classes=3)
    out = tmp_path / "cluster-store"  # on the driver only: workers ship records back through Ray
    run = subprocess.Popen([*labelgen_argv(data, teacher, out), "--ray-address", cluster.address, "--workers", "2", "--cpus-per-worker", "1"],
                           env=cluster.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while finished_shards(out) < 1 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.poll() is None, "the run ended before the second node could be stopped"
        cluster.stop("node2")
        _, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-3000:]
    assert "failed (" in err and "retrying (1/3)" in err, err[-3000:]  # the second node's shard, redone on the head
    cluster.stop_all()  # the local run must start its own Ray, not find this cluster
    local = tmp_path / "local-store"
    subprocess.run([*labelgen_argv(data, teacher, local), "--workers", "1"], env=cluster.env, cwd=tmp_path, check=True,
                   capture_output=True, timeout=180)
    assert_same_store(out, local)
