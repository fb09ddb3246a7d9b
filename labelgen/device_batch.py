"""The worker's GPU side: crops cut where the teacher runs, labels ranked there, batches that fit.

``--crop-device cuda``: the decode threads still decode each image once on the CPU, then upload it
once as uint8 (pinned, non-blocking) and cut, resize and flip its M crops with the device kernel
that fkd-train's ``--replay-device cuda`` uses (``fkd.data.device_crops.cut_crops``): within two
grey levels of torch's uint8 CPU kernel (``replay_fixed``), which ``--crop-device cpu`` runs and
training's CPU replay runs too. The decode threads work ahead of the teacher (the worker's ordered
window), so the next crops are cut while the current batch runs; the batch becomes float on the
device in one op and the teacher normalizes it there. A reinforced store's stored augmentation and
pairs are rendered on those device crops by the same ops as on the CPU (``ViewRenderer``,
``render_pairs``), as ``fkd.data.device_views`` does for training.

On a CUDA teacher the top-K schemes are ranked on the device (``encode_ranked``): only the (N, K)
payload comes back to the host. ``--batch-size auto`` doubles a probe batch until the device runs
out of memory (or the worker's share of it, or a cap); a batch that still runs out of memory is
halved once (``forward_halving``), then the run stops with one line naming ``--batch-size``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fkd.data import device_crops
from fkd.data.crops import fixed_to_boxes, parse_interpolation, replay_fixed
from fkd.data.device_crops import cut_crops
from fkd.payload import quantize
from fkd.payload.schemes import Scheme

DEFAULT_BATCH_SIZE = 256
"""``--batch-size``'s default, and what ``auto`` means on a CPU teacher."""
AUTO_BATCH_START = 32
AUTO_BATCH_CAP = 4096
"""``--batch-size auto`` on a GPU: the largest power of two from START to CAP whose forward fits."""


class BatchMemoryError(RuntimeError):
    """The teacher ran out of GPU memory even on half a batch: the user must lower --batch-size."""


@dataclass(frozen=True)
class CropCutter:
    """How a worker cuts an image's M crops at the teacher's input size: torch's uint8 kernel on the
    CPU (``on_device`` False: ``replay_fixed``, training's CPU replay bit for bit) or the device kernel
    on ``device`` (``cut_crops``; tests run it with ``device`` cpu)."""

    device: torch.device
    on_device: bool
    size: tuple[int, int]
    interpolation: str

    @property
    def crop_device(self) -> str:
        """What the store records (``StoreMeta.crop_device``)."""
        return "cuda" if self.on_device else "cpu"

    def __call__(self, pixels: torch.Tensor, fixed: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        """uint8 (n, 3, h, w) crops of ``pixels`` (3, H, W) at the fixed-point boxes, flipped where ``flips``."""
        if not self.on_device:
            return replay_fixed(pixels, fixed, flips, self.size, self.interpolation)
        height, width = (int(v) for v in pixels.shape[-2:])
        flat = pixels.reshape(-1)
        if self.device.type == "cuda":
            flat = flat.pin_memory()
        boxes = torch.from_numpy(fixed_to_boxes(fixed, height, width))
        return cut_crops(flat, torch.tensor([[height, width]]), torch.tensor([len(boxes)]), boxes,
                         torch.from_numpy(np.asarray(flips, dtype=bool)), self.size[0], self.interpolation, self.device)


def crop_cutter(name: str, teacher_device: torch.device, size: tuple[int, int], interpolation: str) -> CropCutter:
    """``--crop-device``: auto is cuda when the teacher runs on a GPU (and its input is square and its
    interpolation one the device kernel has), else cpu; cuda on a worker whose teacher is not on a
    GPU, or with an input the kernel cannot cut, is refused."""
    square = size[0] == size[1]
    kernel_has = parse_interpolation(interpolation) in device_crops.MODES
    if name == "cpu" or (name == "auto" and (teacher_device.type != "cuda" or not square or not kernel_has)):
        return CropCutter(torch.device("cpu"), False, size, interpolation)
    if name not in ("auto", "cuda"):
        raise ValueError(f"--crop-device must be auto, cuda or cpu, got {name!r}")
    if teacher_device.type != "cuda":
        raise RuntimeError(f"--crop-device cuda needs the teacher on a GPU, but this worker's teacher runs on {teacher_device}: "
                           "use --crop-device cpu")
    if not square:
        raise RuntimeError(f"--crop-device cuda cuts square crops, but the teacher's input is {size[0]}x{size[1]}: use --crop-device cpu")
    if not kernel_has:
        raise RuntimeError(f"--crop-device cuda resizes bilinear, bicubic or nearest, but the teacher's interpolation is {interpolation}: "
                           "use --crop-device cpu")
    return CropCutter(teacher_device, True, size, interpolation)


def encode_ranked(probs: torch.Tensor, scheme: str, top_k: int) -> quantize.Payload:
    """``quantize.encode`` with the ranking done where ``probs`` (N, C) are: a stable descending sort
    (ties to the lower class, as numpy's stable argsort of ``-p``), so only the (N, K) indices and
    float32 values cross to the host, where they become the same uint16 and float16 bits. ``full``
    keeps every class: it is encoded on the host as it is."""
    kind = Scheme.parse(scheme)
    if kind is Scheme.FULL or bool((probs < 0).any()):  # quantize.encode refuses negative input in its words
        return quantize.encode(probs.cpu().numpy(), kind, top_k)
    num_classes = probs.shape[1]
    top = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, : quantize.stored_top_k(kind, top_k, num_classes)]
    indices = top.cpu().numpy().astype(quantize.index_dtype(num_classes))
    if kind is Scheme.HARDENING:
        return quantize.Payload(indices, None)
    return quantize.Payload(indices, probs.gather(-1, top).cpu().numpy().astype(np.float16))


