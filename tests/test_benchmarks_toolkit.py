"""The accuracy toolkit: a finished run is reused only while its argv and recipe are unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from benchmark_stubs import Stop, argvs

from benchmarks import common
from benchmarks.accuracy import toolkit
from benchmarks.accuracy.toolkit import Run


def test_a_finished_run_is_reused_only_while_its_recipe_is_unchanged(monkeypatch, tmp_path: Path):
    """The cache key is the argv, which names the recipe by path: an edited recipe must rerun."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 0.1\n")
    run = Run("fkd", "full", 10, 4, 0, recipe=recipe)
    argv = ["fkd-train", *argvs(monkeypatch, tmp_path, [run], 1280)["fkd-full-n4-seed0"]]
    done = tmp_path / "fkd-full-n4-seed0" / "benchmark.json"
    block = toolkit.Block(common.LabelSetting(128, 32), Path("/data"), Path("/test"), tmp_path, 128, 1)
    monkeypatch.setattr(toolkit, "script", lambda name: name)

    def reused(record: dict) -> bool:
        done.parent.mkdir(exist_ok=True)
        done.write_text(json.dumps({"argv": argv, "result": {"top1": 50.0}, **record}))
        try:
            return toolkit.train(run, block)["reused"]
        except Stop:  # run_logged was called: the run would be trained again
            return False

    assert reused({"recipe_sha256": hashlib.sha256(b"lr: 0.1\n").hexdigest()})
    assert reused({})  # written before the hash was kept: its argv is all there is to go by
    recipe.write_text("lr: 0.2\n")
    assert not reused({"recipe_sha256": hashlib.sha256(b"lr: 0.1\n").hexdigest()})


def test_new_row_kinds_add_their_flags_after_the_argv_of_before(monkeypatch, tmp_path: Path):
    """The control (online KD on the store's crops), a per-crop W and online KD at alpha 0.7 name
    their objective and append their flags; the argv every earlier run had stays as it was."""
    runs = [Run("online-kd", None, 0, 4, 0, kd=("--kd-alpha", "0.7"), tag="a0.7"), Run("online-kd", "full", 10, 4, 0, crop_source="store"),
            Run("fkd", "marginal-smoothing", 5, 4, 0, gt_weight=0.3, gt_weight_by="confidence"),
            Run("fkd", "full", 10, 4, 0, gt_weight=0.3, store="/airbench/full", tag="airbench"),
            Run("online-kd", None, 0, 4, 0, teacher=("--teacher-module", "benchmarks.accuracy.airbench_teacher:create_model",
                                                     "--checkpoint", "net.pt"), tag="airbench")]
    assert [r.name for r in runs] == ["online-kd-a0.7-n4", "online-kd-stored-crops-n4", "fkd-marginal-smoothing-k5-gt0.3-confidence-n4",
                                      "fkd-full-gt0.3-airbench-n4", "online-kd-airbench-n4"]
    envs = {}
    monkeypatch.setattr(toolkit, "module_env", lambda flags: envs.setdefault(tuple(flags), {"PYTHONPATH": "repo"} if flags else {}))
    argv = argvs(monkeypatch, tmp_path, runs, 1280)
    keras = ["--teacher-module", "fkd.zoo.keras_cifar10:create_model"]
    assert argv["online-kd-a0.7-n4-seed0"][18:] == [*keras, "--kd-alpha", "0.7"]
    assert argv["online-kd-stored-crops-n4-seed0"][18:] == [*keras, "--kd-alpha", "1.0", "--store", "/stores/full-k10", "--stored-crops", "cycle",
                                                          "--crop-source", "store"]
    assert argv["fkd-marginal-smoothing-k5-gt0.3-confidence-n4-seed0"][18:] == [
        "--store", "/stores/marginal-smoothing-k5", "--stored-crops", "cycle", "--gt-weight", "0.3", "--gt-weight-by", "confidence"]
    assert argv["fkd-full-gt0.3-airbench-n4-seed0"][18:] == ["--store", "/airbench/full", "--stored-crops", "cycle", "--gt-weight", "0.3"]
    assert argv["online-kd-airbench-n4-seed0"][18:] == [*runs[4].teacher, "--kd-alpha", "1.0"]
    assert envs[runs[4].teacher] == {"PYTHONPATH": "repo"}  # the console script imports the benchmarks' teacher module
    described = runs[1].described(common.LabelSetting(128, 32))
    assert (described["crop_source"], described["kd_alpha"], described["kd"], described["kd_tau"]) == ("store", 1.0, "soft", 1.0)
    assert runs[2].described(common.LabelSetting(128, 32))["gt_weight_by"] == "confidence"


