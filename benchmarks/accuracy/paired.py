"""Paired differences between two rows of an accuracy block: the same seed gives both runs the same
initial weights and image order, so the per-seed difference removes most of the seed-to-seed spread
that the two rows' means share; reported as the mean difference with a 95 % t-interval.

Rows are compared like with like only: an fkd row with ground-truth weight W (constant or per crop,
at the same mean) against the online KD row with the same objective, ``(1 - alpha) CE(y) + alpha
KL(teacher)`` at ``alpha = 1 - W`` and tau 1, on fresh crops (``matching_online``).
"""

from __future__ import annotations

import math
import statistics

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Student's t 0.975 quantiles by degrees of freedom (two-sided 95 %), used when scipy is absent."""


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (scipy's when installed)."""
    try:
        from scipy.stats import t
    except ImportError:
        if df not in T_975:
            raise ValueError(f"no t quantile for {df} degrees of freedom without scipy: install scipy or use at most 11 seeds") from None
        return T_975[df]
    return float(t.ppf(0.975, df))


def paired_difference(results: list[dict], name: str, reference: str) -> "dict | None":
    """``name`` minus ``reference`` per seed both ran (test top-1 points): the per-seed differences,
    their mean and, with 2 seeds or more, the 95 % t-interval of the mean. None: no common seed."""
    a = {r["seed"]: r["top1"] for r in results if r["name"] == name}
    b = {r["seed"]: r["top1"] for r in results if r["name"] == reference}
    seeds = sorted(a.keys() & b.keys())
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    half = t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"name": name, "reference": reference, "seeds": seeds, "differences": diffs, "mean": mean,
            "low": None if half is None else mean - half, "high": None if half is None else mean + half}


def objective_alpha(row: dict) -> "float | None":
    """The share of the teacher's term in a row's objective: 1 - W for fkd, alpha for online KD at
    tau 1 (None for a row without one, or with another temperature or hard distillation)."""
    if row["mode"] == "fkd":
        return 1.0 - row["gt_weight"]
    if row["mode"] == "online-kd" and row.get("kd_tau", 1.0) == 1.0 and row.get("kd", "soft") == "soft":
        return row.get("kd_alpha")
    return None


def matching_online(row: dict, rows: list[dict]) -> "dict | None":
    """The online KD row on fresh crops with ``row``'s objective (same alpha, tau 1), if the block has one."""
    alpha = objective_alpha(row)
    return next((r for r in rows if r["mode"] == "online-kd" and r.get("crop_source", "fresh") == "fresh"
                 and alpha is not None and objective_alpha(r) == alpha), None)


def interval(pair: dict) -> str:
    """``+0.12 [-0.30, +0.54]`` (mean and 95 % interval), or the mean alone with one seed."""
    if pair["low"] is None:
        return f"{pair['mean']:+.2f} (one seed: no interval)"
    return f"{pair['mean']:+.2f} [{pair['low']:+.2f}, {pair['high']:+.2f}]"


def excludes_zero(pair: dict) -> bool:
    return pair["low"] is not None and (pair["low"] > 0 or pair["high"] < 0)


def objective_text(row: dict) -> str:
    """A row's training objective in words, so that a table shows which rows share one."""
    if row["mode"] == "supervised":
        return "CE(y)"
    alpha = objective_alpha(row)
    if alpha is None:
        return "-"
    source = "stored" if row["mode"] == "fkd" else "teacher, live"
    per_crop = ", W per crop by confidence" if row.get("gt_weight_by") == "confidence" else ""
    return f"KL({source})" if alpha == 1 else f"{1 - alpha:.2g} CE(y) + {alpha:.2g} KL({source}){per_crop}"
