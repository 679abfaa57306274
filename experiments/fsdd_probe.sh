#!/usr/bin/env bash
# Linear and MLP probes on FSDD (fixed split) on top of (1) ced-tiny at random initialisation (seed 0, the
# same weights `auricle finetune --from-scratch --seed 0` starts from) and (2) the encoder fine-tuned by
# experiments/fsdd_finetune.sh, if it exists. Scores go to ../runs/fsdd-probe/*.result.json.
# Usage: experiments/fsdd_probe.sh [random|finetuned|all]   (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
FSDD=${FSDD:-../shared/data/fsdd}
RUNS=${RUNS:-../runs}
OUT="$RUNS/fsdd-probe"
WHICH=${1:-all}
mkdir -p "$OUT"
.venv/bin/python - "$OUT/ced-tiny-random.safetensors" <<'PY'
import sys
from auricle.downstream.finetune import load_encoder
from auricle.models.checkpoints import save_checkpoint
encoder, _ = load_encoder("ced-tiny", None, from_scratch=True, seed=0)
save_checkpoint(encoder, sys.argv[1], name="ced-tiny-random")
PY
probe() {  # probe NAME CHECKPOINT [options]
  local name=$1 checkpoint=$2
  shift 2
  nice -n 10 .venv/bin/auricle probe "$FSDD/labels.csv" --audio-dir "$FSDD/recordings" --label-column digit \
    --checkpoint "$checkpoint" --threads 1 --no-progress --cache-dir "$RUNS/embedding-cache" \
    -o "$OUT/$name.safetensors" --result "$OUT/$name.result.json" "$@" > /dev/null
}
if [ "$WHICH" != finetuned ]; then
  probe random-linear "$OUT/ced-tiny-random.safetensors" --head linear --folds 5
  probe random-mlp "$OUT/ced-tiny-random.safetensors" --head mlp
fi
if [ "$WHICH" != random ] && [ -f "$RUNS/fsdd-finetune/model.safetensors" ]; then
  probe finetuned-linear "$RUNS/fsdd-finetune/model.safetensors" --head linear --folds 5
  probe finetuned-mlp "$RUNS/fsdd-finetune/model.safetensors" --head mlp
fi
.venv/bin/python - "$OUT" <<'PY'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.result.json")):
    result = json.loads(path.read_text())
    if not result.get("test"):
        continue
    test, folds = result["test"], result.get("fold_mean") or {}
    cv = f", 5-fold accuracy {folds['accuracy']:.4f} +- {folds['accuracy_std']:.4f}" if folds else ""
    name = path.name.removesuffix('.result.json')
    print(f"{name}: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, "
          f"mAP {test['mean_average_precision']:.4f}, d' {test['d_prime']}{cv}")
PY
