"""The run's output directory: made only once every input has been checked, gone again when the run
fails before its first checkpoint.

A failed start used to leave an empty (or args.yaml-only) folder that looks like a run; a read-only
--output failed with a traceback after the data and model had been built. Now ``check`` refuses an
--output that cannot be made or written before any input is read, ``create`` makes it (and writes
args.yaml) after the last check, and ``discard`` removes, after a failure or Ctrl-C, what this run
made, unless a checkpoint makes the run resumable. A directory that existed before the run, and
any file the run did not write, are never removed.
"""

from __future__ import annotations

import argparse
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from fkd.config import save_args

from .checkpoint import LAST_NAME
from .errors import SetupError
from .runlog import LOG_NAME, SUMMARY_NAME

ARGS_NAME = "args.yaml"
RUN_FILES = (ARGS_NAME, SUMMARY_NAME, LOG_NAME)
"""What a run writes before its first checkpoint (the checkpoints themselves make it resumable)."""


@dataclass
class OutputDir:
    """--output, and the directories this run created for it (deepest first)."""

    path: Path
    created: list[Path] = field(default_factory=list)

    def _error(self, problem: str) -> SetupError:
        return SetupError(f"cannot write to --output {self.path}: {problem}")

    def check(self) -> None:
        """Fail now, before any input is read, if the directory cannot be made or written to."""
        existing = self.path.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise self._error(f"{existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise self._error(os.strerror(errno.EACCES))

    def create(self, args: argparse.Namespace) -> None:
        """Make the directory (recording which directories are new) and write args.yaml into it."""
        missing = []
        parent = self.path.absolute()
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.created = missing
            save_args(args, self.path / ARGS_NAME)
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
