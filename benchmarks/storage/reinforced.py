"""Reinforced stores in the benchmark cache, and what their stored augmentation costs on disk.

``reinforced_store`` labels a setting's training subset with the real Keras teacher and
``fkd-labelgen``'s augmentation flags (format version 6: each crop's augmentation drawn, applied
before the teacher, stored), scheme ``full``, cached like ``common.full_store``'s plain store under
a name that carries a hash of the flags (other flags, another store). The accuracy blocks train on
them (``bench_vit.py``'s reinforced RandAugment row, ``bench_mix.py``'s stored pairs);
``storage_rows`` measures them for ``bench_storage.py``: bytes per crop of each reinforced payload
against the plain store with the same labels' scheme (marginal smoothing K=5, the default), and the
uncompressed bytes the augmentation adds per crop.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from benchmarks.common import KERAS_TEACHER, LabelSetting, balanced_subset, converted_store, label_stores, run_logged, script, store_bytes
from fkd.store import LabelStore

RANDAUGMENT = ("--randaugment", "rand-m9-mstd0.5")  # DeiT's (and timm's ImageNet recipes')
ERASING = ("--reprob", "0.25")  # DeiT's
PAIRS = ("--mixup", "0.8", "--cutmix", "1.0")  # DeiT's alphas, timm's switch 0.5, every crop mixed
AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "randaugment": RANDAUGMENT,
    "randaugment+erasing": (*RANDAUGMENT, *ERASING),
    "color-jitter 0.4": ("--color-jitter", "0.4"),
    "mixup/cutmix pairs": PAIRS,
    "deit (randaugment+erasing+pairs)": (*RANDAUGMENT, *ERASING, *PAIRS),
}
"""The reinforced payloads measured by bench_storage.py: fkd-labelgen flags by name."""
SCHEME, TOP_K = "marginal-smoothing", 5


def store_name(flags: tuple[str, ...]) -> str:
    return "reinforced-" + hashlib.sha256(" ".join(flags).encode()).hexdigest()[:10]


def complete(store: Path) -> bool:
    return (store / "store.json").exists() and bool(json.loads((store / "store.json").read_text()).get("complete"))


def reinforced_path(setting: LabelSetting, flags: tuple[str, ...]) -> Path:
    """Where ``reinforced_store`` keeps the store of ``flags`` (labelled or not yet)."""
    return label_stores(setting) / store_name(flags)


def reinforced_store(setting: LabelSetting, flags: tuple[str, ...], workers: int = 1) -> tuple[Path, "float | None"]:
    """The full-scheme store the Keras teacher gives the setting's subset with augmentation ``flags``
    (labelled once, then cached). Returns (store, fkd-labelgen seconds, None when cached)."""
    out = reinforced_path(setting, flags)
    if complete(out):
        return out, None
    data = balanced_subset("train", setting.per_class, setting.seed)
    seconds = run_logged(
        [script("fkd-labelgen"), "--data", str(data), "--out", str(out), "--teacher-module", KERAS_TEACHER, "--scheme", "full",
         "--crops", str(setting.crops), "--seed", str(setting.seed), "--crop-scale", *map(str, setting.crop_scale), "--workers", str(workers),
         "--cpus-per-worker", "1", "--shard-size", "500", "--no-progress", "--overwrite", *flags],
        out.parent / f"labelgen-{out.name}.log",
    )
    return out, seconds


def converted(store: Path, scheme: str, top_k: int) -> Path:
    """``store`` re-quantized with fkd-labels convert (cached beside it): the stored views are kept."""
    out = store.parent / f"{store.name}-{scheme}-k{top_k}"
    if not complete(out):
        run_logged([script("fkd-labels"), "convert", str(store), "--scheme", scheme, "--top-k", str(top_k), "--out", str(out),
                    "--overwrite"], out.parent / f"convert-{out.name}.log")
    return out


def storage_rows(setting: LabelSetting, workers: int = 1) -> list[dict]:
    """Bytes per crop of each reinforced payload (marginal smoothing K=5), against the plain store."""
    plain = converted_store(setting, SCHEME, TOP_K)
    with LabelStore(plain) as store:
        n, m, plain_version = len(store), store.meta.num_crops, store.meta.format_version
        plain_raw = store.meta.record_layout().raw_size / m
    plain_bytes = store_bytes(plain) / (n * m)
    rows = [{"augmentation": f"none (plain store, format {plain_version})", "flags": "", "bytes_per_crop": plain_bytes, "extra_bytes_per_crop": 0.0,
             "raw_bytes_per_crop": plain_raw, "extra_raw_bytes_per_crop": 0.0, "labelgen_seconds": None}]
    for name, flags in AUGMENTATIONS.items():
        full, seconds = reinforced_store(setting, flags, workers)
        store_dir = converted(full, SCHEME, TOP_K)
        with LabelStore(store_dir) as store:
            raw = store.meta.record_layout().raw_size / m
            version = store.meta.format_version
        per_crop = store_bytes(store_dir) / (n * m)
        rows.append({"augmentation": f"{name} (format {version})", "flags": " ".join(flags), "bytes_per_crop": per_crop,
                     "extra_bytes_per_crop": per_crop - plain_bytes, "raw_bytes_per_crop": raw, "extra_raw_bytes_per_crop": raw - plain_raw,
                     "labelgen_seconds": seconds})
    return rows


COLUMNS = [
    ("augmentation", "stored augmentation", ""), ("flags", "fkd-labelgen flags", ""), ("bytes_per_crop", "B/crop", ".2f"),
    ("extra_bytes_per_crop", "added B/crop", "+.2f"), ("raw_bytes_per_crop", "uncompressed B/crop", ".1f"),
    ("extra_raw_bytes_per_crop", "added uncompressed", "+.1f"),
]
