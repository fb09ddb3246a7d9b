"""The run's output directory: made only once every input has been checked, holding one run, gone
again when the run fails before its first checkpoint.

A failed start used to leave an empty (or args.yaml-only) folder that looks like a run; a read-only
--output failed with a traceback after the data and model had been built; a folder holding another
run had its args.yaml and last.pth overwritten and kept that run's best.pth and checkpoints beside
the new ones. Now ``check`` refuses, before any input is read, an --output that cannot be made or
written, a label store, and a folder holding another run (unless --overwrite); ``create`` makes it,
removes the run it replaces and writes args.yaml after the last check; ``discard`` removes, after a
failure or Ctrl-C, what this run made, unless a checkpoint makes the run resumable. A directory
that existed before the run, and any file fkd-train does not write, are never removed.

"The same run" is the one args.yaml describes: the same settings, up to those that change nothing
the run computes (RUN_ONLY) and the values resolved from the store or the model that this run
leaves to them (RESOLVED). Re-running the same command restarts it; --resume from a checkpoint in
the folder continues it, whatever its settings.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import yaml

from fkd.config import save_args
from fkd.store import MANIFEST_NAME

from .checkpoint import BEST_NAME, LAST_NAME, PROJECTOR_NAME
from .config import TrainConfig
from .errors import SetupError
from .runlog import LOG_NAME, SUMMARY_NAME

ARGS_NAME = "args.yaml"
RUN_FILES = (ARGS_NAME, SUMMARY_NAME, LOG_NAME)
"""What a run writes before its first checkpoint (the checkpoints themselves make it resumable)."""
RUN_OUTPUTS = (*RUN_FILES, LAST_NAME, BEST_NAME, PROJECTOR_NAME, "checkpoint-*.pth")
"""Everything fkd-train writes in --output (checkpoints are written as '.NAME.*.tmp' first)."""
STORE_FILES = (MANIFEST_NAME, "shard-*.h5")
RUN_ONLY = ("output", "resume", "overwrite", "config", "workers", "no_progress", "log_every")
"""Settings that change nothing a run computes (the worker count included: crops and augmentation
depend on seed, epoch and image only); -c's recipe path is replaced by the values it gave."""
RESOLVED = ("input_size", "interpolation", "crop_scale", "mean", "std", "crop_pct", "num_classes")
"""Settings args.yaml records as resolved from the store or the model: unset, they resolve again."""


def is_run_output(name: str) -> bool:
    return any(fnmatchcase(name, pattern) or fnmatchcase(name, f".{pattern}.*.tmp") for pattern in RUN_OUTPUTS)


def _examples(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


@dataclass
class OutputDir:
    """--output, the directories this run created for it (deepest first) and the files of the run
    it replaces (--overwrite)."""

    path: Path
    created: list[Path] = field(default_factory=list)
    replaced: list[Path] = field(default_factory=list)

    def _error(self, problem: str) -> SetupError:
        return SetupError(f"cannot write to --output {self.path}: {problem}")

    def check(self, config: TrainConfig, resume: "Path | None") -> None:
        """Fail now, before any input is read, if the directory cannot be made or written to, or
        holds a label store or another run (``resume``: the checkpoint the run continues from)."""
        existing = self.path.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise self._error(f"{existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise self._error(os.strerror(errno.EACCES))
        if existing == self.path.absolute():
            self._check_contents(config, resume)

    def _check_contents(self, config: TrainConfig, resume: "Path | None") -> None:
        names = sorted(p.name for p in self.path.iterdir())
        store = [n for pattern in STORE_FILES for n in names if fnmatchcase(n, pattern)]
        if store:
            raise SetupError(f"--output {self.path} holds a label store ({_examples(store, 2)}): write the run to another folder")
        ours = [n for n in names if is_run_output(n)]
        continued = resume is not None and resume.absolute().parent == self.path.absolute()
        overwrite = config.run.overwrite
        if continued and overwrite:
            raise SetupError(f"--overwrite would delete the run that --resume continues ({resume}): drop one of the two")
        if not ours or continued:
            return
        if not overwrite:
            difference = self._other_run(config, ours)
            if difference:
                hint = "continue that run with --resume auto, " if LAST_NAME in ours else ""
                raise SetupError(f"--output {self.path} holds another run ({difference}): choose another --output, {hint}"
                                 "or pass --overwrite to replace it")
            return
        foreign = [repr(n) for n in names if not is_run_output(n)]
        if foreign:
            raise SetupError(f"--overwrite replaces the run in --output {self.path}, but the folder also holds files fkd-train does not "
                             f"write ({_examples(foreign)}): move them away or choose another --output")
        self.replaced = [self.path / n for n in ours]

    def _other_run(self, config: TrainConfig, ours: list[str]) -> str:
        """How the run in the folder differs from this one ('' for the same run)."""
        try:
            saved = yaml.safe_load((self.path / ARGS_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{_examples(ours)} without {ARGS_NAME}"
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            saved = None
        if not isinstance(saved, dict):
            return f"an unreadable {ARGS_NAME}"
        current = config.to_args()
        keys = [k for k in current if k in saved and k not in RUN_ONLY and not (k in RESOLVED and current[k] is None)]
        differ = [f"{k} {saved[k]} there, {current[k]} now" for k in keys if saved[k] != current[k]]
        return "; ".join(differ[:3]) + (f"; and {len(differ) - 3} more" if len(differ) > 3 else "")

    def create(self, config: TrainConfig, notes: "list[str] | None" = None) -> None:
        """Make the directory (recording which directories are new), remove the run it replaces,
        and write args.yaml (``config``, flattened) into it, ``notes`` as comments at its end."""
        missing = []
        parent = self.path.absolute()
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.created = missing
            for old in self.replaced:
                old.unlink(missing_ok=True)
            save_args(config.to_args(), self.path / ARGS_NAME)
            with open(self.path / ARGS_NAME, "a", encoding="utf-8") as f:
                f.writelines(f"# {note}\n" for note in notes or [])
        except OSError as exc:
            raise self._error(exc.strerror or str(exc)) from None

    def discard(self) -> None:
        """After a failure: remove the files and directories this run made, unless it left a checkpoint."""
        if not self.created or (self.path / LAST_NAME).exists():
            return
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for directory in self.created:
            try:
                directory.rmdir()
            except OSError:  # holds files this run did not write: keep them
                return
