"""The teacher options shared by fkd-labelgen and fkd-train (online KD), apart from ``fkd.teacher.teachers``
so that building a parser (``--help``, argument errors) imports neither torch nor timm."""

from __future__ import annotations

import argparse

from .precision import DEFAULT_PRECISION, PRECISIONS


def add_teacher_args(parser: argparse.ArgumentParser) -> None:
    """The teacher options shared by the command lines. A caller that lets users pick the teacher
    crop size adds its own ``input_size`` option; ``teacher_from_args`` reads it when present."""
    group = parser.add_argument_group("teacher")
    group.add_argument(
        "--teacher", action="append", metavar="NAME", default=None,
        help="timm model name (e.g. resnet50.a1_in1k); repeat for an ensemble whose probabilities are averaged",
    )
    group.add_argument(
        "--checkpoint", action="append", metavar="PATH", default=None,
        help="weights file for a teacher, one per teacher in order (timm models first, then --teacher-module); "
             "without it timm's pretrained weights are used",
    )
    group.add_argument(
        "--teacher-module", metavar="PKG.MOD:FACTORY", default=None,
        help="a teacher timm lacks: FACTORY(checkpoint=..., num_classes=...) must return an nn.Module with a timm-style "
             "pretrained_cfg (e.g. fkd.zoo.keras_cifar10:create_model)",
    )
    group.add_argument(
        "--num-classes", type=int, default=None, metavar="N",
        help="teacher classes (default: the checkpoint's classifier size, else the model's)",
    )
    group.add_argument(
        "--temperature", type=float, default=1.0, metavar="T",
        help="softmax temperature T of the teacher probabilities softmax(logits / T) (default: 1)",
    )
    group.add_argument(
        "--teacher-precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
        help="teacher arithmetic: fp32 (default, TF32 off: the probabilities the teacher really gives), tf32 (TF32 tensor "
             "cores), bf16 or fp16 (autocast; faster, changes probabilities by up to a few 1e-2); recorded in the store",
    )
    group.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false",
        help="do not load timm pretrained weights: random init unless --checkpoint (for tests and smoke runs)",
    )
