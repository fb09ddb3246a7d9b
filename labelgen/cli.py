"""``fkd-labelgen``: run pretrained teachers over M random crops per image into a label store.

    fkd-labelgen --teacher regnety_160 --crops 200 --data DATA --out STORE
    fkd-labelgen --target embedding --embedding-from pre-logits --teacher ... --out STORE   # features

With ``--target embedding`` each crop keeps the teacher's feature vector (``fkd.teacher.features``) instead
of a soft label; the options that only shape soft labels are refused rather than ignored.

The augmentation options (fkd-train's, under the same names: ``--randaugment``, ``--color-jitter``,
``--reprob``, Mixup/CutMix) make a reinforced store: each crop's augmentation is drawn here, applied
to the crop before the teacher labels it, and stored with the label (``fkd.store.views``), so
fkd-train replays the very view the teacher saw.

Options can come from a YAML file (``-c config.yaml``, keys are option names); flags override it.
torch, Ray and h5py are imported only once the arguments are parsed, so ``--help`` and argument
errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fkd.config import add_config_arg, parse_args_with_config
from fkd.payload.embedding_spec import EMBEDDING_DTYPES, NORMALIZATIONS
from fkd.payload.schemes import SCHEMES
from fkd.store.views import ERASE_MODES, RandAugmentSpec, ViewSpec
from fkd.teacher.options import TeacherSpec, add_teacher_args

if TYPE_CHECKING:
    from .driver import RunConfig
    from .messages import EmbeddingSettings

PROG = "fkd-labelgen"
TARGETS = ("labels", "embedding")
LABEL_ONLY = {"scheme": "--scheme", "top_k": "--top-k", "temperature": "--temperature", "class_map": "--class-map"}
VIEW_FLAGS = {"mix_switch_prob": "--mixup-switch-prob"}
"""ViewSpec fields whose flag is not --field-name (fkd-train's and timm's name)."""
CROP_DEVICES = ("auto", "cuda", "cpu")
"""--crop-device (labelgen.device_batch.crop_cutter)."""
EMBEDDING_ONLY = {"embedding_from": "--embedding-from", "embedding_dtype": "--embedding-dtype", "embedding_norm": "--embedding-norm"}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except where the help already explains them or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Stage 1 of fast knowledge distillation (FKD): run pretrained teachers over M random-resized "
        "crops of every image, in parallel on Ray, and store each crop's box, flip and quantized soft label in a "
        "sharded HDF5 label store (or, with --target embedding, the teacher's feature vector per crop, for feature "
        "distillation). Rerunning the same command resumes an interrupted run.",
        formatter_class=_HelpFormatter,
    )
    add_config_arg(parser)
    io = parser.add_argument_group("data and store")
    io.add_argument("--data", required=True, metavar="DATA",
                    help="ImageFolder directory (one subfolder per class; label = sorted index) or a CSV/TXT list "
                    "of image paths relative to the list's folder, with optional integer labels ('path[,label]'), or tar shards "
                    "(WebDataset layout: 'train-{0000..0099}.tar' or a list file of .tar paths; labels from KEY.cls)")
    io.add_argument("--out", required=True, type=Path, metavar="STORE",
                    help="label store directory to create, or to resume when it holds a store made with the same settings")
    io.add_argument("--overwrite", action="store_true",
                    help="replace an existing store made with different settings (and check every image again)")
    io.add_argument("--skip-bad", action="store_true",
                    help="leave unreadable images out of the store (recorded in its metadata) instead of failing")
    io.add_argument("--shard-size", type=int, default=1000, metavar="N",
                    help="images per shard: the unit of work, retry and resume")
    io.add_argument("--class-map", type=Path, default=None, metavar="FILE",
                    help="map the data's classes onto the teacher's: one 'DATA_CLASS TEACHER_CLASS' per line (teacher class "
                    "by name or index). Needed when the data's classes differ from the teacher's in number or names; "
                    "without it such data is refused")

    add_teacher_args(parser)

    labels = parser.add_argument_group("crops and labels")
    labels.add_argument("--crops", type=int, default=200, metavar="M",
                        help="random-resized crops per image (the official FKD code uses 500)")
    labels.add_argument("--scheme", choices=SCHEMES, default="marginal-smoothing",
                        help="soft-label quantization: hardening keeps the argmax, smoothing the top-1 probability, "
                        "marginal-* the top-K probabilities (decoded by spreading the rest or renormalizing), "
                        "full all C probabilities (float16)")
    labels.add_argument("--top-k", type=int, default=5, metavar="K",
                        help="probabilities kept per crop by the marginal schemes (FKD's choice: 5)")
    labels.add_argument("--seed", type=int, default=0,
                        help="crop seed: crops are drawn from (seed, image id) alone, so any worker reproduces them")
    labels.add_argument("--crop-scale", type=float, nargs=2, default=[0.08, 1.0], metavar=("MIN", "MAX"),
                        help="crop area as a fraction of the image (default: 0.08 1.0; the official FKD code uses 0.08 0.936)")
    labels.add_argument("--crop-ratio", type=float, nargs=2, default=[3 / 4, 4 / 3], metavar=("MIN", "MAX"),
                        help="crop aspect ratio range, width / height (default: 3/4 4/3)")

    labels.add_argument("--input-size", type=int, default=None, metavar="PX",
                        help="side of the square crops fed to the teacher (default: the first teacher's own input size "
                        "from its timm data config)")
    target = parser.add_argument_group("target (what each crop keeps)")
    target.add_argument("--target", choices=TARGETS, default="labels",
                        help="labels: the teacher's quantized soft labels; embedding: its feature vector (feature distillation; "
                        "the store's ground truth is then the data's own classes, and the teacher needs no classifier)")
    target.add_argument("--embedding-from", default="pre-logits", metavar="SOURCE",
                        help="pre-logits (timm forward_head(pre_logits=True): what the classifier reads), pooled (the model's "
                        "global pooling, before any head norm or MLP), or a module name of the teacher (a forward hook; "
                        "(N, C, H, W) outputs are averaged over H, W), e.g. dense_1_relu for fkd.zoo.keras_cifar10")
    target.add_argument("--embedding-dtype", choices=EMBEDDING_DTYPES, default="float16",
                        help="float16 (default: every value to float16 precision) or int8 (one float32 scale per crop: 36 %% "
                        "smaller on the CIFAR-10 teacher, but values far below the crop's largest lose their precision)")
    target.add_argument("--embedding-norm", choices=NORMALIZATIONS, default="none",
                        help="normalization applied before storage (default none: raw features, training whitens as it likes); "
                        "l2 or layernorm (no affine) over the vector")
    add_view_args(parser)
    compute = parser.add_argument_group("compute")
    compute.add_argument("--batch-size", type=batch_size_arg, default=256, metavar="B",
                         help="crops per teacher forward pass (batches are cut the same way whatever the number of workers), or auto: "
                         "on a GPU the largest power of two up to 4096 that fits the worker's share of its memory, on a CPU 256")
    compute.add_argument("--threads", type=int, default=1, metavar="T",
                         help="torch intra-op threads of each worker's teacher. Labels are bitwise identical for the same "
                         "device type, threads and --batch-size whatever the number of workers; another thread count "
                         "changes CPU results within floating-point reproducibility")
    compute.add_argument("--device", default="auto",
                         help="teacher device in each worker: auto (CUDA when the worker has a GPU), cpu, cuda, cuda:N")
    compute.add_argument("--crop-device", choices=CROP_DEVICES, default="auto",
                         help="where the crops are cut, resized and flipped: cuda (on the teacher's GPU with fkd-train's "
                         "--replay-device cuda kernel: within 2 grey levels of the CPU replay, recorded in the store), cpu (torch's "
                         "uint8 kernel in the decode threads), auto (cuda when the worker's teacher is on a GPU)")
    compute.add_argument("--compile", action="store_true", help="torch.compile the teacher's forward in each worker")
    compute.add_argument("--workers", type=int, default=None, metavar="N",
                         help="Ray actors, each loading the teacher once (default: one per GPU of the cluster; without GPUs one "
                         "per CPU)")
    compute.add_argument("--cpus-per-worker", type=float, default=None, metavar="C",
                         help="CPUs each worker reserves for decoding images and CPU inference (default: the cluster's "
                         "CPUs divided evenly between the workers)")
    compute.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                         help="GPUs each worker reserves (default: 1 when the cluster has GPUs and --device is not cpu, else 0)")
    compute.add_argument("--ray-address", default=None, metavar="ADDR",
                         help="join this Ray cluster (also read from RAY_ADDRESS); default: start a local Ray instance")
    compute.add_argument("--max-retries", type=int, default=3, metavar="R",
                         help="times a shard is retried after its worker died or it failed, before the run stops")
    compute.add_argument("--no-progress", action="store_true", help="no progress bars (the final summary is still printed)")
    return parser


def add_view_args(parser: argparse.ArgumentParser) -> None:
    """The augmentation the teacher labels, under fkd-train's option names (a reinforced store)."""
    views = parser.add_argument_group(
        "augmentation (a reinforced store: each crop's augmentation is drawn here, applied before the teacher labels it and "
        "stored with the label; fkd-train replays it exactly)")
    views.add_argument("--randaugment", metavar="SPEC", default=None,
                       help="timm RandAugment spec, e.g. rand-m9-mstd0.5 (m, n, p, mstd, mmax, inc as in timm); colour ops only "
                       "(no rotate, shear or translate: they would move pixels out of the stored box)")
    views.add_argument("--color-jitter", type=float, default=0.0, metavar="S",
                       help="brightness/contrast/saturation jitter strength (0 = off), as fkd-train's")
    views.add_argument("--reprob", type=float, default=0.0, metavar="P",
                       help="random erasing probability per crop (timm's RandomErasing; DeiT: 0.25), applied to the view the teacher sees")
    views.add_argument("--remode", choices=ERASE_MODES, default="pixel",
                       help="random erasing fill, as in timm, mapped to pixels with the teacher's mean/std")
    views.add_argument("--recount", type=int, default=1, metavar="N", help="random erasing: up to N boxes per crop")
    views.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                       help="Mixup Beta alpha (0 = off): each crop is mixed with another image's stored crop and the teacher labels "
                       "the mixed view (stored: the partner and lambda)")
    views.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="CutMix Beta alpha (0 = off), as --mixup (stored: the box)")
    views.add_argument("--mix-prob", "--mixup-prob", dest="mix_prob", type=float, default=1.0, metavar="P",
                       help="probability that a crop is mixed (timm's mix prob, per crop)")
    views.add_argument("--mixup-switch-prob", type=float, default=0.5, metavar="P",
                       help="probability of CutMix instead of Mixup when both are on, as in timm")
    views.add_argument("--mix-partners", type=int, default=1, metavar="G",
                       help="other images each image's crops are mixed with (crop c with image c mod G): each costs one more decode "
                       "per image here and in training")


