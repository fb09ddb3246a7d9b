"""Fault injection on a real fkd-labelgen store: every fault is detected by ``fkd-labels verify`` and
by the training reader with a clear message, and rerunning fkd-labelgen repairs it.

Faults: a truncated shard, flipped bytes (in the records and in HDF5's unchecksummed global heap),
a deleted shard, another store's shard written over one of ours, and the fkd-labelgen driver killed
in the middle of writing a shard. One local Ray instance serves the module; the killed run is a
separate process that joins it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import timm
import torch

from fkd.data.multicrop import MultiCropDataset
from fkd.data.plan import StoreCropPlanner
from fkd.labels.cli import main as labels_main
from fkd.store import LabelStore, Manifest, StoreCorruptError, StoreIncompleteError
from labelgen.cli import main as labelgen_main

from conftest import REPO, make_image_folder

SHARDS = 6  # 12 images, 2 per shard


@pytest.fixture(scope="module")
def ray_address() -> str:
    """fkd-labelgen reuses an initialized Ray instance; a subprocess joins it by address."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    with torch.no_grad():
        teacher.fc.weight.mul_(40.0)  # confident enough that top-K differs between crops
    torch.save(teacher.state_dict(), root / "teacher.pth")
    (root / "classes.txt").write_text("# the 3 data classes onto the 5-class teacher's first classes\nc0 0\nc1 1\nc2 2\n")
    return {"root": root, "images": make_image_folder(root / "images", classes=3, per_class=4), "teacher": root / "teacher.pth"}


def labelgen_argv(assets: dict[str, Path], out: Path) -> list[str]:
    return [
        "--teacher", "test_resnet", "--checkpoint", str(assets["teacher"]), "--no-pretrained", "--input-size", "32",
        "--data", str(assets["images"]), "--out", str(out), "--crops", "8", "--scheme", "marginal-smoothing", "--top-k", "3",
        "--shard-size", "2", "--batch-size", "16", "--workers", "1", "--no-progress", "--class-map", str(assets["root"] / "classes.txt"),
    ]


@pytest.fixture(scope="module")
def reference(assets: dict[str, Path], ray_address: str) -> Path:
    out = assets["root"] / "reference"
    assert labelgen_main(labelgen_argv(assets, out)) == 0
    return out


def contents(path: Path) -> list[tuple]:
    with LabelStore(path) as store:
        return [
            (r.image_id, r.label, r.height, r.width, r.boxes_fixed.tobytes(), r.flips.tobytes(), r.indices.tobytes(), r.values.tobytes())
            for r in (store.read(i) for i in range(len(store)))
        ]


def shard(path: Path, index: int) -> Path:
    return path / f"shard-{index:05d}.h5"


def flip_heap_and_record_bytes(file: Path) -> None:
    """One byte in HDF5's global heap (the image-id strings; HDF5 keeps no checksum there and can
    hang on it) and one in the compressed records."""
    data = bytearray(file.read_bytes())
    heap = data.index(b"GCOL")
    data[heap + 200] ^= 0x9D
    data[-300] ^= 0x01
    file.write_bytes(bytes(data))


def foreign_shard(reference: Path, work: Path) -> Path:
    """Shard 3 of another store holding the very same labels (a copy made by fkd-labels convert):
    only its store id tells it apart."""
    other = work / "other"
    assert labels_main(["convert", str(reference), "--out", str(other)]) == 0
    return shard(other, 3)


FAULTS = ["truncated", "flipped", "deleted", "foreign"]


def inject(fault: str, store: Path, reference: Path, work: Path) -> int:
    """Damage ``store`` the way ``fault`` says; return the damaged shard."""
    if fault == "truncated":
        shard(store, 0).write_bytes(shard(store, 0).read_bytes()[:-1000])
        return 0
    if fault == "flipped":
        flip_heap_and_record_bytes(shard(store, 1))
        return 1
    if fault == "deleted":
        shard(store, 2).unlink()
        return 2
    shutil.copy(foreign_shard(reference, work), shard(store, 3))
    return 3


