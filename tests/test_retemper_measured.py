"""The re-tempering errors fkd-train quotes when it refuses ``--mode deit --kd soft`` at a tau other
than the store's temperature (``fkd.payload.quantize.RETEMPER_ERRORS``), measured again here.

Total variation between the teacher's real distribution at tau 3 (DeiT's), ``softmax(z / 3)`` from
its float64 logits, and what each stored scheme rebuilds: the decoded labels re-tempered as
``p ** (1 / 3)`` renormalized (what fkd-train did before format version 5), or, for a full store of
log-probabilities, ``softmax(ln p / 3)`` from the stored float16 values. Crops: 8 random-resized crops
of 5 CIFAR-10 test images per class (400 crops) labelled by the real Keras CIFAR-10 teacher (C=10),
and 400 synthetic ImageNet-like labels (C=1000, ``benchmarks.storage.compression.synthetic_probs``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.storage.compression import synthetic_probs
from fkd.data import crops
from fkd.data.images import load_image
from fkd.losses.labels import teacher_distribution
from fkd.payload import quantize
from fkd.zoo.keras_cifar10 import create_model

from conftest import CIFAR_DATA, CIFAR_TEACHER, extract_cifar_test_images

TAU = 3.0
K = 5
needs_cifar = pytest.mark.skipif(not (CIFAR_DATA.is_file() and CIFAR_TEACHER.is_file()), reason="../shared CIFAR-10 data or teacher missing")


@pytest.fixture(scope="module")
def cifar_logits(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """The teacher's float64 logits on 400 real crops (pixels 0..255, as it was trained)."""
    root = extract_cifar_test_images(tmp_path_factory.mktemp("cifar"), per_class=5)
    batches = []
    for path in sorted(root.rglob("*.jpg")):
        image = load_image(path)
        drawn = crops.sample_crops(str(path.relative_to(root)), image.shape[1], image.shape[2], 8, seed=0)
        batches.append(torch.stack([crops.replay(image, b, bool(f), 32, "bilinear") for b, f in zip(drawn.boxes, drawn.flips)]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return create_model(CIFAR_TEACHER)(torch.cat(batches).float()).double()
    finally:
        torch.set_num_threads(threads)


def rebuilt(probs: np.ndarray, scheme: str) -> torch.Tensor:
    """The teacher at TAU as rebuilt from a store of ``scheme`` holding ``probs`` (N, C) float32."""
    if scheme == "full-log":
        codec = quantize.LabelCodec("full", probs.shape[1], log_probs=True)
        return codec.tempered(None, torch.from_numpy(quantize.encode(probs, "full").values), TAU)
    if scheme == "full":  # a store of float16 probabilities, before format version 5
        decoded = quantize.decode(None, torch.from_numpy(probs.astype(np.float16)), "full", probs.shape[1])
    else:
        payload = quantize.encode(probs, scheme, K)
        indices = None if payload.indices is None else torch.from_numpy(payload.indices.astype(np.int64))
        values = None if payload.values is None else torch.from_numpy(payload.values)
        decoded = quantize.decode(indices, values, scheme, probs.shape[1])
    return teacher_distribution(decoded, TAU, teacher_is_prob=True)


def total_variation(logits: torch.Tensor, scheme: str) -> torch.Tensor:
    """Per crop: half the L1 distance between softmax(z / TAU) and the rebuilt distribution."""
    probs = torch.softmax(logits, dim=-1).float().numpy()  # what the teacher hands fkd-labelgen
    return 0.5 * (rebuilt(probs, scheme).double() - torch.softmax(logits / TAU, dim=-1)).abs().sum(-1)


def synthetic_logits() -> torch.Tensor:
    return torch.from_numpy(synthetic_probs(50, 8, 1000).reshape(400, 1000)).double().log()


@needs_cifar
@pytest.mark.parametrize("scheme", list(quantize.RETEMPER_ERRORS))
def test_quoted_re_tempering_errors_are_the_measured_ones(cifar_logits: torch.Tensor, scheme: str) -> None:
    figures = quantize.RETEMPER_ERRORS[scheme]
    real = total_variation(cifar_logits, scheme)
    assert real.mean().item() == pytest.approx(figures.mean, rel=0.05)
    assert real.max().item() == pytest.approx(figures.worst, rel=0.05)
    assert total_variation(synthetic_logits(), scheme).max().item() == pytest.approx(figures.worst_1000, rel=0.05)


@needs_cifar
def test_a_full_store_of_log_probabilities_re_tempers_exactly_up_to_float16(cifar_logits: torch.Tensor) -> None:
    """What makes version 5 exact: the error left is float16's rounding of ln p, the same at any
    tau, against 0.011 (C=10) and 0.10 (C=1000) at worst for float16 probabilities."""
    real, synthetic = total_variation(cifar_logits, "full-log"), total_variation(synthetic_logits(), "full-log")
    assert real.mean().item() < 1e-4 and real.max().item() < 2e-4
    assert synthetic.max().item() < 4e-4
