"""fkd-labelgen --target embedding: feature extraction (fkd.teacher.features) and embedding stores end to end.

Feature sources are checked against the layers computed by hand; the end-to-end runs (one Ray
instance for the module, started only by the tests that need it) check that the stored vectors are
the teacher's features on the replayed crops and that an embedding store's crops are bitwise those
of a label store made with the same seed, so the two can be used together.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray
import timm
import torch
import zstandard

from fkd.data.crops import CropParams, replay_fixed
from fkd.data.images import list_images, load_image
from fkd.labels.cli import main as labels_main
from fkd.payload import embedding_codec
from fkd.payload.embedding_spec import EmbeddingSpec
from fkd.store import EmbeddingLayout, LabelStore, Manifest
from fkd.teacher.features import FeatureSourceError, TeacherFeatures, create_feature_extractor
from fkd.teacher.teachers import create_teacher
from labelgen.checks import class_space
from labelgen.cli import main
from labelgen.errors import InputError
from labelgen.messages import EmbeddingSettings, LabelSettings, ShardTask, TeacherInfo
from labelgen.plan import image_refs, store_meta
from labelgen.worker import LabelWorker, PayloadBuffer, WorkerConfig

from conftest import CIFAR_DATA, CIFAR_TEACHER, extract_cifar_test_images, make_image_folder
from test_labelgen_worker import teacher_spec

KERAS = "fkd.zoo.keras_cifar10:create_model"
KERAS_PENULTIMATE = "dense_1_relu"  # the Dense 512 after its ReLU: what the classifier dense_2 reads
needs_cifar = pytest.mark.skipif(not (CIFAR_DATA.is_file() and CIFAR_TEACHER.is_file()), reason="../shared CIFAR-10 data or teacher missing")


def tiny_timm(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


# Extraction -------------------------------------------------------------------------------------

@torch.no_grad()
def test_module_hook_on_a_timm_model_is_the_layer_computed_by_hand_and_stops_the_forward():
    model = tiny_timm("test_resnet", num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    calls = []
    model.layer4.register_forward_hook(lambda *_: calls.append(1))
    by_hand = model.layer3(model.layer2(model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(x)))))))
    layer3 = create_feature_extractor(model, "layer3")(x)
    assert layer3.shape == (2, by_hand.shape[1]) and by_hand.shape[-2:] != (1, 1)
    assert torch.equal(layer3, by_hand.mean(dim=(2, 3)))  # (N, C, H, W) outputs: global average pooling
    assert calls == []  # the forward stopped at layer3
    logits = create_feature_extractor(model, "fc")(x)
    assert calls == [1]  # the classifier comes after layer4
    assert torch.equal(logits, model(x))  # (N, D) outputs as they are


@torch.no_grad()
def test_pre_logits_is_timms_and_pooled_is_the_pooling_before_the_head():
    x = torch.randn(2, 3, 32, 32)
    resnet = tiny_timm("test_resnet", num_classes=3)
    pre_logits = resnet.forward_head(resnet.forward_features(x), pre_logits=True)
    assert torch.equal(create_feature_extractor(resnet, "pre-logits")(x), pre_logits)
    assert torch.equal(create_feature_extractor(resnet, "pooled")(x), pre_logits)  # a ResNet's head adds nothing

    convnext = tiny_timm("test_convnext", num_classes=3)  # head: pool -> LayerNorm -> fc
    feature_map = convnext.forward_features(x)
    pooled = create_feature_extractor(convnext, "pooled")(x)
    torch.testing.assert_close(pooled, feature_map.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    assert torch.equal(create_feature_extractor(convnext, "pre-logits")(x), convnext.forward_head(feature_map, pre_logits=True))
    torch.testing.assert_close(create_feature_extractor(convnext, "pre-logits")(x), convnext.head.norm(pooled[..., None, None]).flatten(1))
    assert torch.equal(create_feature_extractor(convnext, "feature-map")(x), feature_map)

    vit = tiny_timm("test_vit", num_classes=3, img_size=32, global_pool="avg")  # head: token average -> fc_norm -> fc
    tokens = vit.forward_features(x)
    pooled = create_feature_extractor(vit, "pooled")(x)
    assert torch.equal(pooled, tokens[:, vit.num_prefix_tokens :].mean(dim=1))
    assert torch.equal(create_feature_extractor(vit, "pre-logits")(x), vit.fc_norm(pooled))


@needs_cifar
@torch.no_grad()
def test_the_keras_teachers_512d_penultimate_by_module_name():
    teacher = create_teacher([], module=KERAS)
    features = TeacherFeatures(teacher, KERAS_PENULTIMATE)
    assert (features.dims, features.dim) == ((512,), 512)
    keras = teacher.members[0].model
    body = keras[: list(keras._modules).index(KERAS_PENULTIMATE) + 1]
    crops = torch.rand(3, 3, 32, 32)
    expected = body(crops / (1 / 255))  # the teacher's mean 0, std 1/255: 0..255 pixels
    torch.testing.assert_close(features(crops), expected, rtol=1e-6, atol=1e-5)
    assert expected.min() == 0 and (expected > 0).any()  # after the ReLU


@needs_cifar
def test_a_source_the_teacher_lacks_is_one_line_naming_modules():
    keras = create_teacher([], module=KERAS).members[0].model
    with pytest.raises(FeatureSourceError) as wrong:
        create_feature_extractor(keras, "dense_9", f"teacher {KERAS}")
    assert str(wrong.value) == f"teacher {KERAS} has no module 'dense_9' (30 modules; close matches: dense_2, dense_1, dense, dense_relu)"
    with pytest.raises(FeatureSourceError) as no_timm:
        create_feature_extractor(keras, "pre-logits", f"teacher {KERAS}")
    assert str(no_timm.value) == (
        f"teacher {KERAS} (Sequential) has no timm forward_features/forward_head, so 'pre-logits' is not defined for it: "
        "name one of its modules instead (30 modules; the last ones: dense_1, dense_1_relu, dropout_1, dense_2, dense_2_relu)"
    )


def test_pooled_is_refused_where_timm_exposes_no_pooling_and_token_outputs_are_refused():
    relpos = tiny_timm("test_vit_relpos", num_classes=3)
    with pytest.raises(FeatureSourceError, match=r"^teacher v \(VisionTransformerRelPos\) exposes no pooling .*use 'pre-logits' or a module name"):
        create_feature_extractor(relpos, "pooled", "teacher v")
    vit = tiny_timm("test_vit", num_classes=3, img_size=32)
    with pytest.raises(FeatureSourceError, match=re.escape("module 'blocks.0' gives (5, 64) per image, neither a vector (D,) nor a map")):
        create_feature_extractor(vit, "blocks.0")(torch.zeros(1, 3, 32, 32))


@torch.no_grad()
def test_an_ensembles_features_are_its_members_concatenated_each_with_its_own_normalization():
    teacher = create_teacher(["test_resnet", "test_efficientnet"], num_classes=3, pretrained=False, input_size=32)
    features = TeacherFeatures(teacher, "pre-logits")
    assert features.dims == (96, 256) and features.dim == 352
    crops = torch.rand(2, 3, 32, 32)
    parts = [m.model.forward_head(m.model.forward_features(m.normalize(crops)), pre_logits=True) for m in teacher.members]
    assert torch.equal(features(crops), torch.cat(parts, dim=1))
    with pytest.raises(FeatureSourceError, match="'feature-map' takes a single teacher; this one has 2 members"):
        TeacherFeatures(teacher, "feature-map")


def test_an_ensembles_store_records_the_concatenated_d_and_each_members_part(tmp_path):
    images = list_images(make_image_folder(tmp_path / "images", classes=2, per_class=2))
    teacher = TeacherInfo(
        num_classes=0, input_size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bilinear", temperature=1.0,
        members=[{"name": "test_resnet"}, {"name": "test_efficientnet"}], device="cpu", precision="fp32", class_names=None,
        embedding_dims=(96, 256),
    )
    settings = LabelSettings(None, 0, 5, seed=3, crop_params=CropParams(), shard_size=2, embedding=EmbeddingSettings("pre-logits", "int8"))
    meta = store_meta(settings, teacher, images, image_refs(images), [])
    assert meta.embedding == EmbeddingSpec(352, "int8", "pre-logits", "none")
    assert meta.teachers == [{"name": "test_resnet", "embedding_dim": 96}, {"name": "test_efficientnet", "embedding_dim": 256}]
    assert (meta.num_classes, meta.class_names, meta.class_map, meta.scheme, meta.top_k) == (2, ["c0", "c1"], None, None, 0)


# The worker, without Ray -------------------------------------------------------------------------

def test_payload_buffer_keeps_embedding_fields_in_record_order():
    payloads = [embedding_codec.encode(np.arange(12, dtype=np.float32).reshape(3, 4), "int8"),
                embedding_codec.encode(-np.ones((2, 4), dtype=np.float32), "int8")]
    buffer = PayloadBuffer()
    for payload in payloads:
        buffer.add(payload)
    codes, scales = buffer.take(4)
    assert codes.tolist() == [[0, 42, 85, 127], [73, 91, 109, 127], [92, 104, 115, 127], [-127] * 4]
    np.testing.assert_array_equal(scales, np.concatenate([p.scales for p in payloads])[:4])
    assert buffer.rows == 1 and buffer.take(1)[0].tolist() == [[-127] * 4]
    halves = PayloadBuffer()
    halves.add(embedding_codec.encode(np.ones((2, 4)), "float16"))
    assert halves.take(2)[1] is None  # float16 stores no scales


def test_a_teacher_without_a_classifier_stores_its_pre_logits_as_int8(tmp_path):
    """A checkpoint of a model with no classifier (``--num-classes 0``, as a self-supervised
    backbone): its features are stored, within int8's bound of half a step; soft labels are refused."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "backbone.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), checkpoint)
    spec = teacher_spec("--teacher", "test_resnet", "--checkpoint", str(checkpoint), "--num-classes", "0", "--no-pretrained",
                        "--input-size", "32")
    settings = LabelSettings(None, 0, 5, seed=3, crop_params=CropParams(scale=(0.3, 1.0)), shard_size=100,
                             embedding=EmbeddingSettings("pre-logits", "int8"))
    worker = LabelWorker(WorkerConfig(spec, settings, batch_size=4, threads=1, device="cpu"))
    info = worker.info()
    assert (info.num_classes, info.embedding_dims) == (0, (96,))
    images = list_images(make_image_folder(tmp_path / "images", classes=2, per_class=2))
    layout = EmbeddingLayout(5, 96, "int8")
    outcome = worker.label_shard(ShardTask(0, 0, image_refs(images), layout))
    teacher = spec.create()
    for i, record in enumerate(outcome.data.records):
        fixed, flips, codes, scales = layout.unpack(zstandard.ZstdDecompressor().decompress(record))
        views = replay_fixed(load_image(images.path(i)), fixed, flips, (32, 32), teacher.data_config.interpolation)
        with torch.inference_mode():
            expected = teacher.members[0].model.forward_head(
                teacher.members[0].model.forward_features(teacher.members[0].normalize(views.float() / 255)), pre_logits=True)
        error = (embedding_codec.decode(torch.from_numpy(codes.copy()), torch.from_numpy(scales.copy())) - expected).abs()
        assert (error <= torch.from_numpy(scales.copy())[:, None] * 0.5 * (1 + 1e-5)).all()
    labels = LabelSettings("full", 5, 5, seed=3, crop_params=CropParams(), shard_size=100)
    with pytest.raises(InputError, match=r"the teacher has 0 classes \(no classifier\): soft labels need one; store its features with --target embedding"):
        class_space(labels, images, info, None)


