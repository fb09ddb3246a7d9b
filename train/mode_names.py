"""The training modes' names and the distillation options' defaults, apart from ``modes`` (which
needs torch) so that building the parser (``fkd-train --help``, argument errors) imports no torch."""

from __future__ import annotations

MODES: tuple[str, ...] = ("fkd", "supervised", "online-kd", "deit")
STORE_MODES: frozenset[str] = frozenset({"fkd", "deit"})
"""Modes that read the label store; the others draw fresh random crops from --data."""
DISTILL_MODES: tuple[str, ...] = ("online-kd", "deit")
"""Modes that use the distillation options; the others refuse them rather than ignore them."""
DISTILL_DEFAULTS: dict[str, "str | float"] = {"kd": "soft", "kd_alpha": 0.5, "kd_tau": 1.0}
"""Defaults of --kd, --kd-alpha and --kd-tau: the CLI's and what ``check_distillation_args`` compares to."""
