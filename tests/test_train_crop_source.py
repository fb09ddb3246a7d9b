"""--crop-source store: supervised / online-kd on a label store's crops, replayed exactly as --mode fkd
replays them (the control that separates which crops from which labels), and its refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fkd.config import parse_args_with_config
from fkd.data.multicrop import MultiCropDataset
from fkd.data.plan import RandomCropPlanner, StoreCropPlanner
from train.aug_levels import apply_aug_level
from train.cli import build_parser, main
from train.config import TrainConfig
from train.options import check_config
from train.run_setup import prepare_train_data

from conftest import TinyData, train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ONLINE = ("--mode", "online-kd", "--teacher", "test_resnet", "--no-pretrained", "--teacher-input-size", "32", "--kd-alpha", "1")


def _config(argv: list[str]) -> TrainConfig:
    """The config fkd-train's CLI builds from ``argv`` (--aug-level resolved)."""
    config = TrainConfig.from_namespace(parse_args_with_config(build_parser(), argv))
    return replace(config, augment=apply_aug_level(config.augment))


@pytest.mark.parametrize("order", ["cycle", "random"])
def test_online_kd_on_stored_crops_cuts_the_pixels_fkd_trains_on(tiny: TinyData, tmp_path: Path, order: str) -> None:
    """Same planner, same crops per (epoch, image), same resize filter (the store's): bitwise the same
    uint8 crops as --mode fkd; only the targets differ (the teacher's, made live)."""
    fkd = prepare_train_data(_config(train_args(tiny, tmp_path / "a", "--stored-crops", order)))
    online = prepare_train_data(_config(train_args(tiny, tmp_path / "b", *ONLINE, "--crop-source", "store", "--stored-crops", order)))
    fresh = prepare_train_data(_config(train_args(tiny, tmp_path / "c", *ONLINE)))
    assert isinstance(online.planner, StoreCropPlanner) and online.planner.order == order
    assert isinstance(fresh.planner, RandomCropPlanner)  # the default is unchanged: fresh crops
    assert online.interpolation == fkd.interpolation == "bicubic" and online.crop_scale == fkd.crop_scale  # the tiny store's filter
    datasets = [MultiCropDataset(d.source, d.planner, 32, d.interpolation or "bicubic") for d in (fkd, online, fresh)]
    for epoch in range(3):
        for index in range(len(datasets[0])):
            a, b, c = (ds[(epoch, index)] for ds in datasets)
            assert torch.equal(a.images, b.images) and torch.equal(a.crop_ids, b.crop_ids) and a.label == b.label
            assert not torch.equal(a.images, c.images)


def test_fkd_train_runs_online_kd_on_the_stored_crops(tiny: TinyData, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(train_args(tiny, out, *ONLINE, "--crop-source", "store", "--epochs", "1")) == 0
    recorded = (out / "args.yaml").read_text()
    assert "crop_source: store\n" in recorded and "mode: online-kd\n" in recorded


@pytest.mark.parametrize(("extra", "message"), [
    (["--mode", "fkd", "--crop-source", "store"],
     "--crop-source store has no effect in --mode fkd: it always replays the store's crops; --crop-source is for --mode supervised and online-kd"),
    (["--mode", "online-fd", "--teacher", "t", "--crop-source", "fresh"],
     "--crop-source fresh has no effect in --mode online-fd: it draws fresh crops and reads no store; --crop-source is for --mode "
     "supervised and online-kd"),
    (["--mode", "supervised", "--crop-source", "store"],
     "--crop-source store replays the crops of a label store: give --store (the store --mode fkd would train on)"),
    (["--mode", "supervised", "--store", "S", "--stored-crops", "random"],
     "--stored-crops chooses among stored crops: --mode supervised draws fresh random crops (--crop-source store replays the store's)"),
])
def test_crop_source_combinations_that_make_no_sense_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                                                               message: str) -> None:
    assert main(["--data", str(tmp_path), "--model", "test_resnet", "--output", str(tmp_path / "out"), *extra]) == 2
    assert capsys.readouterr().err == f"fkd-train: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_stored_crop_order_is_accepted_with_replayed_crops(tmp_path: Path) -> None:
    config = _config(["--data", "D", "--store", "S", "--model", "m", "--output", "o", "--mode", "supervised", "--crop-source", "store",
                      "--stored-crops", "random"])
    check_config(config)
    check_config(replace(config, data=replace(config.data, crop_source="fresh", stored_crops="cycle")))
