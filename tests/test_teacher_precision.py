"""Teacher precision: fp32 unless asked, the switch really changes the arithmetic, and it is recorded."""

from __future__ import annotations

import argparse

import pytest
import torch

from fkd.teacher.options import TeacherSpec, add_teacher_args
from fkd.teacher.precision import PRECISIONS, autocast_dtype, teacher_precision
from fkd.teacher.teachers import TeacherError, create_teacher

from conftest import CIFAR_TEACHER

KERAS = "fkd.zoo.keras_cifar10:create_model"


def conv_dtypes(teacher: torch.nn.Module, x: torch.Tensor) -> set[torch.dtype]:
    """The dtypes the teacher's convolutions really computed in."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype)) for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        teacher(x)
    for hook in hooks:
        hook.remove()
    return seen


def test_default_is_fp32_and_each_precision_computes_in_its_dtype() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    default = create_teacher(["test_resnet"], pretrained=False, num_classes=4, input_size=32)
    assert default.precision == "fp32" and conv_dtypes(default, x) == {torch.float32}
    for name, dtype in (("tf32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        teacher = create_teacher(["test_resnet"], pretrained=False, num_classes=4, input_size=32, precision=name)
        assert conv_dtypes(teacher, x) == {dtype}, name
        with torch.inference_mode():
            assert teacher(x).dtype == torch.float32  # probabilities always come back in float32


def test_autocast_is_scoped_to_the_teacher_call() -> None:
    with teacher_precision("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")
    assert [autocast_dtype(p) for p in PRECISIONS] == [None, None, torch.bfloat16, torch.float16]
    with pytest.raises(TeacherError, match="unknown teacher precision 'fp8'; choose one of: fp32, tf32, bf16, fp16"):
        create_teacher(["test_resnet"], pretrained=False, precision="fp8")


def test_the_option_reaches_the_teacher() -> None:
    parser = argparse.ArgumentParser()
    add_teacher_args(parser)
    args = parser.parse_args(["--teacher", "test_resnet", "--no-pretrained", "--num-classes", "3"])
    assert args.teacher_precision == "fp32"
    args = parser.parse_args(["--teacher", "test_resnet", "--no-pretrained", "--num-classes", "3", "--teacher-precision", "bf16"])
    assert TeacherSpec.from_namespace(args).create().precision == "bf16"


@pytest.mark.skipif(not CIFAR_TEACHER.is_file(), reason=f"{CIFAR_TEACHER} not present")
def test_reduced_precision_moves_the_real_teachers_probabilities() -> None:
    """Why fp32 is the default: on the real CIFAR-10 teacher bf16 changes probabilities by far more
    than a float16 store's rounding (2**-11 relative)."""
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    with torch.inference_mode():
        fp32 = create_teacher([], module=KERAS)(x)
        bf16 = create_teacher([], module=KERAS, precision="bf16")(x)
    error = (fp32 - bf16).abs().max().item()
    assert error > 1e-3, error
