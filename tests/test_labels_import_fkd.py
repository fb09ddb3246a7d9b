"""fkd-labels import-fkd: files written in the official FKD layout become a store with the same
pixel boxes, flips and decoded labels; anything else is refused cleanly (and never executed)."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fkd.data.crops import fixed_to_boxes, sample_crops
from fkd.data.images import list_images
from fkd.labels import import_fkd
from fkd.labels.cli import main
from fkd.labels.fkd_files import pixel_boxes
from fkd.labels.verify import verify_store
from fkd.payload import quantize
from fkd.store import LabelStore, Manifest

from conftest import make_image_folder

CLASSES, PER_CLASS, CROPS, K = 6, 2, 10, 3


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Images at .../imagenet/train/<class>/<name>.jpg, like the ImageNet tree FKD ran on."""
    return make_image_folder(tmp_path / "data" / "imagenet" / "train", classes=CLASSES, per_class=PER_CLASS)


def teacher_probs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(CLASSES, 0.5), size=(n, CROPS)).astype(np.float32)


def fkd_payload(probs: np.ndarray, label_type: str) -> np.ndarray:
    """FKD's label_quantization: hard (M,), smoothing (M, 2), marginal (M, 2, K) with float indices."""
    order = np.argsort(-probs, axis=1, kind="stable")
    if label_type == "hard":
        return order[:, 0].astype(np.int64)
    if label_type == "smoothing":
        return np.stack([order[:, 0].astype(np.float32), probs.max(1)], axis=1)
    top = order[:, :K]
    return np.stack([top.astype(np.float32), np.take_along_axis(probs, top, 1)], axis=1)


