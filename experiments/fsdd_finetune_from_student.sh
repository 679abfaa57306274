#!/usr/bin/env bash
# Fine-tune the distilled spoken-digit student (experiments/distill_fsdd.py) on FSDD's labels, next to the
# same architecture from a random initialisation (seed 0), both with identical settings.
# Usage: experiments/fsdd_finetune_from_student.sh [STUDENT] [OUTPUT] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
FSDD=${FSDD:-../shared/data/fsdd}
STUDENT=${1:-../runs/distill-fsdd/students/consistent0/student.safetensors}
OUTPUT=${2:-../runs/fsdd-ft-student}
EPOCHS=${3:-60}
mkdir -p "$OUTPUT"
.venv/bin/python - "$STUDENT" "$OUTPUT/random-init.safetensors" <<'PY'
import sys, torch
from auricle.models.checkpoints import read_checkpoint, save_checkpoint
from auricle.models.ced import CED
student = read_checkpoint(sys.argv[1])
torch.manual_seed(0)
save_checkpoint(CED(student.config), sys.argv[2], labels=student.labels, name="random-init-student-size")
PY
for start in distilled random; do
  weights=$STUDENT; [ "$start" = random ] && weights=$OUTPUT/random-init.safetensors
  nice -n 5 .venv/bin/auricle finetune "$FSDD/labels.csv" --audio-dir "$FSDD/recordings" --label-column digit \
    --output "$OUTPUT/$start$EPOCHS" --checkpoint "$weights" --epochs "$EPOCHS" --batch-size 32 --lr 1e-3 \
    --warmup 1 --max-seconds 1.0 --patience 15 --threads 1 --seed 0 --no-progress
done
