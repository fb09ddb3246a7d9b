"""fkd-train and fkd-labels fail as cleanly as fkd-labelgen: one line and exit 2 for what the user
can fix (wherever it happens, DataLoader workers included), 130 with where to resume on Ctrl-C,
nothing left behind by a failed start, and no torch import to answer --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fkd.data.multicrop
import train.output
import train.run
from fkd.data.images import list_images
from fkd.store import Manifest, StoreCorruptError
from train.cli import main

from conftest import REPO, TinyData, make_image_folder, make_tiny_data, train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEAVY = ("torch", "timm", "ray", "h5py", "matplotlib")


@pytest.mark.parametrize("module", ["train.cli", "fkd.labels.cli"])
def test_help_and_parser_import_nothing_heavy(module: str) -> None:
    """--help and argument errors must not wait seconds for torch, timm and ray to import."""
    script = (
        f"import sys, {module} as cli\n"
        "cli.build_parser()\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "train", classes=2, per_class=4, size=(36, 40))


def supervised(images: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--mode", "supervised", "--data", str(images), "--model", "test_resnet", "--input-size", "32", "--epochs", "2",
        "--batch-size", "4", "--crops-per-image", "1", "--workers", "0", "--no-progress", "--output", str(out), *extra,
    ]


def run_cli(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str]:
    """main's exit code and stderr; an exception escaping main (the old behaviour) fails the test."""
    try:
        code = main(argv)
    except (Exception, KeyboardInterrupt) as exc:
        pytest.fail(f"main raised {type(exc).__name__}: {str(exc)[:300]}")
    return code, capsys.readouterr().err


