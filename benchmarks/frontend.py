"""The log-mel frontend per 10 s clip: auricle's LogMel beside the plain operations it replaces.

"plain" is the same log-mel computed the straightforward way: reflect padding with
``F.pad`` and one product with the whole 257 x 64 filterbank (what auricle ran before
2026-12-05). Both take turns for --rounds rounds on the same clips, one thread by
default (the frontend runs inside each one-thread stream); figures are medians over
rounds of the per-call median, in ms per clip.

    python benchmarks/frontend.py --rounds 7 --json benchmarks/results/frontend.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from auricle.allocator import keep_freed_memory
from auricle.frontend import LogMel
from auricle.inference.tuning import cpu_model


def plain_log_mel(frontend: LogMel, waveforms: torch.Tensor) -> torch.Tensor:
    cfg = frontend.config
    padding = cfg.n_fft // 2
    padded = F.pad(waveforms.unsqueeze(-2), (padding, padding), mode="reflect").squeeze(-2)
    spectrum = torch.stft(padded, cfg.n_fft, cfg.hop_length, cfg.win_length, window=frontend.window,
                          center=False, return_complex=True)
    power = spectrum.real.square() + spectrum.imag.square()
    mel = torch.matmul(power.transpose(-1, -2), frontend.mel_basis).transpose(-1, -2)
    mel_db = frontend.decibels(mel)
    return frontend.floor(mel_db, mel_db.amax(dim=(-2, -1), keepdim=True))


def ms_per_clip(function, waveforms: torch.Tensor, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function(waveforms)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / len(waveforms) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="clips per call (a stream's call by default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50, help="calls per figure per round")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    malloc = "kept" if keep_freed_memory() else "default"  # as the `auricle` command does
    torch.set_num_threads(args.threads)
    frontend = LogMel()
    waveforms = torch.randn(args.batch, 160000) * 0.1
    variants = {"auricle": frontend, "plain": lambda clips: plain_log_mel(frontend, clips)}
    with torch.inference_mode():
        difference = (frontend(waveforms) - variants["plain"](waveforms)).abs().max().item()
        for variant in variants.values():
            ms_per_clip(variant, waveforms, 3)
        rounds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, variant in variants.items():
                rounds[name].append(ms_per_clip(variant, waveforms, args.calls))
    rows = {name: {"ms_per_clip": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}
            for name, values in rounds.items()}
    print(f"{cpu_model()}, {args.threads} thread(s), calls of {args.batch} clips, freed memory {malloc}; "
          f"max |difference| {difference:.2e} dB")
    for name, row in rows.items():
        print(f"{name:<8} {row['ms_per_clip']:6.3f} ms per clip ({row['min']:.3f}-{row['max']:.3f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu_model": cpu_model(),
            "threads": args.threads, "batch": args.batch, "rounds": args.rounds, "calls": args.calls, "malloc": malloc,
            "max_abs_difference_db": difference, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
