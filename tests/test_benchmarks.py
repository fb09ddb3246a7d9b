"""The benchmark harness: the official-FKD file format, subsets, equal-work schedules, claims and
the README renderer (benchmarks/). The benchmarks themselves are timed runs, not tests."""

from __future__ import annotations

import ast
import json
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
    blocks = ("bench_scale", "bench_vit", "bench_fd", "bench_accuracy", "bench_full")
    assert all("benchmarks.accuracy.toolkit" in imports[block] for block in blocks)
    assert not any("benchmarks.accuracy.bench_accuracy" in found for found in imports.values())
    # the toolkit's one import of its folder is the ledger, which imports nothing of it back
    assert {m for m in imports["toolkit"] if m.startswith("benchmarks.accuracy")} == {"benchmarks.accuracy.ledger"}
    assert not {m for m in imports["ledger"] if m.startswith("benchmarks.accuracy")}


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


def test_report_shows_the_reinforced_storage_rows_when_the_result_has_them():
    result = json.loads((report.BENCH_DIR / "storage" / "bench_storage.json").read_text())
    result.pop("reinforced", None)
    assert "Reinforced stores" not in report.storage(result, "storage.png")  # a result from before reinforced stores
    row = {"augmentation": "randaugment (format 6)", "flags": "--randaugment rand-m9-mstd0.5", "bytes_per_crop": 19.25,
           "extra_bytes_per_crop": 2.5, "raw_bytes_per_crop": 40.0, "extra_raw_bytes_per_crop": 4.0}
    text = report.storage(result | {"reinforced": [row]}, "storage.png")
    assert "| randaugment (format 6) | --randaugment rand-m9-mstd0.5 | 19.25 | +2.50 | 40.0 | +4.0 |" in text
