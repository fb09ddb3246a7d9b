"""Format version 6: a store with per-crop augmentation says so in its metadata and keeps each crop's
decisions after the payload; stores without keep their version and bytes; damage is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fkd.data.views import sample_views
from fkd.store import LabelStore, StoreFormatError, StoreMeta, ViewParams, ViewSpec, new_meta
from fkd.store.views import view_problems

from conftest import write_random_store

SPEC = ViewSpec(randaugment="rand-m9-n3-mstd0.5", color_jitter=0.3, reprob=0.25, recount=2, mixup=0.8, cutmix=1.0)


def meta(augmentation: "ViewSpec | None", scheme: str = "marginal-smoothing", **extra) -> StoreMeta:
    return new_meta(scheme=scheme, top_k=5, num_classes=10, class_names=[str(c) for c in range(10)], num_crops=4, num_images=3,
                    shard_size=2, teachers=[], augmentation=augmentation, **extra)


def test_version_6_only_for_stores_with_augmentation():
    assert meta(SPEC).format_version == 6 and meta(SPEC, "full").format_version == 6 and meta(SPEC, "full").full_log_probs
    assert meta(None).format_version == 3 and meta(None, "full").format_version == 5
    assert meta(ViewSpec()).augmentation is None and meta(ViewSpec()).format_version == 3  # nothing on: a plain store
    plain = meta(None).to_dict()
    assert "augmentation" not in plain and plain["format_version"] == 3
    reinforced = meta(SPEC).to_dict()
    assert reinforced["augmentation"] == {"randaugment": "rand-m9-n3-mstd0.5", "color_jitter": 0.3, "reprob": 0.25, "remode": "pixel",
                                          "recount": 2, "mixup": 0.8, "cutmix": 1.0, "mix_prob": 1.0, "mix_switch_prob": 0.5,
                                          "mix_partners": 1}
    assert StoreMeta.from_dict(reinforced) == meta(SPEC).__class__(**{**reinforced, "augmentation": SPEC})
    assert meta(SPEC).differences(meta(ViewSpec(randaugment="rand-m5"))) == ["augmentation"]


def test_record_layout_appends_the_views(tmp_path):
    layout = meta(SPEC).record_layout()
    plain = meta(None).record_layout()
    # per crop: ops and magnitudes (3 layers), jitter 4, erasing 2 boxes x 4 x uint16, partner image uint32 + crop + lambda uint16, box 4 x uint16
    assert layout.raw_size - plain.raw_size == 4 * (3 + 3 + 4 + 16 + 4 + 2 + 2 + 8)
    params = sample_views(SPEC, 0, "a/b.jpg", 4, (32, 32), 1, 3)
    boxes, flips = np.zeros((4, 4), np.uint16), np.array([True, False, True, True])
    raw = layout.pack(boxes, flips, np.arange(20).reshape(4, 5), np.full((4, 5), 0.1), views=params)
    back = layout.unpack_views(raw)
    for name in ("ra_ops", "ra_mags", "jitter", "erase", "mix_image", "mix_crop", "mix_lam", "mix_box"):
        np.testing.assert_array_equal(getattr(back, name), getattr(params, name))
    assert layout.unpack(raw)[1].tolist() == flips.tolist()
    with pytest.raises(ValueError, match="a reinforced store's records need their crops' augmentation"):
        layout.pack(boxes, flips, np.arange(20).reshape(4, 5), np.full((4, 5), 0.1))
    assert plain.unpack_views(plain.pack(boxes, flips, np.arange(20).reshape(4, 5), np.full((4, 5), 0.1))) is None


def rewrite(path: Path, **changes) -> None:
    manifest = json.loads((path / "store.json").read_text())
    manifest["meta"].update(changes)
    (path / "store.json").write_text(json.dumps(manifest))


def test_augmentation_in_an_older_version_or_malformed_is_refused(tmp_path):
    path, _ = write_random_store(tmp_path / "store")
    rewrite(path, augmentation=SPEC.to_dict())
    with pytest.raises(StoreFormatError, match="per-crop augmentation needs format version 6, the metadata says 3"):
        LabelStore(path)
    for bad, message in [({**SPEC.to_dict(), "reprob": 2}, "augmentation reprob must be in"),
                         ({**SPEC.to_dict(), "randaugment": "rand-tweights"}, "transform sets"),
                         ({**SPEC.to_dict(), "rotate": 1}, r"augmentation has unknown fields \['rotate'\]")]:
        rewrite(path, augmentation=bad, format_version=6)
        with pytest.raises(StoreFormatError, match=message):
            LabelStore(path)


def test_verify_flags_views_no_writer_produces():
    params = sample_views(SPEC, 0, "a/b.jpg", 4, (32, 32), 1, 3)
    assert view_problems(params, SPEC, 3, 1) == []
    broken = ViewParams(**{name: None if a is None else a.copy() for name, a in vars(params).items()})
    broken.ra_ops[0, 0] = 12
    broken.mix_lam[:] = 100
    broken.mix_image[:] = 1  # the image itself
    broken.erase[0, 0] = (60000, 0, 10000, 10)
    assert view_problems(broken, SPEC, 3, 1) == [
        "RandAugment op codes beyond the spec's 10 ops", "erasing boxes that extend past the crop",
        "Mixup/CutMix partners that are the image itself or beyond the store's 3 images",
    ]
