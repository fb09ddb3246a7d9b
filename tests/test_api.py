"""fkd.api, the store in a training loop of one's own: the same crops and targets fkd-train trains on
(bitwise, same seed), the same refusals in the same words, the same samples for any batch size,
number of workers or DDP split, and the loss with a ground-truth share W equal to
``(1 - W) * CE(stored) + W * CE(one-hot)``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_fingerprints import labelled_folder, lookalike, train_argv
from torch.utils.data import DataLoader

import train.modes
from fkd.api import (
    CropBatch,
    DataMismatchError,
    EpochSampler,
    EvalDataset,
    ImageMismatchError,
    StoredCrops,
    collate_crops,
    open_store,
    soft_target_cross_entropy,
    validation_images,
)
from fkd.data.targets import confidence_gt_weights
from fkd.store import Manifest, StorePayloadError
from train.cli import main as train_main

from conftest import NUM_CROPS, TinyData, train_args, with_full_store, write_random_embedding_store
from test_train_setup_full_store import recorded_targets

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batches(dataset: StoredCrops, epochs: int, batch_size: int, workers: int = 0, **sampler) -> list[CropBatch]:
    """Every batch a loop over ``epochs`` gets (``EpochSampler`` with seed 0, as fkd-train's --seed 0)."""
    order = EpochSampler(dataset, seed=0, **sampler)
    loader = DataLoader(dataset, batch_size, sampler=order, num_workers=workers, collate_fn=collate_crops)
    seen = []
    for epoch in range(epochs):
        order.set_epoch(epoch)
        seen.extend(loader)
    return seen


def crops(seen: list[CropBatch]) -> dict[str, torch.Tensor]:
    """The batches' per-crop fields, concatenated: what a loop trains on, whatever the batch size."""
    names = [f.name for f in fields(CropBatch) if f.name != "image_index" and getattr(seen[0], f.name) is not None]
    return {name: torch.cat([getattr(b, name) for b in seen]) for name in names}


def same(a: CropBatch, b: CropBatch) -> bool:
    """Equal batches: every field bitwise equal (or absent from both)."""
    pairs = [(getattr(a, f.name), getattr(b, f.name)) for f in fields(CropBatch)]
    return all(x is y is None or (x is not None and y is not None and torch.equal(x, y)) for x, y in pairs)


def train_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """fkd-train's one-line refusal of ``argv``, without its prefix."""
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fkd-train: error: ")
    return err[0].removeprefix("fkd-train: error: ")


def test_the_crops_and_targets_are_bitwise_those_fkd_train_trains_on(tiny: TinyData, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two epochs of fkd-train --gt-weight 0.3 (4 images x 2 crops a step): every batch and target it
    trained on, recorded at its mode, equals the API's for the same seed, crop for crop."""
    recorded = recorded_targets(monkeypatch, train.modes.FKDMode)
    assert train_main(train_args(tiny, tmp_path / "run", "--gt-weight", "0.3")) == 0
    dataset = StoredCrops(tiny.store, tiny.train, crops_per_image=2, size=32, seed=0)
    targets = dataset.stored_targets(gt_weight=0.3)
    ours = batches(dataset, epochs=2, batch_size=4)
    assert len(ours) == len(recorded) == 6
    for mine, (theirs, their_targets) in zip(ours, recorded):
        assert same(mine, theirs)
        assert torch.equal(targets(mine), their_targets)


def test_a_full_store_decodes_its_log_probabilities(tiny: TinyData) -> None:
    full = with_full_store(tiny)
    dataset = StoredCrops(full.store, full.train, crops_per_image=3, size=16)
    for batch in batches(dataset, epochs=1, batch_size=5):
        labels = dataset.stored_targets().labels(batch)
        images = batch.image_index.repeat_interleave(3).numpy()
        np.testing.assert_allclose(labels.numpy(), full.written["probs"][images, batch.crop_ids.numpy()], rtol=0, atol=2e-3)
        assert torch.equal(labels, torch.softmax(batch.values.float(), dim=-1))  # not the ln p clamped to 0 as probabilities


def test_any_batch_size_and_worker_count_give_the_same_samples(tiny: TinyData) -> None:
    dataset = StoredCrops(tiny.store, tiny.train, crops_per_image=3, size=24, seed=5)
    reference = crops(batches(dataset, epochs=2, batch_size=4))
    for batch_size, workers in ((1, 0), (5, 0), (3, 2)):
        other = crops(batches(dataset, epochs=2, batch_size=batch_size, workers=workers))
        assert all(torch.equal(reference[k], other[k]) for k in reference), (batch_size, workers)


def test_a_ddp_split_covers_every_image_once_per_epoch(tiny: TinyData) -> None:
    """12 images over 2 ranks: 6 each, disjoint, every image once per epoch; a rank's crops of an
    image are those a single process gets for it (they depend on seed, epoch and image alone)."""
    dataset = StoredCrops(tiny.store, tiny.train, crops_per_image=2, size=16)
    for epoch in range(3):
        parts = []
        for rank in range(2):
            order = EpochSampler(dataset, num_replicas=2, rank=rank, seed=0)
            order.set_epoch(epoch)
            parts.append([index for _, index in order])
        assert len(parts[0]) == len(parts[1]) == 6 and sorted(parts[0] + parts[1]) == list(range(12))
    for batch in batches(dataset, epochs=1, batch_size=4, num_replicas=2, rank=1):
        alone = collate_crops([dataset[(0, int(i))] for i in batch.image_index])
        assert torch.equal(batch.images, alone.images) and torch.equal(batch.values, alone.values)


def test_the_loss_with_a_ground_truth_share_is_the_formula(tiny: TinyData) -> None:
    dataset = StoredCrops(tiny.store, tiny.train, crops_per_image=2, size=16)
    batch = batches(dataset, epochs=1, batch_size=6)[0]
    logits = torch.randn(len(batch), 3, generator=torch.Generator().manual_seed(0))
    for weight, smoothing in ((0.0, 0.0), (0.3, 0.0), (0.3, 0.1), (1.0, 0.0)):
        targets = dataset.stored_targets(gt_weight=weight, smoothing=smoothing)
        expected = ((1 - weight) * soft_target_cross_entropy(logits, targets.labels(batch))
                    + weight * F.cross_entropy(logits, batch.labels, label_smoothing=smoothing if weight else 0.0))
        assert torch.allclose(soft_target_cross_entropy(logits, targets(batch)), expected, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"^gt_weight must be in \[0, 1\], got 1.5$"):
        dataset.stored_targets(gt_weight=1.5)


def test_the_ground_truth_share_by_confidence_follows_each_crops_stored_label(tiny: TinyData) -> None:
    dataset = StoredCrops(tiny.store, tiny.train, crops_per_image=2, size=16)
    batch = batches(dataset, epochs=1, batch_size=6)[0]
    targets = dataset.stored_targets(gt_weight=0.3, gt_weight_by="confidence")
    stored = targets.labels(batch)
    share = confidence_gt_weights(stored, 0.3).unsqueeze(1)
    expected = (1 - share) * stored + share * F.one_hot(batch.labels, 3).float()
    assert torch.allclose(targets(batch), expected, rtol=0, atol=1e-7)
    assert abs(share.mean().item() - 0.3) < 1e-6 and share.std().item() > 0


def test_lookalike_images_are_refused_in_fkd_trains_words(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images_dir, store = labelled_folder(tmp_path)
    other = lookalike(images_dir, tmp_path / "test")
    message = train_error(train_argv(store, other, tmp_path / "run"), capsys)
    assert message.startswith(f"{other}/c0/img000.jpg is not the image the label store was made from (CRC-32 of its bytes")
    with pytest.raises(DataMismatchError) as refused:
        StoredCrops(store, other, crops_per_image=2, size=16)
    assert str(refused.value) == message


def test_every_image_is_checked_as_it_loads(tmp_path: Path) -> None:
    """An image replaced after the checks (same name and size, other bytes) is refused when read."""
    images_dir, store = labelled_folder(tmp_path)
    dataset = StoredCrops(store, images_dir, crops_per_image=2, size=16)
    assert dataset.warnings == []
    dataset[(0, 7)]
    lookalike(images_dir, tmp_path / "other", only="c2/img001.jpg")
    shutil.copyfile(tmp_path / "other" / "c2" / "img001.jpg", images_dir / "c2" / "img001.jpg")
    with pytest.raises(ImageMismatchError, match=rf"^{images_dir}/c2/img001.jpg is not the image the label store was made from"):
        dataset[(0, 7)]


def test_other_class_names_are_refused_in_fkd_trains_words(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny.store, store)
    manifest = Manifest.load(store)
    manifest.meta.class_names = ["cat", "c1", "dog"]
    manifest.save(store)
    message = train_error(train_args(TinyData(tiny.train, tiny.val, store, tiny.written), tmp_path / "run"), capsys)
    assert message == """class names differ between the store and --data ("0: store 'cat' vs data 'c0'", "2: store 'dog' vs data 'c2'")"""
    with pytest.raises(DataMismatchError) as refused:
        StoredCrops(store, tiny.train, size=16)
    assert str(refused.value) == message


def embedding_store(tiny: TinyData, path: Path, seed: int = 0) -> Path:
    """An embedding store of the tiny store's crops (same images, sizes, labels, crop count and seed)."""
    store = open_store(tiny.store)
    written, _ = write_random_embedding_store(path, dim=8, num_crops=NUM_CROPS, num_images=len(store), shard_size=5, seed=seed,
                                              image_ids=store.image_ids, sizes=store.image_sizes, labels=store.labels)
    return written


def test_embeddings_alone_or_beside_the_labels(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    embeddings = embedding_store(tiny, tmp_path / "embed")
    alone = StoredCrops(embeddings, tiny.train, crops_per_image=2, size=16)
    paired = StoredCrops(tiny.store, tiny.train, crops_per_image=2, size=16, embed_store=embeddings)
    labels_only = StoredCrops(tiny.store, tiny.train, crops_per_image=2, size=16)
    for a, b, c in zip(*(batches(d, epochs=1, batch_size=4) for d in (alone, paired, labels_only))):
        assert torch.equal(a.images, b.images) and torch.equal(b.images, c.images) and torch.equal(b.values, c.values)
        stored = open_store(embeddings)
        expected = torch.cat([stored.read(int(i)).decoded_embedding()[a.crop_ids[2 * k: 2 * k + 2]] for k, i in enumerate(a.image_index)])
        assert torch.equal(alone.stored_targets().embedding(a), expected) and torch.equal(paired.stored_targets().embedding(b), expected)
    with pytest.raises(ValueError, match="keeps no soft labels"):
        alone.stored_targets().labels(a)
    with pytest.raises(StorePayloadError, match="holds embeddings .*this command needs a label store"):
        StoredCrops(embeddings, tiny.train, size=16, embed_store=embeddings)
    other = embedding_store(tiny, tmp_path / "other", seed=1)
    args = train_args(tiny, tmp_path / "run", "--embed-store", str(other))
    with pytest.raises(DataMismatchError) as refused:
        StoredCrops(tiny.store, tiny.train, size=16, embed_store=other)
    assert str(refused.value) == train_error(args, capsys)


def test_validation_folders_are_scored_against_the_stores_classes(tiny: TinyData, tmp_path: Path) -> None:
    """A folder of some of the classes keeps their indices; a folder that is no training class is refused."""
    dataset = StoredCrops(tiny.store, tiny.train, size=16)
    val = tmp_path / "val"
    shutil.copytree(tiny.val / "c2", val / "c2")
    images = validation_images(val, dataset)
    assert images.labels.tolist() == [2, 2]
    assert EvalDataset(images, 16, 0.875, "bilinear")[0][1] == 2
    shutil.copytree(tiny.val / "c1", val / "bird")
    refusal = r"^--val-data .*: class folder 'bird' is not among the store's classes \('c0', 'c1', 'c2'\); name validation folders"
    with pytest.raises(DataMismatchError, match=refusal):
        validation_images(val, dataset)


def test_a_dataset_indexed_without_an_epoch_says_what_to_use(tiny: TinyData) -> None:
    with pytest.raises(TypeError, match=r"indexed by \(epoch, image index\) pairs, got 3: sample it with fkd.api.EpochSampler"):
        StoredCrops(tiny.store, tiny.train, size=16)[3]


def test_import_fkd_stays_light_and_fkd_api_loads_on_use() -> None:
    code = "import sys, fkd; assert 'torch' not in sys.modules; fkd.api.StoredCrops; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
