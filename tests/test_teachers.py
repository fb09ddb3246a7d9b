"""Teachers: exact ensemble/temperature formulas, checkpoints, the factory hook, the real Keras
CIFAR-10 teacher rebuilt from its HDF5 file, and the error messages."""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_model_data_config

from fkd.data.images import list_images, load_image
from fkd.teacher.options import TeacherSpec, add_teacher_args
from fkd.teacher.teachers import TeacherError, create_teacher
from fkd.zoo import keras_cifar10

from conftest import CIFAR_DATA, CIFAR_TEACHER, extract_cifar_test_images

KERAS = "fkd.zoo.keras_cifar10:create_model"
needs_teacher = pytest.mark.skipif(not CIFAR_TEACHER.is_file(), reason=f"{CIFAR_TEACHER} not present")


def manual_probs(model: torch.nn.Module, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(model((x - mean) / std) / T) with the model's own timm data config."""
    cfg = resolve_model_data_config(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return torch.softmax(model((x - mean) / std) / temperature, dim=-1)


@torch.inference_mode()
def test_ensemble_is_the_average_of_member_softmaxes() -> None:
    torch.manual_seed(0)
    teacher = create_teacher(["test_resnet", "test_efficientnet"], pretrained=False, num_classes=5, temperature=2.5)
    x = torch.rand(3, 3, 160, 160)

    probs = teacher(x)

    resnet, effnet = (m.model for m in teacher.members)
    assert isinstance(resnet, timm.models.ResNet) and isinstance(effnet, timm.models.EfficientNet)
    # each member normalizes its own way: test_resnet mean/std 0.5, test_efficientnet ImageNet's
    assert resolve_model_data_config(resnet)["mean"] != resolve_model_data_config(effnet)["mean"]
    expected = (manual_probs(resnet, x, 2.5) + manual_probs(effnet, x, 2.5)) / 2
    assert probs.dtype == torch.float32 and probs.shape == (3, 5)
    torch.testing.assert_close(probs, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert teacher.num_classes == 5 and teacher.temperature == 2.5
    assert teacher.data_config.input_size == (160, 160)
    assert teacher.data_config.interpolation == "bilinear"  # the first member's (test_efficientnet's is bicubic)


@torch.inference_mode()
def test_temperature_is_a_power_of_the_probabilities() -> None:
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    cold = create_teacher(["test_resnet"], pretrained=False, num_classes=6, input_size=64)(x)
    torch.manual_seed(1)
    hot = create_teacher(["test_resnet"], pretrained=False, num_classes=6, input_size=64, temperature=4.0)(x)
    # softmax(z / T) is proportional to softmax(z) ** (1 / T)
    expected = cold.pow(0.25) / cold.pow(0.25).sum(1, keepdim=True)
    torch.testing.assert_close(hot, expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(hot, cold)


def test_checkpoint_gives_weights_classes_and_sha256(tmp_path: Path) -> None:
    source = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    path = tmp_path / "teacher.pth"
    torch.save(source.state_dict(), path)

    teacher = create_teacher(["test_resnet"], checkpoints=[str(path)])  # no --num-classes: read from the file

    assert teacher.num_classes == 7
    loaded = teacher.members[0].model
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())
    (info,) = teacher.describe()
    assert info == {
        "name": "test_resnet", "checkpoint": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "module": None, "pretrained": None, "num_classes": 7, "input_size": [160, 160], "native_input_size": [160, 160],
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
    }


def test_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 8)}, path)
    with pytest.raises(TeacherError, match=f"^checkpoint {re.escape(str(path))} does not fit timm model test_resnet: "):
        create_teacher(["test_resnet"], checkpoints=[path], num_classes=3)
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(TeacherError) as e:
        create_teacher(["test_resnet"], checkpoints=[path])
    assert str(e.value) == f"cannot infer the number of classes of test_resnet from {path} (no 'fc.weight' in it): pass --num-classes"
    path.write_bytes(b"garbage")
    with pytest.raises(TeacherError, match=f"^cannot read teacher checkpoint {re.escape(str(path))}: "):
        create_teacher(["test_resnet"], checkpoints=[path])


