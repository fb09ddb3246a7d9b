"""Accuracy at scale (``bench_accuracy.py --scale``): do stored labels match online KD at the same objective?

The setting of issue 13: real CIFAR-10, 1,000 train images per class (10,000, balanced, seed 0),
the whole test set, the real Keras teacher, recipe configs/bench-cifar10.yaml (no Mixup, no colour
augmentation), 32 images x 4 crops per step for 8 epochs = 2,504 optimizer steps of 128 crops per
run; one full-scheme store of M=32 crops per image (re-quantized with ``fkd-labels convert``), so
with ``--stored-crops cycle`` every stored crop is used exactly once.

Every fkd row is read against the online KD row with the same objective (``paired.matching_online``):
ground-truth weight W against ``--kd-alpha 1-W`` at tau 1, as paired (same seed) differences with a
95 % t-interval. Core rows, ``--seeds`` seeds (default 4): supervised; online KD at alpha 1 and 0.7;
fkd full and marginal smoothing K=5 at W=0 and W=0.3; marginal smoothing with
``--gt-weight-by confidence`` at mean W=0.3 (FerKD's lever: more ground truth where the teacher was
unsure); and the control ``online-kd-stored-crops``: online KD whose teacher labels the store's
replayed crops (``--crop-source store``: fkd's pixels, live labels), which splits fkd vs online KD
into "which crops" (control vs online KD) and "which labels" (fkd vs control). Two more rows at 2
seeds: marginal re-norm K=5 and ``--stored-crops random``. The M=128 rows of the earlier run (an
hour of labelling) are not trained again: the result carries them over, marked as such.

Time (estimated from the earlier run's per-run wall times with two runs at a time on 2 cores: fkd
about 470 s, supervised 615 s, online KD 1,320 s): 40 runs, about 4.1 hours, plus about 45 minutes
of labelling when the M=32 store is not cached. Every finished run also goes to
``accuracy-scale-runs.jsonl`` beside the result (``ledger.py``, kept in git): the block survives a
lost machine, and on the next one trains only the runs the ledger lacks (labelling the store only
when one of them needs it).

    .venv/bin/python benchmarks/accuracy/bench_accuracy.py --scale --jobs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from benchmarks.accuracy.paired import excludes_zero, interval, matching_online, objective_text, paired_difference
from benchmarks.accuracy.toolkit import RECIPE, Block, Run, summarize, teacher_top1, to_train, train
from benchmarks.common import (
    CACHE,
    KERAS_TEACHER_TOP1,
    REPO_ROOT,
    LabelSetting,
    balanced_subset,
    converted_store,
    full_store,
    markdown_table,
    result_path,
    save_result,
)
from fkd.data.images import list_images

PER_CLASS = 1000
STORE_CROPS = 32
EPOCH_UNIT = 4  # n=4 crops per image: 8 epochs
GT_WEIGHT = 0.3
CORE_SEEDS = 4
EXTRA_SEEDS = 2
ALPHA = ("--kd-alpha", f"{1 - GT_WEIGHT:g}")  # online KD at the objective of --gt-weight 0.3

CONTROLS = [
    ("online-kd-stored-crops-n4", "online-kd-n4", "which crops: the store's replayed crops vs fresh ones, both labelled live"),
    ("fkd-full-n4", "online-kd-stored-crops-n4", "which labels: stored (full, float16) vs live, on the same crops"),
    ("fkd-marginal-smoothing-k5-n4", "online-kd-stored-crops-n4", "which labels: stored (marginal smoothing K=5) vs live, same crops"),
    ("fkd-marginal-smoothing-k5-gt0.3-confidence-n4", "fkd-marginal-smoothing-k5-gt0.3-n4",
     "W per crop by the stored confidence vs the same W for every crop (mean W 0.3 both)"),
]
"""Paired comparisons beyond fkd vs online KD at its objective: (row, reference, what differs)."""


def scale_runs(core: range, extra: range) -> list[Run]:
    """The table's rows, every one at n=4 crops per image and the same steps."""
    ms = ("fkd", "marginal-smoothing", 5, 4)
    configs = [
        Run("supervised", None, 0, 4, 0), Run("online-kd", None, 0, 4, 0), Run("online-kd", None, 0, 4, 0, kd=ALPHA, tag="a0.7"),
        Run("fkd", "full", 10, 4, 0), Run(*ms, 0), Run("fkd", "full", 10, 4, 0, gt_weight=GT_WEIGHT), Run(*ms, 0, gt_weight=GT_WEIGHT),
        Run("online-kd", "full", 10, 4, 0, crop_source="store"), Run(*ms, 0, gt_weight=GT_WEIGHT, gt_weight_by="confidence"),
    ]
    extras = [Run("fkd", "marginal-renorm", 5, 4, 0), Run(*ms, 0, stored_crops="random")]
    # Seed-major, the rows at fewer seeds with their seed: an interrupted run leaves whole seeds of
    # every row (paired comparisons, reported by --seeds N without training), not 4 seeds of a few rows.
    return [replace(c, seed=s) for s in core for c in configs + extras * (s in extra)]