def test_a_failed_start_leaves_no_output_folder(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "runs" / "new"
    code, err = run_cli(capsys, supervised(images, out, "--model", "resnet_18"))
    assert code == 2 and err.startswith("fkd-train: error: unknown model 'resnet_18'") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
    existing = tmp_path / "mine"  # a folder that was there before is never removed, nor its files
    existing.mkdir()
    (existing / "notes.txt").write_text("keep")
    code, _ = run_cli(capsys, supervised(images, existing, "--model", "resnet_18"))
    assert code == 2 and sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_output_that_cannot_be_made_is_one_line_before_any_work(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"  # the tests run as root, which chmod cannot stop: a regular file as parent can
    code, err = run_cli(capsys, supervised(tmp_path / "no-data", out))  # refused before --data is looked at
    assert (code, err) == (2, f"fkd-train: error: cannot write to --output {out}: {tmp_path / 'file'} is not a directory\n")


def test_read_only_output_is_one_line(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A read-only parent (simulated: root passes every permission check) is refused up front; a
    write that fails later anyway (args.yaml) is the same line, and the folder made for it goes."""
    out = tmp_path / "ro" / "out"
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(train.output.os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    code, err = run_cli(capsys, supervised(images, out))
    assert (code, err) == (2, f"fkd-train: error: cannot write to --output {out}: Permission denied\n")
    monkeypatch.undo()

    def refuse(args: object, path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(train.output, "save_args", refuse)
    code, err = run_cli(capsys, supervised(images, out))
    assert (code, err) == (2, f"fkd-train: error: cannot write to --output {out}: Permission denied\n")
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == []


def interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Ctrl-C during epoch ``epoch`` (0-based) of the run."""
    real = train.run.train_one_epoch

    def train_one_epoch(trainer, loader, current, *args, **kwargs):
        if current == epoch:
            raise KeyboardInterrupt
        return real(trainer, loader, current, *args, **kwargs)

    monkeypatch.setattr(train.run, "train_one_epoch", train_one_epoch)


def test_ctrl_c_says_where_to_resume(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    interrupt_at_epoch(monkeypatch, 1)
    code, err = run_cli(capsys, supervised(images, out))
    assert code == 130
    assert err == f"fkd-train: interrupted; continue with --resume auto (it resumes from {out / 'last.pth'}, the last finished epoch)\n"
    assert {"args.yaml", "last.pth", "summary.csv"} <= {p.name for p in out.iterdir()}
    monkeypatch.undo()
    code, _ = run_cli(capsys, supervised(images, out, "--resume", "auto"))
    assert code == 0 and len((out / "summary.csv").read_text().splitlines()) == 3  # header + epochs 1, 2


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "runs" / "out"
    interrupt_at_epoch(monkeypatch, 0)
    code, err = run_cli(capsys, supervised(images, out))
    assert (code, err) == (130, "fkd-train: interrupted before the first checkpoint: nothing to resume\n")
    assert not (tmp_path / "runs").exists()


def test_dataloader_worker_errors_are_their_own_one_line(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """torch re-raises a worker's exception as 'Caught X in DataLoader worker process N. Original
    Traceback ...' (a RuntimeError when X cannot be rebuilt from a message): only X's message is shown."""

    def damaged(self: object, index: int) -> None:
        raise StoreCorruptError(Path("/labels/shard-00000.h5"), f"record {index}: CRC-32 mismatch")

    monkeypatch.setattr(fkd.data.multicrop.MultiCropDataset, "__getitem__", damaged)
    out = tmp_path / "out"
    code, err = run_cli(capsys, supervised(images, out, "--workers", "1"))
    assert code == 2 and err.startswith("fkd-train: error: /labels/shard-00000.h5: record ") and err.endswith(": CRC-32 mismatch\n")
    assert err.count("\n") == 1 and not out.exists()

    def bug(self: object, index: int) -> None:
        raise IndexError("a bug keeps its traceback")

    monkeypatch.setattr(fkd.data.multicrop.MultiCropDataset, "__getitem__", bug)
    with pytest.raises(IndexError, match="Caught IndexError in DataLoader worker process 0"):
        main(supervised(images, out, "--workers", "1"))


# ------------------------------------------------------------------------------- bad input


def _expect_error(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_store_of_other_images_is_refused_naming_missing_ids(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = make_image_folder(tmp_path / "other", classes=3, per_class=3, size=(36, 40))
    argv = train_args(tiny, tmp_path / "out")
    argv[argv.index("--data") + 1] = str(other)
    _expect_error(
        capsys, argv,
        f"3 of the store's 12 images are not in --data {other} (e.g. 'c0/img003.jpg', 'c1/img003.jpg', 'c2/img003.jpg'); "
        "was the store made from other images?",
    )


def test_one_of_two_tar_shards_names_the_given_data_and_the_likely_cause(tiny: TinyData, tmp_path: Path, capsys) -> None:
    """Before: '6 of the store's 12 images are not under --data <the working directory>'."""
    from test_tars import pack

    pattern = pack(tiny.train, tmp_path / "tars", shards=2)
    first = str(tmp_path / "tars" / "train-000.tar")
    argv = train_args(tiny, tmp_path / "out")
    argv[argv.index("--data") + 1] = first
    _expect_error(
        capsys, argv,
        f"6 of the store's 12 images are not in --data {first} (e.g. 'c1/img002.jpg', 'c1/img003.jpg', 'c2/img000.jpg', 'c2/img001.jpg', 'c2/img002.jpg' and 1 more); "
        f"are all the store's tar shards given (e.g. 'train-{{0000..0099}}.tar')?",
    )
    assert pattern.endswith("train-{000..001}.tar")


def test_other_class_count_is_refused(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _expect_error(capsys, train_args(tiny, tmp_path / "out", "--num-classes", "5"), "--num-classes 5 differs from the store, which has 3 classes")


def test_other_labels_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_tiny_data(tmp_path)
    shifted = data.train / "shifted.csv"  # the same images, every label moved to the next class
    shifted.write_text("".join(f"{e.image_id},{(e.label + 1) % 3}\n" for e in list_images(data.train).entries))
    argv = train_args(data, tmp_path / "out")
    argv[argv.index("--data") + 1] = str(shifted)
    _expect_error(capsys, argv, "12 images have another label in the store than under --data: 'c0/img000.jpg (store 0, data 1)'")


def test_incomplete_store_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_tiny_data(tmp_path)
    manifest = Manifest.load(data.store)
    del manifest.shards[1]
    manifest.save(data.store)
    _expect_error(capsys, train_args(data, tmp_path / "out"), "store is incomplete: 1 of 3 shards missing")


def test_missing_val_dir_unknown_model_and_bad_config_are_clear(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = train_args(tiny, tmp_path / "out")
    argv[argv.index("--val-data") + 1] = str(tmp_path / "nowhere")
    _expect_error(capsys, argv, f"--val-data {tmp_path / 'nowhere'}: no such directory or list file")
    argv = train_args(tiny, tmp_path / "out")
    argv[argv.index("--model") + 1] = "resnet_18"
    _expect_error(capsys, argv, "unknown model 'resnet_18'; did you mean resnet18")
    _expect_error(capsys, train_args(tiny, tmp_path / "out", "--mode", "deit"), "--mode deit needs a distillation-token model")
    _expect_error(capsys, train_args(tiny, tmp_path / "out", "--opt", "nosuch"), "--opt nosuch: Optimizer nosuch not found in registry")
    _expect_error(capsys, train_args(tiny, tmp_path / "out", "--mixup", "0.8", "--mixup-prob", "2"), "mixup settings: prob must be in [0, 1]; got 2.0")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(bad), *train_args(tiny, tmp_path / "out")])
    assert exc.value.code == 2 and f"cannot read config file {bad}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gt-weight", "2"], "--gt-weight must be in [0, 1], got 2.0"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--mode", "supervised", "--kd", "hard"], "--kd hard has no effect in --mode supervised: it is used by --mode online-kd and deit only"),
    ],
    ids=["gt-weight", "batch-size", "mode-conflict"],
)
def test_argument_errors_answer_without_importing_torch(tmp_path: Path, flags: list[str], message: str) -> None:
    """The checks of train/options.py run before torch is imported: such an error answers at once
    (it took 5-10 s, the time torch and timm take to import)."""
    argv = ["--store", "s", "--data", "d", "--model", "resnet18", "--output", str(tmp_path / "out"), *flags]
    script = f"import sys\nfrom train.cli import main\ncode = main({argv!r})\nprint(code, 'torch' in sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (result.stdout, result.stderr) == ("2 False\n", f"fkd-train: error: {message}\n")
