"""A reinforced store through the tools: fkd-labelgen makes it on Ray, fkd-labels info/verify/show
describe and check it (verify --recompute relabels stored crops with the teacher), the derived-store
commands keep its augmentation or refuse what would break its pairs, and fkd-train replays it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from fkd.labels.cli import main as labels_main
from fkd.labels.show import draw
from fkd.labels.views import image_locator, render_crops
from fkd.store import LabelStore, Manifest, StoreMismatchError, ViewSpec, open_for_writing
from fkd.store.writer import copy_meta
from labelgen.cli import main as labelgen_main
from train.cli import main as train_main

from conftest import make_image_folder
from test_labelgen_worker import save_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")
AUGMENT = ("--randaugment", "rand-m9-mstd0.5", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A reinforced store of 9 images in shards of 4 (partners in other shards), made by fkd-labelgen."""
    root = tmp_path_factory.mktemp("tools")
    images = make_image_folder(root / "images", classes=3, per_class=3, size=(40, 44))
    teacher = save_tiny_teacher(root / "teacher.pth", num_classes=3)
    store = root / "store"
    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
    try:
        assert labelgen_main(["--teacher", "test_resnet", "--checkpoint", str(teacher), "--no-pretrained", "--input-size", "32",
                              "--data", str(images), "--out", str(store), "--crops", "6", "--scheme", "marginal-renorm", "--top-k", "2",
                              "--shard-size", "4", "--workers", "1", "--no-progress", *AUGMENT]) == 0
    finally:
        ray.shutdown()
    return root, images, teacher, store


def test_labelgen_records_the_augmentation_and_info_shows_it(made, capsys):
    _, _, _, store = made
    meta = Manifest.load(store).meta
    assert meta.format_version == 6
    assert meta.augmentation == ViewSpec(randaugment="rand-m9-mstd0.5", reprob=0.25, mixup=0.8, cutmix=1.0)
    capsys.readouterr()
    assert labels_main(["info", str(store)]) == 0
    assert ("augmentation: randaugment rand-m9-mstd0.5 (colour ops); random erasing p=0.25 pixel x1..1; mixup 0.8 + cutmix 1 pairs "
            "(p=1, switch 0.5, 1 partner image(s) per image), labelled as augmented") in capsys.readouterr().out


def test_verify_recompute_relabels_stored_crops_with_the_recorded_teacher(made, capsys):
    root, images, _, store = made
    capsys.readouterr()
    assert labels_main(["verify", str(store), "--quiet", "--recompute", "20", "--data", str(images)]) == 0
    out = capsys.readouterr().out
    assert "recompute OK: 20 crops of " in out and "relabelled by test_resnet; largest probability difference" in out
    largest = float(out.split("difference ")[1].split()[0])
    assert largest < 1e-3  # float16 storage only: same teacher, same views
    other = save_tiny_teacher(root / "other.pth", num_classes=3)
    torch.manual_seed(5)
    state = torch.load(other)
    state["fc.weight"] = torch.randn_like(state["fc.weight"]) * 60
    torch.save(state, other)
    assert labels_main(["verify", str(store), "--quiet", "--recompute", "20", "--data", str(images),
                        "--teacher", "test_resnet", "--checkpoint", str(other)]) == 1
    assert "recompute FAILED: 20 crops" in capsys.readouterr().out
    assert labels_main(["verify", str(store), "--quiet", "--recompute", "5"]) == 2
    assert "--recompute relabels stored crops, which are cut from the images: give --data" in capsys.readouterr().err


def test_show_draws_the_augmented_and_mixed_views(made, tmp_path):
    _, images, _, path = made
    out = tmp_path / "show.png"
    assert labels_main(["show", str(path), "--image", "0", "--data", str(images), "--out", str(out)]) == 0
    assert Image.open(out).format == "PNG"
    store = LabelStore(path)
    record = store.read(0)
    views = render_crops(store, image_locator(images), {0: np.arange(3)})[0]
    fig = draw(store.meta, record, torch.zeros(3, 40, 44, dtype=torch.uint8), 6, 3, views)
    crop_axes = fig.axes[1::2]
    for n in range(3):
        assert np.array_equal(crop_axes[n].get_images()[0].get_array(), views[n].permute(1, 2, 0).numpy())
    titles = " ".join(ax.get_title() for ax in crop_axes)
    assert ("mixup" in titles or "cutmix" in titles) and " m" in titles


def test_derived_stores_keep_the_views_or_refuse_to_break_pairs(made, tmp_path, capsys):
    _, _, _, path = made
    converted = tmp_path / "hard"
    assert labels_main(["convert", str(path), "--scheme", "hardening", "--shard-size", "5", "--out", str(converted)]) == 0
    a, b = LabelStore(path), LabelStore(converted)
    assert b.meta.augmentation == a.meta.augmentation and b.meta.format_version == 6
    for index in range(len(a)):
        np.testing.assert_array_equal(b.read(index).views.mix_image, a.read(index).views.mix_image)
        np.testing.assert_array_equal(b.read(index).views.ra_ops, a.read(index).views.ra_ops)
    capsys.readouterr()
    assert labels_main(["convert", str(path), "--subset", "classes=c0", "--out", str(tmp_path / "sub")]) == 2
    assert "stores Mixup/CutMix pairs, whose partners are named by store index: --subset" in capsys.readouterr().err
    assert labels_main(["merge", str(path), str(converted), "--out", str(tmp_path / "m")]) == 2
    assert labels_main(["export-fkd", str(path), "--out", str(tmp_path / "fkd")]) == 2
    assert "the official FKD format keeps boxes and flips only" in capsys.readouterr().err


def test_resuming_with_other_augmentation_is_refused_naming_it(made):
    _, _, _, path = made
    meta = Manifest.load(path).meta
    other = copy_meta(meta, augmentation=ViewSpec(randaugment="rand-m5"))
    with pytest.raises(StoreMismatchError, match="augmentation: store has"):
        open_for_writing(path, other)


def train(made, out: Path, *extra: str) -> int:
    _, images, _, store = made
    return train_main(["--store", str(store), "--data", str(images), "--model", "test_resnet", "--input-size", "32", "--epochs", "1",
                       "--batch-size", "3", "--crops-per-image", "2", "--workers", "0", "--no-progress", "--output", str(out), *extra])


def test_fkd_train_replays_the_store_and_refuses_augmenting_on_top(made, tmp_path, capsys):
    assert train(made, tmp_path / "ok") == 0
    capsys.readouterr()
    assert train(made, tmp_path / "ra", "--randaugment", "rand-m9") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fkd-train: error: ") and "is a reinforced store" in err
    assert "--randaugment would change the crop after the teacher labelled it: drop it" in err
    assert train(made, tmp_path / "mix", "--mixup", "0.2") == 2
    assert "batch-level --mixup/--cutmix would mix those views again" in capsys.readouterr().err
    assert train(made, tmp_path / "gt", "--gt-weight", "0.3") == 0
    capsys.readouterr()
    assert train(made, tmp_path / "supervised", "--mode", "supervised", "--crop-source", "store") == 0
