"""What every accuracy block (bench_accuracy.py and its --scale, --vit and --fd blocks) trains
and reads with: the Run record, the equal-work schedule, train() with its cache of finished runs
(and the long blocks' ledger of them, ledger.py), the teacher's own top-1 and the per-configuration summary over seeds.

It lives apart from the entry point so that the blocks import it and the entry point imports the
blocks, never the other way round.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from benchmarks.accuracy.ledger import Ledger
from benchmarks.common import (
    KERAS_TEACHER,
    REPO_ROOT,
    LabelSetting,
    converted_store,
    module_env,
    run_logged,
    script,
    store_path,
    threads_env,
)
from fkd.data.images import list_images, load_image
from fkd.teacher.teachers import create_teacher
from train.mode_names import DISTILL_MODES, STORE_MODES

RECIPE = REPO_ROOT / "configs" / "bench-cifar10.yaml"
ABLATION_CROPS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Run:
    """One fkd-train run: a mode (and scheme), crops per image, seed; for fkd also the store's M
    (None: the setting's), the ground-truth weight (``gt_weight_by``: constant or per crop by the
    stored confidence) and the stored-crop order. The ViT block (bench_vit.py) also sets the recipe,
    the distillation flags of online-kd / deit (``--kd`` names the run), flags of its own and a fixed
    epoch count; their defaults give the CNN runs' argv. ``crop_source="store"``: supervised /
    online-kd on the crops of the ``scheme`` store (the scale block's control); ``teacher``: the
    online teacher's flags (default the Keras CNN) and ``store`` a store path in place of the Keras
    teacher's (bench_full.py's second teacher)."""

    mode: str
    scheme: "str | None"
    top_k: int
    crops: int
    seed: int
    store_crops: "int | None" = None
    gt_weight: float = 0.0
    stored_crops: str = "cycle"
    recipe: Path = RECIPE
    kd: tuple[str, ...] = ("--kd-alpha", "1.0")  # online-kd: pure soft KD (--kd soft, --kd-tau 1: the defaults)
    extra: tuple[str, ...] = ()
    epochs: "int | None" = None  # None: the equal-work schedule's
    tag: str = ""  # names what ``extra`` (or ``kd``, ``teacher``) changes when two runs differ by it alone
    gt_weight_by: str = "constant"
    crop_source: str = "fresh"
    teacher: tuple[str, ...] = ()  # online-kd's teacher flags; () = the Keras CNN
    store: "str | None" = None  # the label store; None = the Keras teacher's for the setting and scheme

    @property
    def name(self) -> str:
        label = self.mode if self.scheme is None else f"{self.mode}-{self.scheme}" + (f"-k{self.top_k}" if self.scheme.startswith("marginal") else "")
        label = f"{self.mode}-stored-crops" if self.crop_source == "store" else label
        label += f"-{self.kd[self.kd.index('--kd') + 1]}" if "--kd" in self.kd and self.mode in DISTILL_MODES else ""
        extra = (f"-M{self.store_crops}" if self.store_crops else "") + (f"-gt{self.gt_weight:g}" if self.gt_weight else "")
        extra += f"-{self.gt_weight_by}" if self.gt_weight_by != "constant" else ""
        extra += "-random" if self.stored_crops != "cycle" else ""
        extra += f"-{self.tag}" if self.tag else ""
        return f"{label}{extra}-n{self.crops}"

    def flag(self, name: str, default: "str | None" = None) -> "str | None":
        """The value of a distillation flag in ``kd`` (fkd-train's default when absent)."""
        return self.kd[self.kd.index(name) + 1] if name in self.kd else default

    def described(self, setting: LabelSetting) -> dict:
        """What a result records of its run: how it was set, including its objective (online KD's
        alpha, tau and kind; fkd's W) and where its crops came from."""
        distills = self.mode in DISTILL_MODES
        return {
            "name": self.name, "mode": self.mode, "scheme": self.scheme, "top_k": self.top_k, "crops_per_image": self.crops, "seed": self.seed,
            "store_crops": self.store_crops or setting.crops, "gt_weight": self.gt_weight, "gt_weight_by": self.gt_weight_by,
            "stored_crops": self.stored_crops, "crop_source": "store" if self.mode in STORE_MODES else self.crop_source,
            "kd": self.flag("--kd", "soft") if distills else None, "kd_alpha": float(self.flag("--kd-alpha", "0.5")) if distills else None,
            "kd_tau": float(self.flag("--kd-tau", "1")) if distills else None,
        }


@dataclass(frozen=True)
class Size:
    """How big a block is: train and test images per class, stored crops M, epochs."""

    per_class: int
    store_crops: int
    test_per_class: int
    epochs: int


@dataclass(frozen=True)
class Schedule:
    images_per_step: int
    epochs: int
    steps: int


def schedule(crops_per_image: int, samples_per_step: int, epoch_unit: int, images: int) -> Schedule:
    """Equal work for every n: S/n images of n crops per step, and 8/n times the epochs of n=8,
    so runs make the same number of steps of S crops when ``images`` is a multiple of S."""
    images_per_step = samples_per_step // crops_per_image
    epochs = epoch_unit * (max(ABLATION_CROPS) // crops_per_image)
    return Schedule(images_per_step, epochs, -(-images // images_per_step) * epochs)


@dataclass(frozen=True)
class Block:
    """What every run of one block shares: the label setting, the training and test folders, the
    cache folder of its run folders, the equal-work schedule's two knobs, torch threads per run and
    the ledger of finished runs (the long blocks keep one). Each block's entry function builds it
    from its command line, so the toolkit reads typed fields and never an argparse Namespace."""

    setting: LabelSetting
    data: Path
    test: Path
    root: Path
    samples_per_step: int
    epoch_unit: int
    threads: int = 1
    ledger: "Path | None" = None

    @cached_property
    def images(self) -> int:
        """The training images, counted once: every run's schedule needs the count, and listing
        10,000 files per run (40 runs in the scale block) at each start is wasted."""
        return len(list_images(self.data))

    def run_ledger(self) -> "Ledger | None":
        return Ledger(self.ledger) if self.ledger else None


@dataclass(frozen=True)
class Command:
    """What ``train`` runs for a Run: fkd-train's argv (naming its store, labelled or not yet), the
    run's folder in the cache, its schedule and, for stored-crop runs, the store to label first."""

    argv: list[str]
    out: Path
    plan: Schedule
    recipe_sha256: str
    store: "tuple[LabelSetting, str, int] | None"  # converted_store's arguments; None: nothing to label


def command(run: Run, block: Block) -> Command:
    data, test, setting = block.data, block.test, block.setting
    plan = schedule(run.crops, block.samples_per_step, block.epoch_unit, block.images)
    if run.epochs:
        plan = replace(plan, epochs=run.epochs, steps=plan.steps // plan.epochs * run.epochs)
    out = block.root / f"{run.name}-seed{run.seed}"
    argv = [script("fkd-train"), "-c", str(run.recipe), "--mode", run.mode, "--data", str(data), "--val-data", str(test),
            "--output", str(out), "--seed", str(run.seed), "--epochs", str(plan.epochs), "--batch-size", str(plan.images_per_step),
            "--crops-per-image", str(run.crops), *run.extra]
    if run.mode == "online-kd":
        argv += list(run.teacher) or ["--teacher-module", KERAS_TEACHER]
    if run.mode in DISTILL_MODES:
        argv += list(run.kd)
    replays = run.mode in STORE_MODES or run.crop_source == "store"
    labels = None
    if replays and run.scheme is not None:  # fkd without a scheme: embeddings only (bench_fd.py)
        store_setting = replace(setting, crops=run.store_crops) if run.store_crops else setting
        labels = None if run.store else (store_setting, run.scheme, run.top_k)
        argv += ["--store", str(run.store or store_path(*labels)), "--stored-crops", run.stored_crops]
        argv += ["--crop-source", "store"] if run.crop_source == "store" else []
        argv += ["--gt-weight", str(run.gt_weight)] if run.gt_weight else []
        argv += ["--gt-weight-by", run.gt_weight_by] if run.gt_weight_by != "constant" else []
    return Command(argv, out, plan, hashlib.sha256(run.recipe.read_bytes()).hexdigest(), labels)


def cached(cmd: Command) -> "dict | None":
    """The run's result in the cache, while its argv and recipe are unchanged."""
    done = cmd.out / "benchmark.json"
    if not done.exists():
        return None
    record = json.loads(done.read_text())
    # The argv names the recipe by path: its hash tells an edited recipe from the one the run used
    # (records written before the hash was kept are taken at their argv's word).
    same = record.get("argv") == cmd.argv and record.get("recipe_sha256", cmd.recipe_sha256) == cmd.recipe_sha256
    return record["result"] if same else None


def finished(cmd: Command, ledger: "Ledger | None") -> "dict | None":
    """A finished run of the same settings: from the cache, else from the block's ledger (it
    outlives the cache), or None when the run is still to train."""
    record = cached(cmd)
    return record if record is not None or ledger is None else ledger.find(cmd.argv, cmd.recipe_sha256)


def to_train(runs: list[Run], block: Block) -> list[Run]:
    """The runs neither the cache nor the ledger has: a block labels its stores only for these."""
    ledger = block.run_ledger()
    return [r for r in runs if finished(command(r, block), ledger) is None]


def train(run: Run, block: Block) -> dict:
    """Run fkd-train (or reuse a finished run of the same settings) and read its log; the result
    goes to the block's ledger too when it keeps one."""
    cmd, ledger = command(run, block), block.run_ledger()
    record = cached(cmd)
    recorded = ledger.find(cmd.argv, cmd.recipe_sha256) if ledger else None
    if record is not None and ledger and recorded is None:
        ledger.add(cmd.argv, cmd.recipe_sha256, record)  # cached before the block kept a ledger
    record = record if record is not None else recorded
    if record is not None:
        return {**record, **run.described(block.setting), "reused": True}
    if cmd.store:
        converted_store(*cmd.store)
    argv, out, plan, recipe_sha256 = cmd.argv, cmd.out, cmd.plan, cmd.recipe_sha256
    images_per_step, epochs = plan.images_per_step, plan.epochs
    # An interrupted run (hours of CPU in the scale block) continues from its last epoch: fkd-train's
    # --resume continues exactly like an uninterrupted run, and refuses a folder of other settings.
    resumed = (out / "last.pth").exists() and (out / "args.yaml").exists()
    if out.exists() and not resumed:
        for stale in out.iterdir():
            stale.unlink()
    wall = run_logged(argv + ["--resume", "auto"] * resumed, out / "train.log", threads_env(block.threads) | module_env(run.teacher),
                      append=resumed)
    epochs_log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    samples = sum(e["samples"] for e in epochs_log)
    wall = sum(e["time"] for e in epochs_log) if resumed else wall  # both parts' epochs (evaluation included)
    train_seconds = sum(e["samples"] / e["samples_per_s"] for e in epochs_log)
    result = {
        **run.described(block.setting),
        "top1_per_epoch": [e["val_top1"] for e in epochs_log], "train_loss_per_epoch": [e["train_loss"] for e in epochs_log],
        "epochs": epochs, "images_per_step": images_per_step, "steps": plan.steps,
        "top1": epochs_log[-1]["val_top1"], "top5": epochs_log[-1]["val_top5"], "wall_seconds": wall, "resumed": resumed,
        "train_samples": samples, "train_samples_per_s": samples / train_seconds,
    }
    (out / "benchmark.json").write_text(json.dumps({"argv": argv, "recipe_sha256": recipe_sha256, "result": result}, indent=1))
    if ledger:
        ledger.add(argv, recipe_sha256, result)
    print(f"  {run.name} seed {run.seed}: top-1 {result['top1']:.2f} %, {wall:.0f} s, {result['train_samples_per_s']:.0f} samples/s", flush=True)
    return result


@torch.no_grad()
def teacher_top1(test: Path, module: str = KERAS_TEACHER, checkpoint: "Path | None" = None, device: str = "cpu") -> float:
    """A teacher's top-1 (default the Keras CNN) on the same test images the students are scored on,
    through fkd's Teacher, as fkd-labelgen and online KD run it."""
    teacher = create_teacher([], checkpoints=None if checkpoint is None else [str(checkpoint)], module=module, device=device)
    images = list_images(test)
    correct = 0
    for start in range(0, len(images), 500):
        stop = min(start + 500, len(images))
        batch = torch.stack([load_image(images.path(i)) for i in range(start, stop)]).float() / 255
        correct += int((teacher(batch).argmax(1).cpu() == torch.from_numpy(images.labels[start:stop])).sum())
    return 100.0 * correct / len(images)


def summarize(results: list[dict]) -> list[dict]:
    """Mean and spread (sample std; None with one seed) of each configuration over its seeds."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["name"], []).append(r)
    rows = []
    for name, runs in groups.items():
        top1 = [r["top1"] for r in runs]
        rows.append({
            **{k: runs[0].get(k) for k in ("name", "mode", "scheme", "top_k", "crops_per_image", "epochs", "images_per_step", "steps",
                                           "store_crops", "gt_weight", "gt_weight_by", "stored_crops", "crop_source", "kd", "kd_alpha", "kd_tau")},
            "seeds": len(runs), "top1_mean": statistics.fmean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
            "top1_runs": top1, "wall_seconds": statistics.fmean(r["wall_seconds"] for r in runs),
            "train_samples_per_s": statistics.fmean(r["train_samples_per_s"] for r in runs),
        })
    return rows
