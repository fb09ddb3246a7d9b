"""fkd-train's typed config: built once from the command line, flattened back to exactly its
options (args.yaml and the checkpoints), resolved values as new configs, and the teacher options
as one ``TeacherSpec`` shared with fkd-labelgen, the flags added without argparse internals."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from fkd.config import parse_args_with_config
from fkd.teacher.options import TeacherSpec
from labelgen.cli import build_parser as labelgen_parser
from train.cli import build_parser
from train.config import ModelConfig, TrainConfig
from train.student import fit_input_size

REQUIRED = ["--data", "D", "--model", "resnet18", "--output", "O"]
EVERY_KIND = [  # lists, None and non-defaults in every group, the teacher's flags included
    "--store", "S", "--crop-scale", "0.3", "1", "--model-kwargs", "img_size=32", "depth=2", "--mean", "0.1", "0.2", "0.3",
    "--aug-level", "light2", "--reprob", "0.25", "--lr", "0.5", "--channels-last", "--mode", "online-kd", "--kd", "hard",
    "--teacher", "a", "--teacher", "b", "--checkpoint", "x.pth", "--checkpoint", "y.pth", "--no-pretrained",
    "--teacher-input-size", "64", "--teacher-precision", "bf16", "--num-classes", "7", "--seed", "3",
]


def parse(*flags: str):
    return parse_args_with_config(build_parser(), [*REQUIRED, *flags])


@pytest.mark.parametrize("flags", [[], EVERY_KIND], ids=["defaults", "every-kind"])
def test_the_config_flattens_back_to_exactly_the_options_parsed(flags: list[str]) -> None:
    """args.yaml and the checkpoints record ``to_args``: the same keys and values as the namespace
    (what they recorded when the namespace itself was saved), so ``-c args.yaml`` still reads them."""
    args = parse(*flags)
    assert TrainConfig.from_namespace(args).to_args() == vars(args)


def test_groups_hold_the_options_typed_and_frozen() -> None:
    config = TrainConfig.from_namespace(parse(*EVERY_KIND))
    assert (config.data.store, config.data.crop_scale, config.model.model_kwargs, config.model.mean) == (
        "S", (0.3, 1.0), ("img_size=32", "depth=2"), (0.1, 0.2, 0.3))
    assert (config.augment.aug_level, config.augment.mixup, config.optim.lr, config.distill.kd) == ("light2", None, 0.5, "hard")
    assert (config.model.num_classes, config.model.pretrained, config.run.seed) == (7, False, 3)
    with pytest.raises(FrozenInstanceError):
        config.optim.lr = 1.0  # type: ignore[misc]


def test_fkd_train_teacher_flags_make_the_same_spec_as_fkd_labelgen() -> None:
    """--no-pretrained is the teacher's (the student's --pretrained stays off), --teacher-input-size its
    crop size; --num-classes is the student's, the online teacher taking the run's classes when built."""
    expected = TeacherSpec(names=("a", "b"), checkpoints=("x.pth", "y.pth"), pretrained=False, precision="bf16", input_size=64)
    assert TrainConfig.from_namespace(parse(*EVERY_KIND)).teacher == expected
    labelgen = labelgen_parser().parse_args([
        "--data", "D", "--out", "S", "--teacher", "a", "--teacher", "b", "--checkpoint", "x.pth", "--checkpoint", "y.pth",
        "--no-pretrained", "--input-size", "64", "--teacher-precision", "bf16",
    ])
    spec = TeacherSpec.from_namespace(labelgen)
    assert spec == expected
    assert spec.to_args() == {k: v for k, v in vars(labelgen).items() if k in spec.to_args()}
    assert spec.members == 2 and TeacherSpec(module="pkg.mod:f").members == 1


def test_fkd_train_help_names_what_the_shared_flags_mean_there() -> None:
    help_text = " ".join(build_parser().format_help().split())
    assert "--num-classes N classes of the student (and of the online-kd teacher)" in help_text
    assert "--no-pretrained online-kd: do not load timm pretrained weights for the teacher" in help_text
    assert "--temperature T fkd-labelgen's teacher temperature, refused here unless 1" in help_text


def test_fitting_a_vits_input_size_makes_a_new_model_config() -> None:
    given = TrainConfig.from_namespace(parse("--model", "deit_tiny_patch16_224", "--input-size", "16")).model
    fitted = fit_input_size(given)
    assert fitted.model_kwargs == ("img_size=16",) and given.model_kwargs is None
    alone = fit_input_size(TrainConfig.from_namespace(parse("--model", "deit_tiny_patch16_224", "--model-kwargs", "img_size=32")).model)
    assert alone.input_size == 32
    any_size: ModelConfig = TrainConfig.from_namespace(parse("--input-size", "16")).model  # resnet18 takes any size
    assert fit_input_size(any_size) is any_size