def write_fkd_labels(
    dataset: Path, save_path: Path, probs: np.ndarray, label_type: str = "marginal", trailing_dirs: int = 3, fp16: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One torch.save([coords, flips, labels]) per image at SAVE/<last dirs>/<name up to the first dot>.tar;
    returns the pixel boxes and flips written, by image id."""
    images = list_images(dataset)
    written = {}
    for i, entry in enumerate(images.entries):
        path = images.path(i).resolve()
        with Image.open(path) as img:
            w, h = img.size
        crops = sample_crops(entry.image_id, h, w, CROPS, seed=5)
        coords = (crops.boxes / np.array([h, w, h, w])).astype(np.float32)
        labels = fkd_payload(probs[i], label_type)
        if fp16:
            coords, labels = np.float16(coords), np.float16(labels)
        dirs = path.parent.parts[len(path.parent.parts) - trailing_dirs :]
        target = save_path.joinpath(*dirs, path.name.split(".")[0] + ".tar")
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save([coords, crops.flips, labels], target)
        written[entry.image_id] = (crops.boxes, crops.flips)
    return written


def fkd_recover_marginal_smoothing(payload: np.ndarray, num_classes: int) -> np.ndarray:
    """What FKD's Recover_soft_label computes for marginal smoothing (written here from its definition)."""
    index, value = payload[:, 0].astype(np.int64), payload[:, 1]
    dense = np.repeat(((1 - value.sum(1)) / (num_classes - value.shape[1]))[:, None], num_classes, axis=1)
    np.put_along_axis(dense, index, value, axis=1)
    return dense


def test_import_generator_layout(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    probs = teacher_probs(CLASSES * PER_CLASS)
    written = write_fkd_labels(dataset, tmp_path / "FKD_soft_label", probs)
    out = tmp_path / "store"
    argv = ["import-fkd", str(tmp_path / "FKD_soft_label"), "--data", str(dataset), "--out", str(out), "--shard-size", "5"]
    assert main(argv) == 0
    assert f"wrote {out}: 12 images x 10 crops, scheme marginal-smoothing, K=3, 6 classes" in capsys.readouterr().out
    store = LabelStore(out)
    meta = store.meta
    assert (meta.num_crops, meta.top_k, meta.num_classes, meta.num_shards) == (CROPS, K, CLASSES, 3)
    assert meta.class_names == [f"c{c}" for c in range(CLASSES)]
    assert meta.crop_scale == (0.08, 0.936) and meta.input_size == (475, 475) and meta.interpolation == "bicubic"
    assert store.image_ids == list_images(dataset).image_ids and store.labels.tolist() == list_images(dataset).labels.tolist()
    for i, image_id in enumerate(store.image_ids):
        record = store.read(i)
        boxes, flips = written[image_id]
        assert np.array_equal(fixed_to_boxes(record.boxes_fixed, record.height, record.width), boxes)
        assert np.array_equal(record.flips, flips)
        expected = quantize.encode(probs[i], "marginal-smoothing", K)
        assert np.array_equal(record.indices, expected.indices) and np.array_equal(record.values, expected.values)
        ours = quantize.decode(torch.from_numpy(record.indices.astype(np.int64)), torch.from_numpy(record.values.astype(np.float32)),
                               meta.scheme, CLASSES)
        theirs = fkd_recover_marginal_smoothing(fkd_payload(probs[i], "marginal"), CLASSES)
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-3)  # float16 storage
    assert verify_store(out, progress=False).ok
    assert main(["info", str(out), "--json"]) == 0 and json.loads(capsys.readouterr().out)["seed"] is None  # FKD crops are unseeded
    assert main(["info", str(out)]) == 0
    assert "flip p=0.5, unseeded (imported from the official FKD format)\n" in capsys.readouterr().out


@pytest.mark.parametrize("label_type,scheme,fp16", [("hard", "hardening", False), ("smoothing", "smoothing", True),
                                                     ("marginal", "marginal-renorm", True)])
def test_import_trainer_layout_other_label_types_and_fp16(
    dataset: Path, tmp_path: Path, label_type: str, scheme: str, fp16: bool
) -> None:
    """The trainer's --softlabel_path (two directories kept), --use_fp16 files, every FKD label type."""
    probs = teacher_probs(CLASSES * PER_CLASS, seed=1)
    written = write_fkd_labels(dataset, tmp_path / "labels", probs, label_type, trailing_dirs=2, fp16=fp16)
    out = tmp_path / "store"
    extra = ["--scheme", scheme] if scheme == "marginal-renorm" else []
    assert main(["import-fkd", str(tmp_path / "labels"), "--data", str(dataset), "--out", str(out), *extra]) == 0
    store = LabelStore(out)
    assert store.meta.scheme == scheme
    for i, image_id in enumerate(store.image_ids):
        record = store.read(i)
        boxes, _ = written[image_id]
        assert np.array_equal(fixed_to_boxes(record.boxes_fixed, record.height, record.width), boxes)
        source = probs[i].astype(np.float16).astype(np.float32) if fp16 else probs[i]
        expected = quantize.encode(source, scheme, K)
        assert np.array_equal(record.indices, expected.indices)
        assert (record.values is None and expected.values is None) or np.array_equal(record.values, expected.values)


def test_pixel_boxes_follow_pil_corner_rounding() -> None:
    coords = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.3], [0.999, 0.999, 0.001, 0.001], [0.5, 0.5, 0.0, 0.0]])
    # H=10, W=20: corners round(i), round(i+h): (1, 4)-(4, 10) -> h 3, w 6; degenerate boxes stay >= 1 px inside.
    assert pixel_boxes(coords, 10, 20).tolist() == [[0, 0, 10, 20], [1, 4, 3, 6], [9, 19, 1, 1], [5, 10, 1, 1]]


