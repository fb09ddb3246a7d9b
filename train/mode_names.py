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
GT_WEIGHT_BY: tuple[str, ...] = ("constant", "confidence")
"""--gt-weight-by: the same W for every crop, or W_i following the stored label's uncertainty
(``fkd.data.targets.confidence_gt_weights``), with the batch mean W either way."""
CROP_SOURCES: tuple[str, ...] = ("fresh", "store")
"""--crop-source of supervised / online-kd: fresh random crops, or the --store's crops replayed."""
CROP_SOURCE_MODES: tuple[str, ...] = ("supervised", "online-kd")
"""Modes that draw fresh crops by default and can replay a store's instead (--crop-source store)."""


def replays_store(mode: str, crop_source: "str | None") -> bool:
    """Whether a run trains on a label store's crops: the store modes always, supervised and
    online-kd with --crop-source store (the same pixels as --mode fkd, their targets made live)."""
    return mode in STORE_MODES or crop_source == "store"

EMBED_LOSSES: tuple[str, ...] = ("smooth-l1", "cosine", "mse")
"""``fkd.losses.features.FEATURE_LOSSES``, repeated here without torch (a test keeps them equal)."""
PROJECTORS: tuple[str, ...] = ("linear", "mlp")
"""``train.projector.PROJECTOR_KINDS``, likewise."""
FEATURE_DEFAULTS: dict[str, "str | float"] = {"embed_loss": "smooth-l1", "projector": "linear", "embed_weight": 1.0, "embedding_from": "feature-map"}
"""Defaults of the feature-distillation options: runs that distill no features refuse other values."""
MIX_SCOPES: tuple[str, ...] = ("batch", "elem")
"""--mixup-mode: timm's batch (one Mixup/CutMix draw per batch) or elem (one per sample)."""