def forward_halving(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``forward(x)``; when the device runs out of memory, the two halves of ``x`` one after the
    other (the same rows, in order); when a half runs out too, one line naming --batch-size."""
    try:
        return forward(x)
    except torch.cuda.OutOfMemoryError:
        pass  # retried outside the handler, so the failed attempt's traceback frees its tensors
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = (len(x) + 1) // 2
    try:
        if half == len(x):
            raise torch.cuda.OutOfMemoryError("a single crop")
        return torch.cat([forward(part) for part in x.split(half)])
    except torch.cuda.OutOfMemoryError:
        pass
    raise BatchMemoryError(f"the teacher ran out of GPU memory on a batch of {len(x)} crops and again on half of it ({half}): "
                           f"lower --batch-size (e.g. --batch-size {max(1, half // 2)})")


def probe_batch_size(fits: Callable[[int], bool], start: int = AUTO_BATCH_START, cap: int = AUTO_BATCH_CAP) -> int:
    """The largest of start, 2 start, 4 start, ... up to ``cap`` for which ``fits`` holds, stopping
    at the first that does not; one line naming --batch-size when not even ``start`` fits."""
    best, size = 0, start
    while size <= cap and fits(size):
        best, size = size, 2 * size
    if not best:
        raise BatchMemoryError(f"--batch-size auto: the teacher does not fit a batch of {start} crops in GPU memory; "
                               "give a smaller --batch-size")
    return best


def auto_batch_size(forward: Callable[[torch.Tensor], torch.Tensor], size: tuple[int, int], device: torch.device, share: float) -> int:
    """``--batch-size auto``: DEFAULT_BATCH_SIZE on a CPU teacher; on a GPU the largest probe batch of
    random crops whose forward fits in memory and keeps the peak within ``share`` of the device (the
    worker's --gpus-per-worker, so several workers on one GPU leave each other room)."""
    if device.type != "cuda":
        return DEFAULT_BATCH_SIZE
    limit = share * torch.cuda.get_device_properties(device).total_memory

    @torch.inference_mode()
    def fits(batch: int) -> bool:
        torch.cuda.reset_peak_memory_stats(device)
        try:
            forward(torch.rand(batch, 3, *size, device=device))
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()
        return torch.cuda.max_memory_allocated(device) <= limit

    return probe_batch_size(fits)
