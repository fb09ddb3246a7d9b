"""YAML config defaults under command-line flags, and the saved-args round trip."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from fkd.config import parse_args_with_config, save_args
from fkd.teacher.options import TeacherSpec

REPO = Path(__file__).resolve().parents[1]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--teacher", action="append", default=None)
    parser.add_argument("--out-dir", type=Path, default=Path("runs"))
    parser.add_argument("--model", choices=["resnet18", "vit_tiny"], default="resnet18")
    parser.add_argument("--no-amp", dest="amp", action="store_false")
    return parser


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_yaml_gives_defaults_and_flags_override(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "data: /d\nlr: 0.5\nout-dir: /out\nepochs: 3\namp: false\nteacher: [a, b]\n")

    args = parse_args_with_config(make_parser(), ["-c", cfg])
    assert vars(args) == {
        "data": Path("/d"), "lr": 0.5, "epochs": 3, "teacher": ["a", "b"], "out_dir": Path("/out"),
        "model": "resnet18", "amp": False, "config": cfg,
    }

    args = parse_args_with_config(make_parser(), ["--config", cfg, "--lr", "0.01", "--teacher", "z", "--data", "/e"])
    assert (args.lr, args.teacher, args.data, args.epochs) == (0.01, ["z"], Path("/e"), 3)


def test_without_config_it_is_plain_argparse() -> None:
    argv = ["--data", "x", "--teacher", "t"]
    expected = vars(make_parser().parse_args(argv)) | {"config": None}
    assert vars(parse_args_with_config(make_parser(), argv)) == expected


def test_existing_short_c_option_is_kept(tmp_path: Path) -> None:
    parser = make_parser()
    parser.add_argument("-c", "--crops", type=int, default=1)
    cfg = write(tmp_path / "c.yaml", "data: /d\ncrops: 4\n")
    args = parse_args_with_config(parser, ["--config", cfg, "-c", "8"])
    assert (args.crops, args.data) == (8, Path("/d"))


def run_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        parse_args_with_config(make_parser(), argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_unknown_keys_are_named_with_suggestions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.yaml", "data: /d\nlrr: 1\nfoo: 2\n")
    assert run_error(capsys, ["-c", cfg]) == f"tool: error: unknown key(s) in config file {cfg}: lrr (did you mean lr?), foo"


def test_unreadable_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "bad.yaml", "lr: [0.1\n")
    with pytest.raises(SystemExit) as e:
        parse_args_with_config(make_parser(), ["-c", cfg])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"tool: error: cannot read config file {cfg}: while parsing a flow sequence" in err

    missing = str(tmp_path / "missing.yaml")
    assert run_error(capsys, ["-c", missing]) == (
        f"tool: error: cannot read config file {missing}: [Errno 2] No such file or directory: '{missing}'"
    )


def test_config_must_be_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "list.yaml", "- lr\n- 0.1\n")
    assert run_error(capsys, ["-c", cfg]) == f"tool: error: config file {cfg} must be a mapping of option names to values, got list"


def test_config_values_are_type_converted_and_choice_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.yaml", "data: /d\nmodel: vgg\n")
    assert run_error(capsys, ["-c", cfg]) == (
        f"tool: error: config file {cfg}: model: invalid choice 'vgg' (choose from resnet18, vit_tiny)"
    )
    cfg = write(tmp_path / "c.yaml", "data: /d\nepochs: ten\n")
    assert run_error(capsys, ["-c", cfg]) == (
        f"tool: error: config file {cfg}: epochs: invalid value 'ten': invalid literal for int() with base 10: 'ten'"
    )


def test_empty_config_changes_nothing(tmp_path: Path) -> None:
    cfg = write(tmp_path / "empty.yaml", "# nothing\n")
    assert parse_args_with_config(make_parser(), ["-c", cfg, "--data", "d"]).lr == 0.1


def test_save_args_round_trips_through_config(tmp_path: Path) -> None:
    args = parse_args_with_config(make_parser(), ["--data", "/d", "--lr", "0.25", "--teacher", "a", "--no-amp"])
    saved = tmp_path / "args.yaml"
    save_args(vars(args), saved)

    assert yaml.safe_load(saved.read_text()) == {
        "data": "/d", "lr": 0.25, "epochs": 10, "teacher": ["a"], "out_dir": "runs", "model": "resnet18", "amp": False,
        "config": None,
    }
    again = parse_args_with_config(make_parser(), ["-c", str(saved)])
    assert vars(again) == vars(args) | {"config": str(saved)}


def test_every_recipe_the_readme_names_exists() -> None:
    named = set(re.findall(r"configs/[\w.-]+\.yaml", (REPO / "README.md").read_text()))
    assert "configs/labelgen-imagenet-regnety160.yaml" in named
    assert sorted(name for name in named if not (REPO / name).is_file()) == []


def test_imagenet_regnety160_recipe_parses_with_fkd_labelgen() -> None:
    from labelgen.cli import build_parser, config_from_args

    parser = build_parser()
    argv = ["-c", str(REPO / "configs" / "labelgen-imagenet-regnety160.yaml"), "--data", "D", "--out", "S"]
    config = config_from_args(parse_args_with_config(parser, argv), parser)
    assert config.teacher == TeacherSpec(names=("regnety_160",), pretrained=True, temperature=1.0, precision="fp32")
    labels = config.labels
    assert (labels.scheme, labels.top_k, labels.num_crops, labels.seed, labels.shard_size) == ("marginal-smoothing", 5, 500, 0, 1000)
    assert (labels.crop_params.scale, labels.crop_params.ratio, labels.crop_params.flip_prob) == ((0.08, 0.936), (3 / 4, 4 / 3), 0.5)
