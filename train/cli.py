"""``fkd-train``: command line (flags, ``-c recipe.yaml``) and the error handling around a run.

Failures a user can fix are one line, never a traceback: exit 2 for bad inputs (also when the
DataLoader re-raises one from a worker, wrapped in the worker's traceback), 130 on Ctrl-C with
where to resume. torch, timm and the run are imported only once the arguments parse and pass the
checks of ``options``, so ``--help`` and argument errors answer at once.

Multi-GPU runs launch the console script (``torchrun --no-python fkd-train``), not ``-m train.cli``,
which would import whatever ``train.py`` or ``train/`` the working directory holds.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fkd.config import parse_args_with_config
from fkd.teacher.options import add_teacher_args

from .aug_levels import AUG_LEVELS, ERASE_MODES, apply_aug_level
from .config import TrainConfig
from .errors import SetupError
from .mode_names import CROP_SOURCES, DISTILL_DEFAULTS, EMBED_LOSSES, FEATURE_DEFAULTS, GT_WEIGHT_BY, MIX_SCOPES, MODES, PROJECTORS
from .options import check_config

AUG_LEVEL_HELP = ", ".join(f"{name} = mixup {level.mixup:g} + {level.randaugment or 'no RandAugment'}" for name, level in AUG_LEVELS.items())

DESCRIPTION = """\
Train a timm student from an FKD label store made by fkd-labelgen, without running the teacher.
Each step loads B images, decodes each once, replays n of its stored crops (box + flip) at the
student's input size and trains on the stored soft labels: B*n samples per step, and an epoch is
one pass over the images. Baselines run in the same tool (--mode supervised | online-kd | deit).
From an embedding store (--embed-store) the student learns the stored teacher features instead of,
or beside, the soft labels; --mode online-fd is its online baseline (FD, the teacher in the loop).

