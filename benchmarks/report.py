"""Fill the result blocks of benchmarks/README.md from the benchmarks' JSON files.

Every figure in the README comes from a JSON file a benchmark wrote: this script renders each file
as the tables, command, machine and date between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``
markers, and leaves the prose around them alone. A benchmark that has not been run yet is shown as
such, never with old or typed-in numbers.

    .venv/bin/python benchmarks/report.py            # rewrite benchmarks/README.md in place
    .venv/bin/python benchmarks/report.py --check    # exit 1 if the README is not up to date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.accuracy.bench_accuracy import COLUMNS as ACCURACY_COLUMNS  # noqa: E402
from benchmarks.accuracy.bench_fd import describe as describe_fd  # noqa: E402
from benchmarks.accuracy.bench_full import describe as describe_full  # noqa: E402
from benchmarks.accuracy.bench_mix import describe as describe_mix  # noqa: E402
from benchmarks.accuracy.bench_scale import describe as describe_scale  # noqa: E402
from benchmarks.accuracy.bench_vit import COLUMNS as VIT_COLUMNS  # noqa: E402
from benchmarks.accuracy.bench_vit import verdict, vit_claims  # noqa: E402
from benchmarks.accuracy.controls import describe as describe_controls  # noqa: E402
from benchmarks.common import BENCH_DIR, markdown_table  # noqa: E402
from benchmarks.speed.bench_labelgen import COLUMNS as LABELGEN_COLUMNS  # noqa: E402
from benchmarks.speed.bench_train_speed import COLUMNS as SPEED_COLUMNS  # noqa: E402
from benchmarks.speed.loader import COLUMNS as LOADER_COLUMNS  # noqa: E402
from benchmarks.storage.bench_storage import IMAGENET_COLUMNS, REAL_COLUMNS  # noqa: E402
from benchmarks.storage.embedding import COLUMNS as EMBEDDING_COLUMNS  # noqa: E402
from benchmarks.storage.reinforced import COLUMNS as REINFORCED_COLUMNS  # noqa: E402

README = BENCH_DIR / "README.md"


def provenance(result: dict) -> str:
    m = result["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return (f"Command: `{result['command']}`  \nMachine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB{gpu}; "
            f"Python {m['python']}, torch {m['torch']}; run {m['date']}; load average (1/5/15 min) at start "
            f"{'/'.join(map(str, m['load_average_at_start']))}, at end {'/'.join(map(str, m['load_average_at_end']))}; "
            f"the whole benchmark took {result.get('wall_seconds', result.get('seconds', float('nan'))):.0f} s.")


def storage(r: dict, png: str) -> str:
    s = r["setting"]
    imagenet = [{**row, "official_tib": row["official_gb"] * 1e9 / 2**40} for row in r["imagenet"]]
    quoted_row = next(row for row in imagenet if "M=500" in row["scheme"])
    codecs = [row for row in r["codecs_real_labels"]]
    lines = [
        provenance(r), "",
        f"**Measured on real labels**: {s['images']} CIFAR-10 train images (balanced, seed 0) x M={s['crops']} crops, C={s['classes']}, "
        f"teacher {s['teacher']}, crop scale {tuple(s['crop_scale'])}. Every row is the same full-scheme store converted with "
        "`fkd-labels convert`; \"FKD files\" are the same labels written one `torch.save` file per image as the official code does; "
        "\"on disk\" counts whole file-system blocks.", "",
        markdown_table(r["cifar10"], REAL_COLUMNS), "",
        "**Extrapolated to ImageNet-1K** (1,281,167 images, M=200, C=1000). FKD files: exact (uncompressed pickles: one file of that "
        "shape gives every file's size). Ours: zstd records of synthetic teacher-like C=1000 labels (`compression.synthetic_probs`, "
        "an estimate: real ImageNet labels compress differently) plus the per-image columns; and the uncompressed bound.", "",
        markdown_table([row for row in imagenet if "M=500" not in row["scheme"]], IMAGENET_COLUMNS), "",
        "**Quoted, not measured** (kept apart from the figures above):", "",
    ]
    for q in r["quoted"]:
        lines.append(f"- {q['what']}: {q['figure']} (source: {q['source']}). The official format's exact size for that shape, "
                     f"computed here: {quoted_row['official_gb']:,.0f} GB = {quoted_row['official_tib']:.2f} TiB.")
    lines += ["", "Compression choice on the same real labels (`compression.py` variants, K=5; bytes per crop and random-access reads):", "",
              markdown_table(codecs, [("scheme", "scheme", ""), ("k", "K", "d"), ("variant", "variant", ""), ("bytes_per_crop", "B/crop", ".2f"),
                                      ("raw_bytes_per_crop", "raw B/crop", ".2f"), ("read_crops_per_s", "read crops/s", ",.0f")]),
              ""]
    if r.get("reinforced"):  # results written before reinforced stores have none
        lines += [f"**Reinforced stores** (format version 6, `storage/reinforced.py`): the same {s['images']} images x M={s['crops']}, "
                  "labelled with each augmentation drawn per crop and applied before the teacher, converted to marginal smoothing K=5 "
                  "(the default); \"added\" is against the plain store of the same scheme, whose labels are the unaugmented crops'.", "",
                  markdown_table(r["reinforced"], REINFORCED_COLUMNS), ""]
    return "\n".join(lines + [f"![storage](storage/{png})"])


def accuracy(r: dict, png: str) -> str:
    s = r["setting"]
    lines = [
        provenance(r), "",
        f"Student {s['student']} (recipe `{s['recipe']}`), {s['train_images']} train images (balanced), labels M={s['crops']} per image, "
        f"{s['test_images']} test images, {s['seeds']} seed(s); every run: {r['main'][0]['steps']} optimizer steps of "
        f"{s['samples_per_step']} crops. Teacher top-1 on these test images: **{r['teacher_top1']:.2f} %** "
        f"(reference on all 10,000: {r['teacher_top1_reference']} %). Test top-1 is the last epoch's; spread is the sample std over seeds."
        + (f" Run(s) reused from an identical earlier run (the ablation's n=4 is the main table's, or a cached earlier "
           f"invocation's; wall time and speed are from that run): {s['reused_runs']}."
           if s.get("reused_runs") else ""), "",
        markdown_table(r["main"], ACCURACY_COLUMNS), "",
        f"Crops-per-image ablation for the best scheme ({r['best_scheme']}): same steps and crops per step, so n crops of S/n images "
        "per step and 8/n times the epochs of n=8:", "",
        markdown_table(r["ablation"], ACCURACY_COLUMNS), "",
        "Claims:", "",
    ]
    lines += [f"- {c['claim']}: **{'holds' if c['holds'] else 'does not hold'}** ({c['measured']})" for c in r["claims"]]
    if s["seeds"] < 2:
        lines += ["", "With one seed these verdicts are not significant: differences of a point or two are within run-to-run noise "
                  "at this scale; the full setting (2 seeds) reports the spread."]
    lines += ["", f"![accuracy](accuracy/{png})"]
    return "\n".join(lines)


def train_speed(r: dict, png: str) -> str:
    s = r["setting"]
    lines = [provenance(r), "",
             f"Student {s['student']}, teacher {s['teacher']} (online-kd only), {s['images']} CIFAR-10 images, {s['batch_size']} images x "
             f"{s['crops_per_image']} crops per step, {s['epochs']} epochs per mode, last epoch reported, {s['workers']} DataLoader worker(s).", "",
             markdown_table([{"student": s["student"], **row} for row in r["rows"]], SPEED_COLUMNS), ""]
    headlines = r.get("fkd_over_online_kd_per_student") or {s["student"]: r["fkd_over_online_kd"]}  # results from before the ViT rows: one student
    lines.append("  \n".join(f"**Headline, {student}: fkd / online-kd = {value:.1f}x training samples/s.**" for student, value in headlines.items()))
    lines += ["", "Quoted, not measured:", ""]
    lines += [f"- {q['what']}: {q['figure']} (source: {q['source']})" for q in r["quoted"]]
    return "\n".join(lines)


def reader(r: dict, png: str) -> str:
    a = r["args"]
    rows = r["rows"]
    return "\n".join([
        provenance(r), "",
        f"Synthetic C={a['classes']} labels, M={a['crops']}, K={a['top_k']}, {a['images']} images, {a['reads']} random reads. "
        "`record`: decode all M crops of an image; `train`: one image's record and the payload of 4 of its crops (what a training "
        "step needs). Workers 0 = main process.", "",
        markdown_table(rows, [("mode", "mode", ""), ("workers", "workers", "d"), ("fkd_store_crops_per_s", "fkd store crops/s", ",.0f"),
                              ("official_fkd_crops_per_s", "FKD files crops/s", ",.0f"), ("ratio", "fkd / FKD", ".1f")]),
    ])


def labelgen(r: dict, png: str) -> str:
    s = r["setting"]
    lines = [provenance(r), "",
             f"{s['images']} CIFAR-10 train images x M={s['crops']} crops, teacher {s['teacher']}, {s['scheme']} K={s['top_k']}, "
             f"batch {s['batch_size']}, shards of {s['shard_size']}. Labelling = after Ray started and the teacher loaded; end to end = "
             "the whole run (Ray start, image pre-pass, teacher load, labelling, writing).", "",
             markdown_table(r["rows"], LABELGEN_COLUMNS), ""]
    for row in r["rows"][1:]:
        same = row["labels_vs_plain"]
        lines.append(f"- {row['runner']}: same boxes and flips as the plain loop: {same['same_boxes_and_flips']}; same top-K classes: "
                     f"{same['same_top_k_classes']}; largest probability difference {same['max_abs_probability_difference']:.2g}")
    return "\n".join(lines)


def accuracy_scale(r: dict, png: str) -> str:
    return provenance(r) + "\n\n" + describe_scale(r)


def accuracy_mix(r: dict, png: str) -> str:
    return provenance(r) + "\n\n" + describe_mix(r)


def accuracy_full(r: dict, png: str) -> str:
    return provenance(r) + "\n\n" + describe_full(r)


def accuracy_controls(r: dict, png: str) -> str:
    return provenance(r) + "\n\n" + describe_controls(r)


def accuracy_vit(r: dict, png: str) -> str:
    s = r["setting"]
    lines = [
        provenance(r), "",
        f"ViT students built with `{' '.join(s['model_kwargs'])}` from the recipes {', '.join(f'`{p}`' for p in s['recipes'])}; "
        f"{s['train_images']} train images (balanced), labels M={s['store_crops']} per image, {s['test_images']} test images, {s['seeds']} "
        f"seed(s); every run: {s['steps']} optimizer steps of {s['images_per_step']} images x {s['crops_per_image']} crops ({s['epochs']} "
        f"epoch(s), warm-up {s['warmup_fraction']:.0%} of it). Teacher (the Keras CNN: a convnet, as DeiT recommends) top-1 on these test "
        f"images: **{r['teacher_top1']:.2f} %**. Test top-1 is the last epoch's; spread is the sample std over seeds. {s['jobs']} run(s) at "
        f"a time, {s['threads']} thread(s) each; wall s is per run.", "",
        markdown_table(r["rows"], VIT_COLUMNS), "", "DeiT's claims, and FKD's, at this budget:", "",
    ]
    return "\n".join(lines + [verdict(c) for c in vit_claims(r["rows"])])  # from the rows: a claim added later reads earlier results


def accuracy_fd(r: dict, png: str) -> str:
    return provenance(r) + "\n\n" + describe_fd(r)


def loader(r: dict, png: str) -> str:
    s, t = r["setting"], r["target"]
    lines = [
        provenance(r), "",
        f"{s['images']} images: {s['source']} ({s['image_size'][1]}x{s['image_size'][0]}, mean {s['jpeg_kib']:.1f} KiB per file; ImageNet's "
        f"photos are larger files and decode slower). Labels M={s['crops_stored']} per image; every loader: {s['workers']} DataLoader "
        f"workers, batches of {s['batch_size']} images, crops at {s['crop_size']} px, {s['rounds']} round(s). Per core = crops per CPU-second "
        "of the main process and its workers.", "",
        markdown_table(r["rows"], LOADER_COLUMNS), "",
        f"**Target fkd n=4 >= 3x timm's crops/s per core: {'met' if t['met'] else 'not met'} ({t['fkd_n4_vs_timm']:.2f}x; "
        f"{t['fkd_n4_vs_timm_uint8']:.2f}x timm without colour jitter, uint8 out).**",
    ]
    if s["replay_device"] == "cuda":
        row = next(row for row in r["rows"] if "replay-device" in row["loader"])
        lines += ["", f"`--replay-device cuda`: the training process spends {row['replay_cpu_ms_per_image']:.2f} CPU ms per image launching the crops on the GPU."]
    p = r.get("profile")
    if p:
        lines += ["", f"Profile, CPU ms per image over {p['images']} images in one process:", ""]
        for name in ("fkd n=4", "fkd n=4 decode only (replay-device cuda)", "timm"):
            lines.append(f"- {name}: " + ", ".join(f"{stage} {ms:.2f}" for stage, ms in p[name].items()))
        lay = p["layout"]
        lines += ["", "Why `read_image` keeps the decoder's (H, W, 3) memory behind its (3, H, W) view instead of a (3, H, W) copy: "
                  + ", ".join(f"{stage} {ms:.2f}" for stage, ms in lay["ms_per_image"].items())
                  + f" ms per image; crops identical: {lay['identical_crops']}; the view saves {lay['saved_ms_per_image']:.2f} ms per image."]
        lines += ["", "Reduced-size JPEG decoding (`Image.draft`) where every crop of the image stays at least 2x the crop size:", "",
                  markdown_table(p["draft"], [("size", "crop px", "d"), ("eligible_share", "images where it applies", ".0%"),
                                              ("full_ms", "full decode + crops ms", ".2f"), ("draft_ms", "draft decode + crops ms", ".2f"),
                                              ("mean_abs_diff", "mean abs diff (levels)", ".2f"), ("max_crop_mean_abs_diff", "worst crop", ".2f")])]
    return "\n".join(lines)


def embedding_storage(r: dict, png: str) -> str:
    s = r["setting"]
    return "\n".join([
        provenance(r), "",
        f"Real features: the {s['teacher']} teacher's {s['layer']} (D={s['dim']}, {s['zero_fraction']:.1%} of the values 0 after "
        f"ReLU) over {s['images']} CIFAR-10 train images (balanced, seed 0) x M={s['crops']} crops, crop scale {tuple(s['crop_scale'])}. "
        "Each row is a real embedding store written and read back (store B/crop: shards + store.json); errors compare the decoded "
        "vectors with the float32 features after the normalization. The float16-scale row is measured but not a format: its "
        "scale rounding breaks the int8 bound of half a step.", "",
        markdown_table(r["rows"], EMBEDDING_COLUMNS),
    ])


def run_times(r: dict, png: str) -> str:
    return "\n".join([provenance(r), "", markdown_table(r["rows"], [
        ("benchmark", "benchmark", ""), ("script", "script", ""), ("wall_seconds", "wall s", ".0f"), ("under_10_min", "under 10 min", ""),
        ("exit_code", "exit code", "d")])])


BLOCKS: dict[str, tuple[str, Callable[[dict, str], str], str]] = {
    "run-times": ("run_times", run_times, ""),
    "storage": ("storage/bench_storage", storage, "storage"),
    "embedding-storage": ("storage/embedding", embedding_storage, ""),
    "accuracy": ("accuracy/bench_accuracy", accuracy, "accuracy"),
    "accuracy-scale": ("accuracy/accuracy-scale", accuracy_scale, ""),
    "accuracy-mix": ("accuracy/accuracy-mix", accuracy_mix, ""),
    "accuracy-full": ("accuracy/accuracy-full", accuracy_full, ""),
    "accuracy-controls": ("accuracy/controls", accuracy_controls, ""),
    "accuracy-vit": ("accuracy/accuracy-vit", accuracy_vit, ""),
    "accuracy-fd": ("accuracy/accuracy-fd", accuracy_fd, ""),
    "train-speed": ("speed/train_speed", train_speed, ""),
    "train-speed-gpu": ("speed/train_speed-gpu", train_speed, ""),
    "reader": ("speed/reader", reader, ""),
    "labelgen": ("speed/labelgen", labelgen, ""),
    "loader": ("speed/loader", loader, ""),
}
"""README block -> (JSON path stem under benchmarks/, renderer, PNG stem)."""


SINGLE_SETTING = {"accuracy-scale", "accuracy-mix", "accuracy-full", "accuracy-controls", "accuracy-vit", "accuracy-fd", "embedding-storage", "train-speed-gpu"}
"""Blocks with one setting (no --quick variant)."""


def block(name: str, stem: str, fn: Callable[[dict, str], str], png: str) -> str:
    if name in SINGLE_SETTING:
        path = BENCH_DIR / f"{stem}.json"
        return fn(json.loads(path.read_text()), png) if path.exists() else f"_Not run yet: no {path.relative_to(BENCH_DIR)}._"
    parts = []
    for quick, title in ((True, "Quick setting (`--quick`)"), (False, "Full setting")):
        path = BENCH_DIR / f"{stem}{'-quick' if quick else ''}.json"
        body = fn(json.loads(path.read_text()), f"{png}{'-quick' if quick else ''}.png") if path.exists() else f"_Not run yet: no {path.relative_to(BENCH_DIR)}._"
        parts.append(f"#### {title}\n\n{body}")
    return "\n\n".join(parts)


def render(text: str) -> str:
    for name, (stem, fn, png) in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            sys.exit(f"{README} lacks the markers <!-- {name}:begin --> / <!-- {name}:end -->")
        body = block(name, stem, fn, png)
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that README.md matches the JSON files")
    args = parser.parse_args()
    current = README.read_text()
    updated = render(current)
    if args.check:
        sys.exit(0 if updated == current else f"{README} is out of date: run benchmarks/report.py")
    README.write_text(updated)
    print(f"updated {README}")


if __name__ == "__main__":
    main()
