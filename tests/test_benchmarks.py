"""The benchmark harness: the official-FKD file format, subsets, equal-work schedules, claims and
the README renderer (benchmarks/). The benchmarks themselves are timed runs, not tests."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common, report
from benchmarks.accuracy.bench_accuracy import claims
from benchmarks.accuracy.toolkit import ABLATION_CROPS, Run, schedule
from benchmarks.fkd_official import official_coords, official_labels, read_official, write_official
from fkd.data.crops import boxes_to_fixed
from fkd.payload import quantize
from fkd.payload.schemes import SCHEMES

from conftest import make_image_folder


@pytest.fixture
def payloads() -> dict[str, quantize.Payload]:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=6).astype(np.float32)
    return {scheme: quantize.encode(probs, scheme, 5) for scheme in SCHEMES}


def test_official_labels_have_label_quantizations_layout(payloads):
    hard = official_labels("hardening", payloads["hardening"].indices, None)
    assert hard.dtype == np.int64 and hard.shape == (6,)
    np.testing.assert_array_equal(hard, payloads["hardening"].indices[:, 0])
    smooth = official_labels("smoothing", payloads["smoothing"].indices, payloads["smoothing"].values)
    assert smooth.dtype == np.float32 and smooth.shape == (6, 2)
    np.testing.assert_array_equal(smooth[:, 0], payloads["smoothing"].indices[:, 0])
    np.testing.assert_array_equal(smooth[:, 1], payloads["smoothing"].values[:, 0].astype(np.float32))
    marginal = official_labels("marginal-renorm", payloads["marginal-renorm"].indices, payloads["marginal-renorm"].values)
    assert marginal.dtype == np.float32 and marginal.shape == (6, 2, 5)
    np.testing.assert_array_equal(marginal[:, 0], payloads["marginal-renorm"].indices)
    full = official_labels("full", None, payloads["full"].values)
    assert full.dtype == np.float32 and full.shape == (6, 10)


def test_official_file_round_trip(tmp_path: Path, payloads):
    coords = np.array([[0.1, 0.2, 0.5, 0.25]] * 6, dtype=np.float32)
    flips = np.array([True, False] * 3)
    labels = official_labels("marginal-smoothing", payloads["marginal-smoothing"].indices, payloads["marginal-smoothing"].values)
    size = write_official(tmp_path / "a" / "img.tar", coords, flips, labels)
    assert size == (tmp_path / "a" / "img.tar").stat().st_size
    got = read_official(tmp_path / "a" / "img.tar")
    for want, have in zip((coords, flips, labels), got):
        assert have.dtype == want.dtype
        np.testing.assert_array_equal(have, want)


def test_official_coords_are_fractions_of_the_image():
    fixed = boxes_to_fixed(np.array([[10, 20, 100, 200]]), 375, 500)
    np.testing.assert_allclose(official_coords(fixed, 375, 500), [[10 / 375, 20 / 500, 100 / 375, 200 / 500]], rtol=1e-6)


def test_balanced_subset_is_deterministic_and_balanced(tmp_path: Path, monkeypatch):
    source = make_image_folder(tmp_path / "cifar10" / "train", classes=3, per_class=5)
    monkeypatch.setattr(common, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(common, "cifar10_root", lambda: source.parent)

    def listing(seed: int) -> list[str]:
        root = common.balanced_subset("train", 2, seed)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))

    first = listing(0)
    assert [name.split("/")[0] for name in first] == ["c0", "c0", "c1", "c1", "c2", "c2"]
    assert listing(0) == first
    assert listing(1) != first
    with pytest.raises(ValueError, match="has 5 images, 6 asked for"):
        common.balanced_subset("train", 6, 0)


@pytest.mark.parametrize("images", [1280, 5120])
def test_every_crops_per_image_gets_the_same_steps_and_crops_per_step(images):
    plans = {n: schedule(n, 128, 2, images) for n in ABLATION_CROPS}
    assert {p.steps for p in plans.values()} == {images // 128 * 2 * 8}
    assert {n * p.images_per_step for n, p in plans.items()} == {128}
    assert plans[8].epochs == 2 and plans[1].epochs == 16


def test_run_names():
    assert Run("fkd", "marginal-renorm", 5, 4, 0).name == "fkd-marginal-renorm-k5-n4"
    assert Run("fkd", "hardening", 1, 8, 1).name == "fkd-hardening-n8"
    assert Run("online-kd", None, 0, 4, 0).name == "online-kd-n4"


def test_claims_verdicts():
    def row(name: str, mode: str, scheme: "str | None", top1: float) -> dict:
        return {"name": name, "mode": mode, "scheme": scheme, "top1_mean": top1}

    main = [
        row("supervised-n4", "supervised", None, 60.0), row("online-kd-n4", "online-kd", None, 70.0),
        row("fkd-hardening-n4", "fkd", "hardening", 66.0), row("fkd-marginal-smoothing-k5-n4", "fkd", "marginal-smoothing", 69.6),
        row("fkd-marginal-renorm-k5-n4", "fkd", "marginal-renorm", 65.0), row("fkd-full-n4", "fkd", "full", 69.4),
    ]
    verdicts = claims(main, teacher=71.5)
    assert [c["holds"] for c in verdicts] == [True, False, True, False, True]
    assert verdicts[0]["measured"] == "best FKD (fkd-marginal-smoothing-k5-n4) 69.60 vs online-kd 70.00: -0.40 points"
    assert verdicts[1]["measured"] == "fkd-full 69.40 vs online-kd 70.00: -0.60 points"
    assert verdicts[4]["measured"] == "best student (online-kd-n4) 70.00 vs teacher 71.50: -1.50 points"


def test_markdown_table_formats_and_marks_missing_values():
    rows = [{"a": "x", "b": 1.234, "c": None}, {"a": "y", "b": float("nan"), "c": 3}]
    assert common.markdown_table(rows, [("a", "A", ""), ("b", "B", ".1f"), ("c", "C", "d")]) == (
        "| A | B | C |\n|---|---:|---:|\n| x | 1.2 | - |\n| y | - | 3 |"
    )


def test_result_paths_keep_quick_and_full_apart():
    assert common.result_path("/b/speed/reader.py", True) == Path("/b/speed/reader-quick.json")
    assert common.result_path("/b/speed/bench_labelgen.py", False, "labelgen") == Path("/b/speed/labelgen.json")
    assert common.result_path("/b/storage/bench_storage.py", True, "storage", ".png") == Path("/b/storage/storage-quick.png")


def test_accuracy_blocks_import_the_toolkit_not_the_entry_point_that_runs_them():
    """bench_accuracy.py dispatches to the --scale, --vit and --fd blocks: a block (or the toolkit)
    that imported it back would close an import circle."""
    imports = {}
    for path in (Path(common.__file__).parent / "accuracy").glob("*.py"):
        tree = ast.parse(path.read_text())
        imports[path.stem] = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "benchmarks.accuracy.toolkit" in imports["bench_scale"] & imports["bench_vit"] & imports["bench_fd"] & imports["bench_accuracy"]
    assert not any("benchmarks.accuracy.bench_accuracy" in found for found in imports.values())
    assert not {m for m in imports["toolkit"] if m.startswith("benchmarks.accuracy")}


def test_report_marks_missing_results_and_is_idempotent(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(report, "BENCH_DIR", tmp_path)
    text = "".join(f"intro\n<!-- {name}:begin -->\nold figures\n<!-- {name}:end -->\n" for name in report.BLOCKS)
    rendered = report.render(text)
    assert "old figures" not in rendered
    assert "_Not run yet: no storage/bench_storage-quick.json._" in rendered
    assert "_Not run yet: no speed/labelgen.json._" in rendered
    assert report.render(rendered) == rendered
    with pytest.raises(SystemExit, match="lacks the markers <!-- run-times:begin -->"):
        report.render("no markers here")


# The ViT block (bench_vit.py) and the ViT rows of the training-speed benchmark -------------------

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402

from benchmarks.accuracy import bench_vit, toolkit  # noqa: E402
from benchmarks.speed import bench_train_speed  # noqa: E402


class _Stop(Exception):
    pass


def _argvs(monkeypatch, tmp_path: Path, runs: list, images: int) -> dict[str, list[str]]:
    """What train() would run for each run (without the script path), stopped before it runs."""
    captured: dict[str, list[str]] = {}

    def capture(argv, log, env=None):
        captured[Path(argv[argv.index("--output") + 1]).name] = list(argv[1:])
        raise _Stop

    monkeypatch.setattr(toolkit, "run_logged", capture)
    monkeypatch.setattr(toolkit, "converted_store", lambda setting, scheme, k: Path(f"/stores/{scheme}-k{k}"))
    monkeypatch.setattr(toolkit, "list_images", lambda data: range(images))
    args = argparse.Namespace(samples_per_step=128, epoch_unit=1, threads=1)
    for run in runs:
        with pytest.raises(_Stop):
            toolkit.train(run, args, common.LabelSetting(128, 32), Path("/data"), Path("/test"), tmp_path)
    return captured


def test_cnn_runs_keep_their_argv_and_vit_rows_add_their_flags(monkeypatch, tmp_path: Path):
    """Finished runs are cached by argv: the CNN runs' argv must not move when the ViT block's
    options are added; the ViT rows get their recipe, flags, distillation options and epochs."""
    recipe = str(toolkit.RECIPE)
    vit_runs = [run for run, _, _ in bench_vit.vit_rows("/stores/full", 1)]
    argv = _argvs(monkeypatch, tmp_path, [Run("online-kd", None, 0, 4, 1), Run("fkd", "full", 10, 2, 0, gt_weight=0.3), *vit_runs], 1280)
    head = ["--data", "/data", "--val-data", "/test", "--output"]
    assert argv["online-kd-n4-seed1"] == ["-c", recipe, "--mode", "online-kd", *head, str(tmp_path / "online-kd-n4-seed1"), "--seed", "1",
                                          "--epochs", "2", "--batch-size", "32", "--crops-per-image", "4",
                                          "--teacher-module", "fkd.zoo.keras_cifar10:create_model", "--kd-alpha", "1.0"]
    assert argv["fkd-full-gt0.3-n2-seed0"] == ["-c", recipe, "--mode", "fkd", *head, str(tmp_path / "fkd-full-gt0.3-n2-seed0"), "--seed", "0",
                                               "--epochs", "4", "--batch-size", "64", "--crops-per-image", "2",
                                               "--store", "/stores/full-k10", "--stored-crops", "cycle", "--gt-weight", "0.3"]
    assert [run.name for run in vit_runs] == [
        "supervised-n4", "online-kd-soft-n4", "online-kd-hard-n4", "online-kd-n4", "online-kd-ra-n4", "fkd-marginal-smoothing-k5-n4",
        "fkd-full-n4", "fkd-full-ra-n4", "fkd-hardening-gt0.5-n4", "deit-full-hard-n4", "deit-full-soft-n4"]
    shared = ["--epochs", "1", "--batch-size", "32", "--crops-per-image", "4", "--model-kwargs", *bench_vit.MODEL_KWARGS, *bench_vit.FLAGS,
              "--warmup-epochs", "0.1"]
    deit_hard = argv["deit-full-hard-n4-seed0"]
    assert deit_hard[:4] == ["-c", str(bench_vit.DEIT_RECIPE), "--mode", "deit"]
    assert deit_hard[12:12 + len(shared)] == shared
    assert deit_hard[12 + len(shared):] == ["--kd", "hard", "--kd-alpha", "0.5", "--store", "/stores/full-k10", "--stored-crops", "cycle"]
    soft = argv["online-kd-soft-n4-seed0"]
    assert soft[1] == str(bench_vit.VIT_RECIPE) and soft[12:12 + len(shared)] == shared
    assert soft[12 + len(shared):] == ["--store", "/stores/full", "--teacher-module", "fkd.zoo.keras_cifar10:create_model",
                                       "--kd", "soft", "--kd-tau", "3", "--kd-alpha", "0.1"]
    assert argv["fkd-hardening-gt0.5-n4-seed0"][-6:] == ["--store", "/stores/hardening-k1", "--stored-crops", "cycle", "--gt-weight", "0.5"]
    pure = argv["online-kd-n4-seed0"]  # fkd full's objective with the teacher in the loop
    assert pure[12 + len(shared):] == ["--store", "/stores/full", "--teacher-module", "fkd.zoo.keras_cifar10:create_model", "--kd-alpha", "1.0"]
    assert argv["fkd-full-n4-seed0"][12 + len(shared):] == ["--store", "/stores/full-k10", "--stored-crops", "cycle"]
    ra = ["--randaugment", "rand-n2-m15-mmax15"]  # the -ra rows: the same argv plus AugReg medium1's RandAugment
    assert argv["fkd-full-ra-n4-seed0"][12 + len(shared):] == [*ra, "--store", "/stores/full-k10", "--stored-crops", "cycle"]
    assert argv["online-kd-ra-n4-seed0"][12 + len(shared):] == ["--store", "/stores/full", *ra, *pure[14 + len(shared):]]


def test_a_finished_run_is_reused_only_while_its_recipe_is_unchanged(monkeypatch, tmp_path: Path):
    """The cache key is the argv, which names the recipe by path: an edited recipe must rerun."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("lr: 0.1\n")
    run = Run("fkd", "full", 10, 4, 0, recipe=recipe)
    argv = ["fkd-train", *_argvs(monkeypatch, tmp_path, [run], 1280)["fkd-full-n4-seed0"]]
    done = tmp_path / "fkd-full-n4-seed0" / "benchmark.json"
    args = argparse.Namespace(samples_per_step=128, epoch_unit=1, threads=1)
    monkeypatch.setattr(toolkit, "script", lambda name: name)

    def reused(record: dict) -> bool:
        done.parent.mkdir(exist_ok=True)
        done.write_text(json.dumps({"argv": argv, "result": {"top1": 50.0}, **record}))
        try:
            return toolkit.train(run, args, common.LabelSetting(128, 32), Path("/data"), Path("/test"), tmp_path)["reused"]
        except _Stop:  # run_logged was called: the run would be trained again
            return False

    assert reused({"recipe_sha256": hashlib.sha256(b"lr: 0.1\n").hexdigest()})
    assert reused({})  # written before the hash was kept: its argv is all there is to go by
    recipe.write_text("lr: 0.2\n")
    assert not reused({"recipe_sha256": hashlib.sha256(b"lr: 0.1\n").hexdigest()})


