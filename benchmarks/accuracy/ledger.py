"""A ledger of finished training runs kept in the repository: what survives a lost cache.

The long accuracy blocks (the scale block's 40 runs, the mix block's pairs) take hours on 2 CPU
cores, longer than one machine may live. The run cache (``benchmarks/.cache``, ignored by git)
holds checkpoints and logs and goes with the machine; the ledger, a JSON-lines file beside the
block's result, keeps each finished run's result, keyed by its fkd-train argv with the machine's
paths made portable. A block started on another clone or machine reuses every run the ledger
holds and trains (and labels stores for) only the rest; its result then reads as if one machine
had run it all, with each run's commit kept.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO_ROOT
from fkd.zoo import shared_dir

_APPEND = threading.Lock()  # the blocks train runs side by side on threads


def portable(argv: Sequence[str]) -> list[str]:
    """``argv`` with the repository and the shared folder named, not located, and the console
    script by its name: the same run on another clone or machine has the same key."""
    places = ((str(REPO_ROOT), "<repo>"), (str(shared_dir()), "<shared>"))
    out = [Path(argv[0]).name]
    for arg in map(str, argv[1:]):
        for where, name in places:
            arg = name + arg[len(where):] if arg == where or arg.startswith(where + "/") else arg
        out.append(arg)
    return out


def commit() -> "str | None":
    """The repository's HEAD, recorded with each run (None outside a git checkout)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return head.stdout.strip() or None


@dataclass(frozen=True)
class Ledger:
    """Finished runs, one JSON object per line: ``argv`` (portable), ``recipe_sha256``, ``commit``
    and ``result`` (what ``toolkit.train`` returns)."""

    path: Path

    def find(self, argv: Sequence[str], recipe_sha256: str) -> "dict | None":
        """The newest result recorded for this argv and recipe, or None."""
        if not self.path.exists():
            return None
        key = portable(argv)
        found = None
        for line in self.path.read_text().splitlines():
            entry = json.loads(line) if line.strip() else None
            if entry and entry["argv"] == key and entry["recipe_sha256"] == recipe_sha256:
                found = entry["result"]
        return found

    def add(self, argv: Sequence[str], recipe_sha256: str, result: dict) -> None:
        entry = {"argv": portable(argv), "recipe_sha256": recipe_sha256, "commit": commit(), "result": result}
        with _APPEND:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as out:
                out.write(json.dumps(entry) + "\n")
