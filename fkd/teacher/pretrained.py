"""timm's pretrained weights, tried once: without a network a teacher fails in a second, not a minute.

``timm.create_model(pretrained=True)`` downloads through ``huggingface_hub``, which retries a
failed connection five times with backoff, for each of two file names, printing every retry: about
a minute of warnings before the error. When the weights are not in the hub cache we therefore ask
the hub once, without retries, whether it answers; if it does not, the user gets one line that says
what to do (``--checkpoint PATH``). A hub that answers (even "no such file") lets timm proceed as
usual, and weights already cached never need the network.
"""

from __future__ import annotations

from typing import Any

import timm
import timm.models
from torch import nn

from .errors import TeacherError

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
"""The file names timm loads a hub model's weights from (the cfg's own ``hf_hub_filename`` first)."""
PROBE_TIMEOUT_S = 10.0


def create_timm_model(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=pretrained, **kwargs)``; TeacherError, after one try,
    when the pretrained weights cannot be downloaded."""
    if pretrained:
        _check_hub_reachable(name)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as exc:  # hub cache misses (offline mode), torch.hub URL downloads
        if not pretrained:
            raise
        raise _download_error(name, exc) from None


def _check_hub_reachable(name: str) -> None:
    """One request, no retries, unless the weights are cached or do not come from the hub."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    cfg = timm.models.get_pretrained_cfg(timm.models.parse_model_name(name)[1])
    if cfg is None or not cfg.hf_hub_id:
        return
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    files = ([cfg.hf_hub_filename] if cfg.hf_hub_filename else []) + list(HUB_WEIGHT_FILES)
    if any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision or None), str) for f in files):
        return
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, files[0], revision=revision or None), timeout=PROBE_TIMEOUT_S)
    except HfHubHTTPError:
        return  # the hub answered (a missing file, a gated repo...): timm's own download reports it
    except Exception as exc:  # DNS, refused connection, timeout, proxy, offline mode: no way to the hub
        raise _download_error(name, exc) from None


def _download_error(name: str, exc: BaseException) -> ValueError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TeacherError(
        f"cannot download timm's pretrained weights for {name} (no network?): {reason}; pass --checkpoint PATH "
        "with a weights file for it (or --no-pretrained for random weights)"
    )
