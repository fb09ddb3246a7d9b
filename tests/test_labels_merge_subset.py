"""fkd-labels merge (parts of one run into one store) and --subset (some classes or images)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from fkd.data.images import ImageEntry, ImageList
from fkd.labels.cli import main
from fkd.labels.subset import StoreSubset, SubsetSpec, parse_subset
from fkd.store import LabelStore

from conftest import write_random_embedding_store, write_random_store


def part(tmp_path: Path, name: str, first: int, count: int, **kw) -> Path:
    ids = [f"c{i % 3}/img{i:03d}.jpg" for i in range(first, first + count)]
    labels = [i % 3 for i in range(first, first + count)]
    path, _ = write_random_store(tmp_path / name, num_images=count, image_ids=ids, labels=labels, seed=kw.pop("seed", 0), **kw)
    return path


def same_record(a, b) -> bool:
    return (a.image_id, a.label, a.height, a.width) == (b.image_id, b.label, b.height, b.width) and all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in ("boxes_fixed", "flips", "indices", "values")
    )


def test_merge_joins_parts_in_order_and_reshards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = part(tmp_path, "a", 0, 7, shard_size=4), part(tmp_path, "b", 7, 5, shard_size=2)
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(b), "--out", str(out), "--shard-size", "5"]) == 0
    assert f"wrote {out}: 12 images from 2 stores, 3 shards" in capsys.readouterr().out
    merged, sa, sb = LabelStore(out), LabelStore(a), LabelStore(b)
    assert merged.meta.num_shards == 3 and merged.meta.shard_size == 5
    assert merged.image_ids == sa.image_ids + sb.image_ids
    sources = [sa.read(i) for i in range(7)] + [sb.read(i) for i in range(5)]
    assert all(same_record(merged.read(i), s) for i, s in enumerate(sources))
    assert merged.meta.differences(sa.meta) == ["data_fingerprint", "num_images", "shard_size"]
    entries = [ImageEntry(f"c{i % 3}/img{i:03d}.jpg", i % 3) for i in range(12)]
    assert merged.meta.data_fingerprint == ImageList(Path("."), entries, []).fingerprint()
    assert main(["verify", str(out), "--quiet"]) == 0


def test_merge_default_shard_size_and_subset(tmp_path: Path) -> None:
    a, b = part(tmp_path, "a", 0, 6, shard_size=4), part(tmp_path, "b", 6, 6, shard_size=2)
    out = tmp_path / "merged"
    assert main(["merge", str(a), str(b), "--out", str(out), "--subset", "classes=class0"]) == 0
    merged = LabelStore(out)
    assert merged.meta.shard_size == 4 and merged.image_ids == ["c0/img000.jpg", "c0/img003.jpg", "c0/img006.jpg", "c0/img009.jpg"]
    assert merged.labels.tolist() == [0, 0, 0, 0]
    assert same_record(merged.read(3), LabelStore(b).read(3))


def test_merge_refuses_overlaps_and_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, overlap = part(tmp_path, "a", 0, 6), part(tmp_path, "overlap", 4, 4)
    assert main(["merge", str(a), str(overlap), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"fkd-labels merge: error: 2 images are in more than one store (first: 'c1/img004.jpg' ({a} and {overlap})" in err
    assert "merge joins disjoint parts only" in err
    other = part(tmp_path, "other", 6, 4, top_k=3, seed=2)
    assert main(["merge", str(a), str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{other} was made with other settings than {a} (seed: 0 vs 2; top_k: 5 vs 3)" in err
    assert main(["merge", str(a), "--out", str(tmp_path / "o")]) == 2
    assert "merge needs at least two stores" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_merge_names_the_differing_settings_in_one_readable_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A label store and an embedding store: the payload, not their metadata dicts."""
    labels = part(tmp_path, "labels", 0, 5)
    embedding, _ = write_random_embedding_store(tmp_path / "embedding", num_images=5, num_crops=16,
                                                image_ids=[f"e/{i}.jpg" for i in range(5)])
    assert main(["merge", str(labels), str(embedding), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        f"fkd-labels merge: error: {embedding} was made with other settings than {labels} (payload: labels vs embedding; "
        "class_names: 10 names (class0, class1, class2, ...) vs 3 names (c0, c1, c2); num_classes: 10 vs 3); "
        "only parts of one run can be merged\n"
    )
    other = part(tmp_path, "other", 5, 5, num_classes=12, num_crops=8)
    assert main(["merge", str(labels), str(other), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        f"fkd-labels merge: error: {other} was made with other settings than {labels} (class_names: 10 names (class0, class1, "
        "class2, ...) vs 12 names (class0, class1, class2, ...); num_classes: 10 vs 12; num_crops: 16 vs 8); "
        "only parts of one run can be merged\n"
    )
    assert not (tmp_path / "o").exists()


def test_parse_subset_forms(tmp_path: Path) -> None:
    assert parse_subset("classes=cat, dog,cat") == SubsetSpec("classes", ("cat", "dog"))
    ids = tmp_path / "ids.txt"
    ids.write_text("# wanted\nc0/img000.jpg\n\nc1/img001.jpg\n")
    assert parse_subset(f"images=@{ids}") == SubsetSpec("images", ("c0/img000.jpg", "c1/img001.jpg"))
    for bad, message in [
        ("cats", "subset 'cats' must be 'classes=NAME,...', 'images=ID,...' or 'images=@FILE'"),
        ("labels=1", "must be 'classes=NAME,...'"),
        ("classes=", "subset 'classes=' lists no classes"),
        (f"images=@{tmp_path / 'none.txt'}", "cannot read subset file"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_subset(bad)


def test_subset_view_reads_the_selected_images(random_store: tuple[Path, dict]) -> None:
    path, _ = random_store
    store = LabelStore(path)
    view = StoreSubset.from_spec(store, parse_subset("classes=class2,0"))  # names or indices
    assert view.indices.tolist() == [0, 2, 3, 5, 6, 8, 9]
    assert len(view) == 7 and view.labels.tolist() == [0, 2, 0, 2, 0, 2, 0]
    assert view.image_ids == [store.image_ids[i] for i in view.indices]
    assert np.array_equal(view.image_sizes, store.image_sizes[view.indices])
    assert same_record(view.read(4), store.read(6)) and view.read(4).index == 6
    clone = pickle.loads(pickle.dumps(view))
    assert same_record(clone.read(1), store.read(2))
    by_id = StoreSubset.from_spec(store, parse_subset("images=c1/img004.jpg,c0/img000.jpg"))
    assert by_id.indices.tolist() == [0, 4]
    with pytest.raises(IndexError, match="subset indices must lie in 0..9"):
        StoreSubset(store, np.array([10]))


def test_subset_errors_on_the_command_line(random_store: tuple[Path, dict], capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path, _ = random_store
    assert main(["convert", str(path), "--subset", "classes=dog", "--out", str(tmp_path / "o")]) == 2
    assert "unknown classes ['dog'] in --subset; the store's classes are: class0, class1, class2" in capsys.readouterr().err
    assert main(["convert", str(path), "--subset", "images=a.jpg,c0/img000.jpg", "--out", str(tmp_path / "o")]) == 2
    assert "1 image ids in --subset are not in the store (first: ['a.jpg'])" in capsys.readouterr().err
    assert main(["convert", str(path), "--subset", "classes=class9", "--out", str(tmp_path / "o")]) == 2
    assert "--subset classes=class9 selects no image of the store" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["info", str(path), "--subset", "everything"])
    assert exc.value.code == 2 and "argument --subset: subset 'everything' must be" in capsys.readouterr().err


def test_convert_with_subset_extracts_a_store(random_store: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = random_store
    out = tmp_path / "cats"
    assert main(["convert", str(path), "--subset", "classes=class1", "--out", str(out)]) == 0
    store, sub = LabelStore(path), LabelStore(out)
    assert sub.image_ids == [store.image_ids[i] for i in (1, 4, 7)] and sub.meta.scheme == store.meta.scheme
    assert all(same_record(sub.read(j), store.read(i)) for j, i in enumerate((1, 4, 7)))
    entries = [ImageEntry(store.image_ids[i], 1) for i in (1, 4, 7)]
    assert sub.meta.data_fingerprint == ImageList(Path("."), entries, []).fingerprint()
