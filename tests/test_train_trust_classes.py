"""fkd-train's class spaces: --val-data is matched to the training classes by folder name (a folder
of some of the classes is scored against the right ones), --class-map applies to it as to --data,
and class folders that cannot be matched are named, in --data and in --val-data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import train.run
from fkd.store import Manifest
from train.cli import main

from conftest import TinyData, make_image_folder, train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def some_classes(src: Path, dst: Path, names: list[str]) -> Path:
    """A validation folder holding only the class folders ``names`` of ``src`` (renamed as given: 'src:dst')."""
    for name in names:
        old, _, new = name.partition(":")
        shutil.copytree(src / old, dst / (new or old))
    return dst


@pytest.fixture
def val_labels(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The labels of every validation listing the run evaluates on."""
    seen: list[list[int]] = []
    real = train.run.EvalDataset

    class Recording(real):
        def __init__(self, images, *args, **kwargs):
            seen.append(images.labels.tolist())
            super().__init__(images, *args, **kwargs)

    monkeypatch.setattr(train.run, "EvalDataset", Recording)
    return seen


def with_val(argv: list[str], val: Path) -> list[str]:
    argv[argv.index("--val-data") + 1] = str(val)
    return argv


def without_store(argv: list[str]) -> list[str]:
    at = argv.index("--store")
    return argv[:at] + argv[at + 2 :]


@pytest.mark.parametrize("mode", ["fkd", "supervised"])
def test_a_validation_folder_of_some_classes_is_scored_against_those_classes(
    tiny: TinyData, tmp_path: Path, val_labels: list[list[int]], mode: str
) -> None:
    """c1 and c2 only: their images are classes 1 and 2 of the store (fkd) or of --data (supervised),
    not 0 and 1 as their own folder order would number them."""
    val = some_classes(tiny.val, tmp_path / "val", ["c1", "c2"])
    argv = with_val(train_args(tiny, tmp_path / "out", "--epochs", "1", "--mode", mode), val)
    assert main(argv if mode == "fkd" else without_store(argv)) == 0
    assert val_labels == [[1, 1, 2, 2]]


@pytest.mark.parametrize("mode", ["fkd", "supervised"])
def test_validation_folders_that_are_no_training_class_are_refused_by_name(
    tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture, mode: str
) -> None:
    val = some_classes(tiny.val, tmp_path / "val", ["c1", "c2:cat", "c0:dog"])
    argv = with_val(train_args(tiny, tmp_path / "out", "--mode", mode), val)
    assert main(argv if mode == "fkd" else without_store(argv)) == 2
    whose = "the store's" if mode == "fkd" else "--data's"
    assert capsys.readouterr().err == (
        f"fkd-train: error: --val-data {val}: class folders 'cat', 'dog' are not among {whose} classes ('c0', 'c1', 'c2'); "
        "name validation folders like the training classes\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_stores_class_map_applies_to_validation_folders_of_some_classes(
    tmp_path: Path, tiny: TinyData, val_labels: list[list[int]], capsys: pytest.CaptureFixture
) -> None:
    """A store labelled with --class-map (data folders c0..c2 -> teacher classes x, y, z) moves the
    validation folders through the map too, by name, whichever of them are there."""
    store = tmp_path / "store"
    shutil.copytree(tiny.store, store)
    manifest = Manifest.load(store)
    manifest.meta.class_names, manifest.meta.class_map = ["x", "y", "z"], {"c0": 0, "c1": 1, "c2": 2}
    manifest.save(store)
    argv = train_args(tiny, tmp_path / "out", "--epochs", "1")
    argv[argv.index("--store") + 1] = str(store)
    assert main(with_val(argv, some_classes(tiny.val, tmp_path / "val", ["c2"]))) == 0
    assert val_labels == [[2, 2]]
    other = some_classes(tiny.val, tmp_path / "teacher-named", ["c1", "c2:z"])
    argv[argv.index("--output") + 1] = str(tmp_path / "refused")
    assert main(with_val(argv, other)) == 2
    assert capsys.readouterr().err.endswith(f"--val-data: the store's class map does not cover the classes z of {other}\n")


def test_an_extra_class_folder_under_data_is_named(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "train"
    shutil.copytree(tiny.train, data)
    make_image_folder(tmp_path / "more", classes=4, per_class=1, size=(36, 40))
    shutil.copytree(tmp_path / "more" / "c3", data / "zebra")
    argv = train_args(tiny, tmp_path / "out")
    argv[argv.index("--data") + 1] = str(data)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fkd-train: error: --data has 4 classes ('c0', 'c1', 'c2' and 1 more) but the store's labels cover 3 "
                          "('c0', 'c1', 'c2'); extra class folder 'zebra': a student would learn one class space")
    assert err.count("\n") == 1
