"""export-fkd then import-fkd keeps what training replays: the official files cannot hold the crop
settings, the teacher's view or the class space, so export-fkd writes them beside the files
(fkd-store.json) and import-fkd takes them from there; without it, import-fkd names the official
defaults it assumed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fkd.data.images import fingerprint, list_images
from fkd.labels.cli import main
from fkd.store import LabelStore, Manifest

from conftest import make_image_folder, write_random_store

CROPS, CLASSES = 6, 10
CLASS_MAP = {"c0": 7, "c1": 2, "c2": 5}  # the data's 3 folders -> the teacher's 10 classes


def trained_store(tmp_path: Path, scheme: str = "marginal-smoothing", top_k: int = 5) -> tuple[Path, Path]:
    """A store as fkd-labelgen writes it with settings unlike the official FKD defaults: bilinear
    32 px teacher, crop scale 0.25-1, seed 7, a class map, bf16, image fingerprints."""
    data = make_image_folder(tmp_path / "data" / "train", classes=3, per_class=2)
    images = list_images(data)
    sizes, crcs = [], []
    for i in range(len(images)):
        crcs.append(fingerprint(images.path(i).read_bytes()))
        with Image.open(images.path(i)) as img:
            sizes.append((img.height, img.width))
    mapped = [CLASS_MAP[images.class_names[label]] for label in images.labels]
    store, _ = write_random_store(
        tmp_path / "store", scheme, top_k, CLASSES, CROPS, len(images), shard_size=4, seed=7, image_ids=images.image_ids,
        sizes=np.array(sizes), labels=np.array(mapped), fingerprints=np.array(crcs, dtype=np.uint32),
    )
    manifest = Manifest.load(store)
    manifest.meta = dataclasses.replace(
        manifest.meta, interpolation="bilinear", input_size=(32, 32), crop_scale=(0.25, 1.0), crop_ratio=(0.5, 2.0),
        flip_prob=0.25, temperature=2.0, teacher_precision="bf16", class_map=dict(CLASS_MAP), mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25), teachers=[{"name": "resnet18", "checkpoint": "/ckpt/r18.pth", "sha256": "ab" * 32}],
        data_fingerprint=images.fingerprint(),
    )
    manifest.save(store)
    return store, data


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("scheme,top_k,stored_k,from_above", [("marginal-renorm", 3, 3, False), ("hardening", 5, 1, True)])
def test_round_trip_keeps_every_training_setting(
    scheme: str, top_k: int, stored_k: int, from_above: bool, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """from_above: imported from the folder above the export, the official trainer's --softlabel_path."""
    store, data = trained_store(tmp_path, scheme, top_k)
    exported = tmp_path / "fkd" / "train"
    assert run(capsys, "export-fkd", str(store), "--out", str(exported))[0] == 0
    back = tmp_path / "back"
    code, out, err = run(capsys, "import-fkd", str(exported.parent if from_above else exported), "--data", str(data), "--out", str(back))
    with LabelStore(store) as original, LabelStore(back) as imported:
        assert imported.meta.differences(original.meta) == []  # every setting, the labels' class map included
        assert (imported.meta.interpolation, imported.meta.crop_scale, imported.meta.input_size) == ("bilinear", (0.25, 1.0), (32, 32))
        assert imported.image_ids == original.image_ids and imported.labels.tolist() == original.labels.tolist() == [7, 7, 2, 2, 5, 5]
        for i in range(len(original)):
            a, b = original.read(i), imported.read(i)
            assert (a.height, a.width, a.label, a.fingerprint) == (b.height, b.width, b.label, b.fingerprint)
            for name in ("boxes_fixed", "flips", "indices", "values"):
                x, y = getattr(a, name), getattr(b, name)
                assert (x is None and y is None) or (x.dtype == y.dtype and x.tobytes() == y.tobytes())
    assert (code, err) == (0, "")
    assert out == (f"wrote {back}: 6 images x 6 crops, scheme {scheme}, K={stored_k}, 10 classes, 0 images without labels left out; "
                   f"settings from {exported / 'fkd-store.json'}\n")
    assert json.loads((exported / "fkd-store.json").read_text())["meta"]["interpolation"] == "bilinear"
    code, out, _ = run(capsys, "info", str(back))
    assert code == 0 and "scale (0.25, 1.0), ratio (0.5, 2.0), flip p=0.25, seed 7\n" in out
    assert "teacher view: 32x32 bilinear, temperature 2.0, precision bf16\n" in out


