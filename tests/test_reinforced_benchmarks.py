"""The reinforced stores' benchmark rows, with training stubbed: the ViT block's reinforced RandAugment
row and the Mixup/CutMix block (bench_mix.py) run what they say, read their claims with the seed
spread; the storage rows measure real (tiny) reinforced stores; labelgen's and the loader's
reinforced rows ask for the stored augmentation they name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from benchmark_stubs import argvs

from benchmarks import common
from benchmarks.accuracy import bench_mix, bench_vit
from benchmarks.speed import bench_labelgen, loader_data
from benchmarks.storage import reinforced
from fkd.data.views import sample_views
from fkd.store import LabelStore, ViewSpec
from labelgen import cli as labelgen_cli

from conftest import write_random_store


def test_the_mix_block_runs_online_kd_linear_labels_and_stored_pairs_at_both_objectives(monkeypatch, tmp_path: Path):
    rows = bench_mix.mix_rows({1: "/stores/pairs", 4: "/stores/pairs4"}, 0.3)
    argv = argvs(monkeypatch, tmp_path, [run for run, _ in rows], 1280)
    mix, elem = ["--mixup", "0.8", "--cutmix", "1.0"], ["--mixup-mode", "elem"]
    assert sorted(argv) == sorted(f"{name}-seed0" for name in (
        "online-kd-mix-n4", "fkd-full-mix-n4", "online-kd-mix-elem-n4", "fkd-full-mix-elem-n4", "fkd-full-pairs-n4", "fkd-full-pairs4-n4",
        "online-kd-mix-a0.7-n4", "fkd-full-gt0.3-mix-n4", "online-kd-mix-elem-a0.7-n4", "fkd-full-gt0.3-mix-elem-n4",
        "fkd-full-gt0.3-pairs-n4", "fkd-full-gt0.3-pairs4-n4"))
    tail = lambda name: argv[f"{name}-seed0"][argv[f"{name}-seed0"].index("--crops-per-image") + 2:]  # noqa: E731
    assert tail("online-kd-mix-n4") == [*mix, "--teacher-module", "fkd.zoo.keras_cifar10:create_model", "--kd-alpha", "1"]
    assert tail("online-kd-mix-a0.7-n4")[-2:] == ["--kd-alpha", "0.7"]  # (1 - W) KD + W CE(mixed y): fkd's W = 0.3
    assert tail("online-kd-mix-elem-a0.7-n4") == [*mix, *elem, "--teacher-module", "fkd.zoo.keras_cifar10:create_model", "--kd-alpha", "0.7"]
    assert tail("fkd-full-mix-n4") == [*mix, "--store", "/stores/full-k10", "--stored-crops", "cycle"]  # linear mixing of stored labels
    assert tail("fkd-full-mix-elem-n4") == [*mix, *elem, "--store", "/stores/full-k10", "--stored-crops", "cycle"]  # per crop
    assert tail("fkd-full-pairs-n4") == ["--store", "/stores/pairs", "--stored-crops", "cycle"]  # the pairs come from the store
    assert tail("fkd-full-gt0.3-pairs4-n4") == ["--store", "/stores/pairs4", "--stored-crops", "cycle", "--gt-weight", "0.3"]
    assert argv["fkd-full-pairs-n4-seed0"][argv["fkd-full-pairs-n4-seed0"].index("--epochs") + 1] == "2"  # 1280 images: the equal-work epochs


def test_the_mix_block_trains_whole_seeds_first():
    rows = bench_mix.mix_rows({1: "/stores/pairs"}, 0.3)
    runs = bench_mix.mix_runs(rows, range(2))
    assert [(r.name, r.seed) for r in runs] == [(r.name, s) for s in (0, 1) for r, _ in rows]
    assert len({r.name for r in runs[:len(rows)]}) == len(rows) == 10


def test_each_stored_row_is_set_against_online_kd_at_its_objective_and_draws():
    """Pairs draw per crop: their online row is the per-sample one; linear mixing keeps its own scope."""
    online = {run.name: bench_mix.like_online(run) for run, _ in bench_mix.mix_rows({1: "/stores/pairs"}, 0.3)}
    assert online == {
        "online-kd-mix-n4": None, "fkd-full-mix-n4": "online-kd-mix-n4", "online-kd-mix-elem-n4": None,
        "fkd-full-mix-elem-n4": "online-kd-mix-elem-n4", "fkd-full-pairs-n4": "online-kd-mix-elem-n4",
        "online-kd-mix-a0.7-n4": None, "fkd-full-gt0.3-mix-n4": "online-kd-mix-a0.7-n4", "online-kd-mix-elem-a0.7-n4": None,
        "fkd-full-gt0.3-mix-elem-n4": "online-kd-mix-elem-a0.7-n4", "fkd-full-gt0.3-pairs-n4": "online-kd-mix-elem-a0.7-n4"}


def row(name: str, top1: float, std: "float | None") -> dict:
    return {"name": name, "top1_mean": top1, "top1_std": std}


def test_mix_claims_read_stored_labels_against_online_kd_at_the_same_objective_and_draws():
    rows = [row("online-kd-mix-n4", 60.0, 0.3), row("fkd-full-mix-n4", 59.0, 0.4), row("online-kd-mix-elem-n4", 63.0, 0.3),
            row("fkd-full-mix-elem-n4", 62.9, 0.1), row("fkd-full-pairs-n4", 62.2, 0.2),
            row("online-kd-mix-a0.7-n4", 62.0, 0.3), row("fkd-full-gt0.3-mix-n4", 62.5, 0.4), row("online-kd-mix-elem-a0.7-n4", 61.0, 0.3),
            row("fkd-full-gt0.3-mix-elem-n4", 61.5, 0.4), row("fkd-full-gt0.3-pairs-n4", 61.0, 0.4)]
    claims = bench_mix.mix_claims(rows, 0.3, [1])
    assert [(c["holds"], c["clear"]) for c in claims] == [
        (False, True), (True, False), (False, True), (False, True), (True, True),  # W=0
        (True, False), (True, False), (True, False), (False, False), (False, True)]  # W=0.3
    assert claims[0]["claim"] == ("stored labels within the seed spread of online KD under the same augmentation (Mixup/CutMix mixed linearly, "
                                  "batch draws: fkd-full-mix-n4 vs online-kd-mix-n4)")
    assert claims[0]["measured"] == "fkd-full-mix-n4 59.00 vs online-kd-mix-n4 60.00: -1.00 points, seed spread 0.50"
    assert claims[2]["measured"] == "fkd-full-pairs-n4 62.20 vs online-kd-mix-elem-n4 63.00: -0.80 points, seed spread 0.36"
    assert claims[3]["measured"] == "fkd-full-pairs-n4 62.20 vs fkd-full-mix-elem-n4 62.90: -0.70 points, seed spread 0.22"
    assert claims[4]["claim"] == "per-crop draws beat one draw per batch, online KD"
    assert claims[7]["claim"].endswith("(Mixup/CutMix pairs labelled by the teacher, 1 partner image(s), W=0.3: fkd-full-gt0.3-pairs-n4 vs "
                                       "online-kd-mix-elem-a0.7-n4)")
    one_seed = bench_mix.mix_claims([{**r, "top1_std": None} for r in rows], 0.3, [1])
    assert [c["holds"] for c in one_seed] == [False, False, False, False, True, True, True, True, False, False]  # no spread: not below at all


def test_the_vit_blocks_reinforced_row_replays_its_store_without_randaugment(monkeypatch, tmp_path: Path):
    (run, student, targets), = bench_vit.reinforced_vit_rows("/stores/reinforced", 1)
    argv = argvs(monkeypatch, tmp_path, [run], 1280)["fkd-full-reinforced-ra-n4-seed0"]
    assert argv[-4:] == ["--store", "/stores/reinforced", "--stored-crops", "cycle"] and "--randaugment" not in argv
    assert argv[1] == str(bench_vit.VIT_RECIPE) and student == "ViT"
    plain = [r for r, _, _ in bench_vit.vit_rows("/stores/full", 1) if r.name == "fkd-full-n4"][0]
    assert run.extra == plain.extra and run.recipe == plain.recipe  # fkd full's row, but for the store


def test_vit_claims_read_the_reinforced_pairs_only_when_that_row_ran():
    base = [row(n, t, 0.3) for n, t in (("deit-full-hard-n4", 40), ("deit-full-soft-n4", 39), ("online-kd-hard-n4", 38),
                                        ("online-kd-soft-n4", 38.5), ("fkd-hardening-gt0.5-n4", 39.8), ("fkd-full-n4", 37.6),
                                        ("online-kd-n4", 38.0), ("fkd-full-ra-n4", 33.0), ("online-kd-ra-n4", 38.2))]
    assert len(bench_vit.vit_claims(base)) == len(bench_vit.vit_claims(base + [row("other", 1, 1)]))
    claims = bench_vit.vit_claims(base + [row("fkd-full-reinforced-ra-n4", 38.0, 0.3)])[-4:]
    assert [(c["holds"], c["clear"]) for c in claims] == [(True, False), (False, True), (True, False), (True, True)]
    assert claims[2]["claim"] == ("stored labels within the seed spread of online KD under the same augmentation (RandAugment medium1 "
                                  "labelled: reinforced store, fkd-full-reinforced-ra vs online-kd-ra)")
    assert claims[2]["measured"] == "fkd-full-reinforced-ra-n4 38.00 vs online-kd-ra-n4 38.20: -0.20 points, seed spread 0.42"


def test_reinforced_stores_are_labelled_once_per_set_of_flags(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(common, "CACHE", tmp_path)
    monkeypatch.setattr(reinforced, "balanced_subset", lambda split, per_class, seed: tmp_path / "data")
    calls = []
    monkeypatch.setattr(reinforced, "run_logged", lambda argv, log, env=None: calls.append(argv) or 7.5)
    setting = common.LabelSetting(100, 32)
    store, seconds = reinforced.reinforced_store(setting, reinforced.PAIRS, workers=2)
    assert seconds == 7.5 and store.parent == common.label_stores(setting) and store.name.startswith("reinforced-")
    assert calls[0][-5:] == ["--overwrite", "--mixup", "0.8", "--cutmix", "1.0"] and calls[0][calls[0].index("--scheme") + 1] == "full"
    other, _ = reinforced.reinforced_store(setting, reinforced.RANDAUGMENT)
    assert other != store  # other flags, another store
    (store / "store.json").parent.mkdir(parents=True)
    (store / "store.json").write_text('{"complete": true}')
    assert reinforced.reinforced_store(setting, reinforced.PAIRS) == (store, None) and len(calls) == 2


def test_storage_rows_measure_what_each_stored_augmentation_adds(monkeypatch, tmp_path: Path):
    plain, _ = write_random_store(tmp_path / "plain", num_crops=16, num_images=8, shard_size=8)
    copies = {name: loader_data.reinforced_copy(plain, spec, tmp_path / f"r{i}") for i, (name, spec) in enumerate(
        {"ra": ViewSpec(randaugment="rand-m9-mstd0.5"), "pairs": ViewSpec(mixup=0.8, cutmix=1.0)}.items())}
    flags = {"ra": reinforced.RANDAUGMENT, "pairs": reinforced.PAIRS}
    monkeypatch.setattr(reinforced, "AUGMENTATIONS", flags)
    monkeypatch.setattr(reinforced, "converted_store", lambda setting, scheme, k: plain)
    monkeypatch.setattr(reinforced, "reinforced_store", lambda setting, f, workers=1: (copies[next(n for n, v in flags.items() if v == f)], 3.0))
    monkeypatch.setattr(reinforced, "converted", lambda store, scheme, k: store)
    rows = reinforced.storage_rows(common.LabelSetting(8, 16))
    assert [r["augmentation"] for r in rows] == ["none (plain store, format 3)", "ra (format 6)", "pairs (format 6)"]
    assert [r["extra_raw_bytes_per_crop"] for r in rows] == [0.0, 4.0, 16.0]  # 2 op codes + 2 magnitudes; partner 4 + 2, lambda 2, box 8
    assert all(r["extra_bytes_per_crop"] > 0 for r in rows[1:]) and rows[1]["labelgen_seconds"] == 3.0


def test_reinforced_loader_copies_hold_the_views_fkd_labelgen_would_store(tmp_path: Path):
    plain, _ = write_random_store(tmp_path / "plain", num_crops=8, num_images=5, shard_size=2)
    spec = loader_data.REINFORCED["stored Mixup/CutMix pairs"]
    copy = LabelStore(loader_data.reinforced_copy(plain, spec, tmp_path / "copy"))
    source = LabelStore(plain)
    assert copy.meta.format_version == 6 and copy.meta.augmentation == spec
    for i in range(5):
        want = sample_views(spec, source.meta.seed, source.image_ids[i], 8, tuple(source.meta.input_size), i, 5)
        got, plain_record = copy.read(i), source.read(i)
        np.testing.assert_array_equal(got.views.mix_image, want.mix_image)
        np.testing.assert_array_equal(got.values, plain_record.values)


@pytest.mark.parametrize("name", list(bench_labelgen.AUGMENTED))
def test_labelgen_rows_ask_for_the_augmentation_they_name(name):
    parser = labelgen_cli.build_parser()
    args = parser.parse_args(["--data", "d", "--out", "o", "--teacher-module", "m:f", *bench_labelgen.AUGMENTED[name]])
    views = labelgen_cli.config_from_args(args, parser).labels.views
    assert views.active and (views.mixes == (name == "Mixup/CutMix pairs"))
