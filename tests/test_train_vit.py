"""ViT students: the ViT/DeiT recipes run, AugReg levels, random erasing on top of the labelled crop,
and DeiT from stored labels (hard targets from the mixed stored label, evaluation on both heads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from timm.data.auto_augment import rand_augment_transform

from fkd.config import parse_args_with_config
from fkd.data.augment import PHOTOMETRIC_OPS, build_eraser
from fkd.data.multicrop import CropBatch
from train.aug_levels import AUG_LEVELS, apply_aug_level
from train.checkpoint import read_checkpoint
from train.cli import build_parser, main
from train.config import AugmentConfig, TrainConfig
from train.distributed import DistInfo
from train.engine import Normalizer, Trainer, evaluate, train_one_epoch
from train.mixup import MixInfo, SoftTargetMixup
from train.modes import DeiTMode
from train.run_setup import recolour_warnings

from conftest import TinyData, make_tiny_data, train_args, with_full_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
VIT_RECIPES = [
    "train-imagenet-deit-tiny-fkd.yaml", "train-imagenet-deit-small-fkd.yaml", "train-imagenet-deit-tiny-distilled-hard.yaml",
    "train-imagenet-deit-tiny-distilled-soft.yaml", "train-cifar10-vit-fkd.yaml", "train-cifar10-deit.yaml",
]
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    return make_tiny_data(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="module")
def tiny_full(tiny: TinyData) -> TinyData:
    return with_full_store(tiny)


@pytest.mark.parametrize("recipe", VIT_RECIPES)
def test_each_vit_recipe_trains_with_its_values(
    tiny: TinyData, tiny_full: TinyData, tmp_path: Path, recipe: str, capsys: pytest.CaptureFixture
) -> None:
    """The recipe as written, with data, size and length overridden by flags: one pass of 3 steps at
    16 px on a one-block ViT; args.yaml then holds every value of the recipe that no flag replaced.
    Every one reads stored labels, so a recipe with RandAugment gets the recolouring warning. The
    distilled-soft recipe (tau 3) needs a full store of log-probabilities (version 5)."""
    out = tmp_path / "out"
    store = tiny_full.store if recipe == "train-imagenet-deit-tiny-distilled-soft.yaml" else tiny.store
    overrides = {
        "store": str(store), "data": str(tiny.train), "val-data": str(tiny.val), "output": str(out),
        "model-kwargs": ["img_size=16", "patch_size=8", "depth=1", "embed_dim=16", "num_heads=2"],
        "input-size": "16", "epochs": "1", "batch-size": "4", "workers": "0",
    }
    argv = ["-c", str(REPO / "configs" / recipe), "--no-progress"]
    for key, value in overrides.items():
        argv += [f"--{key}", *(value if isinstance(value, list) else [value])]
    assert main(argv) == 0
    values = yaml.safe_load((REPO / "configs" / recipe).read_text())
    saved = yaml.safe_load((out / "args.yaml").read_text())
    kept = {key.replace("-", "_"): value for key, value in values.items() if key not in overrides}
    assert {key: saved[key] for key in kept} == kept
    warned = "warning: --randaugment recolours each crop after the teacher labelled it" in capsys.readouterr().out
    assert saved["mode"] in ("fkd", "deit") and warned == bool(saved["randaugment"])
    assert not saved["randaugment"] or recipe.startswith("train-imagenet-deit-tiny-distilled")  # DeiT's own recipe keeps DeiT's
    assert len((out / "log.jsonl").read_text().splitlines()) == 1


SMALL_DEIT = ["--model", "deit_tiny_patch16_224", "--epochs", "1", "--model-kwargs", "patch_size=8", "depth=1", "embed_dim=16", "num_heads=2"]


def test_a_vit_is_built_for_the_input_size_asked(tiny: TinyData, tmp_path: Path) -> None:
    """deit_tiny_patch16_224 takes 224 px inputs only: at --input-size 16 (as the ImageNet DeiT
    recipes at another size) the first step died with timm's 40-line 'AssertionError: Input height
    (16) doesn't match model (224)'. Its img_size now follows --input-size (4 patches + the class
    token), and args.yaml records it; an img_size given alone sets the input size."""
    out = tmp_path / "out"
    assert main(train_args(tiny, out, *SMALL_DEIT, "--input-size", "16")) == 0
    assert yaml.safe_load((out / "args.yaml").read_text())["model_kwargs"][-1] == "img_size=16"
    assert tuple(read_checkpoint(out / "last.pth")["model"]["pos_embed"].shape) == (1, 5, 16)
    argv = [arg for arg in train_args(tiny, tmp_path / "alone", *SMALL_DEIT, "img_size=16") if arg not in ("--input-size", "32")]
    assert main(argv) == 0
    assert yaml.safe_load((tmp_path / "alone" / "args.yaml").read_text())["input_size"] == 16


def test_a_vit_whose_img_size_differs_from_the_input_size_is_one_line(tiny: TinyData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(train_args(tiny, out, *SMALL_DEIT, "img_size=32", "--input-size", "16")) == 2
    assert capsys.readouterr().err == (
        "fkd-train: error: --input-size 16 differs from --model-kwargs img_size=32: deit_tiny_patch16_224 takes inputs of its img_size "
        "only; make them equal (or give one of them: the other follows)\n"
    )
    assert not out.exists()


def augment(*flags: str) -> AugmentConfig:
    """The augmentation settings of an fkd-train command line with these flags, as parsed."""
    args = parse_args_with_config(build_parser(), ["--data", "D", "--model", "M", "--output", "O", *flags])
    return TrainConfig.from_namespace(args).augment


def test_colour_augmentation_of_stored_crops_is_one_warning_naming_the_flags() -> None:
    assert recolour_warnings(augment()) == [] and recolour_warnings(augment("--randaugment", "")) == []  # '' is RandAugment off
    warned = recolour_warnings(augment("--randaugment", "rand-n2-m15"))
    assert warned[0].startswith("--randaugment recolours each crop after the teacher labelled it: ")
    both = recolour_warnings(augment("--color-jitter", "0.4", "--randaugment", "rand-m9"))
    assert len(both) == 1 and both[0].startswith("--color-jitter and --randaugment recolour each crop after the teacher labelled it")


def test_aug_level_fills_only_the_options_not_given() -> None:
    given = augment("--aug-level", "medium2")
    resolved = apply_aug_level(given)
    assert (resolved.mixup, resolved.randaugment) == (0.5, "rand-n2-m15-mmax15")
    assert (given.mixup, given.randaugment) == (None, None)  # a new config: the parsed one stays as given
    resolved = apply_aug_level(augment("--aug-level", "strong2", "--mixup", "0", "--randaugment", ""))  # explicit values win, 'off' included
    assert (resolved.mixup, resolved.randaugment) == (0.0, "")
    resolved = apply_aug_level(augment())
    assert (resolved.mixup, resolved.randaugment) == (0.0, None)
    assert {name: tuple(level) for name, level in AUG_LEVELS.items()} == {
        "none": (0.0, None), "light1": (0.0, "rand-n2-m0"), "light2": (0.2, "rand-n2-m10"), "medium1": (0.2, "rand-n2-m15-mmax15"),
        "medium2": (0.5, "rand-n2-m15-mmax15"), "strong1": (0.5, "rand-n2-m20-mmax20"), "strong2": (0.8, "rand-n2-m20-mmax20"),
    }


def test_aug_level_magnitudes_above_10_reach_timm_unclipped() -> None:
    ra = rand_augment_transform(AUG_LEVELS["strong1"].randaugment, {}, transforms=list(PHOTOMETRIC_OPS))
    assert ra.num_layers == 2 and {op.name for op in ra.ops} == set(PHOTOMETRIC_OPS)
    assert {(op.magnitude, op.magnitude_max) for op in ra.ops} == {(20, 20)}  # without mmax timm clips to 10


class _Recorder(torch.nn.Module):
    """A linear classifier on the mean colour that remembers its input; ``images`` are what the mode saw."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return x.mean(dim=(2, 3)) @ self.weight

    def targets(self, batch: CropBatch) -> torch.Tensor:
        return torch.full((len(batch), 2), 0.5)

    def loss(self, output: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.mode_images = images.clone()
        return -(targets * output.log_softmax(dim=1)).sum(dim=1).mean()


class _NoSchedule:
    def step_update(self, num_updates: int) -> None:
        pass


def test_random_erasing_hides_one_box_per_crop_of_the_model_input_only() -> None:
    """--reprob 1 --remode const: every crop the model sees has exactly one zero (mean-colour)
    rectangle of 2 % to 1/3 of its area and is untouched elsewhere; the images the mode gets (the
    online teacher's input) are the unerased crops, as stored labels describe them."""
    torch.manual_seed(0)
    images = torch.randint(1, 256, (6, 3, 16, 16), dtype=torch.uint8)
    batch = CropBatch(images, None, None, torch.zeros(6, dtype=torch.int64), torch.arange(3), torch.zeros(6, dtype=torch.int64))
    recorder = _Recorder()
    normalizer = Normalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), CPU.device)
    trainer = Trainer(
        recorder, recorder, torch.optim.SGD(recorder.parameters(), lr=0.1), _NoSchedule(), torch.amp.GradScaler("cpu", enabled=False),
        normalizer, CPU, updates_per_epoch=1, eraser=build_eraser(1.0, "const", 1, CPU.device),
    )
    train_one_epoch(trainer, [batch], epoch=0, mix_generator=None)
    unerased = images.float() / 255
    assert torch.equal(recorder.mode_images, unerased)
    for seen, crop in zip(recorder.seen, unerased):
        erased = (seen == 0).all(dim=0)
        rows, cols = erased.any(dim=1).nonzero().flatten(), erased.any(dim=0).nonzero().flatten()
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        assert erased[box].all() and int(erased.sum()) == erased[box].numel()  # one filled rectangle
        assert 0.02 * 256 - 8 <= erased.sum() <= 256 / 3 + 8  # timm rounds the sides to whole pixels
        assert torch.equal(seen[:, ~erased], crop[:, ~erased])
    assert build_eraser(0.0, "pixel", 1, CPU.device) is None