def test_images_the_store_left_out_are_left_out_again(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """fkd-labelgen --skip-bad leaves undecodable images out: they have no file, and the import
    leaves them out with their recorded reason instead of asking for --skip-missing."""
    store, data = trained_store(tmp_path)
    dropped = tmp_path / "dropped"
    assert run(capsys, "convert", str(store), "--out", str(dropped), "--subset", "classes=class7,class5")[0] == 0
    manifest = Manifest.load(dropped)
    manifest.meta = dataclasses.replace(manifest.meta, bad_images=[{"image_id": f"c1/img00{i}.jpg", "reason": "cannot decode"} for i in (0, 1)])
    manifest.save(dropped)
    assert run(capsys, "export-fkd", str(dropped), "--out", str(tmp_path / "fkd"))[0] == 0
    code, out, err = run(capsys, "import-fkd", str(tmp_path / "fkd"), "--data", str(data), "--out", str(tmp_path / "back"))
    assert (code, err) == (0, "") and "4 images x 6 crops" in out and "2 images without labels left out" in out
    with LabelStore(tmp_path / "back") as back:
        assert back.meta.bad_images == manifest.meta.bad_images and back.image_ids == LabelStore(dropped).image_ids


def test_flags_that_contradict_the_sidecar_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store, data = trained_store(tmp_path)
    exported = tmp_path / "fkd"
    assert run(capsys, "export-fkd", str(store), "--out", str(exported))[0] == 0
    base = ["import-fkd", str(exported), "--data", str(data), "--out", str(tmp_path / "back")]
    sidecar = exported / "fkd-store.json"
    for flags, said in [
        (["--interpolation", "bicubic"], "--interpolation bicubic: the files were labelled with bilinear"),
        (["--crop-scale", "0.08", "0.936"], "--crop-scale 0.08 0.936: the files were labelled with 0.25 1.0"),
        (["--input-size", "475"], "--input-size 475: the files were labelled with 32"),
        (["--num-classes", "3"], "--num-classes 3: the files were labelled with 10"),
        (["--temperature", "1"], "--temperature 1.0: the files were labelled with 2.0"),
        (["--teacher", "effnet"], "--teacher effnet: the files were labelled with resnet18"),
        (["--scheme", "marginal-renorm"], "--scheme marginal-renorm: the files were labelled with marginal-smoothing"),
    ]:
        code, _, err = run(capsys, *base, *flags)
        assert (code, err) == (2, (
            f"fkd-labels import-fkd: error: {said} (as {sidecar} records, written by export-fkd with the files); leave the flag "
            f"out, or delete {sidecar} to import the files as plain official FKD files\n"
        )), flags
    assert not (tmp_path / "back").exists()
    agreeing = ["--interpolation", "bilinear", "--crop-scale", "0.25", "1", "--input-size", "32", "--num-classes", "10",
                "--temperature", "2", "--teacher", "resnet18", "--scheme", "marginal-smoothing", "--shard-size", "5"]
    code, _, err = run(capsys, *base, *agreeing)
    assert (code, err) == (0, "")
    with LabelStore(tmp_path / "back") as back, LabelStore(store) as original:
        assert back.meta.differences(original.meta) == ["shard_size"] and back.meta.shard_size == 5


def test_a_sidecar_that_does_not_describe_the_files_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store, data = trained_store(tmp_path)  # marginal-smoothing K=5, M=6
    other, _ = write_random_store(tmp_path / "other", "hardening", 5, CLASSES, CROPS, 6, image_ids=list_images(data).image_ids)
    exported = tmp_path / "fkd"
    assert run(capsys, "export-fkd", str(store), "--out", str(exported))[0] == 0
    assert run(capsys, "export-fkd", str(other), "--out", str(tmp_path / "fkd2"))[0] == 0
    (tmp_path / "fkd2" / "fkd-store.json").replace(exported / "fkd-store.json")
    sidecar = exported / "fkd-store.json"
    code, _, err = run(capsys, "import-fkd", str(exported), "--data", str(data), "--out", str(tmp_path / "back"))
    first = exported / "c0" / "img000.tar"
    assert (code, err) == (2, (
        f"fkd-labels import-fkd: error: {sidecar} describes soft labels (hardening, K=1) for 6 crops, but {first} holds "
        f"marginal labels (K=5) for 6 crops: it belongs to another export; delete it to import the files as plain official FKD files\n"
    ))
    sidecar.write_text("{not json")
    code, _, err = run(capsys, "import-fkd", str(exported), "--data", str(data), "--out", str(tmp_path / "back"))
    assert code == 2 and err.startswith(f"fkd-labels import-fkd: error: {sidecar}: not an export-fkd settings file (")
    assert err.endswith(f"); delete it to import the files as plain official FKD files\n") and err.count("\n") == 1


def test_export_refuses_to_mix_stores_in_one_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store, data = trained_store(tmp_path)
    other, _ = write_random_store(tmp_path / "other", "marginal-smoothing", 5, CLASSES, CROPS, 6, image_ids=list_images(data).image_ids)
    exported = tmp_path / "fkd"
    assert run(capsys, "export-fkd", str(store), "--out", str(exported), "--subset", "classes=class7")[0] == 0
    assert run(capsys, "export-fkd", str(store), "--out", str(exported), "--overwrite")[0] == 0  # the same store: completes it
    code, _, err = run(capsys, "export-fkd", str(other), "--out", str(exported), "--overwrite")
    assert code == 2 and err.startswith(
        f"fkd-labels export-fkd: error: --out {exported} holds the FKD files of a store with other settings (that store vs "
        f"{other}: class_map: 3 entries vs None; crop_ratio: [0.5, 2.0] vs [0.75, 1.3333333333333333]; "
    )
    assert err.endswith("); export to another --out\n") and err.count("\n") == 1


def test_official_files_name_the_defaults_they_assume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Files without fkd-store.json (the official generator's): the settings they cannot hold are the
    official generator's defaults unless given, and import-fkd says which it assumed, in one line."""
    store, data = trained_store(tmp_path)
    exported = tmp_path / "fkd"
    assert run(capsys, "export-fkd", str(store), "--out", str(exported))[0] == 0
    (exported / "fkd-store.json").unlink()
    argv = ["import-fkd", str(exported), "--data", str(data), "--num-classes", "10"]
    code, out, err = run(capsys, *argv, "--out", str(tmp_path / "a"))
    assert code == 0 and "settings from" not in out
    assert err == (
        f"fkd-labels import-fkd: warning: {exported} has no fkd-store.json (not written by export-fkd): assumed the official FKD "
        "generator's --input-size 475 --crop-scale 0.08 0.936 --interpolation bicubic; pass the values the labels were made with "
        "if they differ (fkd-train replays crops with the recorded interpolation)\n"
    )
    meta = LabelStore(tmp_path / "a").meta
    assert (meta.interpolation, meta.crop_scale, meta.input_size, meta.teacher_precision) == ("bicubic", (0.08, 0.936), (475, 475), "unknown")
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "b"), "--interpolation", "bilinear", "--crop-scale", "0.25", "1")
    assert code == 0 and "assumed the official FKD generator's --input-size 475; pass the values" in err
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "c"), "--interpolation", "bilinear", "--crop-scale", "0.25", "1",
                       "--input-size", "32")
    assert (code, err) == (0, "")
    meta = LabelStore(tmp_path / "c").meta
    assert (meta.interpolation, meta.crop_scale, meta.input_size) == ("bilinear", (0.25, 1.0), (32, 32))
