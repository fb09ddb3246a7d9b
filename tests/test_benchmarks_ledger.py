"""The ledger of finished runs: a block continues on another clone or machine from the runs it
recorded, without training or labelling them again."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from benchmark_stubs import MACHINE

from benchmarks import common
from benchmarks.accuracy import bench_scale, ledger, toolkit
from benchmarks.accuracy.ledger import Ledger
from benchmarks.accuracy.toolkit import Run


def on_clone(monkeypatch, root: str) -> None:
    monkeypatch.setattr(ledger, "REPO_ROOT", Path(f"{root}/fkd"))
    monkeypatch.setattr(ledger, "shared_dir", lambda: Path(f"{root}/shared"))


def test_a_run_recorded_on_one_clone_is_found_on_another(monkeypatch, tmp_path: Path):
    runs = Ledger(tmp_path / "runs.jsonl")
    monkeypatch.setattr(ledger, "commit", lambda: "abc123")

    def argv(root: str, seed: int = 0) -> list[str]:
        return [f"{root}/fkd/.venv/bin/fkd-train", "--data", f"{root}/fkd/benchmarks/.cache/train", "--model", f"{root}/shared/m.h5",
                "--seed", str(seed), "--other", f"{root}/fkdx"]

    on_clone(monkeypatch, "/a")
    runs.add(argv("/a"), "recipe1", {"top1": 60.0})
    entry = json.loads((tmp_path / "runs.jsonl").read_text())
    assert entry["argv"] == ["fkd-train", "--data", "<repo>/benchmarks/.cache/train", "--model", "<shared>/m.h5", "--seed", "0",
                             "--other", "/a/fkdx"]  # a path that only starts like the repository's stays as it is
    assert entry["commit"] == "abc123"
    on_clone(monkeypatch, "/b")
    moved = argv("/b")
    moved[-1] = "/a/fkdx"
    assert runs.find(moved, "recipe1") == {"top1": 60.0}
    assert runs.find(moved, "recipe2") is None  # an edited recipe
    assert runs.find(argv("/b", seed=1)[:-1] + ["/a/fkdx"], "recipe1") is None  # another run
    runs.add(moved, "recipe1", {"top1": 61.0})
    assert runs.find(moved, "recipe1") == {"top1": 61.0}  # the newest record of a run counts
    assert Ledger(tmp_path / "none.jsonl").find(moved, "recipe1") is None


def fake_training(calls: list):
    """run_logged for fkd-train: a log whose top-1 is read from the argv (seed and length)."""

    def run(argv, log, env=None, append=False):
        calls.append(list(argv))
        top1 = 50.0 + int(argv[argv.index("--seed") + 1]) + len(argv) / 100
        log.parent.mkdir(parents=True, exist_ok=True)
        (log.parent / "log.jsonl").write_text("".join(json.dumps({"samples": 10, "samples_per_s": 5.0, "val_top1": top1 - 3 + e,
                                                                  "val_top5": 90.0, "train_loss": 1.0, "time": 2.0}) + "\n" for e in range(4)))
        return 2.0

    return run


def test_train_reuses_a_run_from_the_ledger_when_the_cache_is_gone(monkeypatch, tmp_path: Path):
    calls: list = []
    monkeypatch.setattr(toolkit, "run_logged", fake_training(calls))
    monkeypatch.setattr(toolkit, "store_path", lambda setting, scheme, k: Path(f"/stores/{scheme}-k{k}"))
    labelled = []
    monkeypatch.setattr(toolkit, "converted_store", lambda *store: labelled.append(store))
    monkeypatch.setattr(toolkit, "list_images", lambda data: range(1280))
    run, setting = Run("fkd", "full", 10, 4, 1), common.LabelSetting(128, 32)
    block = toolkit.Block(setting, Path("/data"), Path("/test"), tmp_path / "cache", 128, 1, ledger=tmp_path / "runs.jsonl")
    first = toolkit.train(run, block)
    assert len(calls) == 1 and labelled == [(setting, "full", 10)] and not first.get("reused")
    shutil.rmtree(tmp_path / "cache")
    again = toolkit.train(run, block)
    assert len(calls) == 1 and len(labelled) == 1  # neither trained nor labelled again
    assert again["reused"] is True and {k: again[k] for k in first} == first
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 1


def test_a_scale_block_whose_runs_the_ledger_holds_trains_and_labels_nothing(monkeypatch, tmp_path: Path):
    """The block run to its end once, then started again with the cache gone: the same result,
    read from the ledger, and neither fkd-labelgen nor fkd-train called."""
    calls: list = []
    labelled: list = []
    monkeypatch.setattr(common, "machine_at_start", MACHINE)
    monkeypatch.setattr(bench_scale, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(bench_scale, "balanced_subset", lambda split, per_class: tmp_path / split)
    monkeypatch.setattr(bench_scale, "list_images", lambda path: range(10000))
    monkeypatch.setattr(bench_scale, "teacher_top1", lambda test: 76.57)
    monkeypatch.setattr(bench_scale, "full_store", lambda setting, workers: labelled.append("labelgen") or (tmp_path / "store", 9.0))
    monkeypatch.setattr(bench_scale, "converted_store", lambda setting, scheme, k: labelled.append(scheme))
    monkeypatch.setattr(toolkit, "run_logged", fake_training(calls))
    monkeypatch.setattr(toolkit, "store_path", lambda setting, scheme, k: tmp_path / f"{scheme}-k{k}")
    monkeypatch.setattr(toolkit, "converted_store", lambda *store: None)
    monkeypatch.setattr(toolkit, "list_images", lambda data: range(10000))
    out = tmp_path / "accuracy-scale.json"

    def block() -> dict:
        bench_scale.run_scale(argparse.Namespace(seeds=2, jobs=2, threads=1, out=out))
        return json.loads(out.read_text())

    first = block()
    assert len(calls) == 22 and labelled[0] == "labelgen" and first["setting"]["reused_runs"] == 0
    assert len((tmp_path / "accuracy-scale-runs.jsonl").read_text().splitlines()) == 22
    shutil.rmtree(tmp_path / "cache")
    calls.clear()
    labelled.clear()
    second = block()
    assert calls == [] and labelled == [] and second["setting"]["reused_runs"] == 22
    assert second["setting"]["labelgen_seconds"] is None
    assert [(r["name"], r["seed"], r["top1"]) for r in second["runs"]] == [(r["name"], r["seed"], r["top1"]) for r in first["runs"]]
    assert second["pairs"] == first["pairs"]


@pytest.mark.parametrize("where", ["<repo>", "<shared>"])
def test_portable_names_only_whole_path_prefixes(monkeypatch, where: str):
    on_clone(monkeypatch, "/c")
    path = "/c/fkd" if where == "<repo>" else "/c/shared"
    assert ledger.portable(["/x/bin/fkd-train", path, f"{path}/a", f"{path}-b", f"--x={path}"]) == [
        "fkd-train", where, f"{where}/a", f"{path}-b", f"--x={path}"]