def paired_epochs(curve: list[float]) -> float:
    """Mean |change| within epoch pairs (1-2, 3-4, ...) over mean |change| across pairs (2-3, 4-5,
    ...): about 1 for a smooth curve, well below 1 for a curve that moves in pairs."""
    within = [abs(curve[i + 1] - curve[i]) for i in range(0, len(curve) - 1, 2)]
    across = [abs(curve[i + 1] - curve[i]) for i in range(1, len(curve) - 1, 2)]
    return statistics.fmean(within) / max(statistics.fmean(across), 1e-9)


def comparisons(rows: list[dict], runs: list[dict]) -> list[dict]:
    """Every fkd row against online KD at its objective (or marked pending when the result has no
    such row), then the controls; each a paired difference per seed."""
    by_name = {r["name"]: r for r in rows}
    out = []
    what = "stored labels and crops vs the teacher in the loop on fresh crops, same objective"
    for row in (r for r in rows if r["mode"] == "fkd"):
        online = matching_online(row, rows)
        pair = paired_difference(runs, row["name"], online["name"]) if online else None
        if pair is None:  # no online row at this objective in the result: the comparison waits for one
            pair = {"name": row["name"], "reference": f"online KD at alpha {1 - row['gt_weight']:g}", "pending": True}
        out.append(pair | {"differs": what})
    for name, reference, what in CONTROLS:
        pair = paired_difference(runs, name, reference) if name in by_name and reference in by_name else None
        if pair:
            out.append(pair | {"differs": what})
    return out


def _pair(pairs: list[dict], name: str, reference: "str | None") -> "dict | None":
    return next((p for p in pairs if (p["name"], p["reference"]) == (name, reference) and not p.get("pending")), None)


def scale_claims(rows: list[dict], pairs: list[dict], teacher: float) -> list[dict]:
    """The claims, each against the matching objective; ``holds`` None: pending (no such row yet)."""
    by_name = {r["name"]: r for r in rows}
    claims = []
    for name, what, weight in (("fkd-full-n4", "fkd full (W=0)", 0.0), ("fkd-marginal-smoothing-k5-n4", "fkd marginal smoothing K=5 (W=0)", 0.0),
                               ("fkd-full-gt0.3-n4", f"fkd full, --gt-weight {GT_WEIGHT:g}", GT_WEIGHT),
                               ("fkd-marginal-smoothing-k5-gt0.3-n4", f"fkd marginal smoothing K=5, --gt-weight {GT_WEIGHT:g}", GT_WEIGHT)):
        online = matching_online(by_name[name], rows) if name in by_name else None
        pair = _pair(pairs, name, online and online["name"])
        missing = "not in this result" if name not in by_name else "no online KD row at this objective in this result"
        claims.append({"claim": f"{what} within 0.5 points of online KD at the same objective (alpha {1 - weight:g}, tau 1)",
                       "holds": None if pair is None else pair["mean"] >= -0.5,
                       "measured": f"pending: {missing}" if pair is None
                       else f"paired difference {interval(pair)} points over {len(pair['seeds'])} seeds"})
    confidence = _pair(pairs, "fkd-marginal-smoothing-k5-gt0.3-confidence-n4", "fkd-marginal-smoothing-k5-gt0.3-n4")
    claims.append({"claim": "--gt-weight-by confidence beats the constant --gt-weight 0.3 (same mean objective, marginal smoothing K=5; 95 % interval above 0)",
                   "holds": None if confidence is None else confidence["mean"] > 0 and excludes_zero(confidence),
                   "measured": "pending: not in this result" if confidence is None
                   else f"paired difference {interval(confidence)} points over {len(confidence['seeds'])} seeds"})
    default, supervised = by_name["fkd-marginal-smoothing-k5-n4"], by_name["supervised-n4"]
    claims.append({"claim": "fkd (marginal smoothing K=5, defaults) above supervised", "holds": default["top1_mean"] > supervised["top1_mean"],
                   "measured": f"{default['top1_mean']:.2f} vs {supervised['top1_mean']:.2f}: {default['top1_mean'] - supervised['top1_mean']:+.2f}"})
    best = max((r for r in rows if r["mode"] == "fkd"), key=lambda r: r["top1_mean"])
    claims.append({"claim": "the best fkd setting within 2 points of the teacher", "holds": best["top1_mean"] >= teacher - 2.0,
                   "measured": f"{best['name']} {best['top1_mean']:.2f} vs teacher {teacher:.2f}: {best['top1_mean'] - teacher:+.2f}"})
    return claims


