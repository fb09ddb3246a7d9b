"""Which fkd-train options make sense together: refused up front, with the option named, rather than
silently ignored or failing mid-run. Imports no torch: it runs before anything heavy is loaded."""

from __future__ import annotations

from .config import DistillConfig, FeatureConfig, TrainConfig
from .errors import SetupError
from .mode_names import CROP_SOURCE_MODES, DISTILL_DEFAULTS, DISTILL_MODES, FEATURE_DEFAULTS, GT_WEIGHT_MODES, STORE_MODES, replays_store


def flag(name: str) -> str:
    """The flag of a config field (fields are named as the flags' destinations)."""
    return f"--{name.replace('_', '-')}"


def check_config(config: TrainConfig) -> None:
    """Refuse values out of range and options that do not go together (``SetupError``, one line)."""
    data, distill, features = config.data, config.distill, config.features
    lower_bounds = ((data, "batch_size", 1), (config.optim, "epochs", 1), (data, "crops_per_image", 1), (data, "workers", 0),
                    (config.run, "keep_checkpoints", 0), (config.run, "log_every", 1))
    for group, name, low in lower_bounds:
        if getattr(group, name) < low:
            raise SetupError(f"{flag(name)} must be >= {low}, got {getattr(group, name)}")
    if not 0 <= distill.smoothing < 1:
        raise SetupError(f"--smoothing must be in [0, 1), got {distill.smoothing}")
    if not 0 <= config.augment.reprob <= 1:
        raise SetupError(f"--reprob must be in [0, 1], got {config.augment.reprob}")
    if config.augment.recount < 1:
        raise SetupError(f"--recount must be >= 1, got {config.augment.recount}")
    mode = distill.mode
    if not 0 <= distill.gt_weight <= 1:
        raise SetupError(f"--gt-weight must be in [0, 1], got {distill.gt_weight}")
    if distill.gt_weight and mode not in GT_WEIGHT_MODES:
        raise SetupError(f"--gt-weight mixes ground truth into stored labels (--mode fkd) or into the feature loss (--mode online-fd); "
                         f"--mode {mode} has its own ground-truth term")
    if mode in GT_WEIGHT_MODES and distill.smoothing and not distill.gt_weight:
        raise SetupError(f"--smoothing smooths ground-truth targets: in --mode {mode} it needs --gt-weight W > 0")
    check_crop_source(config)
    if data.stored_crops != "cycle" and not replays_store(mode, data.crop_source):
        raise SetupError(f"--stored-crops chooses among stored crops: --mode {mode} draws fresh random crops"
                         + (" (--crop-source store replays the store's)" if mode in CROP_SOURCE_MODES else ""))
    if mode == "deit" and not data.store:
        raise SetupError("--mode deit trains from a label store: give --store (or use --mode supervised / online-kd)")
    if mode == "fkd" and not (data.store or features.embed_store):
        raise SetupError("--mode fkd trains from stores: give --store (soft labels) and/or --embed-store (embeddings), "
                         "or use --mode supervised / online-kd")
    if mode in ("online-kd", "online-fd") and not config.teacher.members:
        raise SetupError(f"--mode {mode} runs a teacher: give --teacher NAME or --teacher-module pkg.mod:factory")
    check_distillation(distill, config.teacher.temperature)
    check_gt_weight_by(config)
    check_features(features, mode, data.store, config.teacher.members)


def check_crop_source(config: TrainConfig) -> None:
    """--crop-source is supervised / online-kd's choice between fresh crops and a store's; the store
    modes always replay the store, online-fd reads none."""
    source, mode = config.data.crop_source, config.distill.mode
    if source is None:
        return
    if mode not in CROP_SOURCE_MODES:
        raise SetupError(f"--crop-source {source} has no effect in --mode {mode}: "
                         + ("it always replays the store's crops" if mode in STORE_MODES else "it draws fresh crops and reads no store")
                         + f"; --crop-source is for --mode {' and '.join(CROP_SOURCE_MODES)}")
    if source == "store" and not config.data.store:
        raise SetupError("--crop-source store replays the crops of a label store: give --store (the store --mode fkd would train on)")


