"""Embedding payloads (format 4): the codec's round trips and error bound, hostile metadata, the
writer -> reader round trip, and what fkd-labels info/verify/show/convert and the label tools do with
an embedding store."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fkd.data.crops import fixed_to_boxes
from fkd.data.images import list_images, load_image
from fkd.labels.builder import prepare_output, write_store
from fkd.labels.cli import main
from fkd.labels.show import draw_embedding
from fkd.labels.verify import verify_store
from fkd.payload.embedding_codec import decode, encode, normalize
from fkd.payload.embedding_spec import EmbeddingSpec
from fkd.payload.quantize import Payload
from fkd.store import EmbeddingLayout, LabelStore, RecordLayout, StoreFormatError, StorePayloadError, copy_meta
from train.cli import main as train_main

from conftest import make_image_folder, write_random_embedding_store, write_random_store

D = 32


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def roundtrip(features: np.ndarray, dtype: str) -> tuple[np.ndarray, "np.ndarray | None"]:
    payload = encode(features, dtype)
    scales = None if payload.scales is None else torch.from_numpy(payload.scales)
    return decode(torch.from_numpy(payload.embedding), scales).numpy(), payload.scales


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), dim=-1).numpy()


# Codec --------------------------------------------------------------------------------------------

def test_float16_round_trip_is_exact_to_float16() -> None:
    x = np.random.default_rng(0).normal(size=(20, 512)).astype(np.float32) * 40
    payload = encode(x, "float16")
    assert payload.embedding.dtype == np.float16 and payload.scales is None
    decoded, _ = roundtrip(x, "float16")
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, x.astype(np.float16).astype(np.float32))


def test_int8_codes_of_a_known_vector() -> None:
    payload = encode(np.array([[2.54, -1.0, 0.0, 0.011]], dtype=np.float32), "int8")
    assert payload.embedding.dtype == np.int8 and payload.scales.dtype == np.float32
    assert payload.embedding.tolist() == [[127, -50, 0, 1]]
    assert payload.scales.tolist() == [np.float32(np.float32(2.54) / np.float32(127))]


def test_int8_error_is_within_half_a_step_and_cosine_bound() -> None:
    """Per value |x - x_hat| <= scale / 2 with scale = max|x| / 127 per crop, whatever the crop's
    magnitude; so ||x - x_hat|| / ||x|| <= sqrt(D) / 254 and cosine >= sqrt(1 - that^2)."""
    rng = np.random.default_rng(1)
    magnitudes = 10.0 ** rng.uniform(-4, 4, size=(64, 1))
    x = (rng.normal(size=(64, 512)) * magnitudes).astype(np.float32)
    x[::3] = np.maximum(x[::3], 0)  # ReLU'd rows use only half the codes
    payload = encode(x, "int8")
    decoded, scales = roundtrip(x, "int8")
    np.testing.assert_array_equal(scales, (np.abs(x).max(1) / 127).astype(np.float32))
    assert np.all(np.abs(payload.embedding.astype(np.int32)).max(1) == 127) and payload.embedding.min() >= -127
    assert np.all(np.abs(x - decoded) <= scales[:, None] * (0.5 + 1e-5))
    bound = np.sqrt(512) / 254
    relative = np.linalg.norm(x - decoded, axis=1) / np.linalg.norm(x, axis=1)
    assert relative.max() <= bound and cosine(x, decoded).min() >= np.sqrt(1 - bound**2)


def test_zero_vectors_encode_to_zero() -> None:
    x = np.zeros((3, 8), dtype=np.float32)
    x[1] = [-127, -64, -1, 0, 1, 2, 64, 127]  # scale 1: exact in both dtypes
    for dtype in ("float16", "int8"):
        decoded, scales = roundtrip(x, dtype)
        np.testing.assert_array_equal(decoded[[0, 2]], 0)
        np.testing.assert_array_equal(decoded[1], x[1])
    assert encode(x, "int8").scales.tolist()[::2] == [0.0, 0.0]


@pytest.mark.parametrize("features,dtype,message", [
    (np.array([[1.0, np.nan]]), "int8", r"the features are not all finite \(NaN or infinity\)"),
    (np.array([[1e5, 0.0]]), "float16", r"features reach \|x\| = 1e\+05, beyond float16's range \(65504\): store them as int8"),
    (np.zeros(4), "int8", r"encode expects features of shape \(N, D\), got \(4,\)"),
    (np.zeros((2, 4)), "bf16", r"unknown embedding dtype 'bf16'; choose one of: float16, int8"),
])
def test_encode_refuses(features: np.ndarray, dtype: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode(features, dtype)


def test_decode_needs_scales_for_int8_and_normalize_does_what_it_records() -> None:
    with pytest.raises(ValueError, match="int8 embeddings need their per-crop scales"):
        decode(torch.zeros(2, 4, dtype=torch.int8))
    x = torch.tensor([[3.0, 4.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(normalize(x, "none"), x)
    torch.testing.assert_close(normalize(x, "l2"), torch.tensor([[0.3, 0.4, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]) / np.sqrt(0.5))
    ln = normalize(x, "layernorm")[0]
    torch.testing.assert_close((ln.mean().item(), ln.var(unbiased=False).item()), (0.0, 1.0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown normalization 'batch'; choose one of: none, l2, layernorm"):
        normalize(x, "batch")


def test_both_codecs_feed_the_record_layout_in_its_field_order() -> None:
    """A writer packs ``payload.arrays()`` whatever the codec; unpacking gives the same arrays back."""
    rng = np.random.default_rng(2)
    boxes, flips = rng.integers(1, 60000, size=(6, 4)).astype(np.uint16), rng.random(6) < 0.5
    labels = Payload(rng.integers(0, 10, size=(6, 3)).astype(np.uint16), rng.random((6, 3)).astype(np.float16))
    embedding = encode(rng.normal(size=(6, D)), "int8")
    for layout, payload in ((RecordLayout(6, 3, 3, np.dtype(np.uint16)), labels), (EmbeddingLayout(6, D, "int8"), embedding)):
        unpacked = layout.unpack(layout.pack(boxes, flips, *payload.arrays()))
        assert np.array_equal(unpacked[0], boxes) and np.array_equal(unpacked[1], flips)
        for got, want in zip(unpacked[2:], payload.arrays(), strict=True):
            assert got.dtype == want.dtype and np.array_equal(got, want)
    with pytest.raises(ValueError, match=r"payload field 'embedding' is stored as int8, got float32 values; encode them first"):
        EmbeddingLayout(6, D, "int8").pack(boxes, flips, np.zeros((6, D), np.float32), np.ones(6, np.float32))


# Metadata -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,message", [
    (dict(dim=0, dtype="int8", source="pre-logits"), r"embedding dim must be an integer in 1\.\.65536, got 0"),
    (dict(dim=True, dtype="int8", source="pre-logits"), r"embedding dim must be an integer in 1\.\.65536, got True"),
    (dict(dim=8, dtype="bfloat16", source="pre-logits"), r"embedding dtype must be one of \['float16', 'int8'\], got 'bfloat16'"),
    (dict(dim=8, dtype="int8", source="pre-logits", normalization="batch"), r"embedding normalization must be one of"),
    (dict(dim=8, dtype="int8", source="a\nb"), r"embedding source must be a printable name of 1\.\.256 characters"),
    (dict(dim=8, dtype="int8", source=""), r"embedding source must be a printable name"),
])
def test_embedding_spec_refuses(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddingSpec(**spec)


@pytest.mark.parametrize("change,message", [
    ({"embedding": {"dim": 10**12, "dtype": "int8", "source": "x", "normalization": "none"}},
     r"metadata field embedding dim must be an integer in 1\.\.65536, got 1000000000000"),
    ({"embedding": {"dim": 65536, "dtype": "float16", "source": "x", "normalization": "none"}, "num_crops": 65535},
     r"a per-image record over 1 GiB"),
    ({"embedding": "huge"}, r"metadata field embedding must be an object with dim, dtype, source and normalization, got 'huge'"),
    ({"embedding": {"dim": 8, "dtype": "int8", "source": "x"}}, r"embedding must have exactly the keys .* missing: \['normalization'\]"),
    ({"format_version": 3}, r"an embedding payload needs format version 4, the metadata says 3"),
    ({"scheme": "full"}, r"an embedding store has no label scheme \(scheme null, top_k 0\), got 'full', 0"),
])
def test_hostile_embedding_metadata_is_refused_without_allocating(tmp_path: Path, change: dict, message: str) -> None:
    path, _ = write_random_embedding_store(tmp_path / "s", dtype="int8")
    manifest = json.loads((path / "store.json").read_text())
    manifest["meta"].update(change)
    (path / "store.json").write_text(json.dumps(manifest))
    tracemalloc.start()
    try:
        with pytest.raises(StoreFormatError, match=message):
            LabelStore(path, payload=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


# Store --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_writer_reader_round_trip(tmp_path: Path, dtype: str) -> None:
    path, written = write_random_embedding_store(tmp_path / "s", dim=D, dtype=dtype, num_images=5, shard_size=2)
    store = LabelStore(path, payload="embedding")
    assert store.meta.payload == "embedding" and store.meta.format_version == 4 and store.meta.num_shards == 3
    meta_json = json.loads((path / "store.json").read_text())["meta"]
    assert meta_json["embedding"] == {"dim": D, "dtype": dtype, "source": "pre-logits", "normalization": "none"}
    assert (meta_json["scheme"], meta_json["top_k"], meta_json["format_version"]) == (None, 0, 4)
    for n in range(5):
        record = store.read(n)
        assert np.array_equal(fixed_to_boxes(record.boxes_fixed, record.height, record.width), written["boxes"][n])
        assert np.array_equal(record.flips, written["flips"][n])
        assert record.indices is None and record.values is None and record.embedding.shape == (6, D)
        expected, scales = roundtrip(written["features"][n], dtype)
        assert (record.scales is None) == (scales is None) and (scales is None or np.array_equal(record.scales, scales))
        np.testing.assert_array_equal(record.decoded_embedding().numpy(), expected)


def test_label_stores_keep_version_3_and_payloads_are_not_mixed_up(tmp_path: Path) -> None:
    labels, _ = write_random_store(tmp_path / "labels")
    meta_json = json.loads((labels / "store.json").read_text())["meta"]
    assert meta_json["format_version"] == 3 and "embedding" not in meta_json
    embeddings, _ = write_random_embedding_store(tmp_path / "emb", dtype="int8")
    with pytest.raises(StorePayloadError, match=r"^.*/emb: holds embeddings \(D=32, int8, source pre-logits, normalization none\), "
                       r"not soft labels: this command needs a label store$"):
        LabelStore(embeddings)
    with pytest.raises(StorePayloadError, match=r"/labels: holds soft labels \(marginal-smoothing, K=5\), not embeddings: "
                       r"this command needs an embedding store$"):
        LabelStore(labels, payload="embedding")
    with pytest.raises(ValueError, match=r"image 'c0/img000.jpg': the record holds no embedding \(a label store\)"):
        LabelStore(labels).read(0).decoded_embedding()
    with pytest.raises(ValueError, match=r"payload must be one of \['labels', 'embedding'\] or None, got 'embeddings'"):
        LabelStore(labels, payload="embeddings")


def test_label_tools_refuse_an_embedding_store_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, _ = write_random_embedding_store(tmp_path / "emb")
    holds = f"{path}: holds embeddings (D=32, float16, source pre-logits, normalization none), not soft labels"
    code, _, err = run(capsys, "export-fkd", str(path), "--out", str(tmp_path / "fkd"))
    assert (code, err) == (2, f"fkd-labels export-fkd: error: {holds}: this command needs a label store\n")
    images = make_image_folder(tmp_path / "images", classes=3, per_class=2)
    out = tmp_path / "run"
    code = train_main(["--store", str(path), "--data", str(images), "--model", "test_resnet", "--input-size", "32", "--epochs", "1",
                       "--batch-size", "2", "--crops-per-image", "1", "--workers", "0", "--no-progress", "--output", str(out)])
    assert (code, capsys.readouterr().err) == (2, f"fkd-train: error: --store {holds}: this command needs a label store; pass it as --embed-store\n")
    assert not out.exists()


# fkd-labels ---------------------------------------------------------------------------------------

def test_info_describes_the_embedding(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, _ = write_random_embedding_store(tmp_path / "s", dtype="int8", num_images=5, num_crops=6)
    code, out, _ = run(capsys, "info", str(path), "--json")
    info = json.loads(out)
    shard_bytes = sum(p.stat().st_size for p in path.glob("shard-*.h5"))
    assert code == 0 and info["payload"] == "embedding" and (info["scheme"], info["top_k"]) == (None, 0)
    assert info["embedding"] == {"dim": D, "dtype": "int8", "source": "pre-logits", "normalization": "none"}
    assert info["bytes_per_crop"] == shard_bytes / 30 and info["format_version"] == 4
    assert info["raw_bytes_per_crop"] == 8 + 1 / 6 + D + 4  # box, flip bit (one byte for 6 crops), int8 values, float32 scale
    code, out, _ = run(capsys, "info", str(path))
    assert "embedding:    D=32, int8 (a float32 scale per crop), from pre-logits, normalization none\n" in out
    assert "scheme:" not in out and "format v4)" in out
    assert "teacher view: 224x224 bicubic, precision fp32\n" in out and "temperature" not in out  # features come before any softmax


def test_verify_passes_good_records_and_names_bad_ones(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, _ = write_random_embedding_store(tmp_path / "s", dtype="int8", num_images=5, shard_size=2)
    code, out, _ = run(capsys, "verify", str(path), "--quiet")
    assert code == 0 and out == f"OK: {path}: 3 shards, 5 images, 30 crops verified\n"
    # Records written wrong (checksums hold): a NaN scale, the code -128, an embedding that decodes to infinity.
    store = LabelStore(path, payload="embedding")
    records = [store.read(i) for i in range(5)]
    records[1].scales = np.array(records[1].scales)
    records[1].scales[2] = np.nan
    records[2].embedding = np.array(records[2].embedding)
    records[2].embedding[0, 0] = -128
    bad = tmp_path / "bad"
    write_store(prepare_output(bad, False), copy_meta(store.meta), records)
    report = verify_store(bad, progress=False)
    assert [s.status for s in report.shards] == ["corrupt", "corrupt", "ok"]
    assert report.shards[0].problems == ["image 1 ('c1/img001.jpg'): per-crop scales that are negative or not finite"]
    assert report.shards[1].problems == ["image 2 ('c2/img002.jpg'): int8 code -128 in the embedding (the codec writes -127..127)"]
    half = tmp_path / "half"
    f16, _ = write_random_embedding_store(tmp_path / "f16", dtype="float16", num_images=2, shard_size=2)
    store = LabelStore(f16, payload="embedding")
    records = [store.read(i) for i in range(2)]
    records[0].embedding = np.array(records[0].embedding)
    records[0].embedding[3, 7] = np.inf
    write_store(prepare_output(half, False), copy_meta(store.meta), records)
    assert verify_store(half, progress=False).shards[0].problems == ["image 0 ('c0/img000.jpg'): embedding values that are not finite"]
    # A damaged byte in a record: its CRC-32.
    entry = json.loads((path / "store.json").read_text())["shards"][2]
    data = bytearray((path / entry["file"]).read_bytes())
    data[entry["records_offset"] + 3] ^= 0x20
    (path / entry["file"]).write_bytes(bytes(data))
    code, out, _ = run(capsys, "verify", str(path), "--quiet")
    assert code == 1 and "shard 2 (shard-00002.h5, images 4..4): corrupt\n    checksum mismatch: sha256" in out


def test_convert_float16_to_int8_keeps_crops_and_bounds_the_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source, _ = write_random_embedding_store(tmp_path / "f16", dtype="float16", num_images=5, shard_size=2)
    out = tmp_path / "int8"
    code, stdout, _ = run(capsys, "convert", str(source), "--to-dtype", "int8", "--out", str(out), "--shard-size", "3")
    assert code == 0
    assert stdout == f"wrote {out}: 5 images, embeddings (D=32, int8, source pre-logits, normalization none), 2 shards\n"
    a, b = LabelStore(source, payload="embedding"), LabelStore(out, payload="embedding")
    assert b.meta.embedding == EmbeddingSpec(D, "int8", "pre-logits", "none") and b.meta.store_id != a.meta.store_id
    assert a.meta.differences(b.meta) == ["embedding", "shard_size"]
    assert a.image_ids == b.image_ids and np.array_equal(a.labels, b.labels) and np.array_equal(a.image_sizes, b.image_sizes)
    for i in range(5):
        ra, rb = a.read(i), b.read(i)
        assert ra.boxes_fixed.tobytes() == rb.boxes_fixed.tobytes() and ra.flips.tobytes() == rb.flips.tobytes()
        x, x_hat = ra.decoded_embedding().numpy(), rb.decoded_embedding().numpy()
        assert rb.embedding.dtype == np.int8 and np.all(np.abs(x - x_hat) <= rb.scales[:, None] * (0.5 + 1e-5))
        assert cosine(x, x_hat).min() >= np.sqrt(1 - D / 254**2)
    code, _, err = run(capsys, "convert", str(out), "--to-dtype", "float16", "--out", str(tmp_path / "back"))
    assert (code, err) == (2, "fkd-labels convert: error: cannot convert int8 embeddings to float16: float16 cannot restore what "
                              "int8 rounded away and would only double the size; regenerate the store with float16 embeddings\n")
    code, _, err = run(capsys, "convert", str(source), "--scheme", "hardening", "--out", str(tmp_path / "x"))
    assert (code, err) == (2, f"fkd-labels convert: error: {source} holds embeddings (D=32, float16, source pre-logits, "
                              "normalization none), not soft labels: --scheme and --top-k convert label stores; convert an "
                              "embedding store with --to-dtype\n")
    labels, _ = write_random_store(tmp_path / "labels")
    code, _, err = run(capsys, "convert", str(labels), "--to-dtype", "int8", "--out", str(tmp_path / "y"))
    assert (code, err) == (2, f"fkd-labels convert: error: {labels} holds soft labels (marginal-smoothing, K=5), not embeddings: "
                              "--to-dtype converts embedding stores; convert a label store with --scheme and --top-k\n")
    assert not (tmp_path / "back").exists() and not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_merge_joins_embedding_stores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, _ = write_random_embedding_store(tmp_path / "a", dtype="int8", num_images=3, image_ids=["x/0.jpg", "x/1.jpg", "x/2.jpg"])
    b, _ = write_random_embedding_store(tmp_path / "b", dtype="int8", num_images=2, image_ids=["y/0.jpg", "y/1.jpg"])
    out = tmp_path / "m"
    assert run(capsys, "merge", str(a), str(b), "--out", str(out))[:2] == (0, f"wrote {out}: 5 images from 2 stores, 3 shards\n")
    merged = LabelStore(out, payload="embedding")
    sources = [(LabelStore(a, payload="embedding"), i) for i in range(3)] + [(LabelStore(b, payload="embedding"), i) for i in range(2)]
    for n, (store, i) in enumerate(sources):
        got, want = merged.read(n), store.read(i)
        assert got.image_id == want.image_id and got.embedding.tobytes() == want.embedding.tobytes()
        assert got.scales.tobytes() == want.scales.tobytes() and got.boxes_fixed.tobytes() == want.boxes_fixed.tobytes()


def test_show_draws_the_crops_cosine_similarities(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_image_folder(tmp_path / "images", classes=3, per_class=2)
    images = list_images(data)
    sizes = np.array([Image.open(images.path(i)).size[::-1] for i in range(len(images))])
    path, _ = write_random_embedding_store(tmp_path / "s", dtype="int8", num_crops=8, num_images=len(images),
                                           image_ids=images.image_ids, sizes=sizes, labels=images.labels)
    out = tmp_path / "show.png"
    assert run(capsys, "show", str(path), "--image", "c1/img001.jpg", "--data", str(data), "--out", str(out))[:2] == (0, f"wrote {out}\n")
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (1500, 920)
    store = LabelStore(path, payload="embedding")
    record = store.read(images.image_ids.index("c1/img001.jpg"))
    fig = draw_embedding(store.meta, record, load_image(data / record.image_id), num_boxes=6, num_crops=2)
    image_ax, matrix_ax, *rest = fig.axes
    assert image_ax.get_title().startswith("c1/img001.jpg  (class: c1)\nfirst 6 of 8 crops")
    assert len(image_ax.patches) == 6 and [t.get_text() for t in image_ax.texts] == [f" {n}" for n in range(6)]
    features = record.decoded_embedding().numpy()[:6]
    expected = cosine(features[:, None, :], features[None, :, :])
    np.testing.assert_allclose(matrix_ax.get_images()[0].get_array(), expected, atol=1e-6)
    off = expected[~np.eye(6, dtype=bool)]
    assert matrix_ax.get_title() == ("cosine similarity of the crops' embeddings\nD=32, int8, source pre-logits, normalization none\n"
                                     f"off-diagonal mean {off.mean():.3f}, min {off.min():.3f}")
    crop_titles = [ax.get_title() for ax in rest if ax.get_title().startswith("crop")]
    norms = np.linalg.norm(features[:2], axis=1)
    assert crop_titles == [f"crop {n}{' (flipped)' if record.flips[n] else ''}\n|embedding| = {norms[n]:.3g}" for n in range(2)]
