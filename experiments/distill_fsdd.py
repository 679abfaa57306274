"""Consistent vs inconsistent ensemble distillation on spoken digits (issue 4, item 6a).

One command (stages are skipped when their output exists, so a killed run continues):

    nice -n 10 .venv/bin/python experiments/distill_fsdd.py --out ../runs/distill-fsdd

1. Every FSDD recording is resampled to 16 kHz and zero-padded (or cut) to 1.0 s
   (99.3 % are shorter), so that chunks have one length and batch together.
2. Three teachers (small CEDs, seeds 0-2) are trained with labels on the train
   split (takes 5-49) by the small supervised trainer below.
3. `auricle distill shards` + `auricle distill teach` (the three teachers
   averaged, top-5, augmentation with roll, masks and mixup) on the train audio.
   The store never sees a label.
4. Students (a smaller CED) are trained with `auricle distill train` on those
   targets, replaying the teacher's views (consistent) or with `--inconsistent`,
   seeds 0-2 each; the held-out agreement with the teachers picks the averaged
   checkpoints, no label is used. A student of the same size is also trained
   directly on the labels with the supervised trainer (seeds 0-2).
5. Everything is scored on the test split (takes 0-4): accuracy over the ten
   digits. Results go to OUT/results.json and a Markdown table to stdout.

The teach pass maps teacher classes onto AudioSet classes by MID or name, so the
ten digits are carried under ten AudioSet class names (DIGIT_SLOTS): the
student has 527 outputs and is scored on those ten.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
import torch.nn.functional as F

from auricle.audio import load_audio
from auricle.labels import audioset_labels
from auricle.models.ced import CED, CEDConfig
from auricle.models.checkpoints import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd"
SAMPLES = 16000
# AudioSet classes 0-9 (all speech classes) carry the digits 0-9.
DIGIT_SLOTS = tuple(label.name for label in list(audioset_labels())[:10])
TEACHER = {"embed_dim": 96, "num_heads": 2, "depth": 3}
STUDENT = {"embed_dim": 64, "num_heads": 1, "depth": 2}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------- data


def prepare_audio(out: Path) -> None:
    """16 kHz, 1.0 s FLAC copies of every recording under OUT/audio/{train,test}, and labels.csv."""
    done = out / "audio" / "labels.csv"
    if done.exists():
        return
    rows = []
    with open(FSDD / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            audio = load_audio(FSDD / "recordings" / row["file"])[:SAMPLES]
            audio = np.pad(audio, (0, SAMPLES - len(audio)))
            path = out / "audio" / row["split"] / (Path(row["file"]).stem + ".flac")
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, audio, 16000, subtype="PCM_16")
            rows.append({"file": f"{row['split']}/{path.name}", "digit": row["digit"],
                         "labels": DIGIT_SLOTS[int(row["digit"])], "split": row["split"]})
    temporary = done.with_suffix(".tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "digit", "labels", "split"])
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(done)


def load_split(out: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    with open(out / "audio" / "labels.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    waves = np.stack([load_audio(out / "audio" / row["file"]) for row in rows])
    return torch.from_numpy(waves), torch.tensor([int(row["digit"]) for row in rows])


# ----------------------------------------------------------------------------- supervised trainer


def augment_mel(mel: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One time mask (<= 20 frames) and one frequency mask (<= 8 bands) per clip, set to 0 dB."""
    mel = mel.clone()
    frames = mel.shape[-1]
    for row in range(mel.shape[0]):
        width = int(torch.randint(0, 21, (1,), generator=generator))
        start = int(torch.randint(0, frames - width + 1, (1,), generator=generator))
        mel[row, :, start:start + width] = 0.0
        width = int(torch.randint(0, 9, (1,), generator=generator))
        start = int(torch.randint(0, 64 - width + 1, (1,), generator=generator))
        mel[row, start:start + width, :] = 0.0
    return mel


def logits_of(network: CED, mel: torch.Tensor) -> torch.Tensor:
    pieces, _ = network.pieces(network.normalize(mel))
    return network.forward_head(network.forward_features(pieces))


