"""A reinforced store replays the view the teacher saw: fkd-labelgen's worker input and the training
dataset's crop are the same bits (colour jitter, RandAugment, random erasing, Mixup/CutMix pairs)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reinforced_stores import FULL_SPEC, label_store, make_worker

from fkd.data.images import list_images
from fkd.data.multicrop import collate_crops
from fkd.data.stored import StoredCrops
from fkd.store import LabelStore
from labelgen.messages import ShardTask
from labelgen.plan import image_refs
from train.modes import DeiTMode, SupervisedMode

from conftest import make_image_folder
from test_labelgen_worker import save_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")
M = 6


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reinforced")
    folder = make_image_folder(root / "images", classes=3, per_class=3, size=(40, 44))
    return folder, save_tiny_teacher(root / "teacher.pth", num_classes=3)


@pytest.mark.parametrize("remode, scheme", [("pixel", "full"), ("rand", "marginal-smoothing"), ("const", None)])
def test_the_training_crop_is_bitwise_the_teachers_input(assets, tmp_path, remode, scheme):
    """Soft labels of two schemes and an embedding store (scheme None) alike."""
    folder, checkpoint = assets
    worker = make_worker(checkpoint, replace(FULL_SPEC, remode=remode), scheme, num_crops=M)
    store = label_store(folder, tmp_path / "store", worker)
    meta = LabelStore(store, payload=None).meta
    assert meta.format_version == 6 and meta.augmentation == replace(FULL_SPEC, remode=remode)

    train = StoredCrops(store, folder, crops_per_image=M, size=32)  # the teacher's input size and (the store's) filter
    refs = image_refs(list_images(folder))
    task = ShardTask(0, 0, refs, meta.record_layout(), len(refs), dict(enumerate(refs)))  # any image may be a partner
    mixed = 0
    for index, ref in enumerate(refs):
        teacher_input = worker._prepare((index, ref), task=task).views
        sample = train[(0, index)]
        assert sample.crop_ids.tolist() == list(range(M))
        assert torch.equal(sample.images, teacher_input), f"image {index}"
        mixed += int((sample.own_share < 1).sum())
    assert mixed > len(refs)  # most crops are mixed (mix_prob 1): the partners were replayed too


def test_a_store_without_augmentation_keeps_its_version_and_bytes(assets, tmp_path):
    folder, checkpoint = assets
    plain = label_store(folder, tmp_path / "plain", make_worker(checkpoint, None, num_crops=M))
    reinforced = label_store(folder, tmp_path / "reinforced", make_worker(checkpoint, FULL_SPEC, num_crops=M))
    a, b = LabelStore(plain), LabelStore(reinforced)
    assert a.meta.format_version == 5 and "augmentation" not in a.manifest.to_dict()["meta"]
    for index in range(len(a)):
        x, y = a.read(index), b.read(index)
        assert x.views is None and y.views is not None
        np.testing.assert_array_equal(x.boxes_fixed, y.boxes_fixed)  # the crop stream is untouched by augmentation
        np.testing.assert_array_equal(x.flips, y.flips)


def test_stored_crops_refuse_augmenting_on_top_and_mix_both_ground_truths(assets, tmp_path):
    from fkd.data.augment import build_crop_augment
    from fkd.data.errors import ReplayError

    folder, checkpoint = assets
    store = label_store(folder, tmp_path / "store", make_worker(checkpoint, FULL_SPEC, num_crops=M))
    with pytest.raises(ReplayError, match="is a reinforced store .*: each label describes its crop after that stored augmentation"):
        StoredCrops(store, folder, crops_per_image=2, size=32, augment=build_crop_augment(0.4))
    train = StoredCrops(store, folder, crops_per_image=2, size=32)
    assert train.stored_targets(0.0).gt_weight == 0.0
    batch = collate_crops([train[(0, i)] for i in range(len(train.store.image_ids))])
    targets = train.stored_targets(0.3)
    own, other = F.one_hot(batch.labels, 3).float(), F.one_hot(batch.partner_labels, 3).float()
    share = batch.own_share.unsqueeze(1)
    assert torch.allclose(targets(batch), 0.7 * targets.labels(batch) + 0.3 * (share * own + (1 - share) * other), rtol=0, atol=1e-6)
    crossed = (batch.partner_labels != batch.labels) & (batch.own_share < 1)
    assert crossed.any() and (targets.ground_truth(batch)[crossed].gather(1, batch.partner_labels[crossed, None]) > 0).all()
    meta = train.store.meta  # every mode's ground truth is the mixed one: supervised, the DeiT class head
    assert torch.equal(SupervisedMode(3).targets(batch), targets.ground_truth(batch))
    deit = DeiTMode(meta.scheme, 3, 0.0, "hard", 0.5, temperature=meta.temperature, log_probs=meta.full_log_probs)
    assert torch.equal(deit.targets(batch)[:, :3], targets.ground_truth(batch))
