"""fkd-labels convert: every allowed conversion equals quantizing the source's stored probabilities
(the teacher's, as float16 kept them), every impossible one is refused with what the source lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fkd.data.crops import boxes_to_fixed, sample_crops
from fkd.labels.builder import prepare_output, write_store
from fkd.labels.cli import main
from fkd.payload import quantize
from fkd.store import ImageLabels, LabelStore, new_meta

from conftest import write_random_store

NUM_IMAGES, NUM_CROPS, NUM_CLASSES = 7, 6, 10


def fp16_exact_probs(seed: int = 0) -> np.ndarray:
    """Teacher probabilities (N, M, C) that float16 holds exactly: a top-K store (and a full store
    of probabilities) keeps them unchanged, so converting it must give exactly what quantizing these
    very numbers gives."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(NUM_CLASSES, 0.3), size=(NUM_IMAGES, NUM_CROPS)).astype(np.float16).astype(np.float32)


def store_from_probs(path: Path, probs: np.ndarray, scheme: str, top_k: int, shard_size: int = 3, format_version: "int | None" = None) -> Path:
    """A store of ``encode(probs)``; ``format_version`` 3 with ``full``: an older full store, of float16 probabilities."""
    n, m, c = probs.shape
    meta = new_meta(
        scheme=scheme, top_k=top_k, num_classes=c, class_names=[f"k{i}" for i in range(c)], num_crops=m, num_images=n,
        shard_size=shard_size, teachers=[{"name": "test"}], format_version=format_version,
    )
    records = []
    for i in range(n):
        h, w = 30 + i, 40 + 2 * i
        crops = sample_crops(f"img{i}", h, w, m, seed=0)
        payload = quantize.Payload(None, probs[i].astype(np.float16)) if format_version == 3 else quantize.encode(probs[i], scheme, top_k)
        records.append(ImageLabels(i, f"k{i % 2}/img{i}.jpg", i % 2, h, w, boxes_to_fixed(crops.boxes, h, w), crops.flips,
                                   payload.indices, payload.values))
    write_store(prepare_output(path, False), meta, records)
    return path


def stored_probs(probs: np.ndarray) -> np.ndarray:
    """What a full store of this fkd (version 5) gives back of ``probs``: exp of their float16 ln p."""
    return np.stack([np.exp(quantize.encode(p, "full").values.astype(np.float32)) for p in probs])


def assert_payloads(path: Path, probs: np.ndarray, scheme: str, top_k: int, expected_payload=quantize.encode) -> None:
    """The store at ``path`` holds exactly expected_payload(probs, scheme, top_k) (default: encode),
    image by image."""
    store = LabelStore(path)
    assert store.meta.scheme == scheme and len(store) == len(probs)
    for i in range(len(store)):
        record = store.read(i)
        expected = expected_payload(probs[i], scheme, top_k)
        for got, want in ((record.indices, expected.indices), (record.values, expected.values)):
            assert (got is None and want is None) or (got.dtype == want.dtype and np.array_equal(got, want)), (i, scheme, top_k)


# (source scheme, source K) -> (target scheme, target K): every conversion the source holds enough for.
ALLOWED = [
    ("full", 0, "hardening", 1),
    ("full", 0, "smoothing", 1),
    ("full", 0, "marginal-renorm", 5),
    ("full", 0, "marginal-smoothing", 3),
    ("full", 0, "full", 0),
    ("marginal-smoothing", 5, "marginal-smoothing", 5),
    ("marginal-smoothing", 5, "marginal-renorm", 5),
    ("marginal-renorm", 5, "marginal-smoothing", 2),
    ("marginal-smoothing", 5, "smoothing", 1),
    ("marginal-smoothing", 5, "hardening", 1),
    ("marginal-renorm", NUM_CLASSES, "full", 0),
    ("smoothing", 1, "hardening", 1),
    ("smoothing", 1, "marginal-smoothing", 1),
    ("hardening", 1, "hardening", 1),
]


@pytest.mark.parametrize("source,source_k,target,target_k", ALLOWED)
def test_allowed_conversion_equals_quantizing_the_teacher_probabilities(
    tmp_path: Path, source: str, source_k: int, target: str, target_k: int
) -> None:
    """A full source (log-probabilities) converts from its stored probabilities, exp(ln p), and to
    full unchanged; a top-K source of every class becomes a full store of probabilities (version 3),
    as no log-probability is made from float16-rounded probabilities."""
    probs = fp16_exact_probs()
    src = store_from_probs(tmp_path / "src", probs, source, max(source_k, 1))
    out = tmp_path / "out"
    assert main(["convert", str(src), "--scheme", target, "--top-k", str(max(target_k, 1)), "--out", str(out)]) == 0
    if target == "full" and source != "full":
        assert LabelStore(out).meta.format_version == 3
        assert_payloads(out, probs, target, 0, lambda p, *_: quantize.Payload(None, p.astype(np.float16)))
    else:
        assert LabelStore(out).meta.format_version == (5 if target == "full" else 3)
        assert_payloads(out, stored_probs(probs) if source == "full" and target != "full" else probs, target, max(target_k, 1))


def test_an_older_full_store_of_probabilities_converts_from_its_values(tmp_path: Path) -> None:
    """A version-3 full store keeps float16 probabilities: they are quantized as they are, and full
    to full keeps them (and the version: its values never become log-probabilities)."""
    probs = fp16_exact_probs(seed=5)
    src = store_from_probs(tmp_path / "src", probs, "full", 1, format_version=3)
    assert main(["convert", str(src), "--scheme", "marginal-smoothing", "--top-k", "3", "--out", str(tmp_path / "k3")]) == 0
    assert_payloads(tmp_path / "k3", probs, "marginal-smoothing", 3)
    assert main(["convert", str(src), "--out", str(tmp_path / "same")]) == 0
    assert LabelStore(tmp_path / "same").meta.format_version == 3
    assert_payloads(tmp_path / "same", probs, "full", 0, lambda p, *_: quantize.Payload(None, p.astype(np.float16)))