def _vit_row(name: str, top1: float, std: "float | None") -> dict:
    return {"name": name, "top1_mean": top1, "top1_std": std}


def test_vit_claims_read_deit_claims_with_their_seed_spread():
    rows = [_vit_row("deit-full-hard-n4", 40.0, 0.3), _vit_row("deit-full-soft-n4", 39.0, 0.4), _vit_row("online-kd-hard-n4", 38.0, 1.0),
            _vit_row("online-kd-soft-n4", 38.5, 0.0), _vit_row("fkd-hardening-gt0.5-n4", 39.8, 0.2), _vit_row("fkd-full-n4", 37.6, 0.3),
            _vit_row("online-kd-n4", 38.0, 0.4), _vit_row("fkd-full-ra-n4", 33.0, 0.3), _vit_row("online-kd-ra-n4", 38.2, 0.4)]
    claims = bench_vit.vit_claims(rows)
    assert [(c["holds"], c["clear"]) for c in claims] == [(True, True), (False, False), (True, False), (True, False), (True, True), (False, False)]
    assert claims[4]["measured"] == "fkd-full-n4 37.60 vs fkd-full-ra-n4 33.00: +4.60 points, seed spread 0.42"
    assert claims[3]["measured"] == "fkd-full-n4 37.60 vs online-kd-n4 38.00: -0.40 points, seed spread 0.50"
    worse = bench_vit.vit_claims([{**r, "top1_mean": 37.4} if r["name"] == "fkd-full-n4" else r for r in rows])[3]
    assert (worse["holds"], worse["clear"]) == (False, True)  # 0.6 under: beyond the 0.5-point tolerance and the spread
    assert claims[0]["measured"] == "deit-full-hard-n4 40.00 vs deit-full-soft-n4 39.00: +1.00 points, seed spread 0.50"
    assert claims[1]["measured"] == "online-kd-hard-n4 38.00 vs online-kd-soft-n4 38.50: -0.50 points, seed spread 1.00"
    assert bench_vit.verdict(claims[0]) == (
        "- DeiT claim 1: hard distillation beats soft with a convnet teacher (distillation token, stored labels): **holds**, "
        "beyond the seed spread (deit-full-hard-n4 40.00 vs deit-full-soft-n4 39.00: +1.00 points, seed spread 0.50)")
    one_seed = bench_vit.vit_claims([{**r, "top1_std": None} for r in rows])
    assert [(c["holds"], c["clear"], c["spread"]) for c in one_seed] == [(True, False, None), (False, False, None), (True, False, None),
                                                                         (True, False, None), (True, False, None), (False, False, None)]
    assert bench_vit.verdict(one_seed[2]) == (
        "- DeiT claim 2: the distillation token helps (the same hard objective and stored labels, with vs without the token): **holds**, "
        "no seed spread (one seed) (deit-full-hard-n4 40.00 vs fkd-hardening-gt0.5-n4 39.80: +0.20 points)")


