#!/usr/bin/env bash
# End-to-end demo on a small real default: 1,000 CIFAR-10 training images (100 per class) labelled by
# the real pretrained CIFAR-10 teacher from ../shared on a local Ray instance (32 crops per image,
# marginal smoothing top-5), a student trained from the stored labels only, evaluated on 1,000 test
# images, next to the teacher's top-1 on the same images and chance. Everything lands in demo/
# (git-ignored); rerunning resumes/reuses what is finished.
#
# Knobs (environment): DEMO_PER_CLASS (100), DEMO_CROPS (32), DEMO_EPOCHS (3), DEMO_WORKERS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
BIN=.venv/bin
OUT=demo
PER_CLASS=${DEMO_PER_CLASS:-100}
CROPS=${DEMO_CROPS:-32}
EPOCHS=${DEMO_EPOCHS:-3}
WORKERS=${DEMO_WORKERS:-2}
export FKD_BENCH_CACHE="$PWD/$OUT/cache"

echo "== 1/4 data: balanced CIFAR-10 subsets ($PER_CLASS images per class) from \$FKD_SHARED=${FKD_SHARED:-../shared}"
TRAIN=$($PY -c "from benchmarks.common import balanced_subset; print(balanced_subset('train', $PER_CLASS))")
TEST=$($PY -c "from benchmarks.common import balanced_subset; print(balanced_subset('test', $PER_CLASS))")

echo "== 2/4 fkd-labelgen: real Keras CIFAR-10 teacher, $CROPS crops per image, $WORKERS Ray workers"
$BIN/fkd-labelgen -c configs/labelgen-cifar10.yaml --data "$TRAIN" --out "$OUT/store" \
    --crops "$CROPS" --workers "$WORKERS" --shard-size 250

echo "== 3/4 fkd-labels: what was stored"
$BIN/fkd-labels info "$OUT/store"
$BIN/fkd-labels verify "$OUT/store"
FIRST=$($PY -c "from fkd.store import LabelStore; print(LabelStore('$OUT/store').image_ids[0])")
$BIN/fkd-labels show "$OUT/store" --image "$FIRST" --data "$TRAIN" --out "$OUT/crops.png"

echo "== 4/4 fkd-train: student from the stored labels (the teacher does not run), $EPOCHS epochs"
$BIN/fkd-train -c configs/train-cifar10-fkd.yaml --store "$OUT/store" --data "$TRAIN" --val-data "$TEST" \
    --epochs "$EPOCHS" --workers 1 --output "$OUT/run" --resume auto
$PY - "$TEST" <<'PYTHON'
import sys
from pathlib import Path

from benchmarks.accuracy.toolkit import teacher_top1
from fkd.data.images import list_images

test = Path(sys.argv[1])
classes = len(list_images(test).class_names)
print(f"to compare, on the same {len(list_images(test))} test images: the teacher's top-1 {teacher_top1(test):.2f} %, "
      f"chance {100 / classes:.2f} % ({classes} classes)")
PYTHON
echo
echo "demo done: store in $OUT/store, crops drawn in $OUT/crops.png, student in $OUT/run (summary.csv, best.pth)"
