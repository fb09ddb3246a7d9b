"""fkd-train from embedding stores (--embed-store, alone or beside a label store) and the online FD
baseline (--mode online-fd): exact targets and loss formulas, projectors, whole runs on tiny data
whose students load into timm strictly, resume, and the refusals. Stores are written directly
(conftest.write_random_embedding_store) over the tiny images of test_train."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from fkd.data.errors import DataMismatchError
from fkd.data.images import list_images, load_image
from fkd.data.multicrop import CropBatch
from fkd.data.plan import StoreCropPlanner
from fkd.data.targets import one_hot_targets
from fkd.losses.features import feature_loss
from fkd.losses.labels import soft_target_cross_entropy
from fkd.store import LabelStore, Manifest
from fkd.teacher.features import TeacherFeatures
from fkd.teacher.teachers import create_teacher
from train.checkpoint import read_checkpoint
from train.cli import main
from train.feature_modes import EmbeddingMode, OnlineFDMode
from train.mixup import SoftTargetMixup
from train.projector import FeatureStudent, Projector, as_feature_map, build_projector

from conftest import NUM_CROPS, TinyData, free_port, make_tiny_data, read_summary, train_args, write_random_embedding_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 16


@dataclass
class EmbedData:
    tiny: TinyData
    embed: Path


def embedding_store_for(tiny: TinyData, path: Path, seed: int = 0, dtype: str = "int8") -> Path:
    """An embedding store over exactly the tiny training images, crops drawn like the label store's."""
    images = list_images(tiny.train)
    sizes = np.array([tuple(load_image(images.path(i)).shape[-2:]) for i in range(len(images))])
    store, _ = write_random_embedding_store(
        path, dim=D, dtype=dtype, num_crops=NUM_CROPS, num_images=len(images), shard_size=5, seed=seed,
        image_ids=images.image_ids, sizes=sizes, labels=images.labels,
    )
    return store


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> EmbedData:
    root = tmp_path_factory.mktemp("embed")
    tiny = make_tiny_data(root / "tiny")
    return EmbedData(tiny, embedding_store_for(tiny, root / "embed"))


def embed_args(data: EmbedData, out: Path, *extra: str) -> list[str]:
    """train_args with the embedding store in place of the label store."""
    args = train_args(data.tiny, out, *extra)
    at = args.index("--store")
    args[at : at + 2] = ["--embed-store", str(data.embed)]
    return args


def online_args(data: EmbedData, out: Path, *extra: str) -> list[str]:
    args = train_args(data.tiny, out, "--mode", "online-fd", "--teacher-input-size", "32", *extra)
    at = args.index("--store")
    del args[at : at + 2]
    return args


def tiny_teacher(checkpoint: "str | None" = None, num_classes: "int | None" = None) -> torch.nn.Module:
    """A --teacher-module factory: a seeded timm test_convnext (64 channels, another width than the student's 96)."""
    torch.manual_seed(7)
    return timm.create_model("test_convnext", num_classes=num_classes or 5)


def fresh_student() -> torch.nn.Module:
    torch.manual_seed(0)  # fkd-train seeds with --seed (0) right before building the student
    return timm.create_model("test_resnet", num_classes=3)


# ------------------------------------------------------------------------------------ modes