# ------------------------------------------------------------------ DeiT from stored labels

STORED = torch.tensor([[0.5, 0.375, 0.125, 0.0], [0.0, 0.375, 0.125, 0.5]], dtype=torch.float16)  # top-1: 0 and 3


@pytest.mark.parametrize(
    ("info", "lam"),
    [(MixInfo("mixup", 0.5), 0.5), (MixInfo("cutmix", 0.625, (0, 4, 0, 6)), 0.625)],  # CutMix: a 4x6 box of 8x8 = 1 - 0.625
    ids=["mixup", "cutmix"],
)
def test_deit_hard_distillation_learns_the_argmax_of_the_mixed_stored_label(info: MixInfo, lam: float) -> None:
    """The mixed stored labels are [0.25, 0.375, 0.125, 0.25] (Mixup 0.5) and [0.3125, 0.375, 0.125,
    0.1875] / [0.1875, 0.375, 0.125, 0.3125] (CutMix 0.625): class 1 for both crops, neither crop's
    own top-1 (0 and 3) nor its ground truth. The class head learns the mixed ground truth."""
    mode = DeiTMode("full", 4, smoothing=0.0, kind="hard", alpha=0.5)
    batch = CropBatch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, STORED, torch.tensor([0, 3]), torch.arange(2), torch.zeros(2))
    _, targets = SoftTargetMixup._apply(torch.zeros(2, 3, 8, 8), mode.targets(batch), info)
    cls = torch.tensor([[1.0, -0.5, 0.25, 2.0], [0.0, 1.5, -1.0, 0.5]])
    dist = torch.tensor([[0.5, 0.0, 1.0, -1.0], [2.0, -0.5, 0.0, 1.0]])
    log_cls, log_dist = (torch.log_softmax(z.double(), dim=1).numpy() for z in (cls, dist))
    gt = np.array([[lam, 0, 0, 1 - lam], [1 - lam, 0, 0, lam]])
    expected = 0.5 * -(gt * log_cls).sum(axis=1).mean() + 0.5 * -log_dist[[0, 1], [1, 1]].mean()
    assert mode.loss((cls, dist), None, targets).item() == pytest.approx(expected, rel=1e-6)
    unmixed_argmax = 0.5 * -(gt * log_cls).sum(axis=1).mean() + 0.5 * -log_dist[[0, 1], [0, 3]].mean()
    assert abs(expected - unmixed_argmax) > 0.1  # the test tells the two apart


