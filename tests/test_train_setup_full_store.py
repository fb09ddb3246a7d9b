"""fkd-train on a full store of format version 5 (float16 log-probabilities): the targets a run
trains on are the teacher's probabilities (``--mode fkd``), or its distribution at --kd-tau
(``--mode deit --kd soft``), and a --kd-tau a store cannot give is refused before the model is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import train.feature_modes
import train.modes
import train.run
from fkd.store import LabelStore, Manifest
from train.cli import main

from conftest import TinyData, make_tiny_data, train_args, with_full_store, write_random_embedding_store

SMALL_DEIT = ["--model", "deit_tiny_distilled_patch16_224", "--model-kwargs", "img_size=32", "patch_size=8", "depth=1",
              "embed_dim=32", "num_heads=2"]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    return with_full_store(make_tiny_data(tmp_path_factory.mktemp("tiny")))


def recorded_targets(monkeypatch: pytest.MonkeyPatch, mode: type) -> list[tuple]:
    """Every (batch, targets) ``mode.targets`` gives during a run."""
    seen: list[tuple] = []
    real = mode.targets

    def targets(self, batch):
        result = real(self, batch)
        seen.append((batch, result))
        return result

    monkeypatch.setattr(mode, "targets", targets)
    return seen


def teacher_probs(full: TinyData, batch) -> np.ndarray:
    """The probabilities the store was written from, for each crop of ``batch`` (B*n, C)."""
    per_image = len(batch.crop_ids) // len(batch.image_index)
    images = batch.image_index.repeat_interleave(per_image).numpy()
    return full.written["probs"][images, batch.crop_ids.numpy()]


def test_fkd_mode_trains_on_the_teachers_probabilities(full: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the stored ln p were decoded as probabilities, clamped to 0: all-zero targets."""
    seen = recorded_targets(monkeypatch, train.modes.FKDMode)
    assert main(train_args(full, tmp_path / "out", "--epochs", "1")) == 0
    assert seen
    for batch, targets in seen:
        assert torch.equal(targets, torch.softmax(batch.values.float(), dim=-1))
        np.testing.assert_allclose(targets.numpy(), teacher_probs(full, batch), rtol=0, atol=2e-3)  # float16 ln p


def test_deit_soft_distills_a_full_store_at_kd_tau(full: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DeiT's recipe (tau 3) on a version-5 full store: the distillation head's target is the
    teacher's softmax(z / 3), rebuilt from the stored ln p; the class head's, the ground truth.
    Before: refused as a store of probabilities ("cannot be re-tempered exactly to 3.0")."""
    seen = recorded_targets(monkeypatch, train.modes.DeiTMode)
    assert main(train_args(full, tmp_path / "out", "--epochs", "1", "--mode", "deit", "--kd", "soft", "--kd-tau", "3", *SMALL_DEIT)) == 0
    assert seen
    for batch, targets in seen:
        truth, teacher = targets.split(3, dim=1)
        assert torch.equal(truth.argmax(1), batch.labels)
        tempered = teacher_probs(full, batch) ** (1 / 3)
        np.testing.assert_allclose(teacher.numpy(), tempered / tempered.sum(1, keepdims=True), rtol=0, atol=1e-3)


def test_a_kd_tau_the_store_cannot_give_is_refused_before_the_model(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """With a student that has no distillation token the refusal used to be the model's ("--mode
    deit needs a distillation-token model"): the store's is the first, a fix of the model then runs."""
    out = tmp_path / "out"
    assert main(train_args(tiny, out, "--mode", "deit", "--kd", "soft", "--kd-tau", "3")) == 2
    err = capsys.readouterr().err
    assert err.startswith("fkd-train: error: --kd-tau 3.0: a marginal-smoothing store (made at temperature 1.0) cannot be "
                          "re-tempered exactly to 3.0: ")
    assert err.endswith("; use --kd-tau 1.0 (the store's temperature) or a full store of this fkd (fkd-labelgen --scheme full "
                        "keeps log-probabilities, format version 5)\n")
    assert err.count("\n") == 1 and not out.exists()


def test_an_embedding_run_decodes_a_full_store_and_whitens_each_member(
    full: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--store (full, version 5) with --embed-store of a two-teacher ensemble (D = 10 + 6): the
    label part of the targets is the teacher's probabilities, and the loss whitens each member's
    slice apart. Before: all-zero label targets, and one whitening over all 16 values."""
    labels = LabelStore(full.store)
    embed, _ = write_random_embedding_store(
        tmp_path / "embed", dim=16, num_crops=labels.meta.num_crops, num_images=len(labels), shard_size=5,
        image_ids=labels.image_ids, sizes=labels.image_sizes, labels=labels.labels,
    )
    manifest = Manifest.load(embed)
    manifest.meta.teachers = [{"name": "a", "embedding_dim": 10}, {"name": "b", "embedding_dim": 6}]
    manifest.save(embed)
    built = []
    real_build = train.run.build_mode
    monkeypatch.setattr(train.run, "build_mode", lambda *args: built.append(real_build(*args)) or built[-1])
    seen = recorded_targets(monkeypatch, train.feature_modes.EmbeddingMode)
    assert main(train_args(full, tmp_path / "out", "--epochs", "1", "--embed-store", str(embed))) == 0
    assert [mode.member_dims for mode in built] == [(10, 6)]
    for batch, targets in seen:
        np.testing.assert_allclose(targets[:, :3].numpy(), teacher_probs(full, batch), rtol=0, atol=2e-3)
