"""Decode cost per format: `load_audio` (decode + mix + resample) next to the bare decoder.

Writes --files clips of --seconds each per format to a temporary folder (the formats of
folder_e2e.py plus stereo AAC and Opus), then reports per format the median milliseconds per
file of `auricle.audio.load_audio` and of the raw decode alone (libsndfile's float32 read, or
PyAV's frames to arrays, whichever `load_audio` uses for that file). Single-threaded by nature
(numpy, libsndfile, FFmpeg decoding and soxr all run on the calling thread here).

    python benchmarks/decode_formats.py --files 4 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import soundfile as sf

from synthetic import report, write_recording, write_with_pyav

# (name, suffix, sample rate, channels, writer: "sndfile" or a PyAV codec, PyAV container format)
FORMATS = [
    ("wav16k_mono", "wav", 16000, 1, "sndfile", None),
    ("flac44k1_stereo", "flac", 44100, 2, "sndfile", None),
    ("ogg48k_mono", "ogg", 48000, 1, "sndfile", None),
    ("mp3_22k05_mono", "mp3", 22050, 1, "sndfile", None),
    ("m4a44k1_mono", "m4a", 44100, 1, "aac", None),
    ("m4a44k1_stereo", "m4a", 44100, 2, "aac", None),
    ("webm48k_stereo_opus", "webm", 48000, 2, "libopus", "webm"),
]


def raw_decode(path: str) -> int:
    """The decoder alone, to float32 arrays at the native rate; returns the frame count."""
    try:
        return len(sf.read(path, dtype="float32", always_2d=True)[0])
    except RuntimeError:
        import av

        with av.open(path) as container:
            return sum(frame.to_ndarray().shape[-1] for frame in container.decode(container.streams.audio[0]))


def median_ms(call, paths: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        for path in paths:
            start = time.perf_counter()
            call(path)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4, help="files per format")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from auricle.audio import load_audio

    result: dict = dict(date=time.strftime("%Y-%m-%d"), seconds=args.seconds, files=args.files)
    with tempfile.TemporaryDirectory() as folder:
        for name, suffix, rate, channels, writer, container_format in FORMATS:
            paths = []
            try:
                for index in range(args.files):
                    path = Path(folder) / f"{name}_{index}.{suffix}"
                    if writer == "sndfile":
                        write_recording(path, args.seconds, rate, channels, seed=index)
                    else:
                        write_with_pyav(path, args.seconds, rate, writer, index, channels, container_format)
                    paths.append(str(path))
            except Exception as error:  # a format this machine's libraries cannot write
                result[f"{name}_skipped"] = str(error).splitlines()[0]
                continue
            for path in paths:  # warm-up: imports, page cache
                load_audio(path)
            result[f"{name}_load_audio_ms"] = median_ms(load_audio, paths, args.repeats)
            result[f"{name}_raw_decode_ms"] = median_ms(raw_decode, paths, args.repeats)
    report(result, args.json)


if __name__ == "__main__":
    main()
