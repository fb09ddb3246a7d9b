"""fkd-labelgen's command line: the documented options, config files, validation, the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from fkd.config import parse_args_with_config
from fkd.teacher.options import TeacherSpec
from labelgen.cli import build_parser, config_from_args
from labelgen.driver import Summary

from conftest import make_image_folder

REPO = Path(__file__).resolve().parents[1]


def resolve(*argv: str):
    parser = build_parser()
    return config_from_args(parse_args_with_config(parser, list(argv)), parser)


def test_the_issue_command_works_as_written_with_fkd_defaults():
    config = resolve("--teacher", "regnety_160", "--crops", "200", "--data", "DATA", "--out", "STORE")
    assert (config.data, config.out) == ("DATA", Path("STORE"))
    assert config.teacher == TeacherSpec(names=("regnety_160",), pretrained=True)
    labels = config.labels
    assert (labels.scheme, labels.top_k, labels.num_crops, labels.seed, labels.shard_size) == ("marginal-smoothing", 5, 200, 0, 1000)
    assert (labels.crop_params.scale, labels.crop_params.ratio) == ((0.08, 1.0), (3 / 4, 4 / 3))
    assert (config.workers, config.gpus_per_worker, config.ray_address, config.device) == (None, None, None, "auto")
    assert (config.overwrite, config.skip_bad, config.progress) == (False, False, True)


def test_help_explains_every_option_of_the_issue():
    text = build_parser().format_help()
    for option in (
        "--teacher", "--checkpoint", "--teacher-module", "--num-classes", "--crops", "--scheme", "--top-k", "--temperature",
        "--seed", "--batch-size", "--workers", "--gpus-per-worker", "--ray-address", "--shard-size", "--input-size",
        "--crop-scale MIN MAX", "--crop-ratio MIN MAX", "--device", "--overwrite", "--skip-bad", "--config",
    ):
        assert option in text, option
    assert "{hardening,smoothing,marginal-smoothing,marginal-renorm,full}" in text


def test_config_file_gives_defaults_and_flags_override(tmp_path):
    config_file = tmp_path / "labelgen.yaml"
    config_file.write_text("scheme: hardening\ncrops: 50\ncrop-scale: [0.08, 0.936]\ndata: /data/train\nteacher: [a, b]\n")
    config = resolve("-c", str(config_file), "--crops", "10", "--out", "STORE")
    assert (config.labels.scheme, config.labels.num_crops, config.labels.crop_params.scale) == ("hardening", 10, (0.08, 0.936))
    assert config.data == "/data/train" and config.teacher.names == ("a", "b")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--crop-scale", "0.5", "0.2"], "crop scale must satisfy 0 < min <= max <= 1, got (0.5, 0.2)"),
        (["--crop-ratio", "0", "1"], "crop ratio must satisfy 0 < min <= max, got (0.0, 1.0)"),
        (["--crops", "0"], "--crops must be in 1..65535, got 0"),
        (["--top-k", "0"], "--top-k must be >= 1, got 0"),
        (["--shard-size", "0"], "--shard-size must be >= 1, got 0"),
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--scheme", "top5"], "argument --scheme: invalid choice: 'top5'"),
    ],
)
def test_bad_options_exit_2_with_a_message(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        resolve("--teacher", "x", "--data", "D", "--out", "S", *flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_shipped_cifar10_recipe_parses():  # the ImageNet recipe: test_config.py
    cifar = resolve("-c", str(REPO / "configs" / "labelgen-cifar10.yaml"), "--data", "D", "--out", "S")
    assert cifar.teacher.module == "fkd.zoo.keras_cifar10:create_model" and cifar.teacher.names == ()


def test_summary_reports_sizes_and_speed():
    summary = Summary(
        out=Path("s"), images=1000, crops=200_000, shards=4, shards_written=3, bad_images=1, bytes=3 * 2**20,
        images_labelled=750, labelling_seconds=30.0, seconds=40.0,
    )
    assert summary.format() == (
        "store s: 1000 images, 200000 crops, 4 shards (3 written, 1 already done), 1 bad images skipped\n"
        "size 3145728 bytes (3.0 MiB), 15.7 bytes per crop\n"
        "time 40.0 s; labelled 750 images in 30.0 s (25.0 images/s)"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--teacher", "test_resnett"), "fkd-labelgen: error: teacher: unknown timm model 'test_resnett'; close matches: test_resnet"),
        (("--checkpoint", "/no/such.pth"), "fkd-labelgen: error: teacher: teacher checkpoint not found: /no/such.pth"),
        (("--teacher-module", "no_such_pkg:make"), "fkd-labelgen: error: teacher: cannot import teacher module 'no_such_pkg'"),
        (("--out", "FILE/store"), "fkd-labelgen: error: --out FILE/store: FILE is not a directory"),
        (("--class-map", "/no/map.txt"), "fkd-labelgen: error: --class-map /no/map.txt: no such file"),
    ],
)
def test_bad_inputs_are_refused_before_ray_starts(change, message, tmp_path, capsys, monkeypatch):
    """A typo costs a second, not a cluster start: these are checked before ray.init."""
    import ray

    from labelgen.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("a regular file")
    images = make_image_folder(tmp_path / "images", classes=2, per_class=1)
    options = {"--teacher": "test_resnet", "--data": str(images), "--out": str(tmp_path / "store")}
    if change[0] == "--teacher-module":
        del options["--teacher"]
    options[change[0]] = change[1]
    assert main([x for kv in options.items() for x in kv] + ["--no-pretrained", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "store").exists()


def test_an_ensemble_is_told_where_its_embeddings_are_normalized(capsys):
    """fkd-labelgen normalizes one teacher's features; an ensemble's are normalized per member by fkd-train."""
    with pytest.raises(SystemExit) as exit_info:
        resolve("--teacher", "a", "--teacher", "b", "--data", "D", "--out", "S", "--target", "embedding", "--embedding-norm", "l2")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "fkd-labelgen: error: --embedding-norm l2 with 2 teachers would normalize their concatenated features together, "
        "mixing their scales: it applies to one teacher; an ensemble stores raw features (leave --embedding-norm none) "
        "and fkd-train's smooth-l1 whitens each member's part separately"
    )
