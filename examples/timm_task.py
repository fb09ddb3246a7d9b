"""Offline distillation with timm's task interface (``timm.task``): the teacher's word read from a label store.

timm's LogitDistillationTask runs its teacher on every batch. StoredLabelDistillationTask is written
the same way (a TrainingTask whose forward returns the loss and the student's output, the student
as its trainable module, DDP through prepare_distributed) but decodes the stored labels of the
batch's crops where LogitDistillationTask runs the teacher, so no teacher is loaded at all. It trains
with timm's create_optimizer_v2 / create_scheduler_v2 and scores with the task's own evaluator.

python examples/timm_task.py --store labels/cifar10 --data cifar10/train --val-data cifar10/test --epochs 2
"""

import argparse
import sys

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import TrainingTask
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fkd.api import (
    INPUT_ERRORS,
    CropBatch,
    EpochSampler,
    EvalDataset,
    StoredCrops,
    StoredTargets,
    collate_crops,
    soft_target_cross_entropy,
    validation_images,
)


class StoredLabelDistillationTask(TrainingTask):
    """Logit distillation from stored labels: loss = soft-target CE towards ``(1 - W) * stored + W * one-hot``
    (``targets``' gt_weight W), i.e. ``(1 - W) * CE(stored) + W * CE(label)``."""

    def __init__(self, student: torch.nn.Module, targets: StoredTargets, device: "torch.device | None" = None, verbose: bool = True):
        super().__init__(device=device, verbose=verbose)
        self.trainable_module = student
        self.targets = targets

    def prepare_distributed(self, device_ids: "list | None" = None, **ddp_kwargs) -> "StoredLabelDistillationTask":
        self.trainable_module = DistributedDataParallel(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def forward(self, input: torch.Tensor, target: CropBatch) -> dict:
        """``target``: the batch of stored crops ``input`` was made from (on the task's device)."""
        output = self.trainable_module(input)
        return {"loss": soft_target_cross_entropy(output, self.targets(target)), "output": output}


def main(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    train = StoredCrops(args.store, args.data, crops_per_image=4, size=args.input_size, seed=0)
    for warning in train.warnings:
        print(f"warning: {warning}")
    model = timm.create_model(args.model, num_classes=train.num_classes)
    task = StoredLabelDistillationTask(model, train.stored_targets(gt_weight=args.gt_weight), device=device, verbose=False).to(device)
    cfg = timm.data.resolve_model_data_config(model)
    mean, std = (torch.tensor(cfg[k], device=device).view(1, 3, 1, 1) for k in ("mean", "std"))
    sampler = EpochSampler(train, seed=0)
    loader = DataLoader(train, args.batch_size, sampler=sampler, num_workers=args.workers, collate_fn=collate_crops)
    val = EvalDataset(validation_images(args.val_data, train), args.input_size, cfg["crop_pct"], cfg["interpolation"])
    val_loader = DataLoader(val, args.batch_size, num_workers=args.workers)
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt="sgd", lr=args.lr, weight_decay=5e-5, momentum=0.9)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=args.epochs, step_on_epochs=False,
                                       updates_per_epoch=len(loader))
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        task.train()
        loss_sum = 0.0
        for step, batch in enumerate(loader):
            batch = batch.to(device)
            result = task((batch.images / 255 - mean) / std, batch)
            optimizer.zero_grad()
            result["loss"].backward()
            optimizer.step()
            scheduler.step_update(epoch * len(loader) + step + 1)
            loss_sum += result["loss"].item() * len(batch)
        evaluator, eval_model = task.create_evaluator(), task.get_eval_model().eval()
        with torch.no_grad():
            for x, y in val_loader:
                evaluator.update(eval_model((x.to(device) / 255 - mean) / std), y.to(device))
        metrics = evaluator.compute()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / (4 * len(sampler)):.4f}, val top-1 {metrics['top1']:.2f} %", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--store", "--data", "--val-data"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (each gives 4 crops)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--gt-weight", type=float, default=0.0, help="the ground truth's share W of the target")
    try:
        main(parser.parse_args())
    except INPUT_ERRORS as exc:
        sys.exit(f"error: {exc}")
