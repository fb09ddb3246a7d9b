"""fkd-labelgen end to end on a real local Ray instance (one per module), tiny data, tiny teacher."""

from __future__ import annotations

import json
import logging
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml

from fkd.data.crops import CropParams, boxes_to_fixed, replay_fixed, sample_crops
from fkd.data.images import list_images, load_image
from fkd.store import LabelStore, Manifest
from fkd.teacher.teachers import create_teacher
from labelgen.cli import main
from labelgen.worker import CRASH_ONCE_ENV

from conftest import make_image_folder
from test_labelgen_worker import save_tiny_teacher

CROPS = 6
NUM_CLASSES = 3  # the teacher's classes are the data's three class folders


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """fkd-labelgen reuses an initialized Ray instead of starting (and stopping) its own."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("labelgen")
    return {
        "root": root,
        "images": make_image_folder(root / "images", classes=3, per_class=4),
        "teacher": save_tiny_teacher(root / "teacher.pth", num_classes=NUM_CLASSES),
    }


def argv(assets: dict[str, Path], out: Path, *extra: str, data: "Path | None" = None, progress: bool = False) -> list[str]:
    return [
        "--teacher", "test_resnet", "--checkpoint", str(assets["teacher"]), "--no-pretrained", "--input-size", "32",
        "--data", str(data or assets["images"]), "--out", str(out), "--crops", str(CROPS), "--scheme", "full",
        "--crop-scale", "0.2", "1.0", "--seed", "3", "--shard-size", "5", "--batch-size", "7", *([] if progress else ["--no-progress"]), *extra,
    ]


@pytest.fixture(scope="module")
def baseline(assets) -> Path:
    """The reference store: one worker."""
    out = assets["root"] / "store-1w"
    assert main(argv(assets, out, "--workers", "1")) == 0
    return out


def store_contents(path: Path) -> dict[str, object]:
    """Everything a store says about its images (not its bookkeeping: store id, creation time)."""
    with LabelStore(path) as store:
        records = [store.read(i) for i in range(len(store))]
        return {
            "settings": store.meta.settings(),
            "ids": store.image_ids,
            "labels": store.labels.tolist(),
            "sizes": store.image_sizes.tolist(),
            "boxes": np.stack([r.boxes_fixed for r in records]),
            "flips": np.stack([r.flips for r in records]),
            "values": np.stack([r.values for r in records]),
        }


def assert_same_store(a: Path, b: Path, labels_rtol: float = 0.0) -> None:
    """The determinism guarantee: ids, sizes, boxes and flips bitwise equal; labels bitwise equal
    (``labels_rtol`` 0) or, for another per-worker configuration, equal within ``labels_rtol``."""
    ca, cb = store_contents(a), store_contents(b)
    assert ca.keys() == cb.keys()
    for key in ca:
        if key == "values" and labels_rtol:
            np.testing.assert_allclose(ca[key].astype(np.float64), cb[key].astype(np.float64), rtol=labels_rtol, atol=1e-7)
        elif isinstance(ca[key], np.ndarray):
            np.testing.assert_array_equal(ca[key], cb[key], err_msg=key)
        else:
            assert ca[key] == cb[key], key


def test_store_is_complete_and_holds_the_teachers_labels(assets, baseline, capsys):
    images = list_images(assets["images"])
    with LabelStore(baseline) as store:
        meta = store.meta
        assert (len(store), meta.num_crops, meta.num_shards, meta.scheme, meta.num_classes) == (12, CROPS, 3, "full", NUM_CLASSES)
        for shard in range(meta.num_shards):
            store.verify_shard_checksum(shard)
        assert store.image_ids == images.image_ids
        assert store.labels.tolist() == images.labels.tolist()
        assert meta.data_fingerprint == images.fingerprint()
        assert (meta.seed, meta.crop_scale, meta.input_size, meta.bad_images) == (3, (0.2, 1.0), (32, 32), [])
        assert [t["name"] for t in meta.teachers] == ["test_resnet"]
        assert meta.class_names == ["c0", "c1", "c2"]  # the data's: the teacher names none
        assert (meta.teacher_precision, meta.image_fingerprint, meta.class_map) == ("fp32", "crc32", None)

        teacher = create_teacher(["test_resnet"], [str(assets["teacher"])], pretrained=False, input_size=32)
        for i in range(len(store)):
            rec = store.read(i)
            pixels = load_image(images.path(i))
            h, w = pixels.shape[-2:]
            assert (rec.height, rec.width) == (h, w)
            assert rec.fingerprint == zlib.crc32(images.path(i).read_bytes())
            crops = sample_crops(rec.image_id, h, w, CROPS, 3, CropParams(scale=(0.2, 1.0)))
            np.testing.assert_array_equal(rec.boxes_fixed, boxes_to_fixed(crops.boxes, h, w))
            np.testing.assert_array_equal(rec.flips, crops.flips)
            views = replay_fixed(pixels, rec.boxes_fixed, rec.flips, meta.input_size, meta.interpolation)
            with torch.inference_mode():
                expected = teacher(views.float() / 255.0)
            stored = meta.label_codec().decode(None, torch.from_numpy(rec.values.astype(np.float32)))
            torch.testing.assert_close(stored, expected, rtol=2**-10, atol=1e-6)
    saved = yaml.safe_load((baseline / "labelgen-args.yaml").read_text())
    assert (saved["crops"], saved["scheme"], saved["overwrite"]) == (CROPS, "full", False)


def test_two_workers_make_the_same_store(assets, baseline, tmp_path, capsys):
    """Bitwise, labels included: the teacher's threads are a setting (default 1), not a share of
    the CPUs, so one worker with 2 CPUs and two with 1 each compute alike."""
    assert main(argv(assets, tmp_path / "store", "--workers", "2")) == 0
    assert "12 images, 72 crops, 3 shards (3 written, 0 already done)" in capsys.readouterr().out
    assert_same_store(baseline, tmp_path / "store")


def test_another_thread_count_keeps_crops_bitwise_and_labels_within_float_reproducibility(assets, baseline, tmp_path):
    out = tmp_path / "store"
    assert main(argv(assets, out, "--workers", "1", "--threads", "2")) == 0
    assert yaml.safe_load((out / "labelgen-args.yaml").read_text())["threads"] == 2
    assert_same_store(baseline, out, labels_rtol=2**-9)  # float16 labels: within 2 units in the last place


def test_a_worker_killed_mid_shard_costs_only_a_retry(assets, baseline, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))  # the first worker to reach a batch SIGKILLs itself
    assert main(argv(assets, tmp_path / "store", "--workers", "2", progress=True)) == 0
    assert marker.exists()
    err = capsys.readouterr().err
    assert "failed (the worker process died (killed, out of memory, or crashed)); retrying (1/3)" in err
    assert "labelling: 100%" in err and "12/12" in err
    assert_same_store(baseline, tmp_path / "store")


def test_rerun_skips_finished_shards_and_redoes_unrecorded_ones(assets, baseline, tmp_path, capsys):
    out = tmp_path / "store"
    shutil.copytree(baseline, out)
    manifest = Manifest.load(out)
    del manifest.shards[1]  # as if the run died after writing shard 1 but before recording it
    manifest.save(out)
    before = {i: (out / f"shard-{i:05d}.h5").stat() for i in range(3)}

    assert main(argv(assets, out)) == 0

    assert "3 shards (1 written, 2 already done)" in capsys.readouterr().out
    after = {i: (out / f"shard-{i:05d}.h5").stat() for i in range(3)}
    for i in (0, 2):
        assert (after[i].st_ino, after[i].st_mtime_ns) == (before[i].st_ino, before[i].st_mtime_ns)
    assert after[1].st_ino != before[1].st_ino
    assert_same_store(baseline, out)


def test_rerun_on_changed_data_is_refused_naming_the_setting(assets, baseline, tmp_path, capsys):
    out = tmp_path / "store"
    shutil.copytree(baseline, out)
    data = tmp_path / "images"
    shutil.copytree(assets["images"], data)
    shutil.copy(data / "c0" / "img000.jpg", data / "c0" / "img999.jpg")
    before = (out / "store.json").read_text()

    assert main(argv(assets, out, data=data)) == 2

    err = capsys.readouterr().err
    assert "fkd-labelgen: error: " in err and "Traceback" not in err
    assert "exists with different settings (data_fingerprint: store has" in err
    assert "num_images: store has 12, asked 13" in err
    assert (out / "store.json").read_text() == before


def test_a_teacher_that_cannot_be_loaded_is_a_clean_error(assets, tmp_path, capsys):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    args = argv(assets, tmp_path / "store")
    args[args.index(str(assets["teacher"]))] = str(broken)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^fkd-labelgen: error: worker 1 of 2 \(node [\d.]+\) could not load the teacher: "
                     rf"cannot read teacher checkpoint {re.escape(str(broken))}: ", err, re.M), err
    assert not (tmp_path / "store").exists()


def test_data_classes_that_are_not_the_teachers_are_refused_unless_mapped(assets, tmp_path, capsys):
    """Two class folders under a three-class teacher: refused before anything is written; with a
    class map, the store keeps the map and the ground truth in the teacher's classes."""
    data = tmp_path / "two-classes"
    for name in ("cat", "dog"):
        shutil.copytree(assets["images"] / "c0", data / name)
    assert main(argv(assets, tmp_path / "refused", data=data)) == 2
    err = capsys.readouterr().err
    assert "fkd-labelgen: error: --data has 2 classes (cat, dog), not the teacher's 3 classes; pass --class-map FILE" in err
    assert not (tmp_path / "refused" / "store.json").exists()

    class_map = tmp_path / "map.txt"
    class_map.write_text("cat 2\ndog 0\n")
    assert main(argv(assets, tmp_path / "mapped", "--class-map", str(class_map), data=data)) == 0
    with LabelStore(tmp_path / "mapped") as store:
        assert store.meta.class_map == {"cat": 2, "dog": 0}
        assert store.meta.class_names == ["0", "1", "2"]
        assert store.labels.tolist() == [2] * 4 + [0] * 4


