"""The training modes' names and the distillation options' defaults, apart from ``modes`` (which
needs torch) so that building the parser (``fkd-train --help``, argument errors) imports no torch."""

from __future__ import annotations

MODES: tuple[str, ...] = ("fkd", "supervised", "online-kd", "deit", "online-fd")
STORE_MODES: frozenset[str] = frozenset({"fkd", "deit"})
"""Modes that read the label store; the others draw fresh random crops from --data."""
DISTILL_MODES: tuple[str, ...] = ("online-kd", "deit")
"""Modes that use the distillation options; the others refuse them rather than ignore them."""
DISTILL_DEFAULTS: dict[str, "str | float"] = {"kd": "soft", "kd_alpha": 0.5, "kd_tau": 1.0}
"""Defaults of --kd, --kd-alpha and --kd-tau: the CLI's and what ``check_distillation_args`` compares to."""
GT_WEIGHT_MODES: tuple[str, ...] = ("fkd", "online-fd")
"""Modes whose --gt-weight W gives the ground truth a share W of the loss."""

EMBED_LOSSES: tuple[str, ...] = ("smooth-l1", "cosine", "mse")
"""``fkd.losses.features.FEATURE_LOSSES``, repeated here without torch (a test keeps them equal)."""
PROJECTORS: tuple[str, ...] = ("linear", "mlp")
"""``train.projector.PROJECTOR_KINDS``, likewise."""
FEATURE_DEFAULTS: dict[str, "str | float"] = {"embed_loss": "smooth-l1", "projector": "linear", "embed_weight": 1.0, "embedding_from": "feature-map"}
"""Defaults of the feature-distillation options: runs that distill no features refuse other values."""
