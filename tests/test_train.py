"""fkd-train: multi-crop data, checkpoints and whole runs on tiny data (CPU); modes: test_train_modes.py."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from timm.data import create_transform, resolve_data_config

from fkd.data import crops
from fkd.data.augment import build_crop_augment, seeded_rngs
from fkd.data.errors import DataMismatchError, ReplayError
from fkd.data.evaluation import EvalDataset
from fkd.data.images import list_images, load_image
from fkd.data.multicrop import EpochSampler, MultiCropDataset, collate_crops
from fkd.data.plan import RandomCropPlanner, StoreCropPlanner, stored_crop_choice
from fkd.payload import quantize
from fkd.store import LabelStore
from train.checkpoint import CheckpointSaver, read_checkpoint, resolve_resume, rng_state, set_rng_state
from train.cli import main
from train.runlog import RunLog

from conftest import NUM_CROPS, SCHEME, TinyData, make_tiny_data, read_summary, train_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_DEIT = ["deit_tiny_distilled_patch16_224", "--model-kwargs", "img_size=32", "patch_size=8", "depth=1", "embed_dim=32", "num_heads=2"]


def store_dataset(tiny: TinyData, n: int = 3, size: int = 24, seed: int = 0, augment=None) -> MultiCropDataset:
    planner = StoreCropPlanner(LabelStore(tiny.store), n, seed)
    return MultiCropDataset(tiny.train, planner, size, "bilinear", augment, seed)


# ------------------------------------------------------------------------------------ data


def test_replayed_crops_equal_the_teachers_crops(tiny: TinyData) -> None:
    """The student's pixels for a stored label are the crop the teacher labelled (same box, flip)."""
    ds = store_dataset(tiny, n=3, size=24)
    ids = ds.planner.image_ids
    for index in (0, 5, 11):
        sample = ds[(2, index)]
        image = load_image(tiny.train / ids[index])
        h, w = image.shape[-2:]
        drawn = crops.sample_crops(ids[index], h, w, NUM_CROPS, seed=0)  # what fkd-labelgen drew
        chosen = sample.crop_ids.numpy()
        expected = torch.stack([crops.replay(image, drawn.boxes[c], bool(drawn.flips[c]), 24, "bilinear") for c in chosen])
        assert torch.equal(sample.images, expected)
        payload = quantize.encode(tiny.written["probs"][index][chosen], SCHEME, 2)
        assert np.array_equal(sample.indices.numpy(), payload.indices.astype(np.int32))
        assert np.array_equal(sample.values.numpy(), payload.values)
        assert sample.label == index // 4 and sample.index == index


def test_crop_choice_is_without_replacement_fresh_per_epoch_and_reproducible(tiny: TinyData) -> None:
    ds = store_dataset(tiny, n=4)
    copy = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker gets
    per_epoch = []
    for epoch in range(4):
        ids = ds[(epoch, 3)].crop_ids
        assert len(set(ids.tolist())) == 4 and ids.max() < NUM_CROPS
        assert torch.equal(ids, copy[(epoch, 3)].crop_ids)
        per_epoch.append(tuple(ids.tolist()))
    assert len(set(per_epoch)) > 1
    other_seed = store_dataset(tiny, n=4, seed=1)
    assert any(not torch.equal(ds[(e, 3)].crop_ids, other_seed[(e, 3)].crop_ids) for e in range(4))


def test_crops_per_image_must_fit_the_store(tiny: TinyData) -> None:
    with pytest.raises(ReplayError, match=r"--crops-per-image must be in 1\.\.8 \(the store holds 8 crops per image\), got 9"):
        StoreCropPlanner(LabelStore(tiny.store), 9, 0)


def test_collate_flattens_images_times_crops(tiny: TinyData) -> None:
    ds = store_dataset(tiny, n=3)
    batch = collate_crops([ds[(0, i)] for i in (0, 4, 9)])
    assert batch.images.shape == (9, 3, 24, 24) and batch.images.dtype == torch.uint8
    assert batch.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.image_index.tolist() == [0, 4, 9]
    assert batch.indices.shape == (9, 2) and batch.values.dtype == torch.float16
    assert len(batch) == 9