def test_deit_evaluation_averages_the_class_and_distillation_heads() -> None:
    """A distilled model left in distilled-training mode (as fkd-train --mode deit sets it) is
    evaluated on (head(cls token) + head_dist(dist token)) / 2, timm's inference output."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=3, img_size=16, patch_size=8, depth=1, embed_dim=16, num_heads=2)
    model.set_distilled_training(True)
    with torch.no_grad():  # untrained heads start at zero: give them different weights
        model.head.weight.normal_()
        model.head_dist.weight.normal_()
    images, labels = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8), torch.tensor([0, 1, 2, 1, 0])
    normalizer = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), CPU.device)
    stats = evaluate(model, [(images, labels)], normalizer, CPU)
    with torch.no_grad():
        tokens = model.forward_features(normalizer(images.float() / 255))
        cls, dist = model.head(tokens[:, 0]), model.head_dist(tokens[:, 1])
    ce = {name: torch.nn.functional.cross_entropy(z, labels).item() for name, z in (("avg", (cls + dist) / 2), ("cls", cls), ("dist", dist))}
    assert stats.loss == pytest.approx(ce["avg"], rel=1e-5)
    assert abs(ce["avg"] - ce["cls"]) > 1e-3 and abs(ce["avg"] - ce["dist"]) > 1e-3
    assert stats.count == 5 and model.distilled_training  # evaluation leaves the training setting alone