def train_supervised(waves: torch.Tensor, digits: torch.Tensor, config: dict, seed: int, epochs: int,
                     batch_size: int = 32, lr: float = 2e-3, loss_kind: str = "ce") -> CED:
    """Cross-entropy (softmax head) or one-hot BCE (sigmoid head, as AudioSet teachers) on the ten digits.

    Roll + mask augmentation, AdamW, warm-up + cosine.
    """
    from auricle.distill.schedule import Schedule

    torch.manual_seed(seed)
    activation = "softmax" if loss_kind == "ce" else "sigmoid"
    network = CED(CEDConfig(**config, num_classes=10, head_activation=activation))
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = len(waves) // batch_size
    schedule = Schedule(lr, steps_per_epoch * epochs, warmup_steps=steps_per_epoch, final_fraction=0.05)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(waves), generator=generator)
        for start in range(0, steps_per_epoch * batch_size, batch_size):
            batch = order[start:start + batch_size]
            shifts = torch.randint(-SAMPLES // 2, SAMPLES // 2 + 1, (len(batch),), generator=generator)
            rolled = torch.stack([torch.roll(waves[i], int(s)) if float(torch.rand(1, generator=generator)) < 0.5
                                  else waves[i] for i, s in zip(batch.tolist(), shifts)])
            with torch.no_grad():
                mel = augment_mel(network.spectrogram(rolled), generator)
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr(step)
            logits = logits_of(network, mel)
            if loss_kind == "ce":
                loss = F.cross_entropy(logits, digits[batch])
            else:
                loss = F.binary_cross_entropy_with_logits(logits, F.one_hot(digits[batch], 10).float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            step += 1
    return network.eval()


@torch.no_grad()
def accuracy(scores: torch.Tensor, digits: torch.Tensor) -> float:
    return float((scores.argmax(dim=1) == digits).float().mean())


@torch.no_grad()
def test_scores(network: CED, waves: torch.Tensor, columns: list[int] | None = None) -> torch.Tensor:
    network.eval()
    rows = [network(waves[i:i + 100]) for i in range(0, len(waves), 100)]
    scores = torch.cat(rows)
    return scores[:, columns] if columns is not None else scores


# ----------------------------------------------------------------------------- stages


def auricle(*args: str) -> None:
    command = [sys.executable, "-m", "auricle", *args]
    log("$ auricle " + " ".join(args))
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT.parent / "runs" / "distill-fsdd")
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--student-epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2))

    started = time.perf_counter()
    prepare_audio(out)
    train_waves, train_digits = load_split(out, "train")
    test_waves, test_digits = load_split(out, "test")
    log(f"audio: {len(train_waves)} train, {len(test_waves)} test clips of 1.0 s")
    labels = audioset_labels()
    slot_columns = [labels.index_of_name(name) for name in DIGIT_SLOTS]

    # Teachers, trained with labels.
    teacher_paths = []
    for seed in range(args.seeds):
        path = out / "teachers" / f"teacher{seed}.safetensors"
        if not path.exists():
            tick = time.perf_counter()
            # Sigmoid (BCE) teachers: the teach pass scores CED checkpoints with a sigmoid.
            network = train_supervised(train_waves, train_digits, TEACHER, seed, args.teacher_epochs, loss_kind="bce")
            save_checkpoint(network, path, labels=DIGIT_SLOTS, name=f"fsdd-teacher{seed}")
            results.setdefault("teachers", {})[str(seed)] = {
                "test_accuracy": accuracy(test_scores(network, test_waves), test_digits),
                "seconds": time.perf_counter() - tick}
            save()
            log(f"teacher {seed}: {results['teachers'][str(seed)]}")
        teacher_paths.append(path)
    if "ensemble" not in results:
        from auricle.models.checkpoints import build_model, read_checkpoint

        mean = sum(test_scores(build_model(read_checkpoint(p)), test_waves) for p in teacher_paths) / len(teacher_paths)
        results["ensemble"] = {"test_accuracy": accuracy(mean, test_digits)}
        save()
        log(f"teacher ensemble: {results['ensemble']}")

    # Label-free teacher pass on the train audio.
    shards, store = out / "shards", out / "store"
    if not (shards / "manifest.json").exists() or not json.loads((shards / "manifest.json").read_text()).get("complete"):
        auricle("distill", "shards", str(out / "audio" / "train"), "--out", str(shards), "--chunk-seconds", "1.0",
                "--chunks-per-shard", "500", "--resume", "--no-progress")
    if not (store / "manifest.json").exists() or not json.loads((store / "manifest.json").read_text()).get("complete"):
        tick = time.perf_counter()
        teachers = [item for path in teacher_paths for item in ("--teacher", str(path))]
        auricle("distill", "teach", "--shards", str(shards), *teachers, "--out", str(store),
                "--epochs", str(args.student_epochs), "--top-k", "5", "--seed", "0", "--batch-size", "64",
                "--time-mask", "20", "--freq-mask", "8", "--mixup-prob", "0.5", "--mixup-alpha", "1.0",
                "--threads", str(args.threads), "--resume", "--no-progress")
        results["teach_seconds"] = time.perf_counter() - tick
        save()
    student_json = out / "student.json"
    student_json.write_text(json.dumps(STUDENT))

    # Distilled students, consistent and inconsistent.
    for mode in ("consistent", "inconsistent"):
        for seed in range(args.seeds):
            run = out / "students" / f"{mode}{seed}"
            if not (run / "student.safetensors").exists():
                tick = time.perf_counter()
                auricle("distill", "train", "--shards", str(shards), "--targets", str(store), "--out", str(run),
                        "--student", str(student_json), "--epochs", str(args.student_epochs), "--batch-size", "32",
                        "--lr", "2e-3", "--seed", str(seed), "--holdout-fraction", "0.03", "--holdout-max", "64",
                        "--checkpoint-every", "80", "--eval-every", "40", "--average-best", "3",
                        "--threads", str(args.threads), "--quiet", "--resume",
                        *(["--inconsistent"] if mode == "inconsistent" else []))
                results.setdefault(mode, {})[str(seed)] = {"seconds": time.perf_counter() - tick}
            import auricle as package

            student = package.load_model(checkpoint=run / "student.safetensors").network
            entry = results.setdefault(mode, {}).setdefault(str(seed), {})
            entry["test_accuracy"] = accuracy(test_scores(student, test_waves, slot_columns), test_digits)
            final = json.loads((run / "result.json").read_text())["final_scores"]
            entry["holdout_agreement_top1"] = final.get("agreement_top1")
            save()
            log(f"{mode} student {seed}: {entry}")

    # Students of the same size trained directly on the labels.
    for seed in range(args.seeds):
        if str(seed) in results.get("supervised", {}):
            continue
        tick = time.perf_counter()
        network = train_supervised(train_waves, train_digits, STUDENT, seed, args.student_epochs)
        results.setdefault("supervised", {})[str(seed)] = {
            "test_accuracy": accuracy(test_scores(network, test_waves), test_digits),
            "seconds": time.perf_counter() - tick}
        save()
        log(f"supervised student {seed}: {results['supervised'][str(seed)]}")

    results["config"] = {"teacher": TEACHER, "student": STUDENT, "teacher_epochs": args.teacher_epochs,
                         "student_epochs": args.student_epochs, "seeds": args.seeds, "threads": args.threads}
    save()
    print(table(results))
    log(f"done in {time.perf_counter() - started:.0f} s (this call)")


def table(results: dict) -> str:
    lines = ["| model | runs | test accuracy mean | spread (min-max) | std |", "|---|---|---|---|---|"]
    for name, key in (("teacher (labels)", "teachers"), ("student, consistent distillation", "consistent"),
                      ("student, inconsistent distillation", "inconsistent"), ("student trained on labels", "supervised")):
        values = [entry["test_accuracy"] for entry in results.get(key, {}).values() if "test_accuracy" in entry]
        if not values:
            continue
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        lines.append(f"| {name} | {len(values)} | {100 * statistics.mean(values):.2f} % | "
                     f"{100 * min(values):.2f}-{100 * max(values):.2f} % | {100 * std:.2f} |")
    if "ensemble" in results:
        lines.append(f"| teacher ensemble (mean of 3) | 1 | {100 * results['ensemble']['test_accuracy']:.2f} % | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
