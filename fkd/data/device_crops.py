"""The device crop kernel: cut, resize and flip many crops of uint8 images on any torch device.

One kernel for every path that cuts crops off the CPU: fkd-labelgen's ``--crop-device cuda``
(``labelgen.device_batch``), fkd-train's ``--replay-device cuda`` (``device_replay``), the partner
crops of a reinforced store's stored pairs (``device_views``). It takes the device as an argument,
so tests run the very same arithmetic on the CPU and compare it with the worker path's uint8 kernel
(``fkd.data.crops.replay_fixed``): within two grey levels.

Why batched: at M=200 crops per image a resize call per crop is hundreds of tiny kernel launches
per image, and a GPU would wait on the launches, not compute. An antialiased resize is linear and
separable, so a crop box of an image resized to (s, s) is ``Rh @ image @ Rw^T``, with Rw (s x W)
holding the horizontal filter weights of the box's columns (zero outside the box) and Rh (s x H)
the vertical ones. All crops of an image (a chunk of them, ``CHUNK_BYTES``) then take two matrix
products: one GEMM for the columns of every crop, one batched GEMM for the rows. The weights are
torch's own antialiased ones (``_upsample_bilinear2d_aa`` / ``_upsample_bicubic2d_aa``), the first
pass is rounded and clamped to grey levels before the second, as torch's CPU uint8 kernel does, and
a flip is the columns' weights in reverse order. Nearest crops are a gather.

The products are float32 whether TF32 is on or not. TF32 keeps 10 mantissa bits of each operand,
up to a tenth of a grey level at 255, enough to flip the rounding to grey levels; and the switch is
process-wide, so a ``--teacher-precision tf32`` teacher call on one thread would turn it on for
crops cut on another at that moment, and a store would depend on thread timing. So each weight
matrix goes in as two (``_tf32_split``): its values cut to 10 mantissa bits, and the remainder
cut likewise, both exact in TF32 (22 of the weight's 24 significant bits); the other operand is
grey levels, exact in TF32 too. So no operand changes when TF32 is on, and the crops are the same
either way (a test emulates TF32). Autocast is turned off for the same reason (it would run the products in 16 bits).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import InterpolationMode

from .crops import parse_interpolation

CHUNK_BYTES = 256 * 2**20
"""Float32 working set of one chunk of an image's crops (first-pass rows, weights, output): an
image's crops go through the products together up to this size (39 crops of a 500x375 image at 224
px), so a large image or M costs a few chunks, never one launch per crop."""


def _triangle(x: torch.Tensor) -> torch.Tensor:
    """Bilinear's filter at distances ``x`` (overwritten): 1 - |x| within 1, else 0."""
    return x.abs_().neg_().add_(1).clamp_(min=0)


def _keys_cubic(x: torch.Tensor) -> torch.Tensor:
    """Bicubic's filter (Keys, a = -0.5) at distances ``x`` (overwritten), as torch evaluates it."""
    a = -0.5
    x = x.abs_()
    near = x.mul(a + 2).sub_(a + 3).mul_(x).mul_(x).add_(1)
    far = x.sub(5).mul_(x).add_(8).mul_(x).sub_(4).mul_(a)
    return torch.where(x < 1, near, far.masked_fill_(x >= 2, 0))


FILTERS: dict[InterpolationMode, Callable[[torch.Tensor], torch.Tensor]] = {
    InterpolationMode.BILINEAR: _triangle,
    InterpolationMode.BICUBIC: _keys_cubic,
}
MODES: tuple[InterpolationMode, ...] = (*FILTERS, InterpolationMode.NEAREST)
"""The interpolations the kernel cuts (fkd-train's --interpolation choices; timm teachers' configs)."""


