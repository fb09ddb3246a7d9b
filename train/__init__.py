"""fkd-train: stage 2 of FKD, training a timm student from a label store without running the teacher.

Modules, one job each: ``cli`` (flags, ``-c`` recipes, exit codes), ``run`` (one training run:
checks, set-up, the epoch loop), ``run_setup`` (stores, crop planner, mode and projector of a run),
``options`` (option combinations refused), ``preflight`` (store vs data checks), ``data`` (multi-crop
datasets, sampler, collate, evaluation data), ``augment`` (non-geometric per-crop augmentation,
random erasing), ``aug_levels`` (AugReg's named levels, torch-free),
``student`` (timm model and its data settings), ``modes`` (targets and loss per training mode),
``feature_modes`` (feature distillation from embedding stores, online FD), ``projector`` (student
features -> the teacher's dimension, apart from the student),
``engine`` (one training epoch, evaluation), ``checkpoint`` (save and exact resume), ``runlog``
(summary.csv, log.jsonl), ``distributed`` (torchrun / DDP helpers), ``mixup`` (soft-target
Mixup/CutMix), ``errors``.
"""