def test_random_crops_for_baselines_follow_the_crop_sampler(tiny: TinyData) -> None:
    images = list_images(tiny.train)
    planner = RandomCropPlanner(images, 2, seed=7, params=crops.CropParams())
    ds = MultiCropDataset(tiny.train, planner, 16, "bilinear")
    a, b = ds[(0, 1)], ds[(1, 1)]
    assert a.images.shape == (2, 3, 16, 16) and a.indices is None and a.values is None
    assert not torch.equal(a.images, b.images)  # fresh crops each epoch
    assert torch.equal(a.images, ds[(0, 1)].images)


def test_resized_images_are_refused_unless_allowed(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path)
    victim = data.train / "c1" / "img002.jpg"
    image = Image.open(victim)
    image.resize((image.width * 2, image.height * 2)).save(victim)
    images = list_images(data.train)
    index = images.image_ids.index("c1/img002.jpg")
    h, w = load_image(victim).shape[-2:]
    ds = MultiCropDataset(data.train, StoreCropPlanner(LabelStore(data.store), 2, 0), 16, "bilinear")
    with pytest.raises(DataMismatchError, match=rf"c1/img002.jpg: the image is {h}x{w} pixels but the store's crops were drawn on {h // 2}x{w // 2}"):
        ds[(0, index)]
    resized = MultiCropDataset(data.train, StoreCropPlanner(LabelStore(data.store), 2, 0, allow_resized=True), 16, "bilinear")
    assert resized[(0, index)].images.shape == (2, 3, 16, 16)