def test_top_k_beyond_the_teachers_classes_is_refused(assets, tmp_path, capsys):
    assert main(argv(assets, tmp_path / "store", "--scheme", "marginal-smoothing", "--top-k", "4")) == 2
    assert "fkd-labelgen: error: --top-k 4 exceeds the teacher's 3 classes; use --top-k 3 or less" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_worker_sizing_defaults_and_limits():
    from labelgen.driver import Sizing, resolve_sizing
    from labelgen.errors import InputError

    assert resolve_sizing(None, None, None) == Sizing(2, 1.0, 0.0)  # no GPU: a worker per CPU
    assert resolve_sizing(1, None, None) == Sizing(1, 2.0, 0.0)
    with pytest.raises(InputError, match=r"3 workers x \(1 CPUs, 0 GPUs\) do not fit the Ray cluster \(2 CPUs, 0 GPUs\)"):
        resolve_sizing(3, 1, None)
    with pytest.raises(InputError, match=r"1 workers x \(1 CPUs, 1 GPUs\) do not fit"):
        resolve_sizing(1, 1, 1)


@pytest.fixture(scope="module")
def data_with_bad_images(assets) -> Path:
    data = assets["root"] / "bad-images"
    shutil.copytree(assets["images"], data)
    (data / "c1" / "broken.jpg").write_bytes(b"not an image at all")
    (data / "c2" / "truncated.jpg").write_bytes((data / "c2" / "img000.jpg").read_bytes()[:300])
    return data