# Command-line checks, before Ray ------------------------------------------------------------------

def common(tmp_path: Path, *extra: str) -> list[str]:
    return ["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--no-pretrained", "--no-progress", *extra]


@pytest.mark.parametrize("extra, message", [
    (("--teacher", "t", "--target", "embedding", "--scheme", "full", "--top-k", "3"),
     "--scheme, --top-k only apply with --target labels: an embedding store keeps the teacher's features"),
    (("--teacher", "t", "--target", "embedding", "--class-map", "m.txt"), "--class-map only apply with --target labels"),
    (("--teacher", "t", "--embedding-dtype", "int8"), "--embedding-dtype only apply with --target embedding"),
    (("--teacher", "t", "--target", "embedding", "--embedding-from", "feature-map"),
     "--embedding-from feature-map is a spatial map, not a vector: a store keeps one (D,) vector per crop; use pooled"),
    (("--teacher", "a", "--teacher", "b", "--target", "embedding", "--embedding-norm", "l2"),
     "--embedding-norm l2 with 2 teachers would normalize their concatenated features together, mixing their scales"),
])
def test_options_of_the_other_target_are_refused(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(common(tmp_path, *extra))
    assert exit_info.value.code == 2
    assert f"fkd-labelgen: error: {message}" in capsys.readouterr().err


def test_a_timm_teachers_source_and_the_datas_classes_are_checked_before_ray(tmp_path, capsys, monkeypatch):
    import labelgen.driver

    def no_ray(_address):
        raise AssertionError("Ray must not start")

    monkeypatch.setattr(labelgen.driver, "ray_session", no_ray)
    data = make_image_folder(tmp_path / "images", classes=2, per_class=1)
    run = ["--data", str(data), "--out", str(tmp_path / "out"), "--teacher", "test_resnet", "--no-pretrained", "--target", "embedding"]
    assert main([*run, "--embedding-from", "layer9"]) == 2
    assert ("fkd-labelgen: error: --embedding-from: teacher test_resnet has no module 'layer9' "
            "(70 modules; close matches: layer4, layer3, layer2, layer1)") in capsys.readouterr().err
    single = make_image_folder(tmp_path / "one-class", classes=1, per_class=2)
    run[1] = str(single)
    assert main(run) == 2
    assert (f"fkd-labelgen: error: --target embedding keeps the data's own classes as ground truth and a store needs at least 2; "
            f"--data {single} has 1 (unlabeled, or one class)") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# End to end on Ray: the real CIFAR-10 teacher on real images ---------------------------------------

@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def stores(ray_instance, tmp_path_factory) -> dict[str, Path]:
    """A label store (1 worker) and an embedding store (2 workers) of the same 10 images, seed and crops."""
    root = tmp_path_factory.mktemp("embedding-e2e")
    data = extract_cifar_test_images(root / "cifar", per_class=1)
    run = ["--teacher-module", KERAS, "--data", str(data), "--crops", "4", "--seed", "5", "--crop-scale", "0.35", "1",
           "--shard-size", "4", "--batch-size", "6", "--no-progress"]
    paths = {"data": data, "labels": root / "labels", "embedding": root / "embedding", "run": run}
    assert main([*run, "--out", str(paths["labels"]), "--scheme", "full", "--workers", "1"]) == 0
    assert main([*run, "--out", str(paths["embedding"]), *embedding_options(), "--workers", "2"]) == 0
    return paths


def embedding_options() -> list[str]:
    return ["--target", "embedding", "--embedding-from", KERAS_PENULTIMATE]


@needs_cifar
def test_stored_embeddings_are_the_teachers_features_on_label_store_crops(stores):
    teacher = create_teacher([], module=KERAS)
    features = TeacherFeatures(teacher, KERAS_PENULTIMATE)
    images = list_images(stores["data"])
    with LabelStore(stores["embedding"], payload="embedding") as emb, LabelStore(stores["labels"]) as lab:
        meta = emb.meta
        assert meta.embedding == EmbeddingSpec(512, "float16", KERAS_PENULTIMATE, "none")
        assert (meta.scheme, meta.top_k, meta.num_classes, meta.format_version) == (None, 0, 10, 4)
        assert [t["embedding_dim"] for t in meta.teachers] == [512]
        assert (meta.teacher_precision, meta.seed, meta.crop_scale) == ("fp32", 5, (0.35, 1.0))
        assert (emb.image_ids, emb.labels.tolist(), emb.image_sizes.tolist()) == (lab.image_ids, lab.labels.tolist(), lab.image_sizes.tolist())
        assert emb.image_ids == images.image_ids and meta.class_names == lab.meta.class_names
        for i in range(len(emb)):
            stored, labelled = emb.read(i), lab.read(i)
            np.testing.assert_array_equal(stored.boxes_fixed, labelled.boxes_fixed)
            np.testing.assert_array_equal(stored.flips, labelled.flips)
            assert stored.fingerprint == labelled.fingerprint
            views = replay_fixed(load_image(images.path(i)), stored.boxes_fixed, stored.flips, meta.input_size, meta.interpolation)
            with torch.inference_mode():
                expected = features(views.float() / 255.0)
            torch.testing.assert_close(stored.decoded_embedding(), expected, rtol=2**-10, atol=2**-24)  # float16 rounding


def stored_embeddings(path: Path) -> np.ndarray:
    with LabelStore(path, payload="embedding") as store:
        return np.stack([store.read(i).embedding for i in range(len(store))])


@needs_cifar
def test_an_embedding_store_resumes_bitwise_verifies_and_refuses_other_settings(stores, tmp_path, capsys):
    """Resumed with 1 worker where 2 made it: the relabelled shard is bitwise the same (same threads
    and batch size); another dtype is refused naming the setting; fkd-labels reads the store."""
    run, out = stores["run"], str(tmp_path / "store")
    shutil.copytree(stores["embedding"], out)
    manifest = Manifest.load(Path(out))
    del manifest.shards[1]  # as if the run died after writing shard 1 but before recording it
    manifest.save(Path(out))
    capsys.readouterr()
    assert main([*run, "--out", out, *embedding_options(), "--workers", "1"]) == 0
    assert "10 images, 40 crops, 3 shards (1 written, 2 already done)" in capsys.readouterr().out
    np.testing.assert_array_equal(stored_embeddings(Path(out)), stored_embeddings(stores["embedding"]))
    assert main([*run, "--out", out, *embedding_options(), "--embedding-dtype", "int8", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "exists with different settings (embedding: store has {'dim': 512, 'dtype': 'float16'" in err and "'dtype': 'int8'" in err

    assert labels_main(["verify", out]) == 0
    assert labels_main(["info", out]) == 0
    text = capsys.readouterr().out
    assert f"embedding:    D=512, float16, from {KERAS_PENULTIMATE}, normalization none" in text


@needs_cifar
def test_a_wrong_module_of_a_module_teacher_fails_in_one_line(stores, tmp_path, capsys):
    """A --teacher-module teacher is built once on the driver (on the meta device, no weights) before Ray
    starts, so a wrong module name is refused there in one line."""
    assert main([*stores["run"], "--out", str(tmp_path / "out"), "--target", "embedding", "--embedding-from", "dense_9", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (f"fkd-labelgen: error: --embedding-from: teacher {KERAS} has no module "
                   "'dense_9' (30 modules; close matches: dense_2, dense_1, dense, dense_relu)\n")
    assert not (tmp_path / "out").exists()


@needs_cifar
def test_fkd_train_learns_from_the_labelgen_stores_together(stores, tmp_path):
    """labelgen -> store -> train: the label store and the embedding store fkd-labelgen made over the
    same crops train one student; it loads in timm as a plain model and its projector maps to D=512."""
    from train.checkpoint import read_checkpoint
    from train.cli import main as train_main

    out = tmp_path / "run"
    code = train_main([
        "--store", str(stores["labels"]), "--embed-store", str(stores["embedding"]), "--data", str(stores["data"]),
        "--model", "test_resnet", "--input-size", "32", "--epochs", "1", "--batch-size", "5", "--crops-per-image", "2",
        "--workers", "0", "--no-progress", "--output", str(out),
    ])
    assert code == 0
    last = read_checkpoint(out / "last.pth")
    assert last["epoch"] == 1 and last["projector"]["out_dim"] == 512
    timm.create_model("test_resnet", num_classes=10).load_state_dict(last["model"], strict=True)
