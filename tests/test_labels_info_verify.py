"""fkd-labels info and verify: exact figures, per-shard diagnoses, exit codes, repair."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from fkd.labels.cli import main
from fkd.labels.verify import verify_store
from fkd.store import Manifest, ShardData, compress_records, store_lock, write_shard

from conftest import write_random_store


def shard_file(path: Path, shard: int) -> Path:
    return path / f"shard-{shard:05d}.h5"


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_json_has_exact_figures(random_store: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    path, _ = random_store
    code, out, _ = run(capsys, "info", str(path), "--json")
    info = json.loads(out)
    shard_bytes = sum(shard_file(path, s).stat().st_size for s in range(3))
    assert code == 0
    assert info["shard_bytes"] == shard_bytes
    assert info["disk_bytes"] == shard_bytes + (path / "store.json").stat().st_size
    assert info["bytes_per_crop"] == shard_bytes / (10 * 16)
    # uncompressed: boxes 8 B + flip bit + 5 uint16 indices + 5 float16 values per crop
    assert info["raw_bytes_per_crop"] == 8 + 2 / 16 + 10 + 10
    assert {k: info[k] for k in ("scheme", "top_k", "num_classes", "num_images", "num_crops", "total_crops", "shards_total",
                                 "shards_done", "complete", "missing_shards", "bad_images")} == {
        "scheme": "marginal-smoothing", "top_k": 5, "num_classes": 10, "num_images": 10, "num_crops": 16, "total_crops": 160,
        "shards_total": 3, "shards_done": 3, "complete": True, "missing_shards": [], "bad_images": 0,
    }
    assert info["teachers"] == [{"name": "random"}] and info["subset"] is None


def test_info_text_and_incomplete_store(random_store: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    path, _ = random_store
    code, out, _ = run(capsys, "info", str(path))
    assert code == 0
    assert "status:       complete\n" in out and "scheme:       marginal-smoothing, K=5\n" in out
    assert "crops:        16 per image, 160 in all\n" in out and "shards:       3 of 3 finished\n" in out
    assert ", temperature 1.0, precision " in out
    manifest = Manifest.load(path)
    del manifest.shards[1]
    manifest.save(path)
    code, out, _ = run(capsys, "info", str(path), "--json")
    info = json.loads(out)
    assert code == 1 and info["complete"] is False and info["missing_shards"] == [1] and info["images_done"] == 6  # as --help says
    code, out, _ = run(capsys, "info", str(path))
    assert code == 1 and "status:       INCOMPLETE: 1 shards missing (first: [1])" in out


def test_info_sees_deleted_and_truncated_shards(random_store: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    """The manifest lists every shard, but a file deleted or cut short makes the store unusable:
    info checks each file's presence and size (no hashing) and never calls such a store complete."""
    path, _ = random_store
    shard_file(path, 1).unlink()
    size = shard_file(path, 2).stat().st_size
    with open(shard_file(path, 2), "r+b") as f:
        f.truncate(size - 10)
    code, out, _ = run(capsys, "info", str(path), "--json")
    info = json.loads(out)
    assert code == 1 and info["complete"] is False and info["missing_shards"] == []
    assert info["damaged_shards"] == {
        "shard-00001.h5": "shard file is missing",
        "shard-00002.h5": f"shard is truncated: {size - 10} bytes, the manifest recorded {size}",
    }
    code, out, _ = run(capsys, "info", str(path))
    assert code == 1 and (f"status:       DAMAGED: 2 finished shards (shard-00001.h5: shard file is missing; shard-00002.h5: shard is "
            f"truncated: {size - 10} bytes, the manifest recorded {size}); 'fkd-labels verify {path} --repair-plan' says what to redo\n") in out


