"""One fkd-train run: check inputs, build data, student, optimizer and mode, then train epoch by epoch.

Everything that can be wrong with the inputs (store vs data, class counts, model name, paths) is
checked before the first step and reported as a ``SetupError``; the CLI prints it without a traceback.
"""

from __future__ import annotations

import argparse
import json
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

from fkd.data.images import ImageList

from .aug_levels import apply_aug_level
from fkd.data.augment import build_crop_augment, build_eraser
from .checkpoint import CheckpointSaver, Progress, TrainingState, build_checkpoint, load_checkpoint, resolve_resume, rng_state
from fkd.data.evaluation import EvalDataset, shard_indices
from fkd.data.multicrop import EpochSampler, MultiCropDataset
from fkd.data.plan import derived_seed
from fkd.data.device_replay import training_dataset
from .distributed import DistInfo, all_gather_objects, barrier, init_distributed, shutdown
from .engine import EvalStats, Normalizer, Trainer, evaluate, train_one_epoch
from .errors import SetupError
from .mixup import SoftTargetMixup
from .options import check_args
from .output import OutputDir
from .projector import FeatureStudent
from .run_setup import (
    TrainData, build_feature_projector, build_mode, crop_interpolation, prepare_train_data, prepare_val_data, resolved_args,
)
from .runlog import RunLog, best_line, epoch_line
from .student import StudentDataConfig, create_student, parse_model_kwargs, student_data_config


def run(args: argparse.Namespace) -> None:
    info = init_distributed(args.device)
    output = OutputDir(Path(args.output))
    try:
        _run(args, info, output)
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
    args: argparse.Namespace, data: TrainData, cfg: StudentDataConfig, val_images: "ImageList | None", info: DistInfo
) -> tuple[MultiCropDataset, EpochSampler, DataLoader, "DataLoader | None"]:
    """Training loader (B images -> B*n crops, this rank's part of the images) and the sharded
    validation loader. Loader generators are seeded so they draw nothing from the global RNG."""
    dataset, collate = training_dataset(
        args.replay_device, info.device, data.source, data.planner, cfg.input_size,
        crop_interpolation(args, data, cfg), build_crop_augment(args.color_jitter, args.randaugment), args.seed,
    )
    sampler = EpochSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=args.seed)
    pin = info.device.type == "cuda"
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, collate_fn=collate,
        pin_memory=pin, persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(args.seed),
    )
    if val_images is None:
        return dataset, sampler, loader, None
    val_set = EvalDataset(val_images, cfg.input_size, cfg.crop_pct, cfg.interpolation)
    val_loader = DataLoader(
        val_set, batch_size=args.batch_size * args.crops_per_image, sampler=shard_indices(len(val_set), info.rank, info.world_size),
        num_workers=args.workers, pin_memory=pin, persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(args.seed),
    )
    return dataset, sampler, loader, val_loader


def build_optimization(
    args: argparse.Namespace, model: torch.nn.Module, updates_per_epoch: int, amp_dtype: "torch.dtype | None", device: torch.device
) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]:
    """timm optimizer, timm schedule stepped every update, and the loss scaler (active for fp16 only)."""
    try:
        optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum)
    except ValueError as exc:
        raise SetupError(f"--opt {args.opt}: {exc}") from None
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
            min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch,
        )
    except (AssertionError, ValueError) as exc:  # timm asserts on schedules that cannot step per update (plateau)
        raise SetupError(f"--sched {args.sched}: {exc} (schedules step every update here: cosine, tanh, step, multistep, poly)") from None
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def build_mixer(args: argparse.Namespace) -> "SoftTargetMixup | None":
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    try:
        return SoftTargetMixup(args.mixup, args.cutmix, args.mixup_prob, args.mixup_switch_prob)
    except ValueError as exc:
        raise SetupError(f"mixup settings: {exc}") from None


