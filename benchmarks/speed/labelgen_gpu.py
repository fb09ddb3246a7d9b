"""fkd-labelgen on a GPU against its limit: the teacher's pure forward on the same device.

For each teacher (timm, random weights: ``--no-pretrained``) at 224 px and precision, one run of
fkd-labelgen (one Ray worker holding the GPU and the machine's cores, ``--crop-device cuda``) over
ImageNet-sized JPEGs (the loader benchmark's 500x375 images, ``loader_data.make_inputs``), and the
teacher's forward alone on random input of the same batch size, precision and device. Reported per
row: images/s and crops/s while labelling, the teacher-busy share fkd-labelgen measures, the CPU
cores the machine used meanwhile (/proc/stat), the forward's crops/s, ``ratio_to_forward`` (labelgen
crops/s / forward crops/s: 1.0 means the teacher never waits) and the projected GPU-hours to label
ImageNet-1K (1,281,167 images) at M=200 at that speed.

    .venv/bin/python benchmarks/speed/labelgen_gpu.py            # resnet50 fp32 + bf16, regnety_160 bf16
    .venv/bin/python benchmarks/speed/labelgen_gpu.py --short    # resnet50 bf16 on 200 images (make gpu-check)

Without a CUDA device it says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

PROG = "labelgen_gpu.py"
IMAGENET_IMAGES = 1_281_167
IMAGENET_CROPS = 200
BATCH = 256
CLASSES = 10
"""The images' classes (CIFAR-10 content); the teachers' 1000-way heads would cost the same, within noise."""
ROWS = (("resnet50", "fp32"), ("resnet50", "bf16"), ("regnety_160", "bf16"))
SHORT_ROWS = (("resnet50", "bf16"),)
COLUMNS = [("teacher", "teacher", ""), ("precision", "precision", ""), ("images_per_s", "images/s", ",.0f"),
           ("crops_per_s", "crops/s", ",.0f"), ("forward_crops_per_s", "forward crops/s", ",.0f"),
           ("ratio_to_forward", "ratio to forward", ".2f"), ("teacher_busy", "teacher busy %", ".0f"),
           ("cpu_cores_used", "CPU cores used", ".1f"), ("imagenet_gpu_hours", "ImageNet-1K M=200 GPU-h", ",.1f")]


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def forward_crops_per_s(teacher: str, precision: str, seconds: float) -> float:
    """The teacher's forward alone on random (BATCH, 3, 224, 224) input on the GPU, after warm-up."""
    from fkd.teacher.teachers import create_teacher

    model = create_teacher([teacher], pretrained=False, num_classes=CLASSES, input_size=224, device="cuda", precision=precision)
    x = torch.rand(BATCH, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(x)
            done += BATCH
            torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def labelgen_row(images: Path, out: Path, teacher: str, precision: str, crops: int) -> dict:
    """One fkd-labelgen run through its own command line; its speed and the machine's CPU use."""
    from labelgen import cli
    from labelgen.driver import run

    argv = ["--data", str(images), "--out", str(out), "--teacher", teacher, "--no-pretrained", "--num-classes", str(CLASSES),
            "--input-size", "224", "--teacher-precision", precision, "--crops", str(crops), "--batch-size", str(BATCH),
            "--crop-device", "cuda", "--workers", "1", "--gpus-per-worker", "1", "--cpus-per-worker", str(max(1, (os.cpu_count() or 2) - 1)),
            "--shard-size", "100", "--no-progress", "--overwrite"]
    parser = cli.build_parser()
    config = cli.config_from_args(parser.parse_args(argv), parser)
    cpu_before, started = busy_cpu_seconds(), time.perf_counter()
    summary = run(config, log=lambda message: None)
    cores = (busy_cpu_seconds() - cpu_before) / (time.perf_counter() - started)
    crops_per_s = summary.images_per_second * crops
    return {"teacher": teacher, "precision": precision, "batch_size": BATCH, "crops_per_image": crops, "images": summary.images,
            "images_per_s": summary.images_per_second, "crops_per_s": crops_per_s, "teacher_busy": 100 * summary.teacher_busy,
            "cpu_cores_used": cores, "imagenet_gpu_hours": IMAGENET_IMAGES * IMAGENET_CROPS / crops_per_s / 3600}


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="resnet50 bf16 only, 200 images, M=16 (make gpu-check: about 1 min)")
    parser.add_argument("--images", type=int, default=None, help="ImageNet-sized images (default 2000; --short 200)")
    parser.add_argument("--crops", type=int, default=None, help="crops per image M (default 64; --short 16)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: labelgen-gpu.json next to this script, "
                        "labelgen-gpu-quick.json for --short)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"{PROG}: needs a CUDA GPU (labelgen against the teacher's forward on the device); torch sees none on this machine",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.common import markdown_table, result_path, save_result
    from benchmarks.speed.loader_data import make_inputs

    count, crops = args.images or (200 if args.short else 2000), args.crops or (16 if args.short else 64)
    out = args.out or result_path(__file__, args.short, name="labelgen-gpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fkd-labelgen-gpu-") as work:
        images = make_inputs(Path(work), count, crops=4).images
        for teacher, precision in SHORT_ROWS if args.short else ROWS:
            row = labelgen_row(images, Path(work) / f"{teacher}-{precision}", teacher, precision, crops)
            row["forward_crops_per_s"] = forward_crops_per_s(teacher, precision, 5.0 if args.short else 15.0)
            row["ratio_to_forward"] = row["crops_per_s"] / row["forward_crops_per_s"]
            rows.append(row)
            print(f"{teacher} {precision}: {row['crops_per_s']:,.0f} crops/s, {row['ratio_to_forward']:.2f} of the forward", flush=True)
    print(markdown_table(rows, COLUMNS))
    save_result(out, {"device": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