@pytest.mark.parametrize("command", ["info", "verify", "convert", "export-fkd", "merge"])
def test_a_path_without_a_store_is_a_bad_request(command: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Exit 2 as --help promises for a bad request; 1 is kept for stores that are damaged."""
    extra = {"convert": ["--out", str(tmp_path / "o")], "export-fkd": ["--out", str(tmp_path / "o")],
             "merge": [str(tmp_path), "--out", str(tmp_path / "o")]}.get(command, [])
    code, _, err = run(capsys, command, str(tmp_path), *extra)
    assert code == 2
    assert err == (f"fkd-labels {command}: error: {tmp_path}: not a label store (no store.json in it); pass a directory "
                   "written by fkd-labelgen\n")
    code, _, err = run(capsys, command, str(tmp_path / "nowhere"), *extra)
    assert code == 2
    assert err == f"fkd-labels {command}: error: {tmp_path / 'nowhere'}: no such directory; pass a label store directory (written by fkd-labelgen)\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["unfinished", "truncated"])
def test_every_command_exits_1_on_an_incomplete_or_damaged_store(
    damage: str, random_store: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The exit status --help documents (1: damaged/incomplete store), for each command that reads a store."""
    path, _ = random_store
    if damage == "unfinished":
        manifest = Manifest.load(path)
        del manifest.shards[1]
        manifest.save(path)
        why = f"{path}: store is incomplete: 1 of 3 shards missing (first: [1]); rerun fkd-labelgen with the same arguments to finish it"
    else:
        size = shard_file(path, 1).stat().st_size
        with open(shard_file(path, 1), "r+b") as f:
            f.truncate(size - 10)
        why = f"{shard_file(path, 1)}: shard is truncated: {size - 10} bytes, the manifest recorded {size}"
    other, _ = write_random_store(tmp_path / "other", image_ids=[f"z/{i}.jpg" for i in range(10)])
    for argv in (["info", str(path)], ["verify", str(path), "--quiet"], ["convert", str(path), "--out", str(tmp_path / "c")],
                 ["export-fkd", str(path), "--out", str(tmp_path / "e")], ["merge", str(other), str(path), "--out", str(tmp_path / "m")],
                 ["show", str(path), "--image", "c0/img006.jpg", "--data", str(tmp_path), "--out", str(tmp_path / "s.png")]):
        code, _, err = run(capsys, *argv)
        assert code == 1, argv
        if argv[0] not in ("info", "verify"):  # they report on stdout
            assert err.endswith(f"fkd-labels {argv[0]}: error: {why}\n"), argv


def test_info_subset_counts(random_store: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    path, _ = random_store
    code, out, _ = run(capsys, "info", str(path), "--json", "--subset", "classes=class1,class2")
    subset = json.loads(out)["subset"]
    assert code == 0
    # labels are i % 3 for i in 0..9: class1 -> 1, 4, 7; class2 -> 2, 5, 8
    assert subset == {"spec": "classes=class1, class2", "images": 6, "crops": 96, "per_class": {"class1": 3, "class2": 3}}


def test_verify_ok(random_store: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    path, _ = random_store
    code, out, _ = run(capsys, "verify", str(path), "--repair-plan", "--quiet")
    assert code == 0
    assert out == f"OK: {path}: 3 shards, 10 images, 160 crops verified\nrepair plan: nothing to redo\n"


def test_verify_reports_every_damaged_shard(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, _ = write_random_store(tmp_path / "s", num_images=22, shard_size=4)  # 6 shards
    other, _ = write_random_store(tmp_path / "other", num_images=22, shard_size=4, seed=1)
    data = shard_file(path, 0).read_bytes()
    shard_file(path, 0).write_bytes(data[:-64])  # truncated
    with h5py.File(shard_file(path, 1), "r") as f:
        at = f["records"].id.get_offset() + int(f["offsets"][1]) + 3
    flipped = bytearray(shard_file(path, 1).read_bytes())
    flipped[at] ^= 0x40
    shard_file(path, 1).write_bytes(bytes(flipped))  # one bit of image 5's record
    shard_file(path, 2).unlink()  # deleted
    shard_file(path, 3).write_bytes(shard_file(other, 3).read_bytes())  # another store's shard
    manifest = Manifest.load(path)
    del manifest.shards[4]  # never finished
    manifest.save(path)
    (path / ".shard-00004.h5.abc.tmp").write_bytes(b"partial")
    code, out, _ = run(capsys, "verify", str(path), "--repair-plan", "--quiet")
    assert code == 1
    size = len(data)
    assert f"shard 0 (shard-00000.h5, images 0..3): corrupt\n    shard is truncated: {size - 64} bytes, the manifest recorded {size}" in out
    assert "shard 1 (shard-00001.h5, images 4..7): corrupt\n    checksum mismatch: sha256" in out
    assert "shard 2 (shard-00002.h5, images 8..11): missing\n    shard file is missing\n" in out
    assert "shard 3 (shard-00003.h5, images 12..15): corrupt\n    checksum mismatch: sha256" in out
    assert "shard 4 (shard-00004.h5, images 16..19): unfinished\n    not finished: fkd-labelgen has not written it" in out
    assert "shard 5" not in out
    assert "note: shard files not listed in the manifest (ignored): shard-00004.h5" in out
    assert "note: temporary files left by an interrupted write: .shard-00004.h5.abc.tmp" in out
    assert f"FAILED: {path}: 5 of 6 shards need attention (1 unfinished, 1 missing, 3 corrupt)" in out
    # missing, truncated, bit-flipped and foreign files all fail labelgen's resume check: a rerun alone repairs them
    assert out.endswith(
        "repair plan: fkd-labelgen must redo 5 shards (20 images): 0-4\n"
        "  1. rerun fkd-labelgen with the same arguments and --out: it labels the shards the manifest lacks and relabels those "
        "whose file is missing or changed\n"
    )

    code, out, _ = run(capsys, "verify", str(path), "--json", "--quiet")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["redo"] == [0, 1, 2, 3, 4]
    assert [s["status"] for s in report["shards"]] == ["corrupt", "corrupt", "missing", "corrupt", "unfinished", "ok"]

    code, _, err = run(capsys, "verify", str(path), "--repair", "--quiet")
    assert code == 1 and "repair: the manifest now lacks shards [0, 1, 2, 3, 4]" in err
    assert sorted(p.name for p in path.iterdir()) == [".lock", "shard-00004.h5", "shard-00005.h5", "store.json"]
    assert Manifest.load(path).missing_shards() == [0, 1, 2, 3, 4]
    report = verify_store(path, progress=False)
    assert [s.status for s in report.shards] == ["unfinished"] * 5 + ["ok"]


def test_verify_checks_payload_values_behind_valid_checksums(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A record whose CRC holds but whose content no writer makes (a class index >= C, a probability
    above 1, an empty box) is reported, naming the image."""
    path, _ = write_random_store(tmp_path / "s", num_images=4, shard_size=4, num_crops=2, top_k=2, num_classes=10)
    manifest = Manifest.load(path)
    meta = manifest.meta
    boxes = np.tile(np.array([[0, 0, 65535, 65535], [0, 0, 0, 10]], np.uint16), (4, 1, 1))  # crop 1 is empty
    indices = np.tile(np.array([[1, 2], [3, 12]], np.uint16), (4, 1, 1))  # class 12 of 10
    values = np.tile(np.array([[0.5, 0.25], [1.5, 0.1]], np.float16), (4, 1, 1))  # 1.5 > 1
    records = compress_records(meta.record_layout(), boxes, np.zeros((4, 2), bool), indices, values)
    ids = [f"x/{i}.jpg" for i in range(4)]
    manifest.shards[0] = write_shard(path, meta, 0, ShardData(ids, np.zeros(4), np.full((4, 2), 32), records))
    manifest.save(path)
    code, out, _ = run(capsys, "verify", str(path), "--quiet", "--repair-plan")
    assert code == 1
    assert out.endswith(  # its file matches the manifest, so a rerun would keep it: --repair must drop it first
        f"  1. fkd-labels verify {path} --repair   (shards 0 match the manifest but hold bad records, which a rerun would "
        "keep: this drops them from the manifest)\n"
        "  2. rerun fkd-labelgen with the same arguments and --out: it labels the shards the manifest lacks and relabels those "
        "whose file is missing or changed\n"
    )
    assert "image 0 ('x/0.jpg'): class index 12 is not below num_classes 10" in out
    assert "image 0 ('x/0.jpg'): stored probabilities outside [0, 1] (or not finite)" in out
    assert "image 0 ('x/0.jpg'): crop boxes that are empty or extend past the image" in out
    assert "... and 7 more problems" in out  # 12 problems, 5 listed


def test_verify_reports_duplicate_image_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ids = [f"c/{i}.jpg" for i in range(5)] + ["c/1.jpg"]
    path, _ = write_random_store(tmp_path / "s", num_images=6, shard_size=3, image_ids=ids)
    code, out, _ = run(capsys, "verify", str(path), "--quiet")
    assert code == 1
    assert "store: image id 'c/1.jpg' is both image 1 and image 5" in out
    assert f"FAILED: {path}: 0 of 2 shards need attention; 1 store-level problems" in out


def test_verify_unusable_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "store.json").write_text("{not json")
    code, _, err = run(capsys, "verify", str(tmp_path))
    assert code == 1 and err.startswith(f"fkd-labels verify: error: {tmp_path / 'store.json'}: unreadable manifest: ")


def test_repair_is_refused_while_the_store_is_being_written(random_store: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    path, _ = random_store
    shard_file(path, 1).unlink()
    with store_lock(path):  # as fkd-labelgen holds it while it runs
        code, _, err = run(capsys, "verify", str(path), "--repair", "--quiet")
    assert code == 1 and f"fkd-labels verify: error: {path}: is being written by pid {os.getpid()}" in err
    assert sorted(Manifest.load(path).shards) == [0, 1, 2]  # untouched
