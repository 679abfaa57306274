"""Sanity check of the YAMNet teacher adapter: its mAP on the `everyday` test split.

    python experiments/yamnet_teacher_map.py ../shared/data/everyday

Each clip is scored in 10 s pieces (max over pieces) through the same ensemble
code the teacher pass uses (521 YAMNet classes aligned onto AudioSet's 527 by
MID); mAP is over the classes with at least one positive test clip. Random
scores give the chance level.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

from auricle.audio import load_audio
from auricle.distill.evaluation import mean_average_precision
from auricle.distill.teachers import TeacherEnsemble, load_teacher
from auricle.labels import audioset_labels


def main(folder: Path) -> None:
    torch.set_num_threads(2)
    labels = audioset_labels()
    rows = [row for row in csv.DictReader(open(folder / "labels.csv")) if row["split"] == "test"]
    ensemble = TeacherEnsemble([load_teacher("auricle.distill.yamnet:yamnet")])
    scores, targets = [], []
    for row in rows:
        wave = load_audio(folder / "audio" / row["file"])
        pieces = [wave[i : i + 160000] for i in range(0, len(wave), 160000)]
        pieces = [piece for piece in pieces if len(piece) >= 2400] or [wave]
        scores.append(np.max([ensemble.probabilities(torch.from_numpy(p)[None])[0].numpy() for p in pieces], axis=0))
        target = np.zeros(len(labels))
        target[[labels.index_of_mid(mid) for mid in row["mids"].split(";")]] = 1
        targets.append(target)
    scores, targets = np.array(scores), np.array(targets)
    chance = mean_average_precision(np.random.default_rng(0).random(scores.shape), targets)
    print(f"{len(rows)} test clips, {int((targets.sum(0) > 0).sum())} classes with positives: "
          f"YAMNet teacher mAP {mean_average_precision(scores, targets):.4f} (random scores {chance:.4f})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/everyday"))
