"""Folder tagging end to end (decode + resample + model) next to model-only throughput.

Writes --files clips of --seconds each to a temporary folder, cycling through
formats and rates (WAV 16 kHz mono, FLAC 44.1 kHz stereo, OGG Vorbis 48 kHz,
MP3 22.05 kHz, AAC in M4A 44.1 kHz; a format the local libsndfile cannot write
is skipped and said so), then measures in one process:
  * decode only: `load_audio` of every file (decode, mix, resample to 16 kHz);
  * model only: `AudioModel.score_windows` on the already decoded clips (batched
    as tagging batches them, over the engine's streams);
  * end to end: `AudioModel.iter_tag` over the files (what `auricle tag folder/` runs).
Model only and end to end take turns for --rounds rounds, so the machine's drift
hits both alike; the figures are medians over rounds, and the ratio is the
median of the per-round ratios. The target is end to end within 10% of model only.

    python benchmarks/folder_e2e.py --files 48 --rounds 5 --json benchmarks/results/folder_e2e.json

--checkpoint model.onnx runs an `auricle export` file (no torch in the model path).

Like `auricle tag`, it runs with OMP_WAIT_POLICY=PASSIVE unless the variable is set
(OMP_WAIT_POLICY=ACTIVE shows the spinning default of torch's OpenMP), and keeps freed
memory for reuse (auricle.allocator; AURICLE_MALLOC=default keeps glibc's defaults).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from auricle.allocator import keep_freed_memory
from auricle.cli import prefer_sleeping_openmp_threads

prefer_sleeping_openmp_threads()  # what `auricle tag` does before torch loads; OMP_WAIT_POLICY=ACTIVE to compare
MALLOC = "kept" if keep_freed_memory() else "default"  # as the `auricle` command does

import torch  # noqa: E402

from synthetic import REFERENCE_CHECKPOINT, report, write_recording, write_with_pyav

# (suffix, sample rate, channels, writer)
FORMATS = [("wav", 16000, 1, "sndfile"), ("flac", 44100, 2, "sndfile"), ("ogg", 48000, 1, "sndfile"),
           ("mp3", 22050, 1, "sndfile"), ("m4a", 44100, 1, "aac")]


def make_folder(folder: Path, files: int, seconds: float) -> tuple[list[str], list[str]]:
    paths, skipped = [], []
    usable = []
    for suffix, rate, channels, writer in FORMATS:
        probe = folder / f"probe.{suffix}"
        try:
            if writer == "sndfile":
                write_recording(probe, 0.5, rate, channels)
            else:
                write_with_pyav(probe, 0.5, rate, writer)
            usable.append((suffix, rate, channels, writer))
        except Exception as error:  # a format this machine's libraries cannot write
            skipped.append(f"{suffix}: {str(error).splitlines()[0]}")
        probe.unlink(missing_ok=True)
    for index in range(files):
        suffix, rate, channels, writer = usable[index % len(usable)]
        path = folder / f"clip_{index:04d}.{suffix}"
        if writer == "sndfile":
            write_recording(path, seconds, rate, channels, seed=index)
        else:
            write_with_pyav(path, seconds, rate, writer, seed=index)
        paths.append(str(path))
    return paths, skipped


def folder_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with what the folder benchmarks share: the folder's size, the model, the threads."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--checkpoint", type=Path, default=REFERENCE_CHECKPOINT)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main() -> None:
    parser = folder_arguments(__doc__)
    parser.add_argument("--batch-size", type=int, default=None, help="default: what auricle tag uses on a CPU")
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--streams", type=int, default=None, help="default: one per thread, as auricle tag")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from auricle.audio import load_audio
    from auricle import load_model

    torch.set_num_threads(args.threads)
    model = load_model(checkpoint=args.checkpoint, engine=args.engine, precision=args.precision,
                       threads=args.threads, streams=args.streams)
    args.batch_size = args.batch_size or model.batch_size
    with tempfile.TemporaryDirectory() as folder:
        files, skipped = make_folder(Path(folder), args.files, args.seconds)
        for line in skipped:
            print(f"skipped format {line}")

        start = time.perf_counter()
        decoded = [load_audio(path) for path in files]
        decode_s = time.perf_counter() - start

        # Model only, on the decoded clips cut as tagging cuts them (one 10 s window per clip here).
        window = int(10.0 * 16000)
        clips = [clip[:window] for clip in decoded]
        model.score_windows(clips[: 2 * args.batch_size], args.batch_size)  # warm-up: weight packing, streams
        options = model.tag_options(top_k=5)
        model_rates, e2e_rates, ratios = [], [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            model.score_windows(clips, args.batch_size)
            model_s = time.perf_counter() - start
            start = time.perf_counter()
            results = list(model.iter_tag(files, options, batch_size=args.batch_size))
            e2e_s = time.perf_counter() - start
            model_rates.append(len(files) / model_s)
            e2e_rates.append(len(files) / e2e_s)
            ratios.append(model_s / e2e_s)
    failures = [r for r in results if hasattr(r, "error")]
    result = dict(
        date=time.strftime("%Y-%m-%d"), files=len(files), seconds=args.seconds, threads=args.threads,
        batch_size=args.batch_size,
        engine=f"exported ({model.metadata['runtime']})" if hasattr(model, "metadata") else args.engine,
        precision=getattr(model, "precision", args.precision), streams=model.streams,
        checkpoint=str(args.checkpoint),
        skipped_formats=skipped,
        rounds=args.rounds, decode_files_per_s=len(files) / decode_s,
        model_only_clips_per_s=statistics.median(model_rates), end_to_end_files_per_s=statistics.median(e2e_rates),
        end_to_end_vs_model_only=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
        failures=len(failures), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), malloc=MALLOC,
    )
    report(result, args.json)


if __name__ == "__main__":
    main()