def test_teacher_stays_frozen_in_eval_mode() -> None:
    teacher = create_teacher(["test_resnet"], pretrained=False, num_classes=3)
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match=re.escape("teacher input must be (B, 3, 160, 160), got (1, 3, 32, 32)")):
        teacher(torch.rand(1, 3, 32, 32))
    with pytest.raises(TypeError, match="teacher input must be float pixels in \\[0, 1\\], got torch.uint8"):
        teacher(torch.zeros(1, 3, 160, 160, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"names": ["resnt50"]}, TeacherError, "unknown timm model 'resnt50'; close matches: resnet50, "),
        ({"names": []}, TeacherError, "no teacher given: pass --teacher NAME (a timm model) or --teacher-module pkg.mod:factory"),
        ({"names": ["test_resnet"], "checkpoints": ["/no/such.pth"]}, FileNotFoundError, "teacher checkpoint not found: /no/such.pth"),
        ({"names": ["test_resnet", "test_vit"], "checkpoints": ["a"]}, TeacherError,
         "got 1 checkpoints for 2 teachers (test_resnet, test_vit): give one per teacher, in order"),
        ({"names": [], "module": "fkd.zoo.keras_cifar10"}, TeacherError,
         "bad teacher module 'fkd.zoo.keras_cifar10': expected 'package.module:factory'"),
        ({"names": [], "module": "fkd.nope:make"}, TeacherError,
         "cannot import teacher module 'fkd.nope' (from 'fkd.nope:make'): No module named 'fkd.nope'"),
        ({"names": [], "module": "fkd.zoo.keras_cifar10:nope"}, TeacherError,
         "module 'fkd.zoo.keras_cifar10' has no factory function 'nope' (from 'fkd.zoo.keras_cifar10:nope')"),
        ({"names": ["test_resnet"], "temperature": 0.0}, TeacherError, "temperature must be > 0, got 0.0"),
        ({"names": ["test_vit"], "input_size": 64}, TeacherError, "teacher test_vit only accepts (160, 160) inputs, not (64, 64)"),
    ],
)
def test_errors(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as e:
        create_teacher(pretrained=False, **kwargs)
    assert str(e.value).startswith(message)


@needs_teacher
@torch.inference_mode()
def test_ensemble_members_share_one_input_size() -> None:
    keras_probs = create_teacher([], module=KERAS)(x := torch.rand(2, 3, 32, 32))
    with pytest.raises(TeacherError) as e:  # the first member's size by default: test_resnet's 160
        create_teacher(["test_resnet"], module=KERAS, pretrained=False, num_classes=10)
    assert str(e.value) == f"teacher {KERAS} only accepts (32, 32) inputs, not (160, 160)"

    ensemble = create_teacher(["test_resnet"], module=KERAS, pretrained=False, num_classes=10, input_size=32)
    assert ensemble.data_config.input_size == (32, 32)
    resnet = ensemble.members[0].model
    torch.testing.assert_close(ensemble(x), (manual_probs(resnet, x, 1.0) + keras_probs) / 2, rtol=1e-5, atol=1e-7)
    assert [d["native_input_size"] for d in ensemble.describe()] == [[160, 160], [32, 32]]
    assert [d["input_size"] for d in ensemble.describe()] == [[32, 32], [32, 32]]


@needs_teacher
def test_members_must_agree_on_classes() -> None:
    with pytest.raises(TeacherError) as e:
        create_teacher(["test_resnet"], module=KERAS, pretrained=False)
    assert str(e.value) == f"ensemble members disagree on the number of classes (test_resnet: 1000, {KERAS}: 10)"


# ---------------------------------------------------------------------------------------------
# The Keras CIFAR-10 teacher through --teacher-module


@needs_teacher
@torch.inference_mode()
def test_teacher_module_from_args_gives_keras_probabilities() -> None:
    parser = argparse.ArgumentParser()
    add_teacher_args(parser)
    args = parser.parse_args(["--teacher-module", KERAS, "--temperature", "2"])
    assert (args.teacher, args.checkpoint, args.num_classes, args.pretrained) == (None, None, None, True)

    teacher = TeacherSpec.from_namespace(args).create("cpu")

    x = torch.rand(4, 3, 32, 32)
    probs = teacher(x)
    assert probs.shape == (4, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(4))
    # mean 0 / std 1/255 turn [0, 1] inputs into the raw 0..255 pixels the Keras model was trained on
    raw = keras_cifar10.create_model()
    torch.testing.assert_close(probs, torch.softmax(raw(x * 255) / 2, dim=-1), rtol=1e-5, atol=1e-6)
    (info,) = teacher.describe()
    assert info["checkpoint"] == str(CIFAR_TEACHER) and info["module"] == KERAS
    assert info["sha256"].startswith("0eddc60b") and info["sha256"].endswith("f9e9")
    assert (info["input_size"], info["interpolation"], info["mean"]) == ([32, 32], "bilinear", [0.0, 0.0, 0.0])


def test_keras_factory_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FKD_SHARED", str(tmp_path))
    expected = tmp_path / "models" / "cifar10_keras_cnn.h5"
    assert keras_cifar10.default_checkpoint() == expected
    with pytest.raises(FileNotFoundError) as e:
        keras_cifar10.create_model()
    assert str(e.value) == (
        f"Keras CIFAR-10 checkpoint not found: {expected} "
        "(set FKD_SHARED to the folder holding models/cifar10_keras_cnn.h5, or pass its path)"
    )
    with pytest.raises(ValueError, match="^the Keras CIFAR-10 teacher predicts 10 classes, not 5$"):
        keras_cifar10.create_model(num_classes=5)


def test_keras_flatten_is_channels_last() -> None:
    x = torch.arange(12.0).view(1, 3, 2, 2)  # (N, C, H, W)
    flat = keras_cifar10.ChannelsLastFlatten()(x)
    assert flat.tolist() == [x[0].permute(1, 2, 0).reshape(-1).tolist()]  # Keras order: h, w, then channel


@pytest.fixture(scope="module")
def cifar_test_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 100 test images of each class, extracted from the shared tarball (the test split
    comes first in it, so reading stops at the train split)."""
    if not CIFAR_DATA.is_file():
        pytest.skip(f"{CIFAR_DATA} not present")
    root = extract_cifar_test_images(tmp_path_factory.mktemp("cifar"), 100)
    assert sorted(p.name for p in root.iterdir()) == list(keras_cifar10.CLASS_NAMES)
    assert all(len(list(d.iterdir())) == 100 for d in root.iterdir())
    return root


@needs_teacher
@torch.inference_mode()
def test_keras_teacher_accuracy_on_real_cifar10(cifar_test_subset: Path) -> None:
    images = list_images(cifar_test_subset)
    assert images.class_names == list(keras_cifar10.CLASS_NAMES)
    model = keras_cifar10.create_model()
    x = torch.stack([load_image(images.path(i)) for i in range(len(images))]).float()
    predicted = model(x).argmax(1)
    accuracy = (predicted == torch.from_numpy(images.labels)).float().mean().item()
    assert accuracy >= 0.70  # the README measures 76.57 % on all 10,000 test images
