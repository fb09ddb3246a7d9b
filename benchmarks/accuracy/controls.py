"""Controls for the scale block's fkd vs online KD gap: everything that differs between the two
training paths besides where the labels come from, measured, or checked in the code and run.

(i) Labels: the stored label against the teacher run again, as online KD runs it
    (``OnlineKDMode.teacher_probs``), on the very uint8 crops fkd-train replays (``fkd.api``'s
    ``StoredCrops``: its planner and resize) and decodes (``FKDMode``), for the full and the
    marginal-smoothing K=5 store of the real Keras teacher on real CIFAR-10: KL(stored || live) (a
    top-K store can hold 0 where the teacher does not, so the other direction can be infinite), total
    variation (half the L1 distance: the soft-target CE gradients of the two targets differ by
    ``live - stored``), largest |p| difference, top-1 agreement; and whether labelgen's own cut of each crop (the
    worker's ``replay_fixed`` at the teacher's size and filter) is bitwise fkd-train's.
(ii) Crops: labelgen's M=32 draws per image (``sample_crops``, as its worker calls it, with the
    store's ranges) against online KD's n=4 per image and epoch over 8 epochs (``RandomCropPlanner``
    with the recipe's ranges), over the scale block's 10,000 images: area fraction, log aspect ratio
    (width / height), box centre, flips; means and two-sample Kolmogorov-Smirnov (scipy's when
    installed; else the statistic exactly and the asymptotic p-value, conservative for these
    pixel-quantized values).
(iii) The rest of the loop, item by item, with where the code says it (file:line, found by the code
    itself so the reference follows the code) and what was run to check it.

    .venv/bin/python benchmarks/accuracy/controls.py      # a few minutes on 2 cores; writes controls.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks.accuracy.controls_loop import loop_differences  # noqa: E402
from benchmarks.common import KERAS_TEACHER, LabelSetting, balanced_subset, converted_store, full_store, markdown_table, save_result  # noqa: E402
from fkd.api import CropBatch, EpochSampler, StoredCrops, collate_crops  # noqa: E402
from fkd.data.crops import CropParams, fixed_to_boxes, replay_fixed, sample_crops  # noqa: E402
from fkd.data.images import list_images, read_image  # noqa: E402
from fkd.data.plan import RandomCropPlanner  # noqa: E402
from fkd.teacher.teachers import create_teacher  # noqa: E402
from train.engine import to_unit_float  # noqa: E402
from train.modes import FKDMode, OnlineKDMode  # noqa: E402

SCALE_PER_CLASS, STORE_CROPS, CROPS, EPOCHS = 1000, 32, 4, 8  # the scale block's
RECIPE_SCALE = (0.25, 1.0)  # configs/bench-cifar10.yaml's crop-scale, online KD's range
SCHEMES = (("full", 10), ("marginal-smoothing", 5))


@torch.no_grad()
def label_control(per_class: int) -> dict:
    """(i) on ``per_class`` images per class x all M=32 stored crops (8 epochs of 4: each crop once)."""
    setting = LabelSetting(per_class, STORE_CROPS)
    data = balanced_subset("train", per_class, setting.seed)
    teacher = create_teacher([], module=KERAS_TEACHER)
    online = OnlineKDMode(teacher, 10, 0.0, "soft", 1.0, 1.0)
    out = {"images": per_class * 10, "crops_per_image": STORE_CROPS, "stores": []}
    for scheme, top_k in SCHEMES:
        store = converted_store(setting, scheme, top_k)
        train = StoredCrops(store, data, CROPS, size=32, seed=0, stored_crops="cycle")
        meta = train.store.meta
        fkd = FKDMode(meta.scheme, meta.num_classes, log_probs=meta.full_log_probs)
        sampler = EpochSampler(train, seed=0)
        kl, tv, diff, agree, same_pixels, count = [], [], 0.0, 0, 0, 0
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            for batch in DataLoader(train, batch_size=50, sampler=sampler, collate_fn=collate_crops):
                live = online.teacher_probs(to_unit_float(batch.images, False)).double()
                stored = fkd.targets(batch).double()
                kl.append((torch.xlogy(stored, stored) - torch.xlogy(stored, live)).sum(dim=1))
                tv.append(0.5 * (live - stored).abs().sum(dim=1))
                diff = max(diff, float((live - stored).abs().max()))
                agree += int((live.argmax(1) == stored.argmax(1)).sum())
                same_pixels += labelgen_cut_matches(train, batch, teacher.data_config.input_size[0])
                count += len(batch)
        kl_all, tv_all = torch.cat(kl), torch.cat(tv)
        out["stores"].append({"scheme": scheme, "top_k": top_k, "crops": count, "kl_mean": float(kl_all.mean()), "kl_max": float(kl_all.max()),
                              "tv_mean": float(tv_all.mean()), "tv_max": float(tv_all.max()), "max_abs_diff": diff, "top1_agreement": agree / count,
                              "labelgen_cut_identical": same_pixels / count,
                              "interpolation": meta.interpolation, "full_log_probs": meta.full_log_probs})
    return out


def labelgen_cut_matches(train: StoredCrops, batch: CropBatch, size: int) -> int:
    """How many of the batch's crops labelgen's worker cut bitwise as fkd-train replayed them:
    ``replay_fixed`` on the decoded image at the teacher's input size with the store's filter."""
    matches = 0
    for k, index in enumerate(batch.image_index.tolist()):
        record = train.store.read(index)
        crop_ids = batch.crop_ids[k * CROPS : (k + 1) * CROPS].numpy()
        image = read_image(train.source.locate(train.planner.image_ids[index])).pixels
        cut = replay_fixed(image, record.boxes_fixed[crop_ids], record.flips[crop_ids], size, train.store.meta.interpolation)
        matches += sum(torch.equal(a, b) for a, b in zip(cut, batch.images[k * CROPS : (k + 1) * CROPS]))
    return matches


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value) of the two-sample Kolmogorov-Smirnov test: scipy's ``ks_2samp`` when
    installed; else D = max |F_a - F_b| over every value taken (ties counted exactly) and the
    asymptotic p-value Q_KS((sqrt(m) + 0.12 + 0.11 / sqrt(m)) D), m = n_a n_b / (n_a + n_b)."""
    try:
        from scipy.stats import ks_2samp
    except ImportError:
        a, b = np.sort(a), np.sort(b)
        values = np.concatenate([a, b])
        d = float(np.abs(np.searchsorted(a, values, side="right") / len(a) - np.searchsorted(b, values, side="right") / len(b)).max())
        m = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
        lam = (m + 0.12 + 0.11 / m) * d
        p = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101))
        return d, min(1.0, max(0.0, p)) if lam > 0 else 1.0
    result = ks_2samp(a, b)
    return float(result.statistic), float(result.pvalue)