example:
  fkd-train --store STORE --data DATA --model resnet18 --crops-per-image 4 --val-data VAL --output OUT
  fkd-train -c configs/train-cifar10-fkd.yaml --epochs 5    # a recipe; flags override it
  torchrun --nproc_per_node 8 --no-python fkd-train -c configs/train-imagenet-resnet50-fkd.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fkd-train", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)

    g = p.add_argument_group("data")
    g.add_argument("--store", help="label store directory written by fkd-labelgen (--mode fkd needs it or --embed-store; deit needs it)")
    g.add_argument("--data", required=True, help="training images: the ImageFolder directory (or CSV/TXT list, or tar shards) the store was made from")
    g.add_argument("--val-data", help="validation ImageFolder (or list) evaluated after every epoch (top-1/top-5); omit to skip evaluation")
    g.add_argument("--crops-per-image", type=int, default=4, metavar="N",
                   help="crops replayed per decoded image and step (FKD's num_crops; at most the store's crops per image; default 4)")
    g.add_argument("--batch-size", type=int, default=64, metavar="B",
                   help="IMAGES per step and process: a step trains on B*N crops (official FKD's -b counts crops, so their -b 1024 "
                        "with 4 crops is --batch-size 256 here; default 64)")
    g.add_argument("--input-size", type=int, metavar="PIXELS", help="student input side length (default: the model's pretrained config, or its --model-kwargs img_size); "
                        "a fixed-size model's (ViT) img_size follows it")
    g.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"),
                   help="resize filter for crops and validation images (default: the store's for fkd/deit crops, the model's otherwise)")
    g.add_argument("--crop-pct", type=float, help="validation centre-crop fraction: resize to size/crop_pct, crop size (default: the model's)")
    g.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area range of supervised/online-kd crops (default: the store's when --store is given, else 0.08 1)")
    g.add_argument("--stored-crops", choices=("cycle", "random"), default="cycle",
                   help="which of an image's M stored crops each epoch replays: cycle (default) deals them from a seeded "
                        "permutation, so every stored crop is used once before any repeats; random draws N afresh every epoch")
    g.add_argument("--crop-source", choices=CROP_SOURCES,
                   help="supervised/online-kd: fresh (default) draws new RandomResizedCrop boxes every epoch (in the store's "
                        "area and aspect ranges when --store is given); store replays the --store's crops exactly as --mode fkd "
                        "does (same pixels, same --stored-crops order) while the targets are made live (online-kd: the teacher "
                        "labels the replayed crop): the control that tells which crops from which labels")
    g.add_argument("--allow-resized", action="store_true",
                   help="accept images whose size differs from the store's (the boxes are fractions of the image, mapped onto the resized copy)")
    g.add_argument("--color-jitter", type=float, default=0.0, help="per-crop brightness/contrast/saturation jitter strength (0 = off)")
    g.add_argument("--randaugment", metavar="SPEC",
                   help="per-crop timm RandAugment, e.g. rand-m9-mstd0.5 (default off, or the --aug-level's; '' turns it off). Colour "
                        "ops only: the geometric ops (rotate, shear, translate) are left out because they would move pixels out of the "
                        "box the stored label describes. With stored labels it still recolours the crop after the teacher labelled it "
                        "(fkd-train warns; the ViT block of benchmarks/README.md measures the cost)")
    g.add_argument("--aug-level", choices=tuple(AUG_LEVELS),
                   help="AugReg's named levels (How to train your ViT, big_vision vit_i1k.py): set --mixup ALPHA and "
                        "--randaugment rand-n2-mM where not given explicitly: " + AUG_LEVEL_HELP)
    g.add_argument("--reprob", type=float, default=0.0, metavar="P",
                   help="random erasing probability per crop (timm's RandomErasing, DeiT: 0.25; default 0 = off). It moves no "
                        "pixels; like Mixup it is applied on top: the target describes the crop before erasing")
    g.add_argument("--remode", choices=ERASE_MODES, default="pixel", help="random erasing fill, as in timm (default pixel: per-pixel normal noise)")
    g.add_argument("--recount", type=int, default=1, metavar="N", help="random erasing: up to N boxes per crop (default 1)")
    g.add_argument("--workers", type=int, default=4, help="DataLoader worker processes per training process (default 4)")
    g.add_argument("--replay-device", choices=("cpu", "cuda"), default="cpu",
                   help="where crops are cut and resized: cpu (default) in the DataLoader workers; cuda: the workers only decode, "
                        "the training GPU cuts, resizes (antialiased, float32) and flips the crops, batched (no per-crop --color-jitter "
                        "or --randaugment)")

    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="any timm model name (timm.list_models()), e.g. resnet18, deit_tiny_distilled_patch16_224")
    g.add_argument("--pretrained", action="store_true", help="start from timm's pretrained weights")
    g.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE", help="extra timm.create_model arguments, e.g. img_size=32 patch_size=4")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate (models that support it)")
    g.add_argument("--mean", type=float, nargs=3, help="input normalization mean (default: the model's)")
    g.add_argument("--std", type=float, nargs=3, help="input normalization std (default: the model's)")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (timm ModelEmaV3), evaluate it and pick best.pth by it (summary.csv: ema_top1)")
    g.add_argument("--model-ema-decay", type=float, default=0.9998, help="EMA decay per update (default 0.9998)")
    g.add_argument("--compile", action="store_true", help="torch.compile the student")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=100, help="passes over the images (FKD's '300 epochs' with 4 crops = 75 here; default 100)")
    g.add_argument("--opt", default="sgd", help="timm optimizer name: sgd, momentum, adamw, lamb, lars, ... (default sgd)")
    g.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay, not applied to biases and norm layers (default 1e-4)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--sched", default="cosine", help="timm scheduler, stepped every update: cosine, step, tanh, poly, ... (default cosine)")
    g.add_argument("--warmup-epochs", type=float, default=0, help="linear warm-up length in epochs (default 0)")
    g.add_argument("--warmup-lr", type=float, default=1e-6, help="learning rate at the start of warm-up (default 1e-6)")
    g.add_argument("--min-lr", type=float, default=0.0, help="final learning rate of the schedule (default 0)")
    g.add_argument("--clip-grad", type=float, help="clip gradients at this norm (or value, see --clip-mode); default off")
    g.add_argument("--clip-mode", choices=("norm", "value", "agc"), default="norm", help="gradient clipping mode (default norm)")
    g.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="mixed precision on CUDA (auto: bf16 where supported, else fp16); the CPU always trains in float32")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="channels_last memory format (default: on CUDA)")

    g = p.add_argument_group("training mode")
    g.add_argument("--mode", choices=MODES, default="fkd",
                   help="fkd: stored soft labels and/or stored embeddings (default); supervised: ground truth only; online-kd: the "
                        "teacher runs every step; deit: distillation token learns the stored labels, class token the ground truth; "
                        "online-fd: FD's feature distillation with the teacher in the loop (the reference for --embed-store)")
    g.add_argument("--gt-weight", type=float, default=0.0, metavar="W",
                   help="the ground truth's share of the loss (fkd, online-fd). Label store: target = (1-W)*stored + W*one-hot(label) "
                        "(with --smoothing applied to the one-hot), the usual cure for a weak teacher. With features: loss = (1-W)*"
                        "distill + W*CE(student logits, label), distill = embed-weight*feature loss (+ CE on the stored labels with "
                        "--store). Default 0: no ground truth (features alone then leave the classifier untrained)")
    g.add_argument("--gt-weight-by", choices=GT_WEIGHT_BY, default="constant",
                   help="fkd with --store: constant (default) gives every crop the share W; confidence gives crop i "
                        "W_i = min(1, lam * (1 - max stored prob_i)), lam set per step so the batch's mean W_i is W (the same "
                        "mean objective as constant W): more ground truth where the teacher was unsure, less where it was sure")
    g.add_argument("--smoothing", type=float, default=0.0, help="label smoothing of ground-truth targets (supervised, online-kd, deit; fkd and online-fd with --gt-weight; default 0)")
    g.add_argument("--kd", choices=("soft", "hard"), default=DISTILL_DEFAULTS["kd"],
                   help="online-kd/deit distillation: soft (KL at --kd-tau, x tau^2; deit: the stored distribution) or hard (CE on the teacher's top-1)")
    g.add_argument("--kd-alpha", type=float, default=DISTILL_DEFAULTS["kd_alpha"],
                   help="online-kd/deit weight of the distillation term: (1-alpha)*CE + alpha*KD (default 0.5; DeiT soft: 0.1)")
    g.add_argument("--kd-tau", type=float, default=DISTILL_DEFAULTS["kd_tau"],
                   help="online-kd/deit soft distillation temperature: tau^2 KL(softmax(t/tau) || softmax(z/tau)), the online teacher "
                        "running at temperature 1; deit takes the teacher at tau from the store: its labels as they are at the store's "
                        "temperature, else re-tempered, exactly, from a full store's log-probabilities (format version 5); a top-K store "
                        "or an older full store of probabilities is refused at any other tau (their tail is lost). "
                        "Not with --kd hard (default 1; DeiT soft: 3)")
    g.add_argument("--teacher-input-size", type=int, metavar="PIXELS",
                   help="online-kd/online-fd: side length the crops are resized to for the teacher (default: the first teacher's own; teacher options below)")
    g.add_argument("--mixup", type=float,
                   help="Mixup Beta alpha (0 = off, the default unless --aug-level sets it); mixes the soft targets with the same lambda "
                        "(stored embeddings too, linearly: an approximation, the teacher never saw the mixed image; online-fd's "
                        "teacher does)")
    g.add_argument("--cutmix", type=float, default=0.0, help="CutMix Beta alpha (0 = off); lambda corrected by the clipped box area")
    g.add_argument("--mixup-prob", type=float, default=1.0,
                   help="probability of mixing a batch (a sample with --mixup-mode elem; default 1)")
    g.add_argument("--mixup-mode", choices=MIX_SCOPES, default="batch",
                   help="as in timm: batch (default) draws once per batch: mixed or not, Mixup or CutMix, one lambda and box; elem "
                        "draws them per sample, as fkd-labelgen's stored pairs do per crop (the partner is always the sample at the "
                        "mirrored batch position)")
    g.add_argument("--mixup-switch-prob", type=float, default=0.5,
                   help="probability of CutMix instead of Mixup when both are on, as in timm (default 0.5); the official FKD code's "
                        "switch prob means the opposite: there 1.0 is Mixup only")

    g = p.add_argument_group(
        "feature distillation",
        "--embed-store trains the student's pre-logits features, through a projector, towards the stored teacher\n"
        "embeddings (--mode fkd; with --store too, soft labels and embeddings of the same crops together); --mode\n"
        "online-fd runs the teacher every step instead. Without --store or --gt-weight the student's classifier gets\n"
        "no signal: its val top-1 stays at chance and best.pth follows it, so use last.pth (to fine-tune or probe).\n"
        "Checkpoints keep the student as plain timm weights; the projector is saved apart (projector.pth, and in\n"
        "each checkpoint under 'projector').",
    )
    g.add_argument("--embed-store", metavar="PATH",
                   help="embedding store (fkd-labelgen --target embedding); with --store it must hold the same images, boxes and flips")
    g.add_argument("--embed-loss", choices=EMBED_LOSSES, default=FEATURE_DEFAULTS["embed_loss"],
                   help="smooth-l1 (default, FD's: target whitened by a LayerNorm without affine over D, beta 2.0); cosine: 1 - "
                        "cos; mse: on the target as stored")
    g.add_argument("--embed-weight", type=float, default=FEATURE_DEFAULTS["embed_weight"], metavar="LAMBDA",
                   help="weight of the feature loss; the stored labels' CE has weight 1 (default 1)")
    g.add_argument("--projector", choices=PROJECTORS, default=FEATURE_DEFAULTS["projector"],
                   help="student features -> teacher's D: linear (default; a 1x1 convolution on feature maps) or mlp (two layers, "
                        "hidden width D, GELU)")
    g.add_argument("--embedding-from", metavar="SOURCE", default=FEATURE_DEFAULTS["embedding_from"],
                   help="online-fd: the teacher's features to distill: feature-map (default, FD: timm forward_features, whitened per "
                        "position, the student's map through a 1x1 convolution, average-pooled to the teacher's size when they "
                        "differ), or a vector as fkd-labelgen --target embedding stores it (pre-logits, pooled, or a module name), "
                        "learnt by the student's pre-logits through --projector: the online counterpart of such a store")

    add_teacher_args(p, student=True)  # --num-classes is the student's too; --no-pretrained is the teacher's alone

    g = p.add_argument_group("run")
    g.add_argument("--output", required=True, help="output directory: args.yaml, summary.csv, log.jsonl, last.pth, best.pth, checkpoint-NNNN.pth")
    g.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint exactly (auto: OUTPUT/last.pth when present)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace what --output holds from another run (its checkpoints, logs and args.yaml); without it such a folder is refused")
    g.add_argument("--keep-checkpoints", type=int, default=3, help="per-epoch checkpoints to keep besides last.pth/best.pth (default 3)")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, data order, crop choice, augmentation and mixing (default 0)")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms only (bitwise repeatable on the same hardware; slower on GPUs)")
    g.add_argument("--device", default="auto", help="auto (this rank's GPU if any, else CPU), cpu, cuda, cuda:1, ...")
    g.add_argument("--log-every", type=int, default=20, metavar="N", help="at most N steps between progress-bar loss and lr updates; each epoch shows at least 4 and its last step (default 20)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")
