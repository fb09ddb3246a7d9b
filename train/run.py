"""One fkd-train run: check inputs, build data, student, optimizer and mode, then train epoch by epoch.

Everything that can be wrong with the inputs (store vs data, class counts, model name, paths) is
checked before the first step and reported as a ``SetupError``; the CLI prints it without a traceback.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fkd.data.augment import build_crop_augment, build_eraser
from fkd.data.device_replay import training_dataset
from fkd.data.evaluation import EvalDataset, shard_indices
from fkd.data.images import ImageList
from fkd.data.multicrop import EpochSampler, MultiCropDataset
from fkd.data.plan import derived_seed

from .checkpoint import CheckpointSaver, Progress, TrainingState, build_checkpoint, load_checkpoint, resolve_resume, rng_state
from .config import AugmentConfig, OptimConfig, TrainConfig
from .distributed import DistInfo, all_gather_objects, barrier, init_distributed, shutdown
from .engine import EvalStats, Normalizer, Trainer, evaluate, train_one_epoch
from .errors import SetupError
from .mixup import SoftTargetMixup
from .output import OutputDir
from .projector import FeatureStudent
from .run_setup import (
    TrainData,
    build_feature_projector,
    build_mode,
    crop_interpolation,
    prepare_train_data,
    prepare_val_data,
    resolved_config,
)
from .runlog import RunLog, best_line, epoch_line
from .student import StudentDataConfig, create_student, parse_model_kwargs, student_data_config


def run(config: TrainConfig) -> None:
    """Train as ``config`` says: the CLI's, with --aug-level and the input size resolved and its
    options checked (``train.cli.main``)."""
    info = init_distributed(config.run.device)
    output = OutputDir(Path(config.run.output))
    try:
        _run(config, info, output)
    except BaseException:  # Ctrl-C included: a run that cannot be resumed leaves nothing behind
        if info.is_main:
            output.discard()
        raise
    finally:
        shutdown()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def resolve_amp(amp: str, device: torch.device) -> "torch.dtype | None":
    """The autocast dtype: CUDA only; 'auto' picks bf16 where the GPU supports it, else fp16."""
    if amp == "none":
        return None
    if device.type != "cuda":
        if amp == "auto":
            return None
        raise SetupError(f"--amp {amp} needs a CUDA device (this run uses {device}); use --amp none or auto")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def build_loaders(
    config: TrainConfig, data: TrainData, cfg: StudentDataConfig, val_images: "ImageList | None", info: DistInfo
) -> tuple[MultiCropDataset, EpochSampler, DataLoader, "DataLoader | None"]:
    """Training loader (B images -> B*n crops, this rank's part of the images) and the sharded
    validation loader. Loader generators are seeded so they draw nothing from the global RNG."""
    settings, seed, workers = config.data, config.run.seed, config.data.workers
    dataset, collate = training_dataset(
        settings.replay_device, info.device, data.source, data.planner, cfg.input_size,
        crop_interpolation(config.model.interpolation, data, cfg), build_crop_augment(config.augment.color_jitter, config.augment.randaugment),
        seed,
    )
    sampler = EpochSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    pin = info.device.type == "cuda"
    loader = DataLoader(
        dataset, batch_size=settings.batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=pin, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
    )
    if val_images is None:
        return dataset, sampler, loader, None
    val_set = EvalDataset(val_images, cfg.input_size, cfg.crop_pct, cfg.interpolation)
    val_loader = DataLoader(
        val_set, batch_size=settings.batch_size * settings.crops_per_image, sampler=shard_indices(len(val_set), info.rank, info.world_size),
        num_workers=workers, pin_memory=pin, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
    )
    return dataset, sampler, loader, val_loader


def build_optimization(
    optim: OptimConfig, model: torch.nn.Module, updates_per_epoch: int, amp_dtype: "torch.dtype | None", device: torch.device
) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]:
    """timm optimizer, timm schedule stepped every update, and the loss scaler (active for fp16 only)."""
    try:
        optimizer = create_optimizer_v2(model, opt=optim.opt, lr=optim.lr, weight_decay=optim.weight_decay, momentum=optim.momentum)
    except ValueError as exc:
        raise SetupError(f"--opt {optim.opt}: {exc}") from None
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=optim.sched, num_epochs=optim.epochs, warmup_epochs=optim.warmup_epochs, warmup_lr=optim.warmup_lr,
            min_lr=optim.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch,
        )
    except (AssertionError, ValueError) as exc:  # timm asserts on schedules that cannot step per update (plateau)
        raise SetupError(f"--sched {optim.sched}: {exc} (schedules step every update here: cosine, tanh, step, multistep, poly)") from None
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def build_mixer(augment: AugmentConfig) -> "SoftTargetMixup | None":
    if augment.mixup <= 0 and augment.cutmix <= 0:
        return None
    try:
        return SoftTargetMixup(augment.mixup, augment.cutmix, augment.mixup_prob, augment.mixup_switch_prob, mode=augment.mixup_mode)
    except ValueError as exc:
        raise SetupError(f"mixup settings: {exc}") from None


def _log(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(message, flush=True)


def _run(config: TrainConfig, info: DistInfo, output_dir: OutputDir) -> None:
    """Every input is checked (--output, data, store, model, checkpoint) before the output directory is made."""
    output = output_dir.path
    resume_path = resolve_resume(config.run.resume, output)
    output_dir.check(config, resume_path)
    device = info.device
    configure_determinism(config.run.deterministic, device)

    data = prepare_train_data(config)
    for warning in data.warnings:
        _log(info, f"warning: {warning}")
    val_images = prepare_val_data(config.data.val_data, data)

    student = config.model
    seed_everything(config.run.seed)  # same initial weights on every rank
    kwargs = parse_model_kwargs(student.model_kwargs)
    model = create_student(student.model, data.num_classes, student.pretrained, student.drop_path, **kwargs)
    if config.distill.mode == "deit":
        if not hasattr(model, "set_distilled_training"):
            raise SetupError(
                f"--mode deit needs a distillation-token model (e.g. deit_tiny_distilled_patch16_224), {student.model} has none"
            )
        model.set_distilled_training(True)
    cfg = student_data_config(model, student)
    amp_dtype = resolve_amp(config.optim.amp, device)
    channels_last = device.type == "cuda" if config.optim.channels_last is None else config.optim.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    seed_everything(derived_seed(config.run.seed, info.rank))  # per-rank stream for dropout & co.

    dataset, sampler, loader, val_loader = build_loaders(config, data, cfg, val_images, info)
    mode = build_mode(config, data, device)
    projector = build_feature_projector(config, model, mode, cfg.input_size, device)
    trained = model if projector is None else FeatureStudent(model, projector)  # the student alone is evaluated, averaged and saved as such
    optimizer, scheduler, scaler = build_optimization(config.optim, trained, len(loader), amp_dtype, device)
    ema = ModelEmaV3(model, decay=student.model_ema_decay) if student.model_ema else None
    # Feature modes may leave parameters without gradient (the classifier without --gt-weight, the head of a map student).
    train_model = DistributedDataParallel(
        trained, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=projector is not None
    ) if info.distributed else trained
    if student.compile:
        train_model = torch.compile(train_model)

    state = TrainingState(model, optimizer, scheduler, scaler, ema, projector)
    progress = Progress()
    if resume_path is not None:
        try:
            progress = load_checkpoint(resume_path, state, info.rank, info.world_size)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise SetupError(f"cannot resume from {resume_path}: {exc}") from None
        _log(info, f"resumed from {resume_path} after epoch {progress.epoch}")
    recorded, notes = resolved_config(config, data, cfg)
    if info.is_main:
        output_dir.create(recorded, notes)

    normalizer = Normalizer(cfg.mean, cfg.std, device)
    augment = config.augment
    trainer = Trainer(
        train_model, mode, optimizer, scheduler, scaler, normalizer, info, len(loader),
        mixer=build_mixer(augment), eraser=build_eraser(augment.reprob, augment.remode, augment.recount, device),
        ema=ema, student=model, amp_dtype=amp_dtype, channels_last=channels_last, clip_grad=config.optim.clip_grad,
        clip_mode=config.optim.clip_mode, log_every=config.run.log_every,
    )
    crops_per_rank = len(sampler) * config.data.crops_per_image
    _log(
        info,
        f"fkd-train: mode {config.distill.mode}{'' if projector is None else ', ' + projector.describe()}, {student.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) on {device} x{info.world_size}, "
        f"{len(dataset)} images x {config.data.crops_per_image} crops at {cfg.input_size}px, {len(loader)} steps/epoch of "
        f"{config.data.batch_size} images, {config.optim.epochs} epochs, output {output}",
    )
    train_epochs(recorded, trainer, loader, sampler, val_loader, state, progress, output, crops_per_rank)


def train_epochs(
    config: TrainConfig,
    trainer: Trainer,
    loader: DataLoader,
    sampler: EpochSampler,
    val_loader: "DataLoader | None",
    state: TrainingState,
    progress: Progress,
    output: Path,
    crops_per_rank: int,
) -> None:
    """The epochs left after ``progress``; ``config``: the resolved one every checkpoint records."""
    info = trainer.info
    epochs, seed = config.optim.epochs, config.run.seed
    saver = CheckpointSaver(output, config.run.keep_checkpoints)
    runlog = RunLog(output, progress.epoch) if info.is_main else None
    show = info.is_main and not config.run.no_progress
    recorded = config.to_args()
    for epoch in range(progress.epoch, epochs):
        sampler.set_epoch(epoch)
        mix_generator = torch.Generator().manual_seed(derived_seed(seed, epoch, info.rank, 2))
        started = time.perf_counter()
        stats = train_one_epoch(trainer, loader, epoch, mix_generator, crops_per_rank if show else None)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": stats.loss, "lr": stats.lr, "samples_per_s": stats.samples_per_s,
            "images_per_s": stats.images_per_s, "samples": stats.samples, "images": stats.images,
        }
        improved = False
        if val_loader is not None:
            val = _evaluate(trainer, state.model, val_loader, show)
            record.update(val_top1=val.top1, val_top5=val.top5, val_loss=val.loss)
            metric = val.top1
            if state.ema is not None:
                ema_val = _evaluate(trainer, state.ema.module, val_loader, show)
                record.update(ema_top1=ema_val.top1, ema_top5=ema_val.top5, ema_loss=ema_val.loss)
                metric = ema_val.top1
            improved = metric > progress.best_top1
            if improved:
                progress.best_top1, progress.best_epoch = metric, epoch
        record["time"] = time.perf_counter() - started
        progress.epoch = epoch + 1
        rngs = all_gather_objects(rng_state(), info)
        if info.is_main:
            saver.save(build_checkpoint(state, progress, rngs, recorded), improved)
            runlog.append(record)
            print(epoch_line(record, epochs), flush=True)
        barrier(info)
    if info.is_main and progress.best_epoch >= 0:
        print(best_line(progress.best_top1, progress.best_epoch + 1, state.ema is not None, output), flush=True)


def _evaluate(trainer: Trainer, model: torch.nn.Module, loader: DataLoader, show: bool) -> EvalStats:
    return evaluate(model, loader, trainer.normalizer, trainer.info, trainer.amp_dtype, trainer.channels_last, show)
