"""Teacher arithmetic precision: what the stored "teacher probabilities" were computed in.

A label store is only as good as the teacher outputs it keeps, and reduced precision changes them:
bf16 autocast on the real CIFAR-10 teacher moved probabilities by up to 0.021 and flipped a top-1
(issue 9). So teachers run in full fp32 unless the user opts in to a faster mode, and the store
records which one was used.

- ``fp32``: IEEE float32 everywhere, TF32 tensor cores off for matmuls and cuDNN convolutions
  (PyTorch's own default lets convolutions use TF32).
- ``tf32``: float32 tensors, TF32 tensor-core math for matmuls and convolutions (Ampere and newer;
  about 10 mantissa bits inside the products).
- ``bf16`` / ``fp16``: autocast to that dtype (on CPU too, where it emulates what a GPU would do).

The settings are applied around each teacher call and restored afterwards, so a student trained
in the same process (online KD) keeps its own settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a teacher runs, not when a parser lists the choices
    import torch

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"unknown teacher precision {name!r}; choose one of: {', '.join(PRECISIONS)}")
    return name


def autocast_dtype(name: str) -> "torch.dtype | None":
    """The autocast dtype of a precision (None: no autocast, float32 tensors)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(check_precision(name))


@contextmanager
def teacher_precision(name: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed teacher forward pass in precision ``name`` on ``device``."""
    import torch

    dtype = autocast_dtype(name)
    if device.type != "cuda":
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            yield
        return
    math = "tf32" if name == "tf32" else "ieee"
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision, conv.fp32_precision = math, math
    try:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved
