"""Embedding storage: bytes per crop and int8 reconstruction error on real teacher features (D=512).

Features are real: the pretrained Keras CIFAR-10 teacher's penultimate layer (``dense_1_relu``,
Dense 512 after ReLU: the pre-logits the classifier reads) over real CIFAR-10 train images
(balanced, seed 0) x M random-resized crops drawn by ``fkd.data.crops`` as fkd-labelgen draws them, at
the teacher's input (32 px, bilinear). For each normalization (none, l2, layernorm) the features are
written as a real embedding store in float16 and in int8 (``embedding_codec.encode``, the store
writer's zstd records in HDF5 shards) and read back through ``LabelStore``. Reported per variant:

- bytes per crop as stored (shards + store.json), of the zstd records alone, and uncompressed;
- the decoded vectors against the float32 features: 1 - cosine similarity (mean, worst), relative
  L2 error ||x - x_hat|| / ||x|| (mean, worst), and for int8 the worst |x - x_hat| in units of the
  crop's scale (the codec's bound is 0.5); crops whose features are all zero are left out and counted;
- int8 with float16 instead of float32 scales (records and errors only, not a store format): why
  the scale is float32.

    .venv/bin/python benchmarks/storage/embedding.py            # 500 images x 8 crops, well under a minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import CACHE, KERAS_TEACHER, balanced_subset, markdown_table, result_path, save_result, store_bytes  # noqa: E402
from fkd.data.crops import CropParams, boxes_to_fixed, replay_fixed, sample_crops  # noqa: E402
from fkd.data.images import list_images, read_image  # noqa: E402
from fkd.payload import embedding_codec  # noqa: E402
from fkd.payload.embedding_spec import EmbeddingSpec  # noqa: E402
from fkd.store import EmbeddingLayout, LabelStore, ShardData, compress_records, new_meta, open_for_writing, write_shard  # noqa: E402
from fkd.store.layout import PayloadField  # noqa: E402
from fkd.teacher.features import create_feature_extractor  # noqa: E402
from fkd.zoo.keras_cifar10 import CLASS_NAMES, PRETRAINED_CFG, create_model  # noqa: E402

FEATURE_LAYER = "dense_1_relu"
CROP_SCALE = (0.25, 1.0)
NORMALIZATIONS = ("none", "l2", "layernorm")
COLUMNS = [
    ("normalization", "normalization", ""), ("variant", "stored as", ""), ("bytes_per_crop", "store B/crop", ".1f"),
    ("record_bytes_per_crop", "zstd records B/crop", ".1f"), ("raw_bytes_per_crop", "uncompressed B/crop", ".1f"),
    ("one_minus_cosine_mean", "1 - cosine, mean", ".2e"), ("one_minus_cosine_worst", "1 - cosine, worst", ".2e"),
    ("rel_l2_mean", "rel. L2 mean", ".2e"), ("rel_l2_worst", "rel. L2 worst", ".2e"), ("max_error_in_scales", "max abs error / scale", ".3f"),
]


@dataclass
class Crops:
    """Every image's crops: fixed-point boxes (N, M, 4), flips (N, M), and what the store keeps per image."""

    fixed: np.ndarray
    flips: np.ndarray
    image_ids: list[str]
    labels: np.ndarray
    sizes: np.ndarray
    fingerprints: np.ndarray


@dataclass(frozen=True)
class Float16ScaleLayout(EmbeddingLayout):
    """int8 codes with float16 scales: the alternative measured against the format's float32 scales."""

    @property
    def payload_fields(self) -> "tuple[PayloadField | None, ...]":
        return (PayloadField("embedding", np.dtype("i1"), (self.dim,)), PayloadField("scales", np.dtype("<f2"), ()))


def teacher_features(per_class: int, num_crops: int) -> tuple[torch.Tensor, Crops]:
    """(N*M, 512) float32 pre-logits of the real teacher over every crop, and the crops."""
    data = balanced_subset("train", per_class)
    images = list_images(data)
    model = create_model()
    body = create_feature_extractor(model, FEATURE_LAYER, "the Keras teacher")
    size = PRETRAINED_CFG["input_size"][1:]
    fixed, flips, sizes, prints, features = [], [], [], [], []
    with torch.inference_mode():
        for i, image_id in enumerate(images.image_ids):
            loaded = read_image(images.path(i))
            height, width = loaded.pixels.shape[-2:]
            crops = sample_crops(image_id, height, width, num_crops, 0, CropParams(scale=CROP_SCALE))
            boxes = boxes_to_fixed(crops.boxes, height, width)
            views = replay_fixed(loaded.pixels, boxes, crops.flips, size, PRETRAINED_CFG["interpolation"])
            features.append(body(views.float()))  # the teacher takes 0..255 pixels (mean 0, std 1/255)
            fixed.append(boxes)
            flips.append(crops.flips)
            sizes.append((height, width))
            prints.append(loaded.fingerprint)
    crops = Crops(np.stack(fixed), np.stack(flips), list(images.image_ids), np.asarray(images.labels), np.array(sizes),
                  np.array(prints, dtype=np.uint32))
    return torch.cat(features), crops