def test_epoch_sampler_splits_images_disjointly_per_rank() -> None:
    data = list(range(10))
    parts = [list(EpochSampler(data, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert all(e == 0 for part in parts for e, _ in part)
    a, b = ({i for _, i in p} for p in parts)
    assert not a & b and a | b == set(data)
    sampler = EpochSampler(data, num_replicas=2, rank=0, seed=3)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert {e for e, _ in epoch1} == {1} and [i for _, i in epoch1] != [i for _, i in parts[0]]
    uneven = [list(EpochSampler(list(range(7)), num_replicas=2, rank=r)) for r in range(2)]
    assert len(uneven[0]) == len(uneven[1]) == 4  # padded equally


def test_crop_augment_is_seeded_and_leaves_global_rngs_alone() -> None:
    augment = build_crop_augment(0.4, "rand-m9-n2-mstd0.5")
    crop = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(1)
    random.seed(1)
    before = (torch.get_rng_state(), random.getstate())
    with seeded_rngs(5):
        first = augment(crop)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    torch.manual_seed(99)
    with seeded_rngs(5):
        again = augment(crop)
    assert torch.equal(first, again) and not torch.equal(first, crop)
    assert build_crop_augment(0.0, None) is None
    with pytest.raises(ReplayError, match="--randaugment must be a timm RandAugment string"):
        build_crop_augment(0.0, "autoaug")


def test_eval_dataset_matches_timms_eval_transform(tiny: TinyData) -> None:
    images = list_images(tiny.val)
    ds = EvalDataset(images, 32, 0.875, "bilinear")
    reference = create_transform(32, is_training=False, crop_pct=0.875, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    for i in (0, 3):
        pixels, label = ds[i]
        expected = reference(Image.open(images.path(i)).convert("RGB"))
        assert pixels.shape == (3, 32, 32) and label == images.entries[i].label
        assert (pixels.float() / 255 - expected).abs().max() <= 1 / 255 + 1e-6


# ------------------------------------------------------------------------------ checkpoints


def test_rng_state_round_trip() -> None:
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_checkpoint_saver_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    saver = CheckpointSaver(tmp_path, keep=2)
    for epoch, improved in ((1, True), (2, False), (3, False)):
        saver.save({"epoch": epoch, "model": {}, "optimizer": {}, "scheduler": {}}, improved)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["best.pth", "checkpoint-0002.pth", "checkpoint-0003.pth", "last.pth"]
    assert read_checkpoint(tmp_path / "best.pth")["epoch"] == 1 and read_checkpoint(tmp_path / "last.pth")["epoch"] == 3
    assert resolve_resume("auto", tmp_path) == tmp_path / "last.pth"
    assert resolve_resume("auto", tmp_path / "elsewhere") is None
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable fkd-train checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")


def test_runlog_drops_epochs_after_the_resume_point(tmp_path: Path) -> None:
    log = RunLog(tmp_path, 0)
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "train_loss": 1.0 / epoch, "lr": 0.1, "samples_per_s": 1.0, "time": 1.0, "extra": epoch})
    RunLog(tmp_path, 2)
    assert [r["epoch"] for r in read_summary(tmp_path)] == ["1", "2"]
    assert [json.loads(line)["extra"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2]


# --------------------------------------------------------------------------------- full runs


def evaluate_checkpoint(path: Path, key: str, val: Path) -> tuple[float, float]:
    """Top-1 (percent) and mean cross-entropy of a checkpoint's weights (``key`` 'model' or 'ema') on
    ``val``, recomputed apart from the trainer: a fresh timm model, timm's data config for it at
    32 px, the centre-cropped uint8 validation pixels and one forward pass."""
    ckpt = read_checkpoint(path)
    saved = ckpt["args"]
    kwargs = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in saved["model_kwargs"] or [])}
    model = timm.create_model(saved["model"], num_classes=3, **kwargs)
    state = ckpt[key]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()} if key == "ema" else state)
    cfg = resolve_data_config({"input_size": (3, 32, 32)}, model=model)
    images = list_images(val)
    pixels, labels = zip(*EvalDataset(images, 32, cfg["crop_pct"], cfg["interpolation"]))
    x = (torch.stack(pixels).float() / 255 - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.eval()(x)
    target = torch.tensor(labels)
    return 100.0 * (logits.argmax(dim=1) == target).sum().item() / len(target), torch.nn.functional.cross_entropy(logits, target).item()


@pytest.mark.parametrize(
    "mode_args",
    [
        pytest.param(["--mode", "fkd", "--mixup", "0.8", "--cutmix", "1.0", "--color-jitter", "0.2"], id="fkd"),
        pytest.param(["--mode", "supervised", "--smoothing", "0.1", "--cutmix", "1.0"], id="supervised"),
        pytest.param(
            ["--mode", "online-kd", "--teacher", "test_resnet", "--no-pretrained", "--teacher-input-size", "32", "--kd", "hard"], id="online-kd"
        ),
        pytest.param(["--mode", "deit", "--kd", "hard", "--mixup", "0.8", "--model", *TINY_DEIT], id="deit"),
    ],
)
def test_each_mode_trains_and_writes_its_outputs(tiny: TinyData, tmp_path: Path, mode_args: list[str]) -> None:
    out = tmp_path / "out"
    assert main(train_args(tiny, out, *mode_args, "--model-ema", "--clip-grad", "5")) == 0
    rows = read_summary(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for key, prefix in (("model", "val"), ("ema", "ema")):  # the logged metrics are those of the saved weights
        top1, loss = evaluate_checkpoint(out / "last.pth", key, tiny.val)
        assert log[-1][f"{prefix}_top1"] == pytest.approx(top1, abs=1e-6) and log[-1][f"{prefix}_loss"] == pytest.approx(loss, rel=1e-4)
    assert [r["samples"] for r in log] == [24, 24] and [r["images"] for r in log] == [12, 12]
    assert {"ema_top1", "val_loss", "images_per_s"} <= log[0].keys()
    saved = yaml.safe_load((out / "args.yaml").read_text())
    assert saved["mode"] == mode_args[1] and saved["crops_per_image"] == 2
    last = read_checkpoint(out / "last.pth")
    assert last["epoch"] == 2 and last["ema"] is not None and len(last["rng"]) == 1
    assert {p.name for p in out.glob("*.pth")} == {"last.pth", "best.pth", "checkpoint-0001.pth", "checkpoint-0002.pth"}


def test_loss_goes_down_when_overfitting_a_tiny_set(tmp_path: Path) -> None:
    data = make_tiny_data(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "out"
    args = train_args(data, out, "--epochs", "15", "--crops-per-image", "8", "--opt", "adamw", "--lr", "0.01", "--weight-decay", "0")
    args[args.index("--val-data") : args.index("--val-data") + 2] = []
    assert main(args) == 0  # 8 images, 2 steps per epoch: 30 steps
    losses = [float(r["train_loss"]) for r in read_summary(out)]
    store = LabelStore(data.store)
    targets = torch.cat([quantize.decode(torch.from_numpy(r.indices.astype(np.int64)), torch.from_numpy(r.values.copy()), SCHEME, 2)
                         for r in map(store.read, range(len(store)))])
    entropy = float(-(targets * targets.clamp_min(1e-12).log()).sum(1).mean())  # the lowest reachable loss
    assert losses[-1] < 0.75 * losses[0]
    assert losses[-1] >= entropy - 1e-4


def test_resume_with_other_worker_count_continues_exactly_like_an_uninterrupted_run(tiny: TinyData, tmp_path: Path) -> None:
    extra = ("--epochs", "3", "--mixup", "0.8", "--cutmix", "1.0", "--drop-path", "0.1", "--model-ema", "--model-ema-decay", "0.9",
             "--color-jitter", "0.3", "--reprob", "0.5", "--deterministic", "--warmup-epochs", "1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(train_args(tiny, straight, *extra)) == 0
    # Resumed with DataLoader workers: crop choice and augmentation (erasing included) do not depend on who loads an image.
    resumed_args = train_args(tiny, resumed, *extra, "--resume", str(straight / "checkpoint-0001.pth"))
    resumed_args[resumed_args.index("--workers") + 1] = "2"
    assert main(resumed_args) == 0
    a, b = read_checkpoint(straight / "last.pth"), read_checkpoint(resumed / "last.pth")
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert [r["train_loss"] for r in read_summary(straight)][1:] == [r["train_loss"] for r in read_summary(resumed)]
    # --resume auto continues the finished run: nothing left to do, nothing changed.
    assert main(train_args(tiny, straight, *extra, "--resume", "auto")) == 0
    assert len(read_summary(straight)) == 3


def test_recipe_file_gives_defaults_and_flags_override(tiny: TinyData, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"epochs": 1, "crops-per-image": 3, "lr": 0.2, "opt": "adamw"}))
    args = train_args(tiny, out)
    del args[args.index("--epochs") : args.index("--epochs") + 2]
    assert main(["-c", str(recipe), *args]) == 0
    saved = yaml.safe_load((out / "args.yaml").read_text())
    assert (saved["epochs"], saved["crops_per_image"], saved["lr"], saved["opt"]) == (1, 2, 0.05, "adamw")


@pytest.mark.parametrize(("num_crops", "n"), [(32, 4), (10, 4), (7, 3), (6, 6)])
def test_cycled_stored_crops_use_every_crop_once_before_any_repeats(num_crops: int, n: int) -> None:
    """--stored-crops cycle: positions e*n .. e*n+n-1 of a chain of seeded permutations, so over any
    whole number of cycles every stored crop is replayed equally often, and no epoch repeats one."""
    cycles = n  # n cycles of M crops = M whole epochs
    epochs = [stored_crop_choice(num_crops, n, seed=5, epoch=e, index=3) for e in range(num_crops * cycles // n)]
    assert all(len(np.unique(chosen)) == n for chosen in epochs)
    assert np.bincount(np.concatenate(epochs), minlength=num_crops).tolist() == [cycles] * num_crops
    assert np.array_equal(stored_crop_choice(num_crops, n, 5, 2, 3), epochs[2])  # stateless: any worker, any resume
    if n < num_crops:
        assert not all(np.array_equal(a, b) for a, b in zip(epochs, [stored_crop_choice(num_crops, n, 5, e, 4) for e in range(len(epochs))]))
    random = [stored_crop_choice(num_crops, n, 5, e, 3, order="random") for e in range(len(epochs))]
    assert all(len(np.unique(chosen)) == n for chosen in random)