"""How torch re-raises a worker's exception: its type name, then the worker's whole traceback."""


def worker_error_message(exc: BaseException, clean: tuple[type[BaseException], ...]) -> "str | None":
    """The original one-line message of a ``clean`` error that a DataLoader worker raised, else None."""
    found = WORKER_ERROR.match(str(exc))
    if found is None or found.group(1) not in _class_names(clean):
        return None
    last = str(exc).rsplit("Traceback (most recent call last):\n", 1)[-1]
    line = next((line for line in last.splitlines() if line and not line[0].isspace()), None)  # "module.Type: message"
    return None if line is None else re.sub(r"^[\w.]+: ", "", line, count=1)


def _class_names(classes: "tuple[type, ...]") -> set[str]:
    names: set[str] = set()
    for cls in classes:
        names |= {cls.__name__} | _class_names(tuple(cls.__subclasses__()))
    return names


def interrupted_message(output: Path) -> str:
    from .checkpoint import LAST_NAME

    last = output / LAST_NAME
    if last.is_file():
        return f"fkd-train: interrupted; continue with --resume auto (it resumes from {last}, the last finished epoch)"
    return "fkd-train: interrupted before the first checkpoint: nothing to resume"


def main(argv: "Sequence[str] | None" = None) -> int:
    """The only place that sees argparse's Namespace: it becomes a ``TrainConfig`` once, with
    --aug-level resolved, and is checked before torch is imported, so an argument error answers at once."""
    args = parse_args_with_config(build_parser(), argv)
    config = TrainConfig.from_namespace(args)
    config = replace(config, augment=apply_aug_level(config.augment))
    try:
        check_config(config)
    except SetupError as exc:
        print(f"fkd-train: error: {exc}", file=sys.stderr)
        return 2
    from fkd.data.errors import ReplayError
    from fkd.data.images import BadImageError, ImageMismatchError
    from fkd.store import StoreError

    from .run import run
    from .student import fit_input_size

    clean = (SetupError, ReplayError, StoreError, BadImageError, ImageMismatchError, FileNotFoundError, FloatingPointError)
    try:
        run(replace(config, model=fit_input_size(config.model)))
    except KeyboardInterrupt:
        print(interrupted_message(Path(config.run.output)), file=sys.stderr)
        return 130
    except Exception as exc:
        message = worker_error_message(exc, clean)
        if message is None and not isinstance(exc, clean):
            raise
        print(f"fkd-train: error: {message or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