def test_module_env_puts_the_repository_on_the_path_for_its_own_teacher_modules(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert common.module_env(["--teacher-module", "fkd.zoo.keras_cifar10:create_model"]) == {}
    assert common.module_env(["--teacher-module", "benchmarks.accuracy.airbench_teacher:create_model"]) == {
        "PYTHONPATH": f"{common.REPO_ROOT}:/elsewhere"}


def test_an_interrupted_run_resumes_from_its_last_epoch_and_keeps_its_log(monkeypatch, tmp_path: Path):
    """A run folder with a checkpoint continues (--resume auto, the log appended); a folder of a run
    that stopped before its first checkpoint starts again, cleared."""
    run = Run("fkd", "full", 10, 4, 0)
    calls = []

    def fake_run(argv, log, env=None, append=False):
        calls.append((argv[-2:], append, sorted(p.name for p in log.parent.iterdir())))
        (log.parent / "log.jsonl").write_text(json.dumps({"samples": 10, "samples_per_s": 5.0, "val_top1": 1.0, "val_top5": 2.0,
                                                         "train_loss": 3.0, "time": 7.0}) + "\n")
        return 1.0

    monkeypatch.setattr(toolkit, "run_logged", fake_run)
    monkeypatch.setattr(toolkit, "script", lambda name: name)
    monkeypatch.setattr(toolkit, "store_path", lambda setting, scheme, k: Path(f"/stores/{scheme}-k{k}"))
    monkeypatch.setattr(toolkit, "converted_store", lambda setting, scheme, k: Path(f"/stores/{scheme}-k{k}"))
    monkeypatch.setattr(toolkit, "list_images", lambda data: range(1280))
    block = toolkit.Block(common.LabelSetting(128, 32), Path("/data"), Path("/test"), tmp_path, 128, 1)
    folder = tmp_path / "fkd-full-n4-seed0"
    folder.mkdir()
    for name in ("args.yaml", "last.pth", "train.log"):
        (folder / name).write_text("x")
    result = toolkit.train(run, block)
    assert calls[-1] == (["--resume", "auto"], True, ["args.yaml", "last.pth", "train.log"])
    assert (result["resumed"], result["wall_seconds"]) == (True, 7.0)  # both parts' epoch times, not the second part's wall
    (folder / "benchmark.json").unlink()
    (folder / "last.pth").unlink()
    result = toolkit.train(run, block)
    assert calls[-1][1:] == (False, []) and calls[-1][0] != ["--resume", "auto"] and result["resumed"] is False


def test_a_block_lists_its_training_folder_once_for_all_its_runs(monkeypatch, tmp_path: Path):
    """Every run's schedule needs the image count: the block counts once, not once per run."""
    listed = []
    monkeypatch.setattr(toolkit, "list_images", lambda data: listed.append(data) or range(1280))
    monkeypatch.setattr(toolkit, "store_path", lambda setting, scheme, k: Path(f"/stores/{scheme}-k{k}"))
    block = toolkit.Block(common.LabelSetting(128, 32), Path("/data"), Path("/test"), tmp_path, 128, 1)
    runs = [Run("fkd", "full", 10, n, seed) for n in (1, 4) for seed in (0, 1)]
    assert toolkit.to_train(runs, block) == runs  # nothing cached, no ledger: all to train
    plans = [toolkit.command(run, block).plan for run in runs]
    assert listed == [Path("/data")]
    assert [(p.images_per_step, p.epochs, p.steps) for p in plans] == [(128, 8, 80)] * 2 + [(32, 2, 80)] * 2
