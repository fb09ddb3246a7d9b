"""LabelWorker without Ray: its labels are a direct teacher forward on the replayed crops."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import zstandard
from PIL import Image

from fkd.data.crops import CropParams, boxes_to_fixed, replay_fixed, sample_crops
from fkd.data.images import list_images, load_image
from fkd.payload import quantize
from fkd.store import RecordLayout
from fkd.teacher.options import TeacherSpec
from labelgen.cli import build_parser
from labelgen.errors import BadImage
from labelgen.messages import LabelSettings, ShardTask
from labelgen.plan import image_refs
from labelgen.worker import CropBatcher, LabelWorker, PayloadBuffer, WorkerConfig

from conftest import CIFAR_DATA, CIFAR_TEACHER, extract_cifar_test_images, make_image_folder

NUM_CLASSES = 10


def save_tiny_teacher(path: Path, num_classes: int = NUM_CLASSES) -> Path:
    """A seeded test_resnet with a sharpened classifier (random init is nearly uniform otherwise)."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=num_classes)
    with torch.no_grad():
        model.fc.weight.mul_(60.0)
        model.fc.bias.zero_()
    torch.save(model.state_dict(), path)
    return path


def teacher_spec(*argv: str) -> TeacherSpec:
    """The teacher of an fkd-labelgen command line with these teacher flags."""
    return TeacherSpec.from_namespace(build_parser().parse_args(["--data", "unused", "--out", "unused", *argv]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two classes of RGB JPEGs plus a grayscale, an RGBA and a 16-bit grayscale PNG."""
    root = tmp_path_factory.mktemp("worker")
    folder = make_image_folder(root / "images", classes=2, per_class=3)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (37, 45), dtype=np.uint8), "L").save(folder / "c0" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (41, 39, 4), dtype=np.uint8), "RGBA").save(folder / "c1" / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (36, 50), dtype=np.uint16)).save(folder / "c1" / "deep.png")
    return folder, save_tiny_teacher(root / "teacher.pth")


def make_worker(checkpoint: "Path | list[Path]", scheme: str, num_crops: int = 6, batch_size: int = 5, top_k: int = 5) -> LabelWorker:
    checkpoints = checkpoint if isinstance(checkpoint, list) else [checkpoint]
    members = [arg for c in checkpoints for arg in ("--teacher", "test_resnet", "--checkpoint", str(c))]
    spec = teacher_spec(*members, "--no-pretrained", "--input-size", "32")
    labels = LabelSettings(scheme, top_k, num_crops, seed=7, crop_params=CropParams(scale=(0.2, 1.0)), shard_size=100)
    return LabelWorker(WorkerConfig(spec, labels, batch_size, threads=2, device="cpu"))


def layout_for(worker: LabelWorker) -> RecordLayout:
    labels = worker.config.labels
    shape = quantize.payload_shape(labels.scheme, labels.top_k, NUM_CLASSES)
    return RecordLayout(labels.num_crops, shape.num_indices, shape.num_values, quantize.index_dtype(NUM_CLASSES),
                        log_values=labels.scheme == "full")  # a full store keeps ln p (format version 5)


def unpack(layout: RecordLayout, record: bytes):
    return layout.unpack(zstandard.ZstdDecompressor().decompress(record))


def direct_probs(worker: LabelWorker, path: Path, fixed: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """What the teacher says about the stored crops, computed independently of the worker."""
    teacher = worker.config.teacher.create("cpu")
    views = replay_fixed(load_image(path), fixed, flips, teacher.data_config.input_size, teacher.data_config.interpolation)
    with torch.inference_mode():
        return teacher(views.float() / 255.0).numpy()


@pytest.mark.parametrize("scheme", ["full", "marginal-smoothing"])
def test_shard_labels_equal_a_direct_teacher_forward(tiny, scheme):
    folder, checkpoint = tiny
    worker = make_worker(checkpoint, scheme)  # 6 crops, batches of 5: batches straddle images
    images = list_images(folder)
    refs = image_refs(images)
    layout = layout_for(worker)
    posts: list[tuple[int, int]] = []
    board = SimpleNamespace(post=SimpleNamespace(remote=lambda shard, images: posts.append((shard, images))))
    outcome = worker.label_shard(ShardTask(3, 0, refs, layout), board)

    assert outcome.shard == 3 and outcome.bad_images == []
    # 9 images x 6 crops in batches of 5 (ending at crops 5, 10, ..., 50, 54): a post whenever a
    # batch finishes an image; the batch ending at crop 35 finishes none.
    assert posts == [(3, n) for n in range(1, 10)]
    data = outcome.data
    assert len(images) == 9 and {"c0/gray.png", "c1/rgba.png", "c1/deep.png"} <= set(data.image_ids)
    assert data.image_ids == images.image_ids
    assert data.labels.tolist() == images.labels.tolist()
    for n, ref in enumerate(refs):
        pixels = load_image(ref.location)
        h, w = pixels.shape[-2:]
        assert data.sizes[n].tolist() == [h, w]
        crops = sample_crops(ref.image_id, h, w, 6, 7, CropParams(scale=(0.2, 1.0)))
        fixed, flips, indices, values = unpack(layout, data.records[n])
        np.testing.assert_array_equal(fixed, boxes_to_fixed(crops.boxes, h, w))
        np.testing.assert_array_equal(flips, crops.flips)
        probs = direct_probs(worker, Path(ref.location.path), fixed, flips)
        if scheme == "full":  # float16 ln p: each p within 2^-11 |ln p| relatively
            assert indices is None
            np.testing.assert_allclose(np.exp(values.astype(np.float32)), probs, rtol=2**-11 * 20, atol=1e-7)
        else:
            np.testing.assert_array_equal(indices, np.argsort(-probs, axis=1, kind="stable")[:, :5])
            np.testing.assert_allclose(values.astype(np.float32), np.take_along_axis(probs, indices.astype(np.int64), 1), rtol=2**-10)


def test_an_ensemble_stores_the_average_of_its_members(tiny, tmp_path):
    folder, checkpoint = tiny
    torch.manual_seed(1)
    other = timm.create_model("test_resnet", pretrained=False, num_classes=NUM_CLASSES)
    with torch.no_grad():
        other.fc.weight.mul_(60.0)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    ensemble = make_worker([checkpoint, tmp_path / "other.pth"], "full")
    singles = [make_worker(checkpoint, "full"), make_worker(tmp_path / "other.pth", "full")]
    members = ensemble.info().members
    assert [m["checkpoint"] for m in members] == [str(checkpoint), str(tmp_path / "other.pth")]
    assert members[0]["sha256"] != members[1]["sha256"]

    refs = image_refs(list_images(folder))[:2]
    layout = layout_for(ensemble)
    stored = [np.exp(unpack(layout, r)[3].astype(np.float32)) for r in ensemble.label_shard(ShardTask(0, 0, refs, layout)).data.records]
    alone = [[np.exp(unpack(layout, r)[3].astype(np.float32)) for r in w.label_shard(ShardTask(0, 0, refs, layout)).data.records]
             for w in singles]
    for n in range(2):
        assert not np.allclose(alone[0][n], alone[1][n], atol=1e-2)
        # float16 ln p: each p within 2^-11 |ln p| relatively, the ensemble's and both members'
        np.testing.assert_allclose(stored[n], (alone[0][n] + alone[1][n]) / 2, rtol=2**-10 * 10, atol=1e-6)


def test_bad_images_in_a_shard_are_all_reported(tiny, tmp_path):
    folder, checkpoint = tiny
    worker = make_worker(checkpoint, "marginal-smoothing")
    refs = image_refs(list_images(folder))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(refs[0].location.path).read_bytes()[:200])
    refs[1] = type(refs[1])("c0/broken.jpg", str(broken), 0)
    refs[4] = type(refs[4])("c1/truncated.jpg", str(truncated), 1)
    refs.append(type(refs[0])("c1/missing.jpg", str(tmp_path / "missing.jpg"), 1))

    outcome = worker.label_shard(ShardTask(0, 0, refs, layout_for(worker)))

    assert outcome.data is None
    assert [b.image_id for b in outcome.bad_images] == ["c0/broken.jpg", "c1/truncated.jpg", "c1/missing.jpg"]
    assert "truncated" in outcome.bad_images[1].reason.lower()
    assert outcome.bad_images[2] == BadImage("c1/missing.jpg", "file not found")
    assert worker.check_images(refs) == outcome.bad_images


def test_crop_batcher_cuts_exact_batches_across_images():
    batcher = CropBatcher(4)
    out = batcher.add(torch.arange(3)) + batcher.add(torch.arange(3, 10)) + batcher.add(torch.arange(10, 11))
    assert [b.tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.tolist() for b in batcher.flush()] == [[8, 9, 10]]
    assert batcher.flush() == []
    with pytest.raises(ValueError, match="--batch-size must be >= 1, got 0"):
        CropBatcher(0)


def test_payload_buffer_releases_rows_in_order():
    buffer = PayloadBuffer()
    buffer.add(quantize.Payload(np.arange(6).reshape(3, 2), np.arange(6, dtype=np.float16).reshape(3, 2)))
    buffer.add(quantize.Payload(np.arange(6, 10).reshape(2, 2), np.arange(6, 10, dtype=np.float16).reshape(2, 2)))
    indices, values = buffer.take(4)
    assert indices.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]] and values.tolist() == indices.tolist()
    assert buffer.rows == 1
    indices, values = buffer.take(1)
    assert indices.tolist() == [[8, 9]] and buffer.rows == 0
    hard = PayloadBuffer()
    hard.add(quantize.Payload(np.zeros((2, 1)), None))
    assert hard.take(2)[1] is None


@pytest.mark.skipif(not (CIFAR_DATA.is_file() and CIFAR_TEACHER.is_file()), reason="../shared CIFAR-10 data or teacher missing")
def test_keras_cifar10_teacher_labels_real_images(tmp_path):
    """The real pretrained teacher through the real pipeline: crop-averaged labels of real test
    images mostly name the true class (the teacher is 76.6 % accurate)."""
    root = extract_cifar_test_images(tmp_path / "cifar", 3)
    spec = teacher_spec("--teacher-module", "fkd.zoo.keras_cifar10:create_model")
    labels = LabelSettings("marginal-smoothing", 5, 8, seed=0, crop_params=CropParams(scale=(0.6, 1.0)), shard_size=100)
    worker = LabelWorker(WorkerConfig(spec, labels, batch_size=64, threads=2, device="cpu"))
    info = worker.info()
    assert (info.num_classes, info.input_size, info.interpolation) == (10, (32, 32), "bilinear")
    images = list_images(root)
    layout = RecordLayout(8, 5, 5, np.dtype(np.uint16))
    outcome = worker.label_shard(ShardTask(0, 0, image_refs(images), layout))
    predicted = []
    for record in outcome.data.records:
        _, _, indices, values = unpack(layout, record)
        dense = quantize.decode(torch.from_numpy(indices.astype(np.int64)), torch.from_numpy(values.copy()), "marginal-smoothing", 10)
        predicted.append(int(dense.mean(0).argmax()))
    accuracy = float(np.mean(np.array(predicted) == images.labels))
    assert accuracy >= 0.6, f"teacher accuracy {accuracy:.2f} on 30 real CIFAR-10 test images"