def test_report_renders_the_vit_block(tmp_path: Path, monkeypatch):
    machine = {"cpu": "CPU", "cores": 2, "memory_gib": 8.0, "gpu": None, "python": "3.11", "torch": "2", "date": "today",
               "load_average_at_start": [1.0, 1.0, 1.0], "load_average_at_end": [2.0, 2.0, 2.0]}
    rows = [{**_vit_row(name, top1, 0.5), "student": "ViT", "targets": "t", "seeds": 2, "steps": 313, "vs_supervised": top1 - 30.0,
             "wall_seconds": 100.0, "train_samples_per_s": 250.0}
            for name, top1 in (("supervised-n4", 30.0), ("online-kd-soft-n4", 31.0), ("online-kd-hard-n4", 32.5), ("deit-full-hard-n4", 33.0),
                               ("deit-full-soft-n4", 31.25), ("fkd-hardening-gt0.5-n4", 33.5), ("online-kd-n4", 30.5), ("fkd-full-n4", 29.5),
                               ("online-kd-ra-n4", 31.0), ("fkd-full-ra-n4", 25.0))]
    result = {"command": "cmd", "machine": machine, "wall_seconds": 1500.0, "teacher_top1": 76.57, "rows": rows,
              "claims": bench_vit.vit_claims(rows),
              "setting": {"model_kwargs": ["depth=4"], "recipes": ["a.yaml", "b.yaml"], "train_images": 10000, "store_crops": 32, "test_images": 10000,
                          "seeds": 2, "steps": 313, "images_per_step": 32, "crops_per_image": 4, "epochs": 1, "warmup_fraction": 0.1,
                          "jobs": 2, "threads": 1}}
    (tmp_path / "accuracy").mkdir()
    (tmp_path / "accuracy" / "accuracy-vit.json").write_text(json.dumps(result))
    monkeypatch.setattr(report, "BENCH_DIR", tmp_path)
    text = report.block("accuracy-vit", *report.BLOCKS["accuracy-vit"])
    assert "#### Quick setting" not in text  # a full-setting-only block
    assert "313 optimizer steps of 32 images x 4 crops (1 epoch(s), warm-up 10% of it)" in text
    assert "| deit-full-hard-n4 | ViT | t | 2 | 313 | 33.00 | 0.50 | +3.00 | 100 | 250 |" in text
    assert (
        "- DeiT claim 2: the distillation token helps (the same hard objective and stored labels, with vs without the token): "
        "**does not hold**, within the seed spread (deit-full-hard-n4 33.00 vs fkd-hardening-gt0.5-n4 33.50: -0.50 points, seed spread 0.71)\n"
    ) in text
    assert (
        "- FKD: stored labels reach the teacher in the loop within 0.5 points (the same objective: KL at tau 1 only): **does not hold**, "
        "beyond the seed spread (fkd-full-n4 29.50 vs online-kd-n4 30.50: -1.00 points, seed spread 0.71)\n"
    ) in text
    assert text.endswith(
        "- RandAugment (medium1) costs online KD: online-kd without it beats online-kd with it: **does not hold**, "
        "within the seed spread (online-kd-n4 30.50 vs online-kd-ra-n4 31.00: -0.50 points, seed spread 0.71)")
    assert "hard distillation beats soft with a convnet teacher (class token only, teacher in the loop): **holds**, beyond the seed spread" in text