def cut_crops(
    pixels: torch.Tensor,
    shapes: torch.Tensor,
    counts: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    interpolation: "str | InterpolationMode",
    device: "torch.device | str",
) -> torch.Tensor:
    """Cut, resize (antialiased, two rounded passes: ``_resample``) and flip every crop of a batch on ``device``.

    ``pixels``: the images' uint8 (3, H, W) pixels, flattened and concatenated; ``shapes`` (B, 2)
    their (H, W); ``counts`` (B,) crops per image; ``boxes`` (N, 4) pixel boxes (top, left,
    height, width) and ``flips`` (N,) in image order. Returns uint8 (N, 3, size, size) on ``device``.
    Sizes are read on the host (no device synchronization); one copy each moves the pixels, boxes and flips.
    """
    device = torch.device(device)
    mode = parse_interpolation(interpolation)
    if mode not in MODES:
        raise ValueError(f"the device crop kernel resizes bilinear, bicubic or nearest, not {mode.value!r}; "
                         "cut the crops on the CPU (--crop-device cpu, --replay-device cpu)")
    pixels = pixels.to(device, non_blocking=True)
    boxes = boxes.to(device, non_blocking=True)
    flips = flips.to(device, non_blocking=True)
    out = torch.empty((boxes.shape[0], 3, size, size), dtype=torch.uint8, device=device)
    offset = row = 0
    for (height, width), count in zip(shapes.tolist(), counts.tolist()):
        image = pixels[offset : offset + 3 * height * width].view(3, height, width)
        offset += 3 * height * width
        if mode == InterpolationMode.NEAREST:
            out[row : row + count] = _gather(image, boxes[row : row + count], flips[row : row + count], size)
        else:
            image = image.float()
            step = max(1, CHUNK_BYTES // (8 * size * (3 * height + 4 * max(height, width) + 3 * size)))
            for first in range(row, row + count, step):
                last = min(first + step, row + count)
                out[first:last] = _resample(image, boxes[first:last], flips[first:last], size, mode)
        row += count
    return out


def _resample(image: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int, mode: InterpolationMode) -> torch.Tensor:
    """float32 (m, 3, size, size) crops, rounded and clamped to grey levels, of float ``image`` (3, H, W).

    Two passes, columns then rows, the first rounded and clamped to 0..255: the order and the uint8
    intermediate of torch's CPU uint8 kernel, which bicubic overshoot would otherwise tell apart
    (tens of grey levels at sharp edges)."""
    _, height, width = image.shape
    count = boxes.shape[0]
    top, left, h, w = boxes.unbind(1)
    across = _weights(left, w, width, size, mode, flips)  # (m, size, W)
    down = _weights(top, h, height, size, mode, None)  # (m, size, H)
    rows = count * size
    with torch.autocast(image.device.type, enabled=False):
        # One GEMM for every crop's columns, both weight halves stacked: (2*m*size, W) @ (W, 3H) -> [half, crop, column, channel, row].
        both = _tf32_split(across.view(rows, width)) @ image.view(3 * height, width).T
        wide = (both[:rows] + both[rows:]).round_().clamp_(0, 255)
        # One batched GEMM for the rows: per crop (size*3, H) @ (H, 2*size) -> [crop, column, channel, half, output row].
        both = torch.bmm(wide.view(count, size * 3, height), _tf32_split(down, dim=1).transpose(1, 2))
        tall = both[..., :size] + both[..., size:]
    return tall.reshape(count, size, 3, size).permute(0, 2, 3, 1).round_().clamp_(0, 255)


def _tf32_split(weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``weights`` as two halves concatenated along ``dim``: each weight cut to 10 mantissa bits,
    and the remainder cut likewise (22 significant bits of the weight's 24, 2^-22 of it dropped).
    Both are exact in TF32, so a product with grey levels is the same with TF32 on or off."""
    high = _tf32_cut(weights)
    return torch.cat([high, _tf32_cut(weights - high)], dim)


def _tf32_cut(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` with the 13 low mantissa bits cleared: the values TF32 holds exactly."""
    return (x.contiguous().view(torch.int32) & -(1 << 13)).view(torch.float32)


def _weights(start: torch.Tensor, length: torch.Tensor, extent: int, size: int, mode: InterpolationMode,
             flips: "torch.Tensor | None") -> torch.Tensor:
    """(m, size, extent) float32: row i of crop k holds the weights with which output pixel i (size-1-i
    where ``flips``) of the crop's span [start, start+length) on an axis of ``extent`` pixels sums that
    axis's pixels, zero outside the span.

    torch's antialiased weights (``_compute_indices_min_size_weights_aa``) in its float32 arithmetic:
    scale = length / size; the filter centred on scale * (i + 0.5), stretched by the scale when
    shrinking (its support grows by the scale), evaluated at pixel centres, cut off at the
    span's ends and normalized to sum 1. Torch's window (centre +- support) holds every pixel where
    the filter is not zero, so zeroing outside the span is the whole cut-off."""
    index = torch.arange(size, dtype=torch.float32, device=start.device)
    if flips is not None:
        index = torch.where(flips[:, None], size - 1 - index, index)
    scale = length.float() / size
    invscale = torch.where(scale >= 1, scale.reciprocal(), 1.0)
    center = scale[:, None] * (index + 0.5)
    offset = torch.arange(extent, device=start.device)[None, :] - start[:, None]  # pixel position within the span
    distance = (offset[:, None, :].float() - center[:, :, None]).add_(0.5).mul_(invscale[:, None, None])
    weights = FILTERS[mode](distance).mul_(((offset >= 0) & (offset < length[:, None]))[:, None, :])
    return weights.div_(weights.sum(-1, keepdim=True))


def _gather(image: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (m, 3, size, size) nearest crops of uint8 ``image`` (3, H, W): torch's nearest source
    index min(floor(i * (length / size)), length - 1) in float32, one gather for all crops."""
    top, left, h, w = boxes.unbind(1)
    rows = top[:, None] + _nearest(h, size)
    cols = left[:, None] + _nearest(w, size)
    cols = torch.where(flips[:, None], cols.flip(-1), cols)
    return image[:, rows[:, :, None], cols[:, None, :]].transpose(0, 1)


def _nearest(length: torch.Tensor, size: int) -> torch.Tensor:
    """(m, size) int64: the source pixel of each output pixel within spans of ``length`` pixels."""
    index = torch.arange(size, dtype=torch.float32, device=length.device)
    source = (index * (length.float() / size)[:, None]).floor_().long()
    return torch.minimum(source, length[:, None] - 1)