def test_bad_images_fail_the_run_listing_them(assets, data_with_bad_images, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(argv(assets, out, data=data_with_bad_images)) == 2
    err = capsys.readouterr().err
    assert "fkd-labelgen: error: 2 of 14 images cannot be read:\n  c1/broken.jpg: " in err
    assert "\n  c2/truncated.jpg: " in err
    assert "pass --skip-bad to leave them out of the store" in err
    assert not (out / "store.json").exists()


def test_skip_bad_leaves_bad_images_out_and_records_them(assets, baseline, data_with_bad_images, tmp_path, capsys):
    out = tmp_path / "store"
    data = tmp_path / "data"
    shutil.copytree(data_with_bad_images, data)
    assert main(argv(assets, out, "--skip-bad", data=data)) == 0
    assert "12 images, 72 crops, 3 shards (3 written, 0 already done), 2 bad images skipped" in capsys.readouterr().out
    meta = json.loads((out / "store.json").read_text())["meta"]
    assert [b["image_id"] for b in meta["bad_images"]] == ["c1/broken.jpg", "c2/truncated.jpg"]
    assert all(b["reason"] for b in meta["bad_images"])
    with LabelStore(out) as store, LabelStore(baseline) as reference:
        assert store.image_ids == reference.image_ids  # the listing minus the bad images
        np.testing.assert_array_equal(store.read(11).values, reference.read(11).values)
    # Repair one bad image and break another: same listing, same count, another image list.
    shutil.copy(data / "c0" / "img000.jpg", data / "c1" / "broken.jpg")
    (data / "c0" / "img001.jpg").write_bytes(b"broken now")
    manifest = Manifest.load(out)
    del manifest.shards[0]
    manifest.save(out)
    # The recorded check is reused (no new check), so relabelling shard 0 meets the newly broken image.
    assert main(argv(assets, out, "--skip-bad", data=data)) == 2
    err = capsys.readouterr().err
    assert "fkd-labelgen: error: 1 of the 5 images of shard 0 cannot be read:\n  c0/img001.jpg: " in err
    assert "rerun with --overwrite --skip-bad to check every image again" in err
    assert main(argv(assets, out, "--skip-bad", "--overwrite", data=data)) == 0  # checks again
    assert "(3 written, 0 already done), 2 bad images skipped" in capsys.readouterr().out
    with LabelStore(out) as store:
        assert [b["image_id"] for b in store.meta.bad_images] == ["c0/img001.jpg", "c2/truncated.jpg"]
        assert "c1/broken.jpg" in store.image_ids and "c0/img001.jpg" not in store.image_ids


def test_rerun_relabels_shards_damaged_after_they_were_finished(assets, baseline, tmp_path, capsys):
    out = tmp_path / "store"
    shutil.copytree(baseline, out)
    (out / "shard-00000.h5").unlink()
    truncated = out / "shard-00001.h5"
    truncated.write_bytes(truncated.read_bytes()[:-50])
    flipped = bytearray((out / "shard-00002.h5").read_bytes())
    flipped[len(flipped) // 2] ^= 0x40
    (out / "shard-00002.h5").write_bytes(bytes(flipped))

    assert main(argv(assets, out)) == 0

    captured = capsys.readouterr()
    assert "shard-00000.h5: shard file is missing; labelling shard 0 again" in captured.err
    assert "shard-00001.h5: shard is truncated" in captured.err
    assert "shard-00002.h5: checksum mismatch: sha256" in captured.err
    assert "3 shards (3 written, 0 already done)" in captured.out
    assert_same_store(baseline, out)
