"""fkd-labelgen --crop-device cuda, on the CPU: the device path's arithmetic (``labelgen.device_batch``)
run with device cpu against the CPU path, on real CIFAR-10 JPEGs and the real Keras teacher."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from reinforced_stores import FULL_SPEC, label_store
from reinforced_stores import make_worker as reinforced_worker

from fkd.data.crops import CropParams, boxes_to_fixed, replay_fixed, sample_crops
from fkd.data.images import list_images, load_image
from fkd.payload import quantize
from fkd.payload.schemes import SCHEMES
from fkd.store import LabelStore, RecordLayout
from labelgen.device_batch import CropCutter, crop_cutter, encode_ranked
from labelgen.messages import LabelSettings, ShardTask
from labelgen.plan import image_refs
from labelgen.worker import LabelWorker, WorkerConfig

from conftest import CIFAR_DATA, CIFAR_TEACHER, extract_cifar_test_images
from test_labelgen_worker import save_tiny_teacher, teacher_spec, unpack

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_cifar = pytest.mark.skipif(not (CIFAR_DATA.is_file() and CIFAR_TEACHER.is_file()), reason="../shared CIFAR-10 data or teacher missing")

KERAS = "fkd.zoo.keras_cifar10:create_model"
CROPS = 16
MAX_LEVELS = 2
"""The device kernel's guarantee (docs/FORMAT.md, crop_device): within 2 grey levels of the CPU replay."""
MAX_P_DIFF = 0.05
"""Bound on |p| between the two paths' labels of one crop (measured on these 160 crops: largest 0.029, per-crop
largest 0.0027 on average, top-1 agreement 100 %)."""


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_cifar_test_images(tmp_path_factory.mktemp("cifar"), 1)


def keras_worker(scheme: str = "marginal-smoothing") -> LabelWorker:
    labels = LabelSettings(scheme, 5, CROPS, seed=0, crop_params=CropParams(), shard_size=100)
    return LabelWorker(WorkerConfig(teacher_spec("--teacher-module", KERAS), labels, batch_size=64, threads=1, device="cpu"))


def on_device_kernel(worker: LabelWorker) -> LabelWorker:
    """The same worker cutting with the device kernel (on the CPU): what --crop-device cuda runs."""
    worker.cutter = replace(worker.cutter, on_device=True)
    return worker


@needs_cifar
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_the_device_kernel_is_within_two_grey_levels_of_the_cpu_replay(cifar: Path, interpolation: str) -> None:
    images = list_images(cifar)
    device = CropCutter(torch.device("cpu"), True, (32, 32), interpolation)
    worst = 0
    for i in range(len(images)):
        pixels = load_image(images.path(i))
        height, width = pixels.shape[-2:]
        crops = sample_crops(images.image_ids[i], height, width, CROPS, 0)
        fixed = boxes_to_fixed(crops.boxes, height, width)
        want = replay_fixed(pixels, fixed, crops.flips, (32, 32), interpolation)
        got = device(pixels, fixed, crops.flips)
        assert got.dtype == torch.uint8 and got.shape == want.shape == (CROPS, 3, 32, 32)
        worst = max(worst, int((got.int() - want.int()).abs().max()))
    assert worst <= MAX_LEVELS, worst