def test_embedding_mode_targets_and_the_exact_loss_formula() -> None:
    """Targets: [stored labels | smoothed one-hot | decoded embedding]; loss = (1 - W) * (CE(stored) +
    lambda * feature loss) + W * CE(truth), with W = 0.25, lambda = 0.5."""
    codes = torch.tensor([[127, -64, 0], [10, 20, -127]], dtype=torch.int8)
    scales = torch.tensor([0.5, 0.25])
    embedding = torch.tensor([[63.5, -32.0, 0.0], [2.5, 5.0, -31.75]])  # codes * scale
    indices, values = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32), torch.tensor([[0.5, 0.25], [0.625, 0.125]], dtype=torch.float16)
    batch = CropBatch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), indices, values, torch.tensor([0, 3]), torch.arange(1), torch.zeros(2),
                      embedding=codes, scales=scales)
    mode = EmbeddingMode(4, 3, "mse", embed_weight=0.5, gt_weight=0.25, smoothing=0.1, scheme="marginal-smoothing")
    targets = mode.targets(batch)
    stored = torch.tensor([[0.25, 0.125, 0.5, 0.125], [0.125, 0.625, 0.125, 0.125]])
    truth = torch.tensor([[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.025, 0.925]])
    torch.testing.assert_close(targets, torch.cat([stored, truth, embedding], dim=1), rtol=0, atol=1e-6)
    logits, projected = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.25, 3.0, -1.0, 1.0]]), torch.tensor([[60.0, -30.0, 1.0], [2.0, 4.0, -30.0]])
    mse = ((projected - embedding) ** 2).mean()
    expected = 0.75 * (soft_target_cross_entropy(logits, stored) + 0.5 * mse) + 0.25 * soft_target_cross_entropy(logits, truth)
    assert mode.loss((logits, projected), None, targets).item() == pytest.approx(expected.item(), rel=1e-6)

    alone = EmbeddingMode(4, 3, "smooth-l1", embed_weight=2.0)  # features only: no classification term at all
    targets = alone.targets(batch)
    torch.testing.assert_close(targets, embedding, rtol=0, atol=0)
    assert alone.loss((logits, projected), None, targets).item() == pytest.approx(2.0 * feature_loss(projected, embedding, "smooth-l1").item(), rel=1e-6)
    # Mixup mixes the embedding with the images' lambda, linearly (documented as an approximation).
    mixer = SoftTargetMixup(mixup_alpha=1.0, cutmix_alpha=0.0)
    _, mixed = mixer(torch.rand(2, 3, 8, 8), targets, generator=torch.Generator().manual_seed(0))
    lam = mixer.last_lam
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * embedding + (1 - lam) * embedding.flip(0))