def test_train_speed_ratios_are_per_student():
    rows = [{"student": student, "mode": mode, "samples_per_s": value}
            for student, values in (("cnn", (100.0, 4.0, 96.0)), ("vit", (30.0, 3.0, 27.0)))
            for mode, value in zip(("supervised", "online-kd", "fkd"), values)]
    bench_train_speed.add_ratios(rows)
    assert [(r["vs_online_kd"], r["vs_supervised"]) for r in rows] == [(25.0, 1.0), (1.0, 0.04), (24.0, 0.96), (10.0, 1.0), (1.0, 0.1), (9.0, 0.9)]
    assert bench_train_speed.STUDENTS[1].label == "vit_tiny_patch16_224 (img_size=32, patch_size=4) @ 32px"


def test_report_shows_one_train_speed_headline_per_student():
    machine = {"cpu": "CPU", "cores": 2, "memory_gib": 8.0, "gpu": None, "python": "3.11", "torch": "2", "date": "today",
               "load_average_at_start": [1.0, 1.0, 1.0], "load_average_at_end": [2.0, 2.0, 2.0]}
    setting = {"student": "cnn; vit", "teacher": "t", "images": 160, "batch_size": 16, "crops_per_image": 2, "epochs": 2, "workers": 1}
    rows = [{"student": "vit", "mode": "fkd", "samples_per_s": 27.0, "images_per_s": 13.5, "vs_online_kd": 9.0, "vs_supervised": 0.9, "wall_seconds": 5.0}]
    result = {"command": "cmd", "machine": machine, "wall_seconds": 1.0, "setting": setting, "rows": rows, "quoted": [],
              "fkd_over_online_kd_per_student": {"cnn": 24.0, "vit": 9.0}}
    text = report.train_speed(result, "")
    assert "| vit | fkd | 27.0 | 13.5 | 9.0 | 0.90 | 5 |" in text
    assert ("**Headline, cnn: fkd / online-kd = 24.0x training samples/s.**  \n"
            "**Headline, vit: fkd / online-kd = 9.0x training samples/s.**\n") in text
    legacy = {**result, "setting": {**setting, "student": "cnn"}, "rows": [{k: v for k, v in rows[0].items() if k != "student"}],
              "fkd_over_online_kd": 24.0}
    del legacy["fkd_over_online_kd_per_student"]
    legacy_text = report.train_speed(legacy, "")  # a result written before the ViT rows
    assert "| cnn | fkd | 27.0 |" in legacy_text and "**Headline, cnn: fkd / online-kd = 24.0x training samples/s.**\n" in legacy_text