def batch_size_arg(text: str) -> "int | str":
    """--batch-size: a whole number or 'auto' (checked >= 1 with the other counts)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number or auto, got {text!r}") from None


def view_spec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> "ViewSpec | None":
    """The augmentation asked for (None: a plain store, as before version 6)."""
    if args.randaugment:
        try:
            RandAugmentSpec.parse(args.randaugment)
        except ValueError as exc:
            parser.error(f"--randaugment {exc}")
    try:
        spec = ViewSpec(args.randaugment or None, args.color_jitter, args.reprob, args.remode, args.recount, args.mixup, args.cutmix,
                        args.mix_prob, args.mixup_switch_prob, args.mix_partners)
    except ValueError as exc:  # "augmentation NAME must ...": name the flag
        name = str(exc).split()[1]
        parser.error(str(exc).replace(f"augmentation {name}", VIEW_FLAGS.get(name, "--" + name.replace("_", "-")), 1))
    return spec if spec.active else None


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> "RunConfig":
    """Check the options that argparse cannot, and turn them into a RunConfig."""
    from fkd.data.crops import CropParams

    from .driver import RunConfig
    from .messages import LabelSettings

    if not 1 <= args.crops <= 65535:
        parser.error(f"--crops must be in 1..65535, got {args.crops}")
    for name in ("top_k", "shard_size", "batch_size", "threads"):
        if getattr(args, name) != "auto" and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.crop_device == "cuda" and args.device == "cpu":
        parser.error("--crop-device cuda cuts the crops on the teacher's GPU, but --device cpu puts the teacher on the CPU: "
                     "use --crop-device cpu or --device cuda")
    if args.max_retries < 0:
        parser.error(f"--max-retries must be >= 0, got {args.max_retries}")
    try:
        crop_params = CropParams(scale=tuple(args.crop_scale), ratio=tuple(args.crop_ratio))
    except ValueError as exc:
        parser.error(str(exc))
    embedding = embedding_settings(args, parser)
    scheme, top_k = (args.scheme, args.top_k) if embedding is None else (None, 0)
    return RunConfig(
        data=args.data,
        out=Path(args.out),
        teacher=TeacherSpec.from_namespace(args),
        labels=LabelSettings(scheme, top_k, args.crops, args.seed, crop_params, args.shard_size, embedding, view_spec(args, parser)),
        batch_size=None if args.batch_size == "auto" else args.batch_size,
        threads=args.threads,
        class_map=args.class_map,
        device=args.device,
        crop_device=args.crop_device,
        compile=args.compile,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        ray_address=args.ray_address,
        overwrite=args.overwrite,
        skip_bad=args.skip_bad,
        max_retries=args.max_retries,
        progress=not args.no_progress,
        args=args,
    )


def embedding_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> "EmbeddingSettings | None":
    """None for --target labels; else what to store. Options of the other target are refused when
    set to anything but their default (a resumed run's saved file holds the defaults: accepted)."""
    from fkd.payload.embedding_spec import EmbeddingSpec

    from .messages import EmbeddingSettings

    def given(options: dict[str, str]) -> list[str]:
        return [flag for name, flag in options.items() if getattr(args, name) != parser.get_default(name)]

    if args.target == "labels":
        if extra := given(EMBEDDING_ONLY):
            parser.error(f"{', '.join(extra)} only apply with --target embedding")
        return None
    if extra := given(LABEL_ONLY):
        parser.error(f"{', '.join(extra)} only apply with --target labels: an embedding store keeps the teacher's features, "
                     "not its probabilities, and the data's own classes")
    if args.embedding_from == "feature-map":
        parser.error("--embedding-from feature-map is a spatial map, not a vector: a store keeps one (D,) vector per crop; use pooled")
    members = len(args.teacher or []) + (args.teacher_module is not None)
    if members > 1 and args.embedding_norm != "none":
        parser.error(f"--embedding-norm {args.embedding_norm} with {members} teachers would normalize their concatenated features "
                     "together, mixing their scales: it applies to one teacher; an ensemble stores raw features (leave --embedding-norm "
                     "none) and fkd-train's smooth-l1 whitens each member's part separately")
    try:
        EmbeddingSpec(1, args.embedding_dtype, args.embedding_from, args.embedding_norm)
    except ValueError as exc:
        parser.error(f"--embedding-from: {exc}")
    return EmbeddingSettings(args.embedding_from, args.embedding_dtype, args.embedding_norm)


def main(argv: "Sequence[str] | None" = None) -> int:
    parser = build_parser()
    args = parse_args_with_config(parser, argv)
    config = config_from_args(args, parser)
    from fkd.store import StoreError

    from .driver import run
    from .errors import LabelgenError

    try:
        summary = run(config)
    except LabelgenError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except StoreError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the store's disk is full or read-only
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished shards are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
