"""controls.py (iii): every other difference between ``--mode fkd`` and ``--mode online-kd`` in the
scale block's loop, each with where the code says it and what was run to check it.

The references are found in the code by a line of it (``where``), so they follow the code when it
moves; a line no longer found says so in the result instead of pointing at the wrong place.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from benchmarks.accuracy.toolkit import RECIPE, schedule
from benchmarks.common import KERAS_TEACHER, REPO_ROOT
from fkd.config import parse_args_with_config
from fkd.data.targets import one_hot_targets
from fkd.losses.labels import DistillationLoss, soft_target_cross_entropy
from fkd.teacher.teachers import create_teacher
from labelgen.cli import build_parser as labelgen_parser
from train.aug_levels import apply_aug_level
from train.cli import build_parser as train_parser
from train.config import TrainConfig
from train.student import create_student, parse_model_kwargs


def where(path: str, line: str) -> str:
    """``path:N`` of the first line of ``path`` (relative to the repository) that contains ``line``."""
    for number, text in enumerate((REPO_ROOT / path).read_text().splitlines(), 1):
        if line in text:
            return f"{path}:{number}"
    return f"{path}: (not found: {line[:50]!r}; re-check)"


def recipe_config(mode: str) -> TrainConfig:
    """The scale block's config of ``mode`` (the recipe, as bench_scale's runs give it)."""
    extra = ["--teacher-module", KERAS_TEACHER, "--kd-alpha", "1"] if mode == "online-kd" else ["--store", "S"]
    args = parse_args_with_config(train_parser(), ["-c", str(RECIPE), "--mode", mode, "--data", "D", "--output", "O", *extra])
    config = TrainConfig.from_namespace(args)
    return replace(config, augment=apply_aug_level(config.augment))


def gradient_gap(weight: float) -> float:
    """Largest |difference| between the student-logit gradients of fkd's loss, soft-target CE on
    (1 - W) p + W y, and online KD's, (1 - alpha) CE(y) + alpha KL(p || q) at alpha = 1 - W, tau 1."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(128, 10, generator=generator, dtype=torch.float64)
    teacher = torch.softmax(2 * torch.randn(128, 10, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 10, (128,), generator=generator)
    truth = one_hot_targets(labels, 10).double()
    grads = []
    for loss in (lambda z: soft_target_cross_entropy(z, (1 - weight) * teacher + weight * truth),
                 lambda z: DistillationLoss("soft", 1 - weight, 1.0, teacher_is_prob=True)(z, truth, teacher)):
        z = logits.clone().requires_grad_(True)
        loss(z).backward()
        grads.append(z.grad)
    return float((grads[0] - grads[1]).abs().max())


def loop_differences() -> list[dict]:
    """The items, each {item, fkd, online, same (True / False / None: by design), checked, where}."""
    teacher = create_teacher([], module=KERAS_TEACHER).train()
    fkd, online = recipe_config("fkd"), recipe_config("online-kd")
    labelgen = labelgen_parser().parse_args(["--data", "D", "--out", "O", "--teacher-module", KERAS_TEACHER])
    student = create_student(fkd.model.model, 10, False, fkd.model.drop_path, **parse_model_kwargs(fkd.model.model_kwargs))
    random_layers = [m for m in student.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    gaps = {w: gradient_gap(w) for w in (0.0, 0.3)}
    augment_off = all(not (c.augment.mixup or c.augment.cutmix or c.augment.color_jitter or c.augment.randaugment or c.augment.reprob
                           or c.distill.smoothing) for c in (fkd, online))
    steps = {n: schedule(4, 128, 4, 10000) for n in ("fkd", "online")}  # bench_scale: every row n=4, 128 crops per step
    return [
        {"item": "the teacher's BatchNorm and dropout", "fkd": "eval mode in fkd-labelgen", "online": "eval mode, whatever the student's",
         "same": not any(m.training for m in teacher.modules()),
         "checked": "Teacher.train() called: every module stays in eval mode",
         "where": [where("fkd/teacher/teachers.py", "def train(self, mode: bool = True) -> Teacher:"),
                   where("labelgen/worker.py", "self.teacher = config.teacher.create(self.device).eval()"),
                   where("train/modes.py", "self.teacher = teacher.eval()")]},
        {"item": "the teacher's arithmetic", "fkd": f"--teacher-precision {labelgen.teacher_precision}",
         "online": f"--teacher-precision {online.teacher.precision}", "same": labelgen.teacher_precision == online.teacher.precision,
         "checked": "the two commands' defaults parsed", "where": [where("fkd/teacher/precision.py", "DEFAULT_PRECISION =")]},
        {"item": "the pixels the teacher labels", "fkd": "the stored box cut at the teacher's 32 px with the store's filter (bilinear)",
         "online": f"the student's crop at 32 px with the model's filter ({student.pretrained_cfg['interpolation']}), resized to the teacher's "
                   "32 px (a no-op)", "same": student.pretrained_cfg["interpolation"] == "bilinear" and fkd.model.input_size == 32,
         "checked": "(i): labelgen's cut equals fkd-train's replay bitwise; the student's filter read from timm",
         "where": [where("labelgen/worker.py", "replay_fixed(pixels, fixed"),
                   where("train/run_setup.py", "return interpolation or data.interpolation or cfg.interpolation"),
                   where("train/modes.py", "return self.teacher(resize_for_teacher(images, self.teacher_size)).float()")]},
        {"item": "the label's values", "fkd": "full: float16 ln p; marginal smoothing: top-5 in float16, the rest spread evenly",
         "online": "the teacher's float32 probabilities", "same": None, "checked": "(i): KL and top-1 agreement per store",
         "where": [where("fkd/data/targets.py", "def labels(self, batch: CropBatch) -> torch.Tensor:")]},
        {"item": "loss and reduction", "fkd": "soft-target CE on (1 - W) p + W y, mean over the step's crops",
         "online": "(1 - alpha) CE(y) + alpha KL(p || q), KL 'batchmean', tau 1", "same": max(gaps.values()) < 1e-6,
         "checked": f"gradients w.r.t. 128 crops' logits: largest difference {gaps[0.0]:.1e} (W 0 / alpha 1), {gaps[0.3]:.1e} "
                    "(W 0.3 / alpha 0.7), float32 rounding (both take log-softmax in float32); the losses differ by the labels' "
                    "entropy, a constant",
         "where": [where("fkd/losses/labels.py", "return -(target_probs.float() * log_q).sum(dim=-1).mean()"),
                   where("fkd/losses/labels.py", 'return F.kl_div(log_s, q, reduction="batchmean") * (tau * tau)'),
                   where("fkd/losses/labels.py", "return (1.0 - self.alpha) * base + self.alpha * kd")]},
        {"item": "label smoothing, Mixup / CutMix, colour augmentation, random erasing", "fkd": "all off in the recipe", "online": "all off",
         "same": augment_off,
         "checked": f"both configs built from {RECIPE.relative_to(REPO_ROOT)} as the block runs them",
         "where": [where("train/engine.py", "if t.mixer is not None:"), where("train/engine.py", "if t.eraser is not None:")]},
        {"item": "images per step and their order", "fkd": "32 images x 4 crops; EpochSampler(seed) order", "online": "the same",
         "same": steps["fkd"] == steps["online"],
         "checked": f"toolkit.schedule: {steps['fkd'].images_per_step} images x 4 crops, {steps['fkd'].steps} steps for every row; the "
                    "sampler's order depends on the seed, epoch and image count only",
         "where": [where("benchmarks/accuracy/toolkit.py", "images_per_step = samples_per_step // crops_per_image"),
                   where("train/run.py", "sampler = EpochSampler(dataset, num_replicas=info.world_size")]},
        {"item": "random streams", "fkd": "the same initial weights (seed set right before the student is built); crop order "
                                            "from (seed, epoch, image)",
         "online": "the same initial weights; crops from (seed, epoch); the teacher's layers draw from torch's global generator once "
                   "built, which nothing draws from afterwards in this recipe",
         "same": not random_layers,
         "checked": f"the student ({fkd.model.model}) has {len(random_layers)} dropout layers; Mixup and erasing are off (above)",
         "where": [where("train/run.py", "seed_everything(config.run.seed)  # same initial weights on every rank"),
                   where("train/run.py", "mode = build_mode(config, data, device)"),
                   where("fkd/data/plan.py", "derived_seed(self.seed, epoch)")]},
        {"item": "which crops", "fkd": "the store's 32 crops per image (fkd-labelgen seed 0, the same for every training seed), each once",
         "online": "32 fresh crops per image and training seed", "same": None, "checked": "(ii): the two crop distributions",
         "where": [where("fkd/data/plan.py", "def stored_crop_choice("), where("fkd/data/plan.py", "class RandomCropPlanner:")]},
    ]

