"""How two stores' settings differ, in one line a person reads (``merge``, ``export-fkd``).

``StoreMeta.differences`` names the differing settings; their raw values are long (class-name
lists, teacher records, the embedding spec) and a payload change drags three fields along (scheme,
top_k, embedding). So a payload change is said once (``payload: labels vs embedding``), long lists
are summarized by length and first items, and records (teachers, maps) by the entries that differ.
``format_version``, not a setting, differs only between full stores of probabilities (before
version 5) and of log-probabilities: said with what each keeps.
"""

from __future__ import annotations

from typing import Any

from ..store import StoreMeta

PER_PART_SETTINGS = ("num_images", "shard_size", "data_fingerprint")
"""Settings that legitimately differ between parts of one store (or exports of parts of it)."""

PAYLOAD_FIELDS = ("scheme", "top_k", "embedding")
"""What ``payload: labels vs embedding`` already says."""

SHOWN_ITEMS = 3
"""Items of a long list, and differing entries of a record, shown per setting."""

LONG_TEXT = 40


def describe_differences(a: StoreMeta, b: StoreMeta, ignore: "tuple[str, ...]" = PER_PART_SETTINGS) -> str:
    """``'seed: 0 vs 2; top_k: 5 vs 3'``: each setting but ``ignore`` in which ``b`` differs from ``a``
    (``a``'s value first); empty when they agree."""
    keys = [k for k in a.differences(b) if k not in ignore]
    parts = []
    if a.payload != b.payload:
        parts.append(f"payload: {a.payload} vs {b.payload}")
        keys = [k for k in keys if k not in PAYLOAD_FIELDS]
    settings_a, settings_b = a.settings(), b.settings()
    for key in keys:
        if key == "format_version":
            parts.append(f"format_version: {_values_kept(a)} vs {_values_kept(b)}")
            continue
        found = _differences(key, settings_a.get(key), settings_b.get(key))
        parts.extend(found[:SHOWN_ITEMS] + (["..."] if len(found) > SHOWN_ITEMS else []))
    return "; ".join(parts)


def full_values(meta: StoreMeta) -> str:
    """What a full store's float16 values are: log-probabilities (format version 5) or probabilities."""
    return "log-probabilities" if meta.full_log_probs else "probabilities"


def _values_kept(meta: StoreMeta) -> str:
    """``5 (log-probabilities)``: a full store's format version and what its values are."""
    return f"{meta.format_version} ({full_values(meta)})"


def _differences(path: str, x: Any, y: Any) -> list[str]:
    """``path: x vs y``, or the differing entries of two records or of two lists of one length."""
    if isinstance(x, dict) and isinstance(y, dict):
        return [d for k in sorted(x.keys() | y.keys()) if x.get(k) != y.get(k) for d in _differences(f"{path}.{k}", x.get(k), y.get(k))]
    lists = isinstance(x, list) and isinstance(y, list)
    if lists and len(x) == len(y) and not (_short_list(x) and _short_list(y)):
        return [d for i, (u, v) in enumerate(zip(x, y)) if u != v for d in _differences(f"{path}[{i}]", u, v)]
    if lists and not (_short_list(x) and _short_list(y)):  # a long list against another: both by length and first items
        return [f"{path}: {_summary(x)} vs {_summary(y)}"]
    return [f"{path}: {_short(x)} vs {_short(y)}"]


def _short_list(values: list) -> bool:
    """A list shown in full: a few plain values (crop scale, input size, mean)."""
    return len(values) <= SHOWN_ITEMS + 1 and all(v is None or isinstance(v, (bool, int, float, str)) for v in values)


def _summary(values: list) -> str:
    """``10 names (class0, class1, class2, ...)``."""
    kind = "names" if all(isinstance(v, str) for v in values) else "items"
    shown = ", ".join(v if isinstance(v, str) else _short(v) for v in values[:SHOWN_ITEMS])
    return f"{len(values)} {kind} ({shown}{', ...' if len(values) > SHOWN_ITEMS else ''})"


def _short(value: Any) -> str:
    """A value in a few words: scalars as Python writes them (long text cut), short lists in full,
    long ones summarized, records by their size."""
    if isinstance(value, dict):
        return f"{len(value)} entries"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]" if _short_list(value) else _summary(value)
    if isinstance(value, str) and len(value) > LONG_TEXT:
        return repr(value[:LONG_TEXT] + "...")
    return repr(value)
