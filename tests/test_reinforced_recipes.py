"""The reinforced recipes: each parses with its tool; the labelgen ones make the augmentation their
headers source, and the train ones leave it to the store (no batch mixing, no per-crop augmentation)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fkd.config import parse_args_with_config
from fkd.store import ViewSpec
from labelgen import cli as labelgen_cli
from train import cli as train_cli
from train.aug_levels import apply_aug_level
from train.config import TrainConfig
from train.options import check_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name, spec", [
    ("labelgen-cifar10-reinforced.yaml", ViewSpec(randaugment="rand-n2-m15-mmax15", mixup=0.2)),
    ("labelgen-imagenet-regnety160-reinforced.yaml",
     ViewSpec(randaugment="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1, mixup=0.8, cutmix=1.0)),
])
def test_labelgen_recipes_store_their_augmentation(name, spec):
    def parsed(recipe: str):
        parser = labelgen_cli.build_parser()  # a recipe sets the parser's defaults: one parser each
        return labelgen_cli.config_from_args(parse_args_with_config(parser, ["-c", str(CONFIGS / recipe), "--data", "D", "--out", "S"]), parser)

    config, plain = parsed(name), parsed(name.replace("-reinforced", ""))
    assert config.labels.views == spec
    assert replace(config.labels, views=None) == plain.labels and config.teacher == plain.teacher  # the plain recipe's store, augmented


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("train-*-reinforced.yaml")))
def test_train_recipes_leave_the_augmentation_to_the_store(name):
    args = parse_args_with_config(train_cli.build_parser(), ["-c", str(CONFIGS / name)])
    config = TrainConfig.from_namespace(args)
    augment = apply_aug_level(config.augment)
    check_config(replace(config, augment=augment))
    assert (augment.mixup, augment.cutmix, augment.randaugment, augment.color_jitter, augment.reprob) == (0.0, 0.0, None, 0.0, 0.0)
    assert config.data.store.endswith("-reinforced") or config.data.store.endswith("-reinforced-full")
    plain = TrainConfig.from_namespace(parse_args_with_config(train_cli.build_parser(), ["-c", str(CONFIGS / name.replace("-reinforced", ""))]))
    assert (config.model.model, config.optim, config.distill) == (plain.model.model, plain.optim, plain.distill)