def test_full_to_marginal_renorm_k5_via_cli_keeps_everything_else(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    probs = fp16_exact_probs(seed=3)
    src = store_from_probs(tmp_path / "src", probs, "full", 5)
    out = tmp_path / "out"
    assert main(["convert", str(src), "--scheme", "marginal-renorm", "--top-k", "5", "--out", str(out), "--shard-size", "2"]) == 0
    assert f"wrote {out}: {NUM_IMAGES} images, scheme marginal-renorm, K=5, 4 shards" in capsys.readouterr().out
    assert_payloads(out, stored_probs(probs), "marginal-renorm", 5)
    old, new = LabelStore(src), LabelStore(out)
    assert new.meta.store_id != old.meta.store_id and new.meta.shard_size == 2 and new.meta.top_k == 5
    assert new.meta.differences(old.meta) == ["scheme", "shard_size"]  # the source recorded top_k=5 too
    assert new.image_ids == old.image_ids and np.array_equal(new.labels, old.labels)
    assert np.array_equal(new.image_sizes, old.image_sizes)
    for i in range(NUM_IMAGES):
        a, b = old.read(i), new.read(i)
        assert np.array_equal(a.boxes_fixed, b.boxes_fixed) and np.array_equal(a.flips, b.flips)


def test_top_k_slicing_keeps_the_teachers_order_even_where_float16_ties(tmp_path: Path) -> None:
    """A store written by the store's own test writer from float32 probabilities (not float16-exact):
    the first K' stored classes are the teacher's top K', so K=5 -> K'=3 equals encoding with K'=3."""
    src, written = write_random_store(tmp_path / "src", scheme="marginal-smoothing", top_k=5, num_images=10, num_crops=16)
    out = tmp_path / "out"
    assert main(["convert", str(src), "--scheme", "marginal-renorm", "--top-k", "3", "--out", str(out)]) == 0
    assert_payloads(out, written["probs"], "marginal-renorm", 3)


def test_default_scheme_and_k_are_the_sources(tmp_path: Path) -> None:
    probs = fp16_exact_probs()
    src = store_from_probs(tmp_path / "src", probs, "marginal-renorm", 4)
    assert main(["convert", str(src), "--out", str(tmp_path / "same")]) == 0
    assert_payloads(tmp_path / "same", probs, "marginal-renorm", 4)
    assert main(["convert", str(src), "--scheme", "marginal-smoothing", "--out", str(tmp_path / "k")]) == 0
    assert_payloads(tmp_path / "k", probs, "marginal-smoothing", 4)


REFUSED = [
    ("hardening", 1, "smoothing", 1,
     "cannot convert hardening (K=1) to smoothing: a hardening store keeps only each crop's top-1 class, no probabilities; "
     "it converts only to hardening"),
    ("hardening", 1, "marginal-renorm", 1, "a hardening store keeps only each crop's top-1 class"),
    ("marginal-smoothing", 5, "marginal-renorm", 6,
     "cannot convert marginal-smoothing (K=5) to marginal-renorm with K=6: the source keeps only the top 5 probabilities "
     "per crop; choose --top-k <= 5 or regenerate with fkd-labelgen --top-k 6"),
    ("smoothing", 1, "marginal-smoothing", 2, "the source keeps only the top 1 probabilities per crop"),
    ("marginal-renorm", 9, "full", 0,
     "cannot convert marginal-renorm (K=9) to full: full needs all 10 class probabilities per crop, the source keeps only "
     "the top 9; regenerate with fkd-labelgen --scheme full"),
]


@pytest.mark.parametrize("source,source_k,target,target_k,message", REFUSED)
def test_impossible_conversion_is_refused_with_what_the_source_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture, source: str, source_k: int, target: str, target_k: int, message: str
) -> None:
    src = store_from_probs(tmp_path / "src", fp16_exact_probs(), source, source_k)
    out = tmp_path / "out"
    assert main(["convert", str(src), "--scheme", target, "--top-k", str(max(target_k, 1)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fkd-labels convert: error: ") and message in err
    assert not out.exists()  # refused before anything was written


def test_output_guards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = store_from_probs(tmp_path / "src", fp16_exact_probs(), "full", 5)
    assert main(["convert", str(src), "--scheme", "hardening", "--out", str(src)]) == 2
    assert f"--out {src} is also an input" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert main(["convert", str(src), "--scheme", "hardening", "--out", str(busy), "--overwrite"]) == 2
    assert "holds no label store; refusing to overwrite it" in capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["convert", str(src), "--scheme", "hardening", "--out", str(out)]) == 0
    assert main(["convert", str(src), "--scheme", "smoothing", "--out", str(out)]) == 2
    assert "already exists and is not empty; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert main(["convert", str(src), "--scheme", "smoothing", "--out", str(out), "--overwrite"]) == 0
    assert LabelStore(out).meta.scheme == "smoothing"


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = store_from_probs(tmp_path / "src", fp16_exact_probs(), "full", 5)
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(src), "--scheme", "zip", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "invalid choice: 'zip'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(src), "--top-k", "0", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2  # a wrong path is a bad request
    assert f"{tmp_path / 'nowhere'}: no such directory; pass a label store directory" in capsys.readouterr().err
