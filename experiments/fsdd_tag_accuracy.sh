#!/usr/bin/env bash
# Top-1 accuracy of a checkpoint on the FSDD test split (takes 0-4) through `auricle tag`, i.e. exactly
# what a user of the saved model gets. Usage: experiments/fsdd_tag_accuracy.sh CHECKPOINT
set -euo pipefail
cd "$(dirname "$0")/.."
FSDD=${FSDD:-../shared/data/fsdd}
CHECKPOINT=$1
LIST=$(mktemp)
trap 'rm -f "$LIST" "$LIST.jsonl"' EXIT
awk -F, -v dir="$FSDD/recordings" 'NR > 1 && $5 == "test" {print dir "/" $1}' "$FSDD/labels.csv" > "$LIST"
nice -n 10 .venv/bin/auricle tag --checkpoint "$CHECKPOINT" -k 1 -f jsonl --threads 1 --no-progress \
  -o "$LIST.jsonl" $(cat "$LIST")
.venv/bin/python - "$LIST.jsonl" "$CHECKPOINT" <<'PY'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
right = sum(row["tags"][0]["label"] == os.path.basename(row["file"]).split("_")[0] for row in rows)
print(f"{sys.argv[2]}: auricle tag top-1 accuracy on the FSDD test split {right}/{len(rows)} = {right / len(rows):.4f}")
PY