def check_gt_weight_by(config: TrainConfig) -> None:
    """A per-crop ground-truth weight follows the stored labels' confidence: --mode fkd on a label
    store, with a share W strictly between 0 and 1 for it to distribute."""
    distill = config.distill
    if distill.gt_weight_by == "constant":
        return
    if distill.mode != "fkd" or not config.data.store or config.features.embed_store:
        raise SetupError(f"--gt-weight-by {distill.gt_weight_by} weighs the ground truth per crop by the stored labels' confidence: "
                         "it needs --mode fkd with --store (and no --embed-store)")
    if not 0 < distill.gt_weight < 1:
        raise SetupError(f"--gt-weight-by {distill.gt_weight_by} distributes the share W over the crops: it needs 0 < --gt-weight < 1, "
                         f"got {distill.gt_weight:g}")


def check_distillation(distill: DistillConfig, teacher_temperature: float) -> None:
    """Refuse distillation settings a run would not use, instead of silently ignoring them.

    One temperature, as Hinton KD defines it: the online teacher runs at temperature 1 and --kd-tau
    tempers it once, in the loss; so fkd-train refuses the teacher's own --temperature.
    """
    if teacher_temperature != 1.0:
        raise SetupError(
            f"--temperature {teacher_temperature} is not used by fkd-train: set the distillation temperature with --kd-tau "
            f"(--mode {' and '.join(DISTILL_MODES)}; the teacher runs at temperature 1)"
        )
    if distill.mode not in DISTILL_MODES:
        for name, default in DISTILL_DEFAULTS.items():
            if getattr(distill, name) != default:
                raise SetupError(
                    f"{flag(name)} {getattr(distill, name)} has no effect in --mode {distill.mode}: "
                    f"it is used by --mode {' and '.join(DISTILL_MODES)} only"
                )
    if distill.kd == "hard" and distill.kd_tau != 1.0:
        raise SetupError(f"--kd-tau {distill.kd_tau} has no effect with --kd hard (it learns the teacher's top-1 class); "
                         "use --kd soft or drop --kd-tau")


EMBED_STORE_REFUSALS = {
    "deit": "trains its distillation token on soft labels",
    "online-fd": "runs the teacher every step and reads no store",
    "supervised": "reads no store",
    "online-kd": "distills the teacher's probabilities, not embeddings",
}


def check_features(features: FeatureConfig, mode: str, store: "str | None", teacher_members: int) -> None:
    """Feature distillation: from an embedding store (--embed-store, --mode fkd) or online
    (--mode online-fd); its options are refused in runs that distill no features."""
    if features.embed_store and mode != "fkd":
        raise SetupError(f"--embed-store is read by --mode fkd only (--mode {mode} {EMBED_STORE_REFUSALS[mode]})")
    if mode == "online-fd" and store:
        raise SetupError("--mode online-fd runs the teacher every step and reads no store: drop --store (set the crop range with --crop-scale)")
    online = mode == "online-fd"
    if not (features.embed_store or online):
        for name, default in FEATURE_DEFAULTS.items():
            if getattr(features, name) != default:
                raise SetupError(f"{flag(name)} {getattr(features, name)} has no effect without --embed-store or --mode online-fd")
        return
    if features.embed_weight <= 0:
        raise SetupError(f"--embed-weight must be > 0, got {features.embed_weight}")
    if not online and features.embedding_from != FEATURE_DEFAULTS["embedding_from"]:
        raise SetupError(f"--embedding-from {features.embedding_from} chooses the online teacher's features (--mode online-fd); "
                         "a store's embeddings come from the layer it was made from")
    if online and features.embedding_from == "feature-map" and features.projector != "linear":
        raise SetupError(f"--projector {features.projector}: --embedding-from feature-map projects every position with one 1x1 convolution, "
                         "as FD does (linear); --projector mlp needs --embedding-from pre-logits")
    if online and teacher_members > 1:
        raise SetupError("--mode online-fd distills one teacher's features (an ensemble's members share no feature space): "
                         "give one --teacher or --teacher-module")
