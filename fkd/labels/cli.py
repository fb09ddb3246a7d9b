"""``fkd-labels``: the command line over the label-store tools (one subcommand per module).

Exit status: 0 success; 1 a damaged or incomplete store (``info`` or ``verify`` found it so, or a
store could not be read); 2 a request to change (bad arguments, a path that holds no store, an impossible
conversion, mismatched stores). Each command imports its module (and so torch, h5py, matplotlib)
when it runs: ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..payload.embedding_spec import EMBEDDING_DTYPES
from ..payload.schemes import SCHEMES
from .errors import LabelsError
from .fkd_format import (
    DEFAULT_SHARD_SIZE,
    DEFAULT_TEACHER,
    FKD_CROP_SCALE,
    FKD_INPUT_SIZE,
    FKD_INTERPOLATION,
    INTERPOLATIONS,
    SIDECAR_NAME,
)
from .subset import SUBSET_HELP, SubsetSpec, parse_subset

PROG = "fkd-labels"


def subset_arg(text: str) -> SubsetSpec:
    try:
        return parse_subset(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, verify, show, convert, import, export and merge FKD label stores (made by fkd-labelgen).",
        epilog="exit status: 0 ok, 1 damaged/incomplete store, 2 bad request. 'fkd-labels COMMAND --help' explains each command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("info", help="what a store holds: metadata, counts, size, bytes per crop, completeness",
                            description="Summarize a store from its manifest (instant, works on incomplete stores). "
                            "Exit status 1 if the store is incomplete or a finished shard's file is missing or cut short.")
    p.add_argument("store", help="label store directory (holds store.json)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.add_argument("--subset", type=subset_arg, metavar="SPEC", help="also count the images this selects (needs a complete store): " + SUBSET_HELP)

    p = commands.add_parser("verify", help="check every shard: checksum, counts, decodability",
                            description="Read and decode every record; report each shard that is unfinished, missing or corrupt. "
                            "Exit status 1 if anything is wrong.")
    p.add_argument("store", help="label store directory")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--repair-plan", action="store_true", help="also list the shards fkd-labelgen must redo, and how")
    p.add_argument("--repair", action="store_true",
                   help="drop missing/corrupt shards from the manifest and delete their files and leftover temporary files, "
                   "so that rerunning fkd-labelgen with the same arguments regenerates them (do not run while fkd-labelgen writes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("recompute (re-run the teacher on stored crops, as TinyViT's --check-saved-logits)")
    g.add_argument("--recompute", type=positive_int, metavar="N",
                   help="relabel N random stored crops (rendered as the teacher saw them: box, flip, stored augmentation and pair) "
                   "with the store's teacher and report the largest difference; exit 1 beyond --tolerance. Needs --data")
    g.add_argument("--data", help="the image data the store was made from (for --recompute)")
    g.add_argument("--tolerance", type=float, default=None, metavar="T",
                   help="largest accepted difference of a decoded probability (embedding stores: of a feature value relative to its "
                   "crop's largest) (default 0.01; a store labelled in bf16/fp16 differs by up to a few 1e-2)")
    g.add_argument("--teacher", action="append", metavar="NAME", help="timm teacher instead of the metadata's (repeat for an ensemble)")
    g.add_argument("--checkpoint", action="append", metavar="PATH", help="its weights, one per teacher (timm ones first, then the module)")
    g.add_argument("--teacher-module", metavar="PKG.MOD:FACTORY", help="a factory teacher instead of the metadata's")
    g.add_argument("--device", default="cpu", help="where the teacher runs (default cpu)")
    g.add_argument("--seed", type=int, default=0, help="seed of the crops chosen (default 0)")

    p = commands.add_parser("show", help="draw an image with its stored crops and their top-K labels (or embeddings) to a PNG",
                            description="Draw the image with its first N crop boxes (dashed = flipped) and, for a few crops, "
                            "the crop as the teacher saw it beside a bar chart of its soft label; for an embedding store, "
                            "the N crops' cosine similarities to each other beside the first few crops.")
    p.add_argument("store", help="label store directory")
    p.add_argument("--image", required=True, help="image id (path relative to the data root, as stored) or store index")
    p.add_argument("--data", required=True, help="the image data the store was made from (ImageFolder directory, list file or tar shards)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--boxes", type=positive_int, default=16, metavar="N", help="number of crop boxes to draw (the first N; default 16)")
    p.add_argument("--crops", type=int, default=4, metavar="N", help="number of crops shown with their labels (default 4)")

    p = commands.add_parser("convert", help="re-quantize a store without the teacher (and/or take a subset, re-shard)",
                            description="Write a new store with another scheme / top-K, where the source keeps enough "
                            "information (full -> anything; top-K -> marginal with K' <= K, smoothing, hardening; "
                            "hardening -> hardening), or an embedding store with another dtype (float16 -> int8). "
                            "Boxes, flips and ids are kept.")
    p.add_argument("store", help="source label store")
    p.add_argument("--scheme", choices=SCHEMES, help="target scheme (default: the source's)")
    p.add_argument("--top-k", type=positive_int, metavar="K", help="target K for the marginal schemes (default: the source's K, or 5)")
    p.add_argument("--to-dtype", choices=EMBEDDING_DTYPES, help="embedding stores: target storage dtype (float16 -> int8; "
                   "default: the source's)")
    p.add_argument("--out", required=True, help="directory for the new store")
    p.add_argument("--subset", type=subset_arg, metavar="SPEC", help="keep only some images: " + SUBSET_HELP)
    p.add_argument("--shard-size", type=positive_int, metavar="N", help="images per shard of the new store (default: the source's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")

    p = commands.add_parser("import-fkd", help="import soft labels written by the official FKD code (or by export-fkd)",
                            description="Read the official FKD generator's one-file-per-image soft labels (SAVE_PATH/.../NAME.tar) "
                            "into a label store. The images are needed for their sizes (boxes become pixels). The files hold "
                            f"crops and labels only: files written by export-fkd carry the rest in {SIDECAR_NAME}, which the "
                            "import restores (a flag that contradicts it is refused); for other files the flags below give it, "
                            "and the official generator's defaults stand in for those not given, named in a warning.")
    p.add_argument("dir", help="the FKD --save_path (or the trainer's --softlabel_path)")
    p.add_argument("--data", required=True, help="the images the labels were generated for (ImageFolder directory, e.g. "
                   "imagenet/train, or a list file)")
    p.add_argument("--out", required=True, help="directory for the new store")
    p.add_argument("--num-classes", type=positive_int, metavar="C", help="number of teacher classes (default: the data's class folders)")
    p.add_argument("--scheme", choices=SCHEMES, help="how to decode the labels: FKD's marginal files import as "
                   "marginal-smoothing (default) or marginal-renorm; hard and smoothing files as themselves")
    p.add_argument("--shard-size", type=positive_int, metavar="N",
                   help=f"images per shard (default: the exported store's, else {DEFAULT_SHARD_SIZE})")
    p.add_argument("--teacher", help=f"teacher name to record in the metadata (default: {DEFAULT_TEACHER!r})")
    p.add_argument("--input-size", type=positive_int, metavar="PX",
                   help=f"the teacher's input size in the FKD run (their --input_size; default {FKD_INPUT_SIZE}, as their released labels)")
    p.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help=f"their --min_scale_crops/--max_scale_crops (default {FKD_CROP_SCALE[0]} {FKD_CROP_SCALE[1]})")
    p.add_argument("--interpolation", choices=INTERPOLATIONS,
                   help=f"how the crops were resized for the teacher, and so how fkd-train replays them (default {FKD_INTERPOLATION}, "
                   "hard-coded in the official generator)")
    p.add_argument("--temperature", type=float, help="the teacher's softmax temperature (default 1.0, the official generator's)")
    p.add_argument("--skip-missing", action="store_true", help="import the images that have a label file, leave out the others "
                   "(recorded in the metadata); default: refuse")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N", help="processes reading files (default: up to 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")

    p = commands.add_parser("export-fkd", help="write a store as the official FKD code's soft-label files (one per image)",
                            description="Write OUT/<image id's folders>/<name>.tar per image, [coords, flips, labels] as the official "
                            "FKD generator saves them, for its train_FKD.py (--softlabel_path is the folder above OUT when OUT is "
                            "named like the data folder, e.g. OUT=labels/train for imagenet/train) or for import-fkd; and "
                            f"OUT/{SIDECAR_NAME}, the store's settings the official format cannot hold (crop settings, the teacher's "
                            "view, classes, teachers, seed, ...), from which import-fkd restores them.")
    p.add_argument("store", help="label store directory (complete)")
    p.add_argument("--out", required=True, help="directory for the FKD files")
    p.add_argument("--subset", type=subset_arg, metavar="SPEC", help="export only some images: " + SUBSET_HELP)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing files of the same names "
                   "(refused when --out holds the export of a store with other settings)")

    p = commands.add_parser("merge", help="join stores generated in parts (same settings, disjoint images)",
                            description="Join stores made with the same settings over disjoint images, in the given order.")
    p.add_argument("stores", nargs="+", help="the parts (two or more)")
    p.add_argument("--out", required=True, help="directory for the merged store")
    p.add_argument("--shard-size", type=positive_int, metavar="N", help="images per shard (default: the first part's)")
    p.add_argument("--subset", type=subset_arg, metavar="SPEC", help="keep only some images of each part: " + SUBSET_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    return parser


def run_info(args: argparse.Namespace) -> int:
    from .info import format_info, store_info

    info = store_info(args.store, args.subset)
    print(json.dumps(info.to_dict(), indent=1) if args.json else format_info(info))
    return 0 if info.complete else 1


def run_verify(args: argparse.Namespace) -> int:
    from .verify import drop_bad_shards, format_report, verify_store

    report = verify_store(args.store, progress=not args.quiet and not args.json)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report, args.repair_plan))
    if args.repair and (report.redo or report.temp_files):
        deleted = drop_bad_shards(args.store, report)
        print(f"repair: the manifest now lacks shards {report.redo}; deleted {deleted or 'no files'}; "
              "rerun fkd-labelgen with the same arguments to regenerate them", file=sys.stderr)
    if args.recompute is None or not report.ok:
        return 0 if report.ok else 1
    return 0 if run_recompute(args) else 1


def run_recompute(args: argparse.Namespace) -> bool:
    """``verify --recompute N`` on a store found intact: True when every difference is within tolerance."""
    from ..teacher.options import TeacherSpec
    from .recompute import DEFAULT_TOLERANCE, recompute

    if not args.data:
        raise LabelsError("--recompute relabels stored crops, which are cut from the images: give --data (the data the store was made from)")
    given = args.teacher or args.teacher_module
    if args.checkpoint and not given:
        raise LabelsError("--checkpoint goes with --teacher or --teacher-module (the teacher it belongs to)")
    teacher = TeacherSpec(tuple(args.teacher or ()), None if args.checkpoint is None else tuple(args.checkpoint), args.teacher_module) if given else None
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    found = recompute(args.store, args.data, args.recompute, tolerance, teacher, args.device, args.seed)
    print(found.format())
    return found.ok


def run_show(args: argparse.Namespace) -> int:
    from ..store import LabelStore
    from .show import render

    with LabelStore(args.store, payload=None) as store:
        if store.meta.image_fingerprint == "none":
            print(f"{PROG} show: warning: the store records no image fingerprints (older fkd): the image is matched by path only", file=sys.stderr)
        out = render(store, args.image, args.data, args.out, args.boxes, args.crops)
    print(f"wrote {out}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_store

    manifest = convert_store(args.store, args.out, args.scheme, args.top_k, args.subset, args.shard_size, args.overwrite, args.to_dtype)
    meta = manifest.meta
    what = f"scheme {meta.scheme}, K={meta.top_k}" if meta.embedding is None else meta.describe_payload()
    print(f"wrote {args.out}: {meta.num_images} images, {what}, {meta.num_shards} shards")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from ..payload.quantize import stored_top_k
    from .import_fkd import import_fkd
    from .import_settings import ImportOptions

    options = ImportOptions(args.num_classes, args.scheme, args.teacher, args.input_size,
                            None if args.crop_scale is None else tuple(args.crop_scale), args.interpolation, args.temperature)
    extra = {"workers": args.workers} if args.workers is not None else {}
    result = import_fkd(args.dir, args.data, args.out, options, args.shard_size, args.skip_missing, args.overwrite, **extra)
    if result.assumed:
        print(f"{PROG} import-fkd: warning: {args.dir} has no {SIDECAR_NAME} (not written by export-fkd): assumed the official FKD "
              f"generator's {' '.join(result.assumed)}; pass the values the labels were made with if they differ (fkd-train "
              "replays crops with the recorded interpolation)", file=sys.stderr)
    meta = result.manifest.meta
    print(f"wrote {args.out}: {meta.num_images} images x {meta.num_crops} crops, scheme {meta.scheme}, "
          f"K={stored_top_k(meta.scheme, meta.top_k, meta.num_classes)}, {meta.num_classes} classes, "
          f"{len(meta.bad_images)} images without labels left out" + (f"; settings from {result.sidecar}" if result.sidecar else ""))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export_fkd import export_fkd

    summary = export_fkd(args.store, args.out, args.subset, args.overwrite)
    print(f"wrote {summary.files} FKD files ({summary.bytes / 2**20:.1f} MiB) under {args.out}, and the settings they cannot hold "
          f"in {Path(args.out) / SIDECAR_NAME} (for import-fkd); official train_FKD.py: "
          f"--soft_label_type {summary.label_type}, --softlabel_path the folder above {args.out} when it is named like the data folder")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from .merge import merge_stores

    manifest = merge_stores(args.stores, args.out, args.shard_size, args.subset, args.overwrite)
    print(f"wrote {args.out}: {manifest.meta.num_images} images from {len(args.stores)} stores, {manifest.meta.num_shards} shards")
    return 0


COMMANDS = {
    "info": run_info, "verify": run_verify, "show": run_show, "convert": run_convert, "import-fkd": run_import,
    "export-fkd": run_export, "merge": run_merge,
}


def check_store_paths(args: argparse.Namespace) -> None:
    """A store argument that holds no store is a wrong path (exit 2), not a damaged store (exit 1)."""
    from ..store import MANIFEST_NAME

    for path in [args.store] if hasattr(args, "store") else getattr(args, "stores", []):
        if not Path(path).is_dir():
            raise LabelsError(f"{path}: no such directory; pass a label store directory (written by fkd-labelgen)")
        if not (Path(path) / MANIFEST_NAME).is_file():
            raise LabelsError(f"{path}: not a label store (no {MANIFEST_NAME} in it); pass a directory written by fkd-labelgen")


def main(argv: "Sequence[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    from ..store import StoreError, StorePayloadError

    try:
        check_store_paths(args)
        return COMMANDS[args.command](args)
    except (LabelsError, StorePayloadError) as exc:  # a request to change (exit 2), not a damaged store
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return LabelsError.exit_code
    except StoreError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