from benchmarks.accuracy import bench_fd  # noqa: E402


def test_fd_rows_share_steps_and_differ_only_in_their_targets(monkeypatch, tmp_path: Path):
    """The FD block's five rows: the same schedule; the embedding and online-FD rows the same
    loss, projector and ground-truth weight; only label rows read the label store."""
    runs = [run for run, _ in bench_fd.fd_rows("/emb", 2)]
    assert [run.name for run in runs] == ["supervised-n4", "fkd-labels-n4", "fkd-embedding-gt0.3-n4", "fkd-labels+embedding-n4", "online-fd-gt0.3-n4"]
    argv = _argvs(monkeypatch, tmp_path, runs, 2560)
    head = ["--epochs", "2", "--batch-size", "32", "--crops-per-image", "4"]
    embed = ["--embed-loss", "smooth-l1", "--projector", "linear"]
    labels = ["--store", "/stores/marginal-smoothing-k5", "--stored-crops", "cycle"]
    assert all(a[:4] == ["-c", str(toolkit.RECIPE), "--mode", run.mode] and a[12:18] == head for run, a in zip(runs, argv.values()))
    assert argv["supervised-n4-seed0"][18:] == []
    assert argv["fkd-labels-n4-seed0"][18:] == labels
    assert argv["fkd-embedding-gt0.3-n4-seed0"][18:] == ["--embed-store", "/emb", *embed, "--gt-weight", "0.3"]
    assert argv["fkd-labels+embedding-n4-seed0"][18:] == ["--embed-store", "/emb", *embed, *labels]
    assert argv["online-fd-gt0.3-n4-seed0"][18:] == ["--teacher-module", "fkd.zoo.keras_cifar10:create_model", "--embedding-from", "dense_1_relu",
                                                     *embed, "--gt-weight", "0.3"]