def box_features(boxes: np.ndarray, flips: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Per crop: area fraction, ln(width / height), centre (y, x) as fractions, flip."""
    top, left, h, w = (boxes[:, i].astype(np.float64) for i in range(4))
    height, width = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    return {"area": h * w / (height * width), "log_ratio": np.log(w / h), "centre_y": (top + h / 2) / height,
            "centre_x": (left + w / 2) / width, "flip": flips.astype(np.float64)}


def crop_control(per_class: int, seed: int = 0) -> dict:
    """(ii): the stored crops of the scale block's store (labelgen's draws, seed 0) against online
    KD's fresh ones (training seed ``seed``), every crop of the 8 epochs."""
    setting = LabelSetting(per_class, STORE_CROPS)
    images = list_images(balanced_subset("train", per_class, setting.seed))
    sizes = np.array([Image.open(images.path(i)).size[::-1] for i in range(len(images))])
    stored_params = CropParams(scale=setting.crop_scale)  # fkd-labelgen's --crop-scale of the store, its default --crop-ratio
    online = RandomCropPlanner(images, CROPS, seed, CropParams(scale=RECIPE_SCALE))
    stored, fresh = ([], [], []), ([], [], [])
    for i, image_id in enumerate(images.image_ids):
        h, w = (int(v) for v in sizes[i])
        crops = sample_crops(image_id, h, w, STORE_CROPS, setting.seed, stored_params)
        for part, value in zip(stored, (crops.boxes, crops.flips, np.tile(sizes[i], (STORE_CROPS, 1)))):
            part.append(value)
        for epoch in range(EPOCHS):
            plan = online.plan(i, epoch, h, w)
            for part, value in zip(fresh, (fixed_to_boxes(plan.boxes_fixed, h, w), plan.flips, np.tile(sizes[i], (CROPS, 1)))):
                part.append(value)
    a, b = (box_features(*(np.concatenate(p) for p in parts)) for parts in (stored, fresh))
    rows = []
    for name in a:
        d, p = ks_two_sample(a[name], b[name])
        rows.append({"feature": name, "stored_mean": float(a[name].mean()), "online_mean": float(b[name].mean()),
                     "stored_std": float(a[name].std()), "online_std": float(b[name].std()), "ks_statistic": d, "ks_p": p})
    return {"images": len(images), "stored_crops": len(a["area"]), "online_crops": len(b["area"]), "online_seed": seed,
            "stored_params": {"scale": list(stored_params.scale), "ratio": list(stored_params.ratio)},
            "online_params": {"scale": list(RECIPE_SCALE), "ratio": list(online.params.ratio)}, "features": rows}


