"""Which fkd-train options make sense together: refused up front, with the option named, rather than
silently ignored or failing mid-run. Imports no torch: it runs before anything heavy is loaded."""

from __future__ import annotations

import argparse

from .errors import SetupError
from .mode_names import DISTILL_DEFAULTS, DISTILL_MODES, FEATURE_DEFAULTS, GT_WEIGHT_MODES, STORE_MODES


def check_args(args: argparse.Namespace) -> None:
    for name, low in (("batch_size", 1), ("epochs", 1), ("crops_per_image", 1), ("workers", 0), ("keep_checkpoints", 0), ("log_every", 1)):
        if getattr(args, name) < low:
            raise SetupError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if not 0 <= args.smoothing < 1:
        raise SetupError(f"--smoothing must be in [0, 1), got {args.smoothing}")
    if not 0 <= args.reprob <= 1:
        raise SetupError(f"--reprob must be in [0, 1], got {args.reprob}")
    if args.recount < 1:
        raise SetupError(f"--recount must be >= 1, got {args.recount}")
    if not 0 <= args.gt_weight <= 1:
        raise SetupError(f"--gt-weight must be in [0, 1], got {args.gt_weight}")
    if args.gt_weight and args.mode not in GT_WEIGHT_MODES:
        raise SetupError(f"--gt-weight mixes ground truth into stored labels (--mode fkd) or into the feature loss (--mode online-fd); "
                         f"--mode {args.mode} has its own ground-truth term")
    if args.mode in GT_WEIGHT_MODES and args.smoothing and not args.gt_weight:
        raise SetupError(f"--smoothing smooths ground-truth targets: in --mode {args.mode} it needs --gt-weight W > 0")
    if args.stored_crops != "cycle" and args.mode not in STORE_MODES:
        raise SetupError(f"--stored-crops chooses among stored crops: --mode {args.mode} draws fresh random crops")
    if args.mode == "deit" and not args.store:
        raise SetupError("--mode deit trains from a label store: give --store (or use --mode supervised / online-kd)")
    if args.mode == "fkd" and not (args.store or args.embed_store):
        raise SetupError("--mode fkd trains from stores: give --store (soft labels) and/or --embed-store (embeddings), "
                         "or use --mode supervised / online-kd")
    if args.mode in ("online-kd", "online-fd") and not (args.teacher or args.teacher_module):
        raise SetupError(f"--mode {args.mode} runs a teacher: give --teacher NAME or --teacher-module pkg.mod:factory")
    check_distillation_args(args)
    check_feature_args(args)


def check_distillation_args(args: argparse.Namespace) -> None:
    """Refuse distillation settings a run would not use, instead of silently ignoring them.

    One temperature, as Hinton KD defines it: the online teacher runs at temperature 1 and --kd-tau
    tempers it once, in the loss; so fkd-train refuses the teacher's own --temperature.
    """
    if args.temperature != 1.0:
        raise SetupError(
            f"--temperature {args.temperature} is not used by fkd-train: set the distillation temperature with --kd-tau "
            f"(--mode {' and '.join(DISTILL_MODES)}; the teacher runs at temperature 1)"
        )
    if args.mode not in DISTILL_MODES:
        for name, default in DISTILL_DEFAULTS.items():
            if getattr(args, name) != default:
                raise SetupError(
                    f"--{name.replace('_', '-')} {getattr(args, name)} has no effect in --mode {args.mode}: "
                    f"it is used by --mode {' and '.join(DISTILL_MODES)} only"
                )
    if args.kd == "hard" and args.kd_tau != 1.0:
        raise SetupError(f"--kd-tau {args.kd_tau} has no effect with --kd hard (it learns the teacher's top-1 class); use --kd soft or drop --kd-tau")


EMBED_STORE_REFUSALS = {
    "deit": "trains its distillation token on soft labels",
    "online-fd": "runs the teacher every step and reads no store",
    "supervised": "reads no store",
    "online-kd": "distills the teacher's probabilities, not embeddings",
}


def check_feature_args(args: argparse.Namespace) -> None:
    """Feature distillation: from an embedding store (--embed-store, --mode fkd) or online
    (--mode online-fd); its options are refused in runs that distill no features."""
    if args.embed_store and args.mode != "fkd":
        raise SetupError(f"--embed-store is read by --mode fkd only (--mode {args.mode} {EMBED_STORE_REFUSALS[args.mode]})")
    if args.mode == "online-fd" and args.store:
        raise SetupError("--mode online-fd runs the teacher every step and reads no store: drop --store (set the crop range with --crop-scale)")
    online = args.mode == "online-fd"
    if not (args.embed_store or online):
        for name, default in FEATURE_DEFAULTS.items():
            if getattr(args, name) != default:
                raise SetupError(f"--{name.replace('_', '-')} {getattr(args, name)} has no effect without --embed-store or --mode online-fd")
        return
    if args.embed_weight <= 0:
        raise SetupError(f"--embed-weight must be > 0, got {args.embed_weight}")
    if not online and args.embedding_from != FEATURE_DEFAULTS["embedding_from"]:
        raise SetupError(f"--embedding-from {args.embedding_from} chooses the online teacher's features (--mode online-fd); "
                         "a store's embeddings come from the layer it was made from")
    if online and args.embedding_from == "feature-map" and args.projector != "linear":
        raise SetupError(f"--projector {args.projector}: --embedding-from feature-map projects every position with one 1x1 convolution, "
                         "as FD does (linear); --projector mlp needs --embedding-from pre-logits")
    if online and len(args.teacher or []) + bool(args.teacher_module) > 1:
        raise SetupError("--mode online-fd distills one teacher's features (an ensemble's members share no feature space): "
                         "give one --teacher or --teacher-module")