@torch.no_grad()
def test_online_fd_is_fd_on_the_teachers_feature_map() -> None:
    """Teacher map (B, 96, 2, 2) at 64 px; the student's projected map (4 x 4) average-pooled to 2 x 2;
    every position's target whitened over the channels; smooth-l1 beta 2; (1 - W) lambda FD + W CE."""
    torch.manual_seed(0)
    teacher = create_teacher(["test_resnet"], pretrained=False, num_classes=3, input_size=64)
    mode = OnlineFDMode(TeacherFeatures(teacher, "feature-map"), 3, "smooth-l1", embed_weight=0.5, gt_weight=0.25)
    assert mode.is_map and mode.target_shape == (96, 2, 2) and mode.out_dim == 96
    g = torch.Generator().manual_seed(1)
    images, projected, logits = torch.rand(2, 3, 32, 32, generator=g), torch.randn(2, 96, 4, 4, generator=g), torch.randn(2, 3, generator=g)
    targets = mode.targets(CropBatch(images, None, None, torch.tensor([2, 0]), torch.arange(2), torch.zeros(2)))
    member = teacher.members[0]
    seen = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    teacher_map = member.model.forward_features((seen - member.mean) / member.std)
    whitened = F.layer_norm(teacher_map.permute(0, 2, 3, 1), (96,))
    fd = F.smooth_l1_loss(F.avg_pool2d(projected, 2).permute(0, 2, 3, 1), whitened, beta=2.0)
    expected = 0.75 * 0.5 * fd + 0.25 * soft_target_cross_entropy(logits, one_hot_targets(torch.tensor([2, 0]), 3, 0.0))
    assert mode.loss((logits, projected), images, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    vectors = OnlineFDMode(TeacherFeatures(teacher, "pre-logits"), 3, "cosine")
    assert not vectors.is_map and vectors.out_dim == 96
    assert mode.targets(CropBatch(images, None, None, torch.tensor([2, 0]), torch.arange(2), torch.zeros(2))).shape == (2, 3)
    assert vectors.targets(CropBatch(images, None, None, torch.tensor([2, 0]), torch.arange(2), torch.zeros(2))).shape == (2, 0)


# ------------------------------------------------------------------------------------ projector


@torch.no_grad()
def test_projectors_map_the_students_features_to_the_teachers_dimension() -> None:
    student = fresh_student().eval()
    x = torch.rand(2, 3, 32, 32)
    for kind, layers in (("linear", torch.nn.Linear), ("mlp", timm.layers.Mlp)):
        projector = build_projector(student, kind, "pre-logits", D, seed=3)
        assert isinstance(projector.net, layers) and (projector.in_dim, projector.out_dim) == (96, D)
        logits, projected = FeatureStudent(student, projector)(x)
        torch.testing.assert_close(logits, student(x), rtol=0, atol=0)
        torch.testing.assert_close(projected, projector(student.forward_head(student.forward_features(x), pre_logits=True)), rtol=0, atol=0)
    conv = build_projector(student, "linear", "feature-map", 8, seed=3)
    _, projected_map = FeatureStudent(student, conv)(torch.rand(2, 3, 64, 64))
    assert isinstance(conv.net, torch.nn.Conv2d) and conv.net.kernel_size == (1, 1) and projected_map.shape == (2, 8, 2, 2)
    # ViT tokens: the class token dropped, the 10 x 10 patch grid kept.
    tokens = torch.randn(1, 101, 64)
    torch.testing.assert_close(as_feature_map(tokens, 64, 1), tokens[:, 1:].transpose(1, 2).reshape(1, 64, 10, 10), rtol=0, atol=0)
    with pytest.raises(ValueError, match="99 patch tokens do not form a square grid"):
        as_feature_map(tokens[:, :100], 64, 1)


def test_projector_init_depends_on_the_seed_alone_and_its_entry_round_trips() -> None:
    student = fresh_student()
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    a = build_projector(student, "mlp", "pre-logits", D, seed=11)
    assert torch.equal(torch.rand(3), expected_draw)  # the global random stream is untouched
    b = build_projector(student, "mlp", "pre-logits", D, seed=11)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = Projector("mlp", "pre-logits", 96, D)
    c.load_entry(a.entry())
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
    with pytest.raises(ValueError, match=r"the checkpoint's projector is \('mlp', 'pre-logits', 96, 16\), this run builds \('linear'"):
        Projector("linear", "pre-logits", 96, D).load_entry(a.entry())
    with pytest.raises(ValueError, match="the checkpoint has no projector, but this run trains one"):
        c.load_entry(None)


# ------------------------------------------------------------------------------------ runs


def test_fd_from_an_embedding_store_learns_and_saves_a_plain_timm_student(data: EmbedData, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = embed_args(data, out, "--crops-per-image", "8", "--opt", "adamw", "--lr", "0.01", "--weight-decay", "0")
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("the student's classifier gets no training signal") == 1
    assert "mode fkd, linear projector pre-logits 96 -> 16, test_resnet" in stdout
    losses = [float(r["train_loss"]) for r in read_summary(out)]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert {p.name for p in out.glob("*.pth")} == {"last.pth", "best.pth", "checkpoint-0001.pth", "checkpoint-0002.pth", "projector.pth"}
    last = read_checkpoint(out / "last.pth")
    student = timm.create_model("test_resnet", num_classes=3)
    student.load_state_dict(last["model"], strict=True)  # the student's weights only, as without a projector
    projector = torch.load(out / "projector.pth", map_location="cpu", weights_only=True)
    assert {k: projector[k] for k in ("kind", "source", "in_dim", "out_dim")} == {"kind": "linear", "source": "pre-logits", "in_dim": 96, "out_dim": D}
    assert all(torch.equal(projector["state_dict"][k], last["projector"]["state_dict"][k]) for k in projector["state_dict"])
    initial = fresh_student().state_dict()
    assert torch.equal(last["model"]["fc.weight"], initial["fc.weight"])  # no gradient ever reached the classifier
    assert not torch.equal(last["model"]["conv1.0.weight"], initial["conv1.0.weight"])


def test_resume_restores_the_projector_and_continues_exactly(data: EmbedData, tmp_path: Path) -> None:
    extra = ("--gt-weight", "0.3", "--mixup", "0.8", "--projector", "mlp", "--embed-loss", "cosine", "--model-ema", "--model-ema-decay", "0.9",
             "--deterministic")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(embed_args(data, straight, *extra)) == 0
    assert main(embed_args(data, resumed, *extra, "--resume", str(straight / "checkpoint-0001.pth"))) == 0
    a, b = read_checkpoint(straight / "last.pth"), read_checkpoint(resumed / "last.pth")
    assert [k.removeprefix("module.") for k in a["ema"]] == list(a["model"])  # the EMA averages the student, not its projector
    for state_a, state_b in ((a["model"], b["model"]), (a["ema"], b["ema"]), (a["projector"]["state_dict"], b["projector"]["state_dict"])):
        assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert [r["train_loss"] for r in read_summary(straight)][1:] == [r["train_loss"] for r in read_summary(resumed)]
    assert not torch.equal(a["model"]["fc.weight"], fresh_student().state_dict()["fc.weight"])  # --gt-weight trains the classifier


def test_label_and_embedding_stores_of_the_same_crops_train_together(data: EmbedData, tmp_path: Path) -> None:
    labels, embeddings = LabelStore(data.tiny.store), LabelStore(data.embed, payload="embedding")
    planner = StoreCropPlanner(labels, 3, seed=0, paired=embeddings)
    rec, emb = labels.read(5), embeddings.read(5)
    plan = planner.plan(5, 2, rec.height, rec.width)
    chosen = plan.crop_ids
    assert np.array_equal(plan.boxes_fixed, rec.boxes_fixed[chosen]) and np.array_equal(plan.boxes_fixed, emb.boxes_fixed[chosen])
    assert np.array_equal(plan.indices, rec.indices[chosen]) and np.array_equal(plan.values, rec.values[chosen])
    assert np.array_equal(plan.embedding, emb.embedding[chosen]) and np.array_equal(plan.scales, emb.scales[chosen])
    out = tmp_path / "out"
    assert main(train_args(data.tiny, out, "--embed-store", str(data.embed), "--embed-weight", "0.5", "--epochs", "1")) == 0
    assert np.isfinite(float(read_summary(out)[0]["train_loss"]))
    assert read_checkpoint(out / "last.pth")["projector"]["out_dim"] == D


def test_stores_of_other_crops_are_refused(data: EmbedData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = embedding_store_for(data.tiny, tmp_path / "other", seed=1)
    out = tmp_path / "out"
    assert main(train_args(data.tiny, out, "--embed-store", str(other))) == 2
    assert capsys.readouterr().err == ("fkd-train: error: --store and --embed-store were not made with the same crops or classes "
                                       "(seed 0 vs 1): make both from one setting\n")
    manifest = Manifest.load(other)  # claim the same seed: the boxes still differ
    manifest.meta.seed = 0
    manifest.save(other)
    assert main(train_args(data.tiny, out, "--embed-store", str(other))) == 2
    first = list_images(data.tiny.train).image_ids[0]
    assert capsys.readouterr().err == (f"fkd-train: error: {first}: --store and --embed-store hold other boxes or flips for this image: "
                                       "make both from the same images with the same crop settings and seed\n")
    assert not out.exists()
    # The planner compares every record, beyond the images the preflight samples.
    rec = LabelStore(data.tiny.store).read(3)
    planner = StoreCropPlanner(LabelStore(data.tiny.store), 2, seed=0, paired=LabelStore(other, payload="embedding"))
    with pytest.raises(DataMismatchError, match=f"{rec.image_id}: the label store and the embedding store hold other crops of this image"):
        planner.plan(3, 0, rec.height, rec.width)
    assert main(embed_args(data, out, "--embed-store", str(data.tiny.store))) == 2  # a label store where embeddings belong
    assert capsys.readouterr().err.endswith("not embeddings: this command needs an embedding store; pass it as --store\n")
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "projector", "classifier_trained"),
    [
        pytest.param(["--teacher-module", "test_train_embedding:tiny_teacher"], ("linear", "feature-map", 96, 64), False, id="feature-map"),
        pytest.param(["--teacher", "test_resnet", "--no-pretrained", "--embedding-from", "pre-logits", "--projector", "mlp",
                      "--gt-weight", "0.5", "--cutmix", "1.0"], ("mlp", "pre-logits", 96, 96), True, id="pre-logits"),
    ],
)
def test_online_fd_trains_with_the_teacher_in_the_loop(data: EmbedData, tmp_path: Path, extra: list[str], projector: tuple,
                                                      classifier_trained: bool) -> None:
    out = tmp_path / "out"
    assert main(online_args(data, out, "--epochs", "1", *extra)) == 0  # 3 steps
    assert np.isfinite(float(read_summary(out)[0]["train_loss"]))
    last = read_checkpoint(out / "last.pth")
    assert tuple(last["projector"][k] for k in ("kind", "source", "in_dim", "out_dim")) == projector
    timm.create_model("test_resnet", num_classes=3).load_state_dict(last["model"], strict=True)
    assert torch.equal(last["model"]["fc.weight"], fresh_student().state_dict()["fc.weight"]) != classifier_trained


def test_a_feature_source_the_teacher_lacks_is_refused(data: EmbedData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(online_args(data, out, "--teacher", "test_resnet", "--no-pretrained", "--embedding-from", "layer9")) == 2
    err = capsys.readouterr().err
    assert err.startswith("fkd-train: error: --embedding-from layer9: teacher test_resnet has no module 'layer9' (") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--store", "S", "--embed-loss", "cosine"], "--embed-loss cosine has no effect without --embed-store or --mode online-fd"),
        (["--store", "S", "--projector", "mlp"], "--projector mlp has no effect without --embed-store or --mode online-fd"),
        (["--mode", "fkd"], "--mode fkd trains from stores: give --store (soft labels) and/or --embed-store (embeddings)"),
        (["--mode", "deit", "--store", "S", "--embed-store", "E"],
         "--embed-store is read by --mode fkd only (--mode deit trains its distillation token on soft labels)"),
        (["--mode", "online-fd", "--teacher", "t", "--embed-store", "E"],
         "--embed-store is read by --mode fkd only (--mode online-fd runs the teacher every step and reads no store)"),
        (["--mode", "online-fd", "--teacher", "t", "--store", "S"], "--mode online-fd runs the teacher every step and reads no store"),
        (["--mode", "online-fd"], "--mode online-fd runs a teacher: give --teacher NAME or --teacher-module pkg.mod:factory"),
        (["--mode", "online-fd", "--teacher", "t", "--projector", "mlp"],
         "--projector mlp: --embedding-from feature-map projects every position with one 1x1 convolution"),
        (["--mode", "online-fd", "--teacher", "a", "--teacher", "b"], "--mode online-fd distills one teacher's features"),
        (["--embed-store", "E", "--embedding-from", "pre-logits"], "--embedding-from pre-logits chooses the online teacher's features"),
        (["--embed-store", "E", "--embed-weight", "0"], "--embed-weight must be > 0, got 0.0"),
        (["--mode", "online-fd", "--teacher", "t", "--smoothing", "0.1"],
         "--smoothing smooths ground-truth targets: in --mode online-fd it needs --gt-weight W > 0"),
        (["--mode", "online-fd", "--teacher", "t", "--kd", "hard"], "--kd hard has no effect in --mode online-fd"),
        (["--mode", "online-kd", "--teacher", "t", "--gt-weight", "0.3"], "--gt-weight mixes ground truth into stored labels (--mode fkd) or"),
    ],
)
def test_feature_options_a_run_would_not_use_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str) -> None:
    extra = [str(tmp_path) if v in ("S", "E") else v for v in extra]
    assert main(["--data", str(tmp_path), "--model", "test_resnet", "--output", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fkd-train: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _ddp_rank(rank: int, port: int, argv: list[str], record_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    Path(record_dir, f"rank{rank}.code").write_text(str(main(argv)))


def test_two_gloo_ranks_distill_features_with_a_classifier_that_gets_no_gradient(data: EmbedData, tmp_path: Path) -> None:
    """DDP must be told that some parameters (the classifier, here) get no gradient, or it fails at the second step."""
    out = tmp_path / "out"
    mp.spawn(_ddp_rank, args=(free_port(), embed_args(data, out, "--batch-size", "2"), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}.code").read_text() for r in range(2)] == ["0", "0"]
    last = read_checkpoint(out / "last.pth")
    assert last["epoch"] == 2 and torch.equal(last["model"]["fc.weight"], fresh_student().state_dict()["fc.weight"])
    assert last["projector"]["out_dim"] == D and (out / "projector.pth").is_file()
