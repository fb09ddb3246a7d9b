"""fkd-train's --output: a folder holding another run (other settings) is refused unless --overwrite,
which replaces that run's files and nothing else; re-running the same command and --resume auto go
on as before; a label store is never an output. args.yaml records the values the run took from the
store and the model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from fkd.store import Manifest
from train.cli import main

from conftest import TinyData, make_image_folder, read_summary, train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fkd-train: error: ")
    return err.removeprefix("fkd-train: error: ").rstrip("\n")


@pytest.fixture
def finished(tiny: TinyData, tmp_path: Path) -> Path:
    """A finished 2-epoch run: args.yaml, summary.csv, log.jsonl, last.pth, best.pth, checkpoint-0001/0002.pth."""
    out = tmp_path / "out"
    assert main(train_args(tiny, out)) == 0
    return out


def test_a_folder_holding_another_run_is_refused_and_left_as_it_was(
    tiny: TinyData, finished: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(finished)
    message = one_line_error(capsys, train_args(tiny, finished, "--epochs", "1", "--lr", "0.1"))
    assert message == (f"--output {finished} holds another run (epochs 2 there, 1 now; lr 0.05 there, 0.1 now): choose another --output, "
                       "continue that run with --resume auto, or pass --overwrite to replace it")
    assert snapshot(finished) == before


def test_the_same_command_again_and_resume_auto_still_run(tiny: TinyData, finished: Path) -> None:
    assert main(train_args(tiny, finished, "--workers", "1")) == 0  # the same run (workers change nothing it computes): restarted
    assert [r["epoch"] for r in read_summary(finished)] == ["1", "2"]
    assert main(train_args(tiny, finished, "--epochs", "3", "--resume", "auto")) == 0  # continues it, with other settings if asked
    assert [r["epoch"] for r in read_summary(finished)] == ["1", "2", "3"]


def test_overwrite_replaces_the_other_runs_files(tiny: TinyData, finished: Path) -> None:
    assert main(train_args(tiny, finished, "--epochs", "1", "--lr", "0.1", "--overwrite")) == 0
    assert sorted(p.name for p in finished.iterdir()) == ["args.yaml", "best.pth", "checkpoint-0001.pth", "last.pth", "log.jsonl", "summary.csv"]
    assert yaml.safe_load((finished / "args.yaml").read_text())["lr"] == 0.1
    assert [r["epoch"] for r in read_summary(finished)] == ["1"]


def test_overwrite_refuses_folders_with_files_it_did_not_write_and_a_resumed_run(
    tiny: TinyData, finished: Path, capsys: pytest.CaptureFixture
) -> None:
    (finished / "notes.txt").write_text("mine")
    before = snapshot(finished)
    message = one_line_error(capsys, train_args(tiny, finished, "--lr", "0.1", "--overwrite"))
    assert message == (f"--overwrite replaces the run in --output {finished}, but the folder also holds files fkd-train does not write "
                       "('notes.txt'): move them away or choose another --output")
    message = one_line_error(capsys, train_args(tiny, finished, "--overwrite", "--resume", "auto"))
    assert message == (f"--overwrite would delete the run that --resume continues ({finished / 'last.pth'}): drop one of the two")
    assert snapshot(finished) == before


def test_a_label_store_is_never_an_output(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny.store, store)
    before = snapshot(store)
    for extra in ((), ("--overwrite",)):
        message = one_line_error(capsys, train_args(tiny, store, *extra))
        assert message == f"--output {store} holds a label store (store.json, shard-00000.h5, ...): write the run to another folder"
    assert snapshot(store) == before


def test_args_yaml_records_the_values_taken_from_the_store_and_the_model(tiny: TinyData, tmp_path: Path) -> None:
    """test_resnet's data config: bilinear, crop_pct 0.95, mean and std 0.5; the tiny store: bicubic
    crops, scale (0.08, 1), 3 classes."""
    out = tmp_path / "fkd"
    assert main(train_args(tiny, out, "--epochs", "1")) == 0
    text = (out / "args.yaml").read_text()
    saved = yaml.safe_load(text)
    resolved = {"input_size": 32, "crop_pct": 0.95, "crop_scale": [0.08, 1.0], "num_classes": 3,
                "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert {k: saved[k] for k in resolved} == resolved
    # Crops use the store's filter, validation the model's: one --interpolation cannot say both, so it stays null and says why.
    assert saved["interpolation"] is None
    assert text.endswith("# interpolation null: bicubic for the training crops (the store's), bilinear for validation "
                         "(the model's); --interpolation sets both\n")
    store = tmp_path / "store"
    shutil.copytree(tiny.store, store)
    manifest = Manifest.load(store)
    manifest.meta.interpolation = "bilinear"
    manifest.save(store)
    argv = train_args(tiny, tmp_path / "bilinear", "--epochs", "1")
    argv[argv.index("--store") + 1] = str(store)
    assert main(argv) == 0
    assert yaml.safe_load((tmp_path / "bilinear" / "args.yaml").read_text())["interpolation"] == "bilinear"
    # Re-run from the record: the same run, so the folder is accepted and the same values are recorded.
    assert main(["-c", str(out / "args.yaml")]) == 0
    again = yaml.safe_load((out / "args.yaml").read_text())
    assert again == {**saved, "config": str(out / "args.yaml")}


def test_supervised_records_the_crop_scale_it_drew_with(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "train", classes=2, per_class=2, size=(36, 40))
    out = tmp_path / "out"
    argv = ["--mode", "supervised", "--data", str(data), "--model", "test_resnet", "--epochs", "1", "--batch-size", "4",
            "--crops-per-image", "1", "--workers", "0", "--no-progress", "--output", str(out)]
    assert main(argv) == 0
    saved = yaml.safe_load((out / "args.yaml").read_text())
    assert (saved["crop_scale"], saved["interpolation"], saved["input_size"], saved["num_classes"]) == ([0.08, 1.0], "bilinear", 160, 2)