def analyse(result: dict) -> dict:
    """Table rows (objective named), paired comparisons, claims and the earlier M=128 rows of a
    result: computed from its rows and runs alone, so results written before the paired
    comparisons (2 seeds, online KD at alpha 1 only, M=128 rows in the table) read the same way.
    Online KD rows written before their alpha was recorded ran at alpha 1 (the block's only one then)."""
    rows = [r | ({"kd_alpha": 1.0} if r["mode"] == "online-kd" and "kd_alpha" not in r else {}) for r in result["rows"]]
    runs = [r | ({"kd_alpha": 1.0} if r["mode"] == "online-kd" and "kd_alpha" not in r else {}) for r in result["runs"]]
    earlier = result.get("earlier_m128") or m128_rows(result)  # a result from before: its M=128 rows in the table
    rows = [r | {"objective": objective_text(r)} for r in rows if r["store_crops"] == STORE_CROPS]
    pairs = comparisons(rows, runs)
    return {"rows": rows, "pairs": pairs, "claims": scale_claims(rows, pairs, result["teacher_top1"]), "earlier": earlier}


def m128_rows(old: dict) -> "dict | None":
    """The M=128 rows of a result that trained them (the run of 2026-11-27, whose full store kept
    float16 probabilities: format version 3), with the same run's M=32 twins where it had them."""
    rows = [r for r in old["rows"] if r["store_crops"] == 128]
    if not rows:
        return None
    names = {r["name"] for r in rows} | {r["name"].replace(f"-M{r['store_crops']}", "") for r in rows}
    return {"date": old["machine"]["date"], "command": old["command"], "store_format": 3, "rows": [r for r in old["rows"] if r["name"] in names],
            "runs": [r for r in old["runs"] if r["name"] in names]}


def earlier_m128(path: Path) -> "dict | None":
    """What a new result carries over from the one at ``path``: its earlier M=128 rows, or its own."""
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    return old.get("earlier_m128") or m128_rows(old)


COLUMNS = [
    ("name", "run", ""), ("objective", "objective", ""), ("seeds", "seeds", "d"), ("steps", "steps", "d"), ("top1_mean", "test top-1 %", ".2f"),
    ("top1_std", "spread (std)", ".2f"), ("vs_supervised", "vs supervised", "+.2f"), ("pairs", "pairing ratio", ".2f"),
    ("curve", "top-1 per epoch (seed 0)", ""),
]
PAIR_COLUMNS = [("name", "run", ""), ("reference", "against", ""), ("differs", "what differs", ""), ("seeds_text", "seeds", ""),
                ("differences_text", "difference per seed", ""), ("interval", "mean [95 % interval], points", "")]
EARLIER_COLUMNS = [("name", "run", ""), ("store_crops", "M", "d"), ("seeds", "seeds", "d"), ("top1_mean", "test top-1 %", ".2f"),
                   ("top1_std", "spread (std)", ".2f")]


def pair_table(pairs: list[dict]) -> str:
    return markdown_table([p | {"seeds_text": "-", "differences_text": "-", "interval": "pending"} if p.get("pending") else
                           p | {"seeds_text": ", ".join(map(str, p["seeds"])), "differences_text": " ".join(f"{d:+.2f}" for d in p["differences"]),
                                "interval": interval(p)} for p in pairs], PAIR_COLUMNS)


def verdict(claim: dict) -> str:
    word = "pending" if claim["holds"] is None else "holds" if claim["holds"] else "does not hold"
    return f"- {claim['claim']}: **{word}** ({claim['measured']})"