def test_auto_cuts_on_the_cpu_for_a_cpu_teacher_and_cuda_is_refused_there() -> None:
    cpu = torch.device("cpu")
    assert crop_cutter("auto", cpu, (224, 224), "bicubic") == CropCutter(cpu, False, (224, 224), "bicubic")
    assert crop_cutter("cpu", torch.device("cuda"), (224, 224), "bicubic").crop_device == "cpu"
    assert crop_cutter("auto", torch.device("cuda"), (224, 224), "bicubic").crop_device == "cuda"
    assert crop_cutter("auto", torch.device("cuda"), (224, 160), "bicubic").crop_device == "cpu"  # the device kernel cuts squares
    assert crop_cutter("auto", torch.device("cuda"), (224, 224), "lanczos").crop_device == "cpu"  # a filter the kernel lacks
    with pytest.raises(RuntimeError, match=r"^--crop-device cuda resizes bilinear, bicubic or nearest, but the teacher's interpolation is "
                                           r"lanczos: use --crop-device cpu$"):
        crop_cutter("cuda", torch.device("cuda"), (224, 224), "lanczos")
    with pytest.raises(RuntimeError, match=r"^--crop-device cuda needs the teacher on a GPU, but this worker's teacher runs on cpu: "
                                           r"use --crop-device cpu$"):
        crop_cutter("cuda", cpu, (224, 224), "bicubic")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_labels_ranked_on_the_device_are_the_host_payload_bit_for_bit(scheme: str) -> None:
    """Ties (exact, and zeros) rank to the lower class as numpy's stable argsort does."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(12, 0.3), size=64).astype(np.float32)
    probs[:8, 3] = probs[:8, 7] = probs[:8, 1]  # exact ties
    probs[8:16, :6] = 0.0
    probs /= probs.sum(1, keepdims=True)
    want, got = quantize.encode(probs, scheme, 5), encode_ranked(torch.from_numpy(probs), scheme, 5)
    for a, b in zip(want.arrays(), got.arrays()):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


@needs_cifar
def test_keras_teacher_labels_from_device_crops_agree_with_the_cpu_path(cifar: Path) -> None:
    """The real teacher on real images: the two paths' probabilities per crop (max and mean |p|
    difference, top-1 agreement), and the stored labels of a whole shard through label_shard."""
    cpu, device = keras_worker(), on_device_kernel(keras_worker())
    images = list_images(cifar)
    diffs, agree = [], []
    for i in range(len(images)):
        pixels = load_image(images.path(i))
        height, width = pixels.shape[-2:]
        crops = sample_crops(images.image_ids[i], height, width, CROPS, 0)
        fixed = boxes_to_fixed(crops.boxes, height, width)
        with torch.inference_mode():
            p_cpu, p_dev = (w.teacher(w.cutter(pixels, fixed, crops.flips).float() / 255.0) for w in (cpu, device))
        diffs.append((p_cpu - p_dev).abs().max(1).values)
        agree.append(p_cpu.argmax(1) == p_dev.argmax(1))
    diff, top1 = torch.cat(diffs), torch.cat(agree).float().mean().item()
    print(f"\n{len(diff)} crops: max |p| diff {diff.max():.4f}, mean per-crop max {diff.mean():.5f}, top-1 agreement {100 * top1:.1f} %")
    assert diff.max() <= MAX_P_DIFF and top1 >= 0.95

    layout = RecordLayout(CROPS, 5, 5, np.dtype(np.uint16))
    task = ShardTask(0, 0, image_refs(images), layout)
    got, want = (w.label_shard(task).data for w in (device, cpu))
    assert device.info().crop_device == "cuda" and cpu.info().crop_device == "cpu"
    stored_agree = []
    for a, b in zip(got.records, want.records, strict=True):
        fixed_a, flips_a, top_a, _ = unpack(layout, a)
        fixed_b, flips_b, top_b, _ = unpack(layout, b)
        np.testing.assert_array_equal(fixed_a, fixed_b)  # the same boxes and flips: only pixels may move
        np.testing.assert_array_equal(flips_a, flips_b)
        stored_agree.append(top_a[:, 0] == top_b[:, 0])
    assert np.mean(stored_agree) >= 0.95


@needs_cifar
def test_a_reinforced_store_renders_its_views_on_the_device_crops(cifar: Path, tmp_path: Path) -> None:
    """--crop-device cuda with stored augmentation and pairs: the views are rendered on the device
    crops by the CPU path's ops, so the store records the same boxes, flips and augmentation, says
    where its crops were cut, and its labels name the same classes."""
    teacher = save_tiny_teacher(tmp_path / "teacher.pth")
    cpu = label_store(cifar, tmp_path / "cpu", reinforced_worker(teacher, FULL_SPEC))
    device = label_store(cifar, tmp_path / "device", on_device_kernel(reinforced_worker(teacher, FULL_SPEC)))
    with LabelStore(cpu) as want, LabelStore(device) as got:
        assert (want.meta.crop_device, got.meta.crop_device) == ("cpu", "cuda") and got.meta.differences(want.meta) == ["crop_device"]
        top1 = []
        for i in range(len(want)):
            a, b = want.read(i), got.read(i)
            np.testing.assert_array_equal(a.boxes_fixed, b.boxes_fixed)
            np.testing.assert_array_equal(a.flips, b.flips)
            for name, array in vars(a.views).items():
                np.testing.assert_array_equal(array, getattr(b.views, name), err_msg=name)
            top1.append(a.decoded_labels(want.meta.label_codec()).argmax(1) == b.decoded_labels(got.meta.label_codec()).argmax(1))
    assert torch.cat(top1).float().mean() >= 0.9
