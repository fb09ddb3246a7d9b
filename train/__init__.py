"""fkd-train: stage 2 of FKD, training a timm student from a label store without running the teacher.

Modules, one job each: ``cli`` (flags, ``-c`` recipes, exit codes), ``config`` (the typed settings
built once from the parsed flags, which every other module takes, and their args.yaml form), ``run``
(one training run: checks, set-up, the epoch loop), ``run_setup`` (stores, crop planner, mode and projector of a run),
``options`` (option combinations refused), ``aug_levels`` (AugReg's named levels, torch-free),
``student`` (timm model and its data settings), ``modes`` (targets and loss per training mode),
``feature_modes`` (feature distillation from embedding stores, online FD), ``projector`` (student
features -> the teacher's dimension, apart from the student),
``engine`` (one training epoch, evaluation), ``checkpoint`` (save and exact resume), ``runlog``
(summary.csv, log.jsonl), ``distributed`` (torchrun / DDP helpers), ``mixup`` (soft-target
Mixup/CutMix), ``errors``. What it shares with any training loop (the store vs data checks,
multi-crop datasets, planners, per-crop augmentation, device replay) is in ``fkd.data``.
"""