def _log(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(message, flush=True)


def _run(args: argparse.Namespace, info: DistInfo, output_dir: OutputDir) -> None:
    """Every input is checked (arguments, --output, data, store, model, checkpoint) before the
    output directory is made."""
    apply_aug_level(args)
    check_args(args)
    output = output_dir.path
    resume_path = resolve_resume(args.resume, output)
    output_dir.check(args, resume_path)
    device = info.device
    configure_determinism(args.deterministic, device)

    data = prepare_train_data(args)
    for warning in data.warnings:
        _log(info, f"warning: {warning}")
    val_images = prepare_val_data(args, data)

    seed_everything(args.seed)  # same initial weights on every rank
    model = create_student(args.model, data.num_classes, args.pretrained, args.drop_path, **parse_model_kwargs(args.model_kwargs))
    if args.mode == "deit":
        if not hasattr(model, "set_distilled_training"):
            raise SetupError(f"--mode deit needs a distillation-token model (e.g. deit_tiny_distilled_patch16_224), {args.model} has none")
        model.set_distilled_training(True)
    cfg = student_data_config(model, args.input_size, args.mean, args.std, args.interpolation, args.crop_pct)
    amp_dtype = resolve_amp(args.amp, device)
    channels_last = device.type == "cuda" if args.channels_last is None else args.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    seed_everything(derived_seed(args.seed, info.rank))  # per-rank stream for dropout & co.

    dataset, sampler, loader, val_loader = build_loaders(args, data, cfg, val_images, info)
    mode = build_mode(args, data, device)
    projector = build_feature_projector(args, model, mode, cfg.input_size, device)
    trained = model if projector is None else FeatureStudent(model, projector)  # the student alone is evaluated, averaged and saved as such
    optimizer, scheduler, scaler = build_optimization(args, trained, len(loader), amp_dtype, device)
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    # Feature modes may leave parameters without gradient (the classifier without --gt-weight, the head of a map student).
    train_model = DistributedDataParallel(
        trained, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=projector is not None
    ) if info.distributed else trained
    if args.compile:
        train_model = torch.compile(train_model)

    state = TrainingState(model, optimizer, scheduler, scaler, ema, projector)
    progress = Progress()
    if resume_path is not None:
        try:
            progress = load_checkpoint(resume_path, state, info.rank, info.world_size)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise SetupError(f"cannot resume from {resume_path}: {exc}") from None
        _log(info, f"resumed from {resume_path} after epoch {progress.epoch}")
    recorded, notes = resolved_args(args, data, cfg)
    if info.is_main:
        output_dir.create(recorded, notes)

    normalizer = Normalizer(cfg.mean, cfg.std, device)
    trainer = Trainer(
        train_model, mode, optimizer, scheduler, scaler, normalizer, info, len(loader),
        mixer=build_mixer(args), eraser=build_eraser(args.reprob, args.remode, args.recount, device),
        ema=ema, student=model, amp_dtype=amp_dtype, channels_last=channels_last, clip_grad=args.clip_grad, clip_mode=args.clip_mode, log_every=args.log_every,
    )
    crops_per_rank = len(sampler) * args.crops_per_image
    _log(
        info,
        f"fkd-train: mode {args.mode}{'' if projector is None else ', ' + projector.describe()}, {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) on {device} x{info.world_size}, "
        f"{len(dataset)} images x {args.crops_per_image} crops at {cfg.input_size}px, {len(loader)} steps/epoch of "
        f"{args.batch_size} images, {args.epochs} epochs, output {output}",
    )
    train_epochs(recorded, trainer, loader, sampler, val_loader, state, progress, output, crops_per_rank)


def train_epochs(
    args: argparse.Namespace,
    trainer: Trainer,
    loader: DataLoader,
    sampler: EpochSampler,
    val_loader: "DataLoader | None",
    state: TrainingState,
    progress: Progress,
    output: Path,
    crops_per_rank: int,
) -> None:
    info = trainer.info
    saver = CheckpointSaver(output, args.keep_checkpoints)
    runlog = RunLog(output, progress.epoch) if info.is_main else None
    show = info.is_main and not args.no_progress
    saved_args = json.loads(json.dumps(vars(args), default=str))
    for epoch in range(progress.epoch, args.epochs):
        sampler.set_epoch(epoch)
        mix_generator = torch.Generator().manual_seed(derived_seed(args.seed, epoch, info.rank, 2))
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
            saver.save(build_checkpoint(state, progress, rngs, saved_args), improved)
            runlog.append(record)
            print(epoch_line(record, args.epochs), flush=True)
        barrier(info)
    if info.is_main and progress.best_epoch >= 0:
        print(best_line(progress.best_top1, progress.best_epoch + 1, state.ema is not None, output), flush=True)


def _evaluate(trainer: Trainer, model: torch.nn.Module, loader: DataLoader, show: bool) -> EvalStats:
    return evaluate(model, loader, trainer.normalizer, trainer.info, trainer.amp_dtype, trainer.channels_last, show)
