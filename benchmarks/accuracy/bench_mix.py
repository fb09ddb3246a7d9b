"""Mixup/CutMix at scale: stored labels of mixed views against online KD under the same mixing.

The scale block's setting (``bench_accuracy.py --scale``: real CIFAR-10, 1,000 train images per
class, the whole test set, the real Keras teacher, recipe configs/bench-cifar10.yaml, 32 images x 4
crops per step for 8 epochs = 2,504 optimizer steps, M=32 stored crops, 2 seeds) with DeiT's
Mixup 0.8 / CutMix 1.0 (switch 0.5, every sample mixed) on in every row:

- online-kd-mix: the teacher in the loop labels the mixed image (KL at tau 1 only, alpha 1);
- fkd-full-mix: the plain full store, batch Mixup/CutMix mixing the stored labels linearly (a label
  the teacher never gave: what FKD's official code does);
- fkd-full-pairs: a reinforced store (``fkd-labelgen --mixup 0.8 --cutmix 1.0``, format version 6):
  every stored crop was mixed at generation with a crop of another image and the teacher labelled
  the mixed view; training replays the pair (no batch mixing), one partner image per image
  (``--partners 4``: also a store of 4 partner images per image, more pairs for 3 more decodes);
- online-kd-mix-elem, fkd-full-mix-elem: the first two with ``--mixup-mode elem``. The pairs draw
  per crop (mixed or not, Mixup or CutMix, lambda, box), timm's batch mode once per step; per-crop
  draws give each step crops of every mixing strength, which changes training by itself. These rows
  have the pairs' draws, so the pairs are read against them, not against the batch rows;

and the same rows with ground truth at weight W (``--gt-weight``, default 0.3) against online KD at
the matching objective (``--kd-alpha 1-W``: (1-W) KD + W CE(mixed ground truth)). Each stored row
is read against its online row (same objective, same draws) as "stored labels within the seed
spread of online KD under the same augmentation" (``bench_vit.within_seed_spread``), stored pairs
against linearly mixed labels with per-crop draws, and online KD's per-crop against its batch draws.
The stored-pair rows with W > 0 mix the two images' ground truth by each crop's own share of its
view (``fkd.data.targets.StoredTargets.ground_truth``), as online KD's Mixup mixes it.

Time (2 cores, ``--jobs 2``): the pairs store is labelled once (the scale block's full store took
2,637 s with 2 workers; pairs add a partner decode and crop per image), then 20 runs: about 1,000 s
per online KD run and 400 s per fkd run, about 2.5 hours; ``--partners 1 4`` adds a store and 4 runs.
Finished runs also go to ``accuracy-mix-runs.jsonl`` (``ledger.py``, kept in git): a start on
another machine trains, and labels stores for, only the runs it lacks.

    .venv/bin/python benchmarks/accuracy/bench_mix.py --jobs 2
    FKD_BENCH_CACHE=/tmp/fkd-smoke .venv/bin/python benchmarks/accuracy/bench_mix.py --smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.accuracy.bench_vit import compare, verdict, within_seed_spread  # noqa: E402
from benchmarks.accuracy.toolkit import RECIPE, Block, Run, Size, summarize, teacher_top1, to_train, train  # noqa: E402
from benchmarks.common import (  # noqa: E402
    CACHE,
    KERAS_TEACHER_TOP1,
    REPO_ROOT,
    LabelSetting,
    balanced_subset,
    full_store,
    markdown_table,
    result_path,
    save_result,
    store_path,
)
from benchmarks.storage.reinforced import PAIRS, reinforced_path, reinforced_store  # noqa: E402
from fkd.data.images import list_images  # noqa: E402

MIX = PAIRS
"""fkd-train's batch Mixup/CutMix flags and fkd-labelgen's pair flags: the same names, the same values."""
SCOPES: dict[str, tuple[str, ...]] = {"batch": (), "elem": ("--mixup-mode", "elem")}
"""fkd-train's mixing scopes (timm's --mixup-mode): one draw per batch (the default), one per crop."""
CROPS = 4
FULL = Size(per_class=1000, store_crops=32, test_per_class=1000, epochs=4)  # epoch unit 4: 8 epochs of n=4, 2,504 steps
SMOKE = Size(per_class=8, store_crops=8, test_per_class=10, epochs=1)


def weights(gt_weight: float) -> tuple[float, ...]:
    """The ground-truth weights of the rows: 0, and ``gt_weight`` unless it is 0 too."""
    return (0.0, gt_weight) if gt_weight else (0.0,)


def mix_rows(pair_stores: dict[int, str], gt_weight: float) -> list[tuple[Run, str]]:
    """(seed-0 run, targets) per row; ``pair_stores``: partner images per image -> reinforced store.
    Online KD and linear mixing run in both of timm's mixing scopes (``SCOPES``): the pairs draw per
    crop, so the per-sample scope is their like-with-like row."""
    rows: list[tuple[Run, str]] = []
    for w in weights(gt_weight):
        alpha, gt = f"{1 - w:g}", f" + {w:g} CE(mixed y)" if w else ""
        for scope, flags in SCOPES.items():
            per = f", {scope} draws"
            rows.append((Run("online-kd", None, 0, CROPS, 0, kd=("--kd-alpha", alpha), extra=MIX + flags,
                             tag=mix_tag(scope) + (f"-a{alpha}" if w else "")), f"{alpha} KL(teacher on the mixed image){gt}{per}"))
            rows.append((Run("fkd", "full", 10, CROPS, 0, gt_weight=w, extra=MIX + flags, tag=mix_tag(scope)),
                         f"stored labels mixed linearly{gt}{per}"))
        for partners, store in pair_stores.items():
            tag = "pairs" + (f"{partners}" if partners != 1 else "")
            rows.append((Run("fkd", "full", 10, CROPS, 0, gt_weight=w, store=store, tag=tag),
                         f"stored labels of the mixed views, {partners} partner image(s) per image{gt}, per-crop draws"))
    return rows


def mix_runs(rows: list[tuple[Run, str]], seeds: range) -> list[Run]:
    """Every row at every seed, seed-major: a block cut off with its machine leaves whole seeds of
    every row in its ledger (``--seeds 1`` then builds seed 0's table from it), not both seeds of
    the first rows."""
    return [replace(run, seed=s) for s in seeds for run, _ in rows]


def mix_tag(scope: str) -> str:
    """The tag of a mixed row: batch draws keep the block's first names."""
    return "mix" if scope == "batch" else f"mix-{scope}"


def online_name(w: float, scope: str = "elem") -> str:
    """The online-KD row whose objective a stored row at ground-truth weight ``w`` matches, in that
    mixing scope (per-crop draws by default: the pairs')."""
    return f"online-kd-{mix_tag(scope)}" + (f"-a{1 - w:g}" if w else "") + "-n4"


def stored_name(w: float, partners: "int | None", scope: str = "batch") -> str:
    """A stored row: linearly mixed labels (``partners`` None) in a mixing scope, or pairs with that
    many partner images."""
    kind = mix_tag(scope) if partners is None else "pairs" + (f"{partners}" if partners != 1 else "")
    return f"fkd-full{f'-gt{w:g}' if w else ''}-{kind}-n4"


def like_online(run: Run) -> "str | None":
    """The online-KD row of a stored row's objective and mixing scope (pairs: per-crop draws);
    None for an online row."""
    if run.mode != "fkd":
        return None
    per_crop = run.store is not None or SCOPES["elem"][-1] in run.extra
    return online_name(run.gt_weight or 0.0, "elem" if per_crop else "batch")


def mix_claims(rows: list[dict], gt_weight: float, partners: "list[int]") -> list[dict]:
    """Each stored row against online KD at its objective and mixing scope, stored pairs against
    linear mixing in the same scope, and what the scope alone does to online KD."""
    by_name = {r["name"]: r for r in rows}
    claims = []
    for w in weights(gt_weight):
        at = f", W={w:g}" if w else ""
        for scope in SCOPES:
            name = stored_name(w, None, scope)
            claims.append(within_seed_spread(f"Mixup/CutMix mixed linearly, {scope} draws{at}: {name} vs {online_name(w, scope)}",
                                             by_name, name, online_name(w, scope)))
        for g in partners:
            name = stored_name(w, g)
            claims.append(within_seed_spread(f"Mixup/CutMix pairs labelled by the teacher, {g} partner image(s){at}: {name} vs "
                                             f"{online_name(w)}", by_name, name, online_name(w)))
        claims.append(compare(f"stored pairs beat linearly mixed stored labels, both per-crop draws{at}", by_name,
                              stored_name(w, partners[0]), stored_name(w, None, "elem")))
        claims.append(compare(f"per-crop draws beat one draw per batch, online KD{at}", by_name, online_name(w), online_name(w, "batch")))
    return claims


COLUMNS = [
    ("name", "run", ""), ("targets", "targets", ""), ("seeds", "seeds", "d"), ("steps", "steps", "d"), ("top1_mean", "test top-1 %", ".2f"),
    ("top1_std", "spread (std)", ".2f"), ("vs_online", "vs online KD (same objective and draws)", "+.2f"), ("wall_seconds", "wall s", ".0f"),
]


def describe(result: dict) -> str:
    """The README block below the provenance line: setting, rows and the claims."""
    s = result["setting"]
    return "\n".join([
        f"{s['train_images']} CIFAR-10 train images (balanced), {s['test_images']} test images, {s['seeds']} seeds, every run {s['steps']} steps of "
        f"{s['images_per_step']} images x {s['crops_per_image']} crops, recipe `{s['recipe']}` with `{' '.join(s['mix_flags'])}`; teacher "
        f"(Keras CNN) top-1 **{result['teacher_top1']:.2f} %**; labels from M={s['store_crops']} stored crops per image.", "",
        markdown_table(result["rows"], COLUMNS), "", "Claims:", "", *(verdict(c) for c in result["claims"]),
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2, help="seeds per row (default 2)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side, and fkd-labelgen workers (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--gt-weight", type=float, default=0.3,
                        help="ground-truth weight W of the second half of the rows (default 0.3; 0: the first half only)")
    parser.add_argument("--partners", type=int, nargs="+", default=[1], help="partner images per image of the pair stores (default 1)")
    parser.add_argument("--smoke", action="store_true", help="every row for a few steps on 80 images: checks the block, measures nothing")
    parser.add_argument("--out", type=Path, help="JSON results (default: next to this script)")
    return parser


def main(argv: "list[str] | None" = None) -> None:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    size = SMOKE if args.smoke else FULL
    seeds = range(1 if args.smoke else args.seeds)
    setting = LabelSetting(size.per_class, size.store_crops)
    data, test = balanced_subset("train", size.per_class, setting.seed), balanced_subset("test", size.test_per_class, setting.seed)
    out = args.out or (CACHE / "accuracy-mix-smoke.json" if args.smoke else result_path(__file__, False, "accuracy-mix"))
    flags = {g: (*PAIRS, "--mix-partners", str(g)) if g != 1 else PAIRS for g in args.partners}
    rows = mix_rows({g: str(reinforced_path(setting, f)) for g, f in flags.items()}, args.gt_weight)
    described = {run.name: targets for run, targets in rows}
    online_of = {run.name: like_online(run) for run, _ in rows}
    runs = mix_runs(rows, seeds)
    root = CACHE / ("accuracy-mix-smoke" if args.smoke else "accuracy-mix") / f"{setting.key}-test{size.test_per_class}-E{size.epochs}"
    block = Block(setting, data, test, root, 32 * CROPS, size.epochs, args.threads, None if args.smoke else out.with_name(f"{out.stem}-runs.jsonl"))
    todo = to_train(runs, block)  # label only the stores that runs still to train read
    labelgen_seconds = full_store(setting, workers=args.jobs)[1] if any(r.store is None and r.scheme for r in todo) else None
    pairs_seconds = {g: reinforced_store(setting, f, workers=args.jobs)[1] for g, f in flags.items()
                     if any(r.store == str(reinforced_path(setting, f)) for r in todo)}
    teacher = teacher_top1(test)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda r: train(r, block), runs))
    table = summarize(results)
    by_name = {r["name"]: r for r in table}
    for row in table:
        row["targets"] = described[row["name"]]
        online = by_name.get(online_of[row["name"]] or "")
        row["vs_online"] = None if online is None else row["top1_mean"] - online["top1_mean"]
    result = {
        "setting": {"train_images": len(list_images(data)), "test_images": len(list_images(test)), "store_crops": size.store_crops,
                    "seeds": len(seeds), "steps": table[0]["steps"], "images_per_step": table[0]["images_per_step"], "crops_per_image": CROPS,
                    "mix_flags": list(MIX), "gt_weight": args.gt_weight, "partners": args.partners, "recipe": str(RECIPE.relative_to(REPO_ROOT)),
                    "threads": args.threads, "jobs": args.jobs, "labelgen_seconds": labelgen_seconds,
                    "pairs_labelgen_seconds": pairs_seconds, "smoke": args.smoke,
                    "reused_runs": sum(bool(r.get("reused")) for r in results), "full_store": str(store_path(setting, "full", 10))},
        "teacher_top1": teacher, "teacher_top1_reference": KERAS_TEACHER_TOP1, "rows": table, "runs": results,
        "claims": mix_claims(table, args.gt_weight, args.partners), "seconds": time.perf_counter() - started,
    }
    print(markdown_table(table, COLUMNS))
    print("\n".join(verdict(c) for c in result["claims"]))
    save_result(out, result)


if __name__ == "__main__":
    main()
