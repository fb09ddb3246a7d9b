"""The teacher options shared by fkd-labelgen and fkd-train (online KD / FD): the flags, and
``TeacherSpec``, the one record both commands build from them and turn into a teacher.

Apart from ``fkd.teacher.teachers`` so that building a parser (``--help``, argument errors) or a
spec imports neither torch nor timm; ``TeacherSpec.create`` imports them when it builds the teacher.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .precision import DEFAULT_PRECISION, PRECISIONS

if TYPE_CHECKING:
    import torch

    from .teachers import Teacher

LABELGEN_DESTS: dict[str, "str | None"] = {
    "names": "teacher", "checkpoints": "checkpoint", "module": "teacher_module", "num_classes": "num_classes",
    "temperature": "temperature", "precision": "teacher_precision", "pretrained": "pretrained", "input_size": "input_size",
}
"""TeacherSpec field -> fkd-labelgen's option destination (``--input-size`` is its own crop-size flag)."""
STUDENT_DESTS: dict[str, "str | None"] = {
    **LABELGEN_DESTS, "num_classes": None, "pretrained": "teacher_pretrained", "input_size": "teacher_input_size",
}
"""The same for fkd-train, where --pretrained, --input-size and --num-classes are the student's: the
teacher's own flags are --no-pretrained (``teacher_pretrained``) and --teacher-input-size, and its
class count is the run's (None here: fkd-train gives it when it builds the teacher)."""


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher to build and how: timm ``names`` then, if given, a factory ``module``
    (``pkg.mod:factory``), ``checkpoints`` one per member in that order (None: timm's pretrained
    weights, or the factory's default; ``pretrained`` False: random init instead), the class count
    (None: the checkpoint's, else the model's), softmax ``temperature``, arithmetic ``precision`` and
    crop side ``input_size`` (None: the first member's). Fields keep
    ``fkd.teacher.teachers.create_teacher``'s names and defaults, in the order of the flags."""

    names: tuple[str, ...] = ()
    checkpoints: "tuple[str | None, ...] | None" = None
    module: "str | None" = None
    num_classes: "int | None" = None
    temperature: float = 1.0
    precision: str = DEFAULT_PRECISION
    pretrained: bool = True
    input_size: "int | None" = None

    @property
    def members(self) -> int:
        """How many models the teacher averages (an ensemble when > 1)."""
        return len(self.names) + bool(self.module)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace, student: bool = False) -> "TeacherSpec":
        """The spec of a parsed command line: fkd-labelgen's, or with ``student`` fkd-train's
        (``add_teacher_args``'s flags with the same ``student``; the crop size option, the caller's
        own, may be absent: the first member's size then)."""
        dests = STUDENT_DESTS if student else LABELGEN_DESTS
        values = {field: getattr(namespace, dest) for field, dest in dests.items() if dest is not None and field != "input_size"}
        values["input_size"] = getattr(namespace, dests["input_size"], None)
        return cls(**{**values, "names": tuple(values["names"] or ()),
                      "checkpoints": None if values["checkpoints"] is None else tuple(values["checkpoints"])})

    def to_args(self, student: bool = False) -> dict[str, Any]:
        """The options this spec was built from, by destination (``from_namespace``'s inverse): what a
        saved recipe holds. An empty ``names`` is the flag not given (None), as argparse leaves it."""
        dests = STUDENT_DESTS if student else LABELGEN_DESTS
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["names"] = list(self.names) or None
        values["checkpoints"] = None if self.checkpoints is None else list(self.checkpoints)
        return {dest: values[field] for field, dest in dests.items() if dest is not None}

    def create(self, device: "str | torch.device" = "cpu") -> "Teacher":
        """The teacher on ``device`` (``fkd.teacher.teachers.TeacherError`` for a spec that cannot be built)."""
        from .teachers import create_teacher

        return create_teacher(
            names=self.names, checkpoints=self.checkpoints, module=self.module, num_classes=self.num_classes,
            pretrained=self.pretrained, temperature=self.temperature, input_size=self.input_size, device=device, precision=self.precision,
        )


STUDENT_HELP = {
    "--num-classes": "classes of the student (and of the online-kd teacher); must equal the store's class count "
                     "(default: the store's, else the number of class folders under --data)",
    "--temperature": "fkd-labelgen's teacher temperature, refused here unless 1: the distillation temperature is --kd-tau",
    "--no-pretrained": "online-kd: do not load timm pretrained weights for the teacher (random init unless --checkpoint)",
}
"""fkd-train's wording of the flags it shares with the student (--num-classes) or refuses (--temperature)."""


def add_teacher_args(parser: argparse.ArgumentParser, student: bool = False) -> None:
    """The teacher options shared by the command lines. A caller that lets users pick the teacher
    crop size adds its own option for it (``TeacherSpec.from_namespace`` reads ``input_size``, or
    with ``student`` ``teacher_input_size``). ``student``: for fkd-train, where the teacher runs beside
    a student: --num-classes is one flag for both (they must agree) and --no-pretrained stores into
    ``teacher_pretrained``, apart from the student's --pretrained."""
    defaults = TeacherSpec()
    helps = STUDENT_HELP if student else {}
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
        help=helps.get("--num-classes", "teacher classes (default: the checkpoint's classifier size, else the model's)"),
    )
    group.add_argument(
        "--temperature", type=float, default=defaults.temperature, metavar="T",
        help=helps.get("--temperature", "softmax temperature T of the teacher probabilities softmax(logits / T) (default: 1)"),
    )
    group.add_argument(
        "--teacher-precision", choices=PRECISIONS, default=defaults.precision,
        help="teacher arithmetic: fp32 (default, TF32 off: the probabilities the teacher really gives), tf32 (TF32 tensor "
             "cores), bf16 or fp16 (autocast; faster, changes probabilities by up to a few 1e-2); recorded in the store",
    )
    group.add_argument(
        "--no-pretrained", dest=STUDENT_DESTS["pretrained"] if student else "pretrained", action="store_false",
        help=helps.get("--no-pretrained", "do not load timm pretrained weights: random init unless --checkpoint (for tests and smoke runs)"),
    )
