"""Train a timm student from a label store in a plain PyTorch loop, without fkd-train.

python examples/own_training_loop.py --store labels/cifar10 --data cifar10/train --val-data cifar10/test --epochs 2
"""

import argparse
import sys

import timm
import torch
from torch.utils.data import DataLoader

from fkd.api import INPUT_ERRORS, EpochSampler, EvalDataset, StoredCrops, collate_crops, soft_target_cross_entropy, validation_images


def main(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    train = StoredCrops(args.store, args.data, crops_per_image=4, size=args.input_size, seed=0)  # checked against the data here
    print(*(f"warning: {w}\n" for w in train.warnings), sep="", end="")
    targets = train.stored_targets(gt_weight=args.gt_weight)  # (1-W) stored + W one-hot, decoded on the batch's device
    model = timm.create_model(args.model, num_classes=train.num_classes).to(device)
    cfg = timm.data.resolve_model_data_config(model)
    mean, std = (torch.tensor(cfg[k], device=device).view(1, 3, 1, 1) for k in ("mean", "std"))
    sampler = EpochSampler(train, seed=0)  # (epoch, image) pairs; under DDP, this rank's part
    loader = DataLoader(train, args.batch_size, sampler=sampler, num_workers=args.workers, collate_fn=collate_crops)
    val = EvalDataset(validation_images(args.val_data, train), args.input_size, cfg["crop_pct"], cfg["interpolation"])
    val_loader = DataLoader(val, args.batch_size, num_workers=args.workers)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-5)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        loss_sum = 0.0
        for batch in loader:  # B images -> B*4 uint8 crops and their stored labels
            batch = batch.to(device)
            loss = soft_target_cross_entropy(model((batch.images / 255 - mean) / std), targets(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            correct = sum(int((model((x.to(device) / 255 - mean) / std).argmax(1) == y.to(device)).sum()) for x, y in val_loader)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / (4 * len(sampler)):.4f}, val top-1 {100 * correct / len(val):.2f} %")


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