def errors(x: torch.Tensor, x_hat: torch.Tensor, scales: "np.ndarray | None") -> dict[str, float]:
    """Reconstruction error of x_hat (N, D) against x (N, D), over crops whose x is not zero."""
    keep = x.norm(dim=1) > 0
    x, x_hat = x[keep].double(), x_hat[keep].double()
    cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=1)
    rel = (x - x_hat).norm(dim=1) / x.norm(dim=1)
    out = {"cosine_mean": cos.mean().item(), "cosine_worst": cos.min().item(), "one_minus_cosine_mean": (1 - cos).mean().item(),
           "one_minus_cosine_worst": (1 - cos).max().item(), "rel_l2_mean": rel.mean().item(), "rel_l2_worst": rel.max().item(),
           "max_error_in_scales": None, "zero_vectors": int((~keep).sum())}
    if scales is not None:
        step = torch.from_numpy(np.asarray(scales, dtype=np.float64))[keep.numpy()]
        out["max_error_in_scales"] = ((x - x_hat).abs().max(dim=1).values / step).max().item()
    return out


def write_embedding_store(path: Path, features: torch.Tensor, crops: Crops, dtype: str, normalization: str) -> tuple[Path, int]:
    """A one-shard embedding store of ``features`` (N*M, D); returns it and its zstd records' bytes."""
    n, m = crops.flips.shape
    meta = new_meta(
        scheme=None, top_k=0, num_classes=len(CLASS_NAMES), class_names=list(CLASS_NAMES), num_crops=m, num_images=n,
        shard_size=n, teachers=[{"module": KERAS_TEACHER}], crop_scale=CROP_SCALE, input_size=PRETRAINED_CFG["input_size"][1:],
        interpolation=PRETRAINED_CFG["interpolation"], mean=PRETRAINED_CFG["mean"], std=PRETRAINED_CFG["std"],
        image_fingerprint="crc32", embedding=EmbeddingSpec(features.shape[1], dtype, "pre-logits", normalization),
    )
    manifest = open_for_writing(path, meta)
    records = compressed(meta.record_layout(), crops, embedding_codec.encode(features.numpy(), dtype).arrays())
    manifest.shards[0] = write_shard(path, meta, 0, ShardData(crops.image_ids, crops.labels, crops.sizes, records, crops.fingerprints))
    manifest.save(path)
    return path, sum(len(r) for r in records)


def compressed(layout: EmbeddingLayout, crops: Crops, arrays: tuple["np.ndarray | None", ...]) -> list[bytes]:
    n, m = crops.flips.shape
    per_image = [None if a is None else a.reshape(n, m, *a.shape[1:]) for a in arrays]
    return compress_records(layout, crops.fixed, crops.flips, *per_image)


def measure(features: torch.Tensor, crops: Crops, work: Path) -> list[dict]:
    n, m = crops.flips.shape
    rows = []
    for normalization in NORMALIZATIONS:
        x = embedding_codec.normalize(features, normalization)
        for dtype in ("float16", "int8"):
            store_dir, record_bytes = write_embedding_store(work / f"{normalization}-{dtype}", x, crops, dtype, normalization)
            with LabelStore(store_dir, payload="embedding") as store:
                records = [store.read(i) for i in range(n)]
                raw = store.meta.record_layout().raw_size / m
            x_hat = torch.cat([r.decoded_embedding() for r in records])
            scales = None if records[0].scales is None else np.concatenate([r.scales for r in records])
            rows.append({"normalization": normalization, "variant": dtype, "bytes_per_crop": store_bytes(store_dir) / (n * m),
                         "record_bytes_per_crop": record_bytes / (n * m), "raw_bytes_per_crop": raw, **errors(x, x_hat, scales)})
        payload = embedding_codec.encode(x.numpy(), "int8")
        half = payload.scales.astype(np.float16)
        x_half = embedding_codec.decode(torch.from_numpy(payload.embedding), torch.from_numpy(half))
        layout = Float16ScaleLayout(m, x.shape[1], "int8")
        records = compressed(layout, crops, (payload.embedding, half))
        rows.append({"normalization": normalization, "variant": "int8, float16 scales (not kept)", "bytes_per_crop": None,
                     "record_bytes_per_crop": sum(len(r) for r in records) / (n * m), "raw_bytes_per_crop": layout.raw_size / m,
                     **errors(x, x_half, payload.scales)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=50, help="train images per class (default 50: 500 images)")
    parser.add_argument("--crops", type=int, default=8, help="crops per image M (default 8)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: embedding.json next to this script)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine; the figures do not depend on it
    started = time.perf_counter()
    features, crops = teacher_features(args.per_class, args.crops)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rows = measure(features, crops, Path(tmp))
    n, m = crops.flips.shape
    result = {
        "setting": {"images": n, "crops": m, "dim": features.shape[1], "teacher": "fkd.zoo.keras_cifar10 (real, pretrained)",
                    "layer": FEATURE_LAYER, "crop_scale": list(CROP_SCALE), "zero_fraction": (features == 0).float().mean().item(),
                    "mean_norm": features.norm(dim=1).mean().item()},
        "rows": rows, "seconds": time.perf_counter() - started,
    }
    print(f"\nReal teacher features: {n} CIFAR-10 images x M={m} crops, D={features.shape[1]} ({FEATURE_LAYER}); "
          f"{result['setting']['zero_fraction']:.1%} of the values are 0 (ReLU)")
    print(markdown_table(rows, COLUMNS))
    save_result(args.out or result_path(__file__, False, "embedding"), result)


if __name__ == "__main__":
    main()