def test_missing_files_are_refused_or_skipped(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    probs = teacher_probs(CLASSES * PER_CLASS)
    write_fkd_labels(dataset, tmp_path / "labels", probs)
    lost = tmp_path / "labels" / "imagenet" / "train" / "c2" / "img001.tar"
    lost.unlink()
    out = tmp_path / "store"
    assert main(["import-fkd", str(tmp_path / "labels"), "--data", str(dataset), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"1 of 12 images have no FKD soft-label file (first: ['c2/img001.jpg'], expected e.g. {lost})" in err
    assert "pass --skip-missing to import the others" in err
    assert main(["import-fkd", str(tmp_path / "labels"), "--data", str(dataset), "--out", str(out), "--skip-missing"]) == 0
    store = LabelStore(out)
    assert len(store) == 11 and "c2/img001.jpg" not in store.image_ids
    assert store.meta.bad_images == [{"image_id": "c2/img001.jpg", "reason": "no FKD soft-label file"}]


class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_bad_files_are_refused_cleanly_and_never_executed(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    probs = teacher_probs(CLASSES * PER_CLASS)
    labels = tmp_path / "labels"
    write_fkd_labels(dataset, labels, probs)
    first = labels / "imagenet" / "train" / "c0" / "img000.tar"
    out = tmp_path / "store"
    argv = ["import-fkd", str(labels), "--data", str(dataset), "--out", str(out)]

    marker = tmp_path / "pwned"
    torch.save([_Payload(marker), np.zeros(CROPS, bool), np.zeros(CROPS)], first)
    assert main(argv) == 2
    assert f"fkd-labels import-fkd: error: {first}: not a readable FKD soft-label file: " in capsys.readouterr().err
    assert not marker.exists()

    first.write_bytes(b"not a torch file")
    assert main(argv) == 2 and f"{first}: not a readable FKD soft-label file" in capsys.readouterr().err

    torch.save([np.zeros((CROPS, 3), np.float32), np.zeros(CROPS, bool), np.zeros(CROPS)], first)
    assert main(argv) == 2
    assert f"{first}: coords must be (M, 4) and flips (M,), got (10, 3) and (10,)" in capsys.readouterr().err

    torch.save([[["x"] * 4] * CROPS, np.zeros(CROPS, bool), np.zeros(CROPS)], first)
    assert main(argv) == 2 and f"{first}: coords, flips and labels must be numeric arrays" in capsys.readouterr().err

    write_fkd_labels(dataset, labels, probs)
    assert main([*argv, "--num-classes", "2"]) == 2
    assert "class indices must be integers in 0..1 (check --num-classes)" in capsys.readouterr().err

    other = labels / "imagenet" / "train" / "c5" / "img001.tar"
    coords, flips, payload = torch.load(other, weights_only=False)
    torch.save([coords[:4], flips[:4], payload[:4]], other)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{other}: marginal labels for 4 crops (K=3), but {first} holds marginal labels for 10 crops (K=3)" in err
    assert Manifest.load(out).shards == {}  # stopped before the first shard was complete

    assert main(["import-fkd", str(tmp_path / "empty"), "--data", str(dataset), "--out", str(tmp_path / "s2")]) == 2
    assert "FKD soft-label directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["import-fkd", str(tmp_path / "empty"), "--data", str(dataset), "--out", str(tmp_path / "s2")]) == 2
    assert "no FKD soft-label file for any image of the data under" in capsys.readouterr().err


def test_scheme_must_fit_the_files(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_fkd_labels(dataset, tmp_path / "labels", teacher_probs(CLASSES * PER_CLASS), "hard")
    argv = ["import-fkd", str(tmp_path / "labels"), "--data", str(dataset), "--out", str(tmp_path / "s"), "--scheme", "full"]
    assert main(argv) == 2
    assert ("the FKD files hold hard labels, which import as hardening, not full; import first, then use fkd-labels convert"
            in capsys.readouterr().err)


def test_parallel_import_equals_in_process_import(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fkd_labels(dataset, tmp_path / "labels", teacher_probs(CLASSES * PER_CLASS, seed=2))
    base = ["import-fkd", str(tmp_path / "labels"), "--data", str(dataset), "--shard-size", "4"]
    assert main([*base, "--out", str(tmp_path / "serial"), "--workers", "1"]) == 0
    monkeypatch.setattr(import_fkd, "PARALLEL_MIN_IMAGES", 1)
    assert main([*base, "--out", str(tmp_path / "parallel"), "--workers", "2"]) == 0
    serial, parallel = LabelStore(tmp_path / "serial"), LabelStore(tmp_path / "parallel")
    assert parallel.image_ids == serial.image_ids
    for i in range(len(serial)):
        a, b = serial.read(i), parallel.read(i)
        assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("boxes_fixed", "flips", "indices", "values"))
