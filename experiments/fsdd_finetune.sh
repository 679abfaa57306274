#!/usr/bin/env bash
# Fine-tune ced-tiny from random initialisation on FSDD (fixed split: takes 0-4 test, 5-49 train;
# 10% of train per digit held out for early stopping). Writes ../runs/fsdd-finetune (outside the checkout)/{model.safetensors,result.json,log}.
# Usage: experiments/fsdd_finetune.sh [OUTPUT] [extra auricle finetune options]
set -euo pipefail
cd "$(dirname "$0")/.."
FSDD=${FSDD:-../shared/data/fsdd}
OUTPUT=${1:-${RUNS:-../runs}/fsdd-finetune}
shift || true
mkdir -p "$OUTPUT"
nice -n 10 .venv/bin/auricle finetune "$FSDD/labels.csv" --audio-dir "$FSDD/recordings" --label-column digit \
  --output "$OUTPUT" --model ced-tiny --from-scratch --epochs 30 --batch-size 16 --lr 7e-4 --warmup 1 \
  --max-seconds 1.0 --patience 8 --threads 2 --seed 0 --no-progress "$@" 2> >(tee -a "$OUTPUT/log" >&2)
