"""A pretrained teacher without a network: one try and one line naming --checkpoint, not a minute of
huggingface_hub retries (5 per weight file, with backoff, each printed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SCRIPT = """
import time
from fkd.teacher.teachers import TeacherError, create_teacher
started = time.perf_counter()
try:
    create_teacher(["resnet18"], pretrained=True)
except TeacherError as exc:
    print(f"{time.perf_counter() - started:.1f}")
    print(exc)
"""


def test_no_network_is_one_try_and_one_line(tmp_path: Path) -> None:
    # Nothing listens on port 9: the connection is refused at once, as on a machine without a network
    # (whatever network this machine has); an empty hub cache rules out cached weights.
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "0"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seconds, message = result.stdout.splitlines()
    assert float(seconds) < 10  # timm + huggingface_hub alone retried for 46 s here
    assert message == (
        "cannot download timm's pretrained weights for resnet18 (no network?): [Errno 111] Connection refused; "
        "pass --checkpoint PATH with a weights file for it (or --no-pretrained for random weights)"
    )
    assert "Retrying" not in result.stderr and "thrown while requesting" not in result.stderr


def test_offline_mode_without_cached_weights_names_checkpoint(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    message = result.stdout.splitlines()[1]
    assert message.startswith("cannot download timm's pretrained weights for resnet18 (no network?): ")
    assert message.endswith("; pass --checkpoint PATH with a weights file for it (or --no-pretrained for random weights)")