LABEL_COLUMNS = [("scheme", "store", ""), ("crops", "crops", "d"), ("kl_mean", "KL(stored || live), mean", ".2e"),
                 ("kl_max", "KL, max", ".2e"), ("tv_mean", "total variation, mean", ".2e"), ("tv_max", "TV, max", ".2e"),
                 ("max_abs_diff", "max |p live - p stored|", ".2e"), ("top1_agreement", "top-1 agreement", ".4f"),
                 ("labelgen_cut_identical", "labelgen's cut = fkd-train's", ".4f")]
CROP_COLUMNS = [("feature", "feature", ""), ("stored_mean", "stored (labelgen) mean", ".4f"), ("online_mean", "online mean", ".4f"),
                ("stored_std", "stored std", ".4f"), ("online_std", "online std", ".4f"), ("ks_statistic", "KS D", ".4f"), ("ks_p", "KS p", ".3f")]
LOOP_COLUMNS = [("item", "what", ""), ("fkd", "fkd", ""), ("online", "online KD", ""), ("same", "same", ""), ("checked", "checked by", ""),
                ("where", "where", "")]


def describe(result: dict) -> str:
    """The README block below the provenance line."""
    labels, crops = result["labels"], result["crops"]
    loop = [item | {"where": ", ".join(item["where"]), "same": {True: "yes", False: "**no**", None: "-"}[item["same"]]} for item in result["loop"]]
    return "\n".join([
        f"(i) Labels: {labels['images']} CIFAR-10 train images (balanced, seed 0) x all M={labels['crops_per_image']} stored crops, "
        "the real Keras teacher re-run on the uint8 crops fkd-train replays:", "", markdown_table(labels["stores"], LABEL_COLUMNS), "",
        f"(ii) Crops: {crops['images']} images (the scale block's), labelgen's {crops['stored_crops']} stored crops against online KD's "
        f"{crops['online_crops']} fresh ones (training seed {crops['online_seed']}, 8 epochs x 4 per image):", "",
        markdown_table(crops["features"], CROP_COLUMNS), "", "(iii) The rest of the loop:", "", markdown_table(loop, LOOP_COLUMNS),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=10,
                        help="train images per class for (i) (default 10: 3,200 crops; 1000: the scale block's whole store)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("controls.json"), help="JSON results")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(1)
    full_store(LabelSetting(args.per_class, STORE_CROPS))
    result = {"labels": label_control(args.per_class), "crops": crop_control(SCALE_PER_CLASS), "loop": loop_differences(),
              "seconds": time.perf_counter() - started}
    print(describe(result))
    save_result(args.out, result)


if __name__ == "__main__":
    main()