def describe(result: dict) -> str:
    """The README block below the provenance line: setting, rows with their objectives, the paired
    comparisons, the earlier M=128 rows and the claims (all from ``analyse``)."""
    s, a = result["setting"], analyse(result)
    extra = f", the rows at fewer seeds {s['extra_seeds']}" if s.get("extra_seeds") else ""
    lines = [
        f"Student {s['student']} (recipe `{s['recipe']}`), {s['train_images']} train images (balanced), {s['test_images']} test images, "
        f"{s['seeds']} seeds{extra}; every run: {s['steps']} optimizer steps of {s['samples_per_step']} crops ({s['crops_per_image']} crops "
        f"of {s['samples_per_step'] // s['crops_per_image']} images, {s['epochs']} epochs). Labels: one full-scheme store of M={STORE_CROPS} "
        f"crops per image (re-quantized with `fkd-labels convert`), every stored crop used once. Teacher top-1 on the test set: "
        f"**{result['teacher_top1']:.2f} %**. Test top-1 is the last epoch's; spread is the sample std over seeds. {s['jobs']} run(s) at "
        f"a time, {s['threads']} thread(s) each. Objective: KL at tau 1 (the stored labels' CE differs by a constant); W CE(y) is the "
        "ground truth's share. Pairing ratio: mean |change| within epoch pairs (1-2, 3-4, ...) over mean |change| across them.", "",
        markdown_table(a["rows"], COLUMNS), "",
        "Paired differences (the same seed: the same initial weights and image order), test top-1 points, each fkd row against online "
        "KD at its objective, then the controls; the interval is the mean's 95 % t-interval over the seeds:", "",
        pair_table(a["pairs"]),
    ]
    if a["earlier"]:
        e = a["earlier"]
        lines += ["", f"Not trained again here (labelling M=128 takes about an hour on 2 cores): the M=128 rows of the run of {e['date']}, "
                  f"with that run's M=32 twin where it had one; its full store kept float16 probabilities (format version {e['store_format']}), "
                  "and it had online KD at alpha 1 only, so these rows have no paired comparison at their objective:", "",
                  markdown_table(e["rows"], EARLIER_COLUMNS)]
    return "\n".join(lines + ["", "Claims:", "", *(verdict(c) for c in a["claims"])])


def run_scale(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    core = range(args.seeds or CORE_SEEDS)
    extra = range(min(len(core), EXTRA_SEEDS))
    data, test = balanced_subset("train", PER_CLASS), balanced_subset("test", 1000)
    setting = LabelSetting(PER_CLASS, STORE_CROPS)
    out = args.out or result_path(__file__, False, "accuracy-scale")
    ledger = getattr(args, "ledger", None) or out.with_name(f"{out.stem}-runs.jsonl")
    block = Block(setting, data, test, CACHE / "accuracy-scale" / f"{setting.key}-S128-E{EPOCH_UNIT}", 128, EPOCH_UNIT, args.threads, ledger)
    runs = scale_runs(core, extra)
    todo = to_train(runs, block)  # the runs the cache and the ledger lack
    labelgen = full_store(setting, workers=args.jobs)[1] if any(r.scheme for r in todo) else None
    for scheme, top_k in sorted({(r.scheme, r.top_k) for r in todo if r.scheme}):
        converted_store(setting, scheme, top_k)  # one at a time: parallel runs must not convert it twice
    print(f"{len(runs) - len(todo)} of {len(runs)} runs finished before (cache or {ledger.name}), {len(todo)} to train", flush=True)
    teacher = teacher_top1(test)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda r: train(r, block), runs))
    rows = summarize(results)
    supervised = next(r for r in rows if r["name"] == "supervised-n4")
    for row in rows:
        seed0 = next(r for r in results if r["name"] == row["name"] and r["seed"] == 0)
        row["curve"] = " ".join(f"{v:.1f}" for v in seed0["top1_per_epoch"])
        row["pairs"] = statistics.fmean(paired_epochs(r["top1_per_epoch"]) for r in results if r["name"] == row["name"])
        row["vs_supervised"] = row["top1_mean"] - supervised["top1_mean"]
    result = {
        "setting": {"train_images": len(list_images(data)), "test_images": len(list_images(test)), "seeds": len(core), "extra_seeds": len(extra),
                    "store_crops": STORE_CROPS, "samples_per_step": 128, "crops_per_image": 4, "epochs": rows[0]["epochs"],
                    "steps": rows[0]["steps"], "recipe": str(RECIPE.relative_to(REPO_ROOT)), "student": "timm test_resnet, output_stride=8, 32x32",
                    "threads": args.threads, "jobs": args.jobs, "labelgen_seconds": labelgen,
                    "reused_runs": sum(bool(r.get("reused")) for r in results)},
        "teacher_top1": teacher, "teacher_top1_reference": KERAS_TEACHER_TOP1, "rows": rows, "runs": results,
        "earlier_m128": earlier_m128(out),
    }
    analysed = analyse(result)
    result |= {"pairs": analysed["pairs"], "claims": analysed["claims"], "seconds": time.perf_counter() - started}
    print(markdown_table(analysed["rows"], COLUMNS))
    print(pair_table(analysed["pairs"]))
    print("\n".join(verdict(c) for c in analysed["claims"]))
    save_result(out, result)