MESSAGES = {
    "truncated": r"shard-00000\.h5: shard is truncated: \d+ bytes, the manifest recorded \d+",
    # Readers hash what HDF5 parses (the heap is in it); verify and resumes hash the whole file.
    "flipped": r"shard-00001\.h5: checksum mismatch: sha256 (of the HDF5 metadata \(all but the records\) )?[0-9a-f]{16}\.\.\., the manifest recorded [0-9a-f]{16}\.\.\.",
    "deleted": r"shard-00002\.h5: shard file is missing",
    "foreign": r"shard-00003\.h5: checksum mismatch: sha256",
}


@pytest.mark.parametrize("fault", FAULTS)
def test_training_reader_names_the_damaged_shard(fault: str, reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    damaged = inject(fault, store, reference, tmp_path)
    with pytest.raises(StoreCorruptError, match=MESSAGES[fault]):
        StoreCropPlanner(LabelStore(store), 4, seed=0)  # training start-up reads every shard's image ids
    # A shard damaged while training runs: the next read of one of its images fails the same way.
    planner = StoreCropPlanner(LabelStore(reference), 4, seed=0)
    planner.store = LabelStore(store)
    dataset = MultiCropDataset(reference.parent / "images", planner, 16, "bilinear")
    assert dataset[(0, 2 * damaged + 2 if damaged < SHARDS - 1 else 0)].images.shape == (4, 3, 16, 16)  # other shards fine
    with pytest.raises(StoreCorruptError, match=MESSAGES[fault]):
        dataset[(0, 2 * damaged + 1)]


def test_every_fault_is_reported_by_verify_and_repaired_by_a_rerun(
    assets: dict[str, Path], reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    for fault in FAULTS:
        inject(fault, store, reference, tmp_path)
    capsys.readouterr()
    assert labels_main(["verify", str(store), "--repair-plan", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "shard 0 (shard-00000.h5, images 0..1): corrupt\n    shard is truncated:" in out
    assert "shard 1 (shard-00001.h5, images 2..3): corrupt\n    checksum mismatch: sha256" in out
    assert "shard 2 (shard-00002.h5, images 4..5): missing\n    shard file is missing" in out
    assert "shard 3 (shard-00003.h5, images 6..7): corrupt\n    checksum mismatch: sha256" in out
    assert f"FAILED: {store}: 4 of 6 shards need attention (1 missing, 3 corrupt)" in out
    assert "repair plan: fkd-labelgen must redo 4 shards (8 images): 0-3" in out

    assert labels_main(["verify", str(store), "--repair", "--quiet"]) == 1
    assert labelgen_main(labelgen_argv(assets, store)) == 0
    assert "6 shards (4 written, 2 already done)" in capsys.readouterr().out
    assert labels_main(["verify", str(store), "--quiet"]) == 0
    assert contents(store) == contents(reference)


KILLED_RUN = """
import os, signal, sys
from pathlib import Path

replace = os.replace

def dying_replace(src, dst):
    if Path(dst).name == "shard-00002.h5":  # the temporary file of shard 2 is fully written: die now
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst)

os.replace = dying_replace
from labelgen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_labelgen_killed_mid_shard_is_detected_and_resumed(
    assets: dict[str, Path], reference: Path, ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, *labelgen_argv(assets, store), "--ray-address", ray_address],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == -9, run.stderr[-2000:]
    assert sorted(Manifest.load(store).shards) == [0, 1]
    assert [p.name for p in store.glob(".shard-00002.h5.*.tmp")]  # the half-finished shard, never renamed

    capsys.readouterr()
    assert labels_main(["verify", str(store), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "shard 2 (shard-00002.h5, images 4..5): unfinished\n    not finished: fkd-labelgen has not written it" in out
    assert "note: temporary files left by an interrupted write: .shard-00002.h5." in out
    assert f"FAILED: {store}: 4 of 6 shards need attention (4 unfinished)" in out
    with pytest.raises(StoreIncompleteError, match=r"store is incomplete: 4 of 6 shards missing \(first: \[2, 3, 4, 5\]\); rerun fkd-labelgen"):
        LabelStore(store)  # what fkd-train opens

    assert labelgen_main(labelgen_argv(assets, store)) == 0
    assert "6 shards (4 written, 2 already done)" in capsys.readouterr().out
    assert labels_main(["verify", str(store), "--quiet"]) == 0
    assert contents(store) == contents(reference)
    assert np.array_equal(LabelStore(store).labels, LabelStore(reference).labels)