def test_report_renders_the_fd_block(tmp_path: Path, monkeypatch):
    machine = {"cpu": "CPU", "cores": 2, "memory_gib": 8.0, "gpu": None, "python": "3.11", "torch": "2", "date": "today",
               "load_average_at_start": [1.0, 1.0, 1.0], "load_average_at_end": [2.0, 2.0, 2.0]}
    rows = [{"name": name, "mode": mode, "scheme": scheme, "targets": "t", "seeds": 2, "steps": 160, "top1_mean": top1, "top1_std": 0.5,
             "vs_supervised": top1 - 30.0, "wall_seconds": 100.0, "train_samples_per_s": speed}
            for name, mode, scheme, top1, speed in (("supervised-n4", "supervised", None, 30.0, 800.0), ("fkd-labels-n4", "fkd", "ms", 33.0, 800.0),
                                                    ("fkd-embedding-gt0.3-n4", "fkd", None, 32.0, 700.0),
                                                    ("fkd-labels+embedding-n4", "fkd", "ms", 34.0, 600.0), ("online-fd-gt0.3-n4", "online-fd", None, 32.5, 200.0))]
    bench_fd.stored_bytes(rows, 30.0, 290.0)
    assert [r["stored_bytes_per_crop"] for r in rows] == [None, 30.0, 290.0, 320.0, None]
    assert [r["speed_vs_online_fd"] for r in rows] == [4.0, 4.0, 3.5, 3.0, 1.0]
    stores = [{"store": "labels", "bytes_per_crop": 30.0, "labelgen_seconds": 120.0, "source": "this run's store"},
              {"store": "embedding int8", "bytes_per_crop": 185.7, "labelgen_seconds": None, "source": "storage/embedding.json"}]
    result = {"command": "cmd", "machine": machine, "wall_seconds": 1500.0, "teacher_top1_reference": 76.57, "rows": rows, "stores": stores,
              "setting": {"train_images": 2560, "test_images": 10000, "store_crops": 8, "seeds": 2, "steps": 160, "images_per_step": 32,
                          "crops_per_image": 4, "epochs": 2, "layer": "dense_1_relu", "embed_flags": ["--embed-loss", "smooth-l1"],
                          "recipe": "configs/bench-cifar10.yaml", "jobs": 2, "threads": 1}}
    (tmp_path / "accuracy").mkdir()
    (tmp_path / "accuracy" / "accuracy-fd.json").write_text(json.dumps(result))
    monkeypatch.setattr(report, "BENCH_DIR", tmp_path)
    text = report.block("accuracy-fd", *report.BLOCKS["accuracy-fd"])
    assert text.startswith("Command: `cmd`") and "#### Quick setting" not in text
    assert "160 optimizer steps of 32 images x 4 crops (2 epochs)" in text
    assert "| fkd-labels+embedding-n4 | t | 2 | 160 | 34.00 | 0.50 | +4.00 | 320.0 | 100 | 600 | 3.00 |" in text
    assert "| supervised-n4 | t | 2 | 160 | 30.00 | 0.50 | +0.00 | - | 100 | 800 | 4.00 |" in text
    assert text.endswith("| embedding int8 | 185.7 | - | storage/embedding.json |")
