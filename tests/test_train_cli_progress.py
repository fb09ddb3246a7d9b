"""The progress bar follows the run: on short epochs it used to show the first step's loss and lr
(the warm-up start, 1e-06) for the whole epoch, since --log-every (20) exceeded the epoch's steps."""

from __future__ import annotations

import pytest
import torch
from timm.scheduler import create_scheduler_v2

import train.engine
from fkd.data.multicrop import CropBatch
from train.distributed import DistInfo
from train.engine import Normalizer, Trainer, train_one_epoch

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
STEPS = 16


class _Bar:
    """tqdm's stand-in: records the postfix of every update, with the step it came at."""

    postfixes: list[tuple[int, dict[str, str]]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.steps = 0
        _Bar.postfixes = []

    def update(self, n: int) -> None:
        self.steps += 1

    def set_postfix(self, **values: str) -> None:
        _Bar.postfixes.append((self.steps - 1, values))

    def close(self) -> None:
        pass


class _Mode:
    def targets(self, batch: CropBatch) -> torch.Tensor:
        return batch.labels

    def loss(self, output: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(output, targets)


class _Schedule:
    """timm's warm-up + cosine, remembering the learning rate each step trained with."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.timm, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=2, warmup_epochs=1, warmup_lr=1e-6,
                                           step_on_epochs=False, updates_per_epoch=STEPS)
        self.lrs: list[float] = []

    def step_update(self, num_updates: int) -> None:
        self.timm.step_update(num_updates)
        self.lrs.append(self.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize(("log_every", "shown"), [(20, [0, 4, 8, 12, 15]), (3, [0, 3, 6, 9, 12, 15])])
def test_the_bar_shows_the_current_lr_at_least_4_times_an_epoch_and_at_its_end(
    monkeypatch: pytest.MonkeyPatch, log_every: int, shown: list[int]
) -> None:
    monkeypatch.setattr(train.engine, "tqdm", _Bar)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = _Schedule(optimizer)
    trainer = Trainer(model, _Mode(), optimizer, schedule, torch.amp.GradScaler("cpu", enabled=False),
                      Normalizer((0.5,) * 3, (0.25,) * 3, CPU.device), CPU, updates_per_epoch=STEPS, log_every=log_every)
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    batch = CropBatch(images, None, None, torch.tensor([0, 1]), torch.arange(2), torch.zeros(2, dtype=torch.int64))
    train_one_epoch(trainer, [batch] * STEPS, epoch=0, mix_generator=None, progress_total=2 * STEPS)
    assert [(step, values["lr"]) for step, values in _Bar.postfixes] == [(step, f"{schedule.lrs[step]:.3g}") for step in shown]
    assert schedule.lrs[0] == 1e-6 and schedule.lrs[-1] > 0.09  # the warm-up climbs within the epoch
