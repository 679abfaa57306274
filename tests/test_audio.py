"""Decoding, mixing, resampling and file listing (auricle.audio).

Every fixture is generated under tmp_path: soundfile writes WAV/FLAC/OGG/MP3,
PyAV encodes M4A (AAC), WebM (Opus), MKA (PCM) and MP4 (MPEG-4 video + AAC).
"""

from __future__ import annotations

import os

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from auricle.audio import (
    SAMPLE_RATE,
    AudioInfo,
    audio_info,
    iter_blocks,
    list_audio_files,
    load_audio,
    prepare_waveform,
)
from auricle.errors import AudioError, AuricleError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# -- helpers ---------------------------------------------------------------------


def sine(frequency: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(signal: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[np.argmax(spectrum)])


def expect_audio_error(call, *args, fragment: str, name: str, **kwargs) -> str:
    """The call raises AudioError whose single-line message names the file and the cause."""
    with pytest.raises(AudioError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert isinstance(caught.value, AuricleError)
    assert name in message, message
    assert fragment in message, message
    assert "\n" not in message and "\r" not in message, message
    return message


def require_encoder(name: str) -> None:
    import av

    try:
        av.codec.Codec(name, "w")
    except Exception:
        pytest.skip(f"this PyAV wheel has no {name!r} encoder")


def encode(path: Path, codec: str, rate: int, channels: np.ndarray, *, container_format: str | None = None,
           video: bool = False, audio: bool = True) -> Path:
    """Write (channels, samples) float or int16 samples with PyAV (optionally beside a tiny video)."""
    import av

    require_encoder(codec)
    layout = {1: "mono", 2: "stereo"}[channels.shape[0]]
    with av.open(str(path), "w", format=container_format) as container:
        if video:
            require_encoder("mpeg4")
            video_stream = container.add_stream("mpeg4", rate=10)
            video_stream.width = video_stream.height = 32
            video_stream.pix_fmt = "yuv420p"
        if audio:
            stream = container.add_stream(codec, rate=rate, layout=layout)
            formats = [f.name for f in stream.codec_context.codec.audio_formats]
            sample_format = next(f for f in ("fltp", "flt", "s16") if f in formats)
            data = channels.astype(np.int16 if sample_format == "s16" else np.float32)
            step = 960 if "opus" in codec else 1024
            for start in range(0, data.shape[1], step):
                piece = np.ascontiguousarray(data[:, start : start + step])
                if not sample_format.endswith("p"):  # packed: one interleaved plane
                    piece = np.ascontiguousarray(piece.T.reshape(1, -1))
                frame = av.AudioFrame.from_ndarray(piece, format=sample_format, layout=layout)
                frame.sample_rate = rate
                frame.pts = start
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        if video:
            for index in range(20):
                frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
                frame.pts = index
                for packet in video_stream.encode(frame):
                    container.mux(packet)
            for packet in video_stream.encode(None):
                container.mux(packet)
    return path


def pcm_wav(tag: int, data: bytes, channels: int = 1, rate: int = 16000, bits: int = 16) -> bytes:
    """A hand-made WAV with an arbitrary format tag."""
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture
def int16_wav(tmp_path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    samples = rng.integers(-32768, 32768, 16000, dtype=np.int16)
    samples[:2] = [-32768, 32767]
    path = tmp_path / "pcm16.wav"
    sf.write(path, samples, 16000, subtype="PCM_16")
    return path, samples


# -- PCM WAV ---------------------------------------------------------------------


def test_int16_wav_at_16k_is_exact_passthrough(int16_wav):
    path, samples = int16_wav
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_array_equal(audio, samples.astype(np.float32) / 32768)


@pytest.mark.parametrize("rate", [8000, 96000])
def test_wav_is_resampled_to_16k(tmp_path, rate):
    path = tmp_path / f"sine_{rate}.wav"
    sf.write(path, sine(440, rate, 1.0), rate, subtype="PCM_16")
    audio = load_audio(path)
    assert abs(len(audio) - 16000) <= 2
    assert dominant_frequency(audio) == pytest.approx(440, abs=2)
    assert np.sqrt(np.mean(audio[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_other_target_rate(tmp_path):
    path = tmp_path / "sine.wav"
    sf.write(path, sine(440, 44100, 1.0), 44100)
    audio = load_audio(path, sample_rate=8000)
    assert abs(len(audio) - 8000) <= 2
    assert dominant_frequency(audio, 8000) == pytest.approx(440, abs=2)


def test_24bit_32bit_and_8bit_pcm(tmp_path):
    values = np.array([-(2**23), -12345, 0, 1, 4_000_000, 2**23 - 1], dtype=np.int32)
    path24 = tmp_path / "pcm24.wav"
    sf.write(path24, values << 8, 16000, subtype="PCM_24")  # int32 input: the top 24 bits are kept
    np.testing.assert_array_equal(load_audio(path24), (values / 2**23).astype(np.float32))

    values32 = np.array([-(2**31), -5, 0, 2**30, 2**31 - 1], dtype=np.int32)
    path32 = tmp_path / "pcm32.wav"
    sf.write(path32, values32, 16000, subtype="PCM_32")
    np.testing.assert_allclose(load_audio(path32), values32 / 2**31, rtol=0, atol=1e-7)

    path8 = tmp_path / "pcm_u8.wav"
    sf.write(path8, np.array([-1.0, -0.5, 0.0, 0.5], dtype=np.float32), 16000, subtype="PCM_U8")
    np.testing.assert_array_equal(load_audio(path8), [-1.0, -0.5, 0.0, 0.5])


def test_float32_wav_is_exact(tmp_path):
    samples = np.random.default_rng(1).uniform(-1, 1, 4000).astype(np.float32)
    path = tmp_path / "float.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), samples)


def test_six_channels_are_mixed_by_plain_mean(tmp_path):
    levels = np.array([0.1, -0.2, 0.3, 0.05, -0.4, 0.25])
    frames = np.tile(levels, (8000, 1))
    frames[:, 0] += sine(440, 16000, 0.5, 0.3)
    path = tmp_path / "six.wav"
    sf.write(path, frames.astype(np.float32), 16000, subtype="FLOAT")
    audio = load_audio(path)
    expected = frames.astype(np.float32).mean(axis=1, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(audio, expected)
    assert audio.mean() == pytest.approx(levels.mean(), abs=1e-3)


def extreme_channels(channels: int, samples: int, seed: int = 0, overflow: bool = False) -> np.ndarray:
    """(channels, samples) float32 spanning every magnitude: subnormals, ±0, huge values.

    With ``overflow``, some float32 sums of the channels overflow (their means do not).
    """
    rng = np.random.default_rng(seed)
    top = np.finfo(np.float32).max
    exponents = rng.integers(-149, 127 - channels.bit_length(), (channels, samples)).astype(np.float64)
    values = (rng.uniform(1, 2, (channels, samples)) * np.exp2(exponents)).astype(np.float32)
    values *= rng.choice(np.float32([-1, 1]), (channels, samples))
    values[:, :1000] = rng.standard_normal((channels, 1000)).astype(np.float32)  # ordinary audio
    values[:, 1000:1200] = rng.choice(np.float32([0, -0.0, 1e-45, -1e-45, 3e-45, 1e-38]), (channels, 200))
    values[:, 1200:1210] = 1.0
    values[0, 1200:1210] = top
    values[1, 1200:1205] = -top
    values[:, 1210] = top / channels  # no overflow yet
    if overflow:
        values[:, 1211:1220] = rng.choice(np.float32([top, top / 2, 1.7e38]), (channels, 9))
    return values


def reference_mean(channels_first: np.ndarray) -> np.ndarray:
    return channels_first.mean(axis=0, dtype=np.float64).astype(np.float32)


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype == np.float32 and actual.shape == expected.shape
    different = np.flatnonzero(actual.view(np.uint32) != expected.view(np.uint32))
    assert not len(different), (len(different), actual[different[:5]], expected[different[:5]])


@pytest.mark.parametrize("channels", [2, 3, 5, 7, 8, 9])
@pytest.mark.parametrize("layout", ["channels_first", "interleaved"])
def test_mix_is_the_float64_mean_bit_for_bit(channels, layout):
    from auricle.audio import _mix

    for overflow in (False, True):
        values = extreme_channels(channels, 20000, seed=channels, overflow=overflow)
        with np.errstate(over="ignore"):
            assert np.isfinite(values.sum(axis=0)).all() != overflow  # float32 sums overflow or not
        # the decoder hands over (frames, channels) arrays, so _mix sees a strided transposed view
        view = values if layout == "channels_first" else np.ascontiguousarray(values.T).T
        assert_same_bits(_mix(view), reference_mean(view))
        assert_same_bits(_mix(view.astype(np.float64)), reference_mean(view.astype(np.float64)))


def test_stereo_mix_of_extreme_values_through_files_and_arrays(tmp_path):
    path = tmp_path / "extreme.wav"
    for overflow in (False, True):
        values = extreme_channels(2, 30000, overflow=overflow)
        expected = reference_mean(values)
        assert np.isfinite(expected).all()
        assert_same_bits(prepare_waveform(values, SAMPLE_RATE), expected)
        sf.write(path, values.T, SAMPLE_RATE, subtype="FLOAT")
        assert_same_bits(load_audio(path), expected)
    values[1, 20000] = np.inf
    expect_audio_error(prepare_waveform, values, SAMPLE_RATE, "loud", fragment="contains NaN or Inf", name="loud")
    values[1, 20000] = np.nan
    sf.write(path, values.T, SAMPLE_RATE, subtype="FLOAT")
    expect_audio_error(load_audio, path, fragment="contains NaN or Inf", name="extreme.wav")


def test_stereo_44k1_is_mean_then_resampled(tmp_path):
    left = sine(440, 44100, 2.0)
    right = sine(440, 44100, 2.0) + 0.2
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    audio = load_audio(path)
    assert abs(len(audio) - 32000) <= 2
    assert dominant_frequency(audio - audio.mean()) == pytest.approx(440, abs=1)
    assert audio[1000:-1000].mean() == pytest.approx(0.1, abs=2e-3)
    # decoding the file yourself and passing the array gives exactly the same samples
    frames, rate = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(prepare_waveform(frames.T, rate), audio)


# -- compressed formats ----------------------------------------------------------------


def test_flac_is_lossless(tmp_path, int16_wav):
    _, samples = int16_wav
    path = tmp_path / "x.flac"
    sf.write(path, samples, 16000, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(path), samples.astype(np.float32) / 32768)


def test_ogg_vorbis(tmp_path):
    path = tmp_path / "x.ogg"
    sf.write(path, sine(440, 44100, 2.0), 44100, format="OGG", subtype="VORBIS")
    audio = load_audio(path)
    assert abs(len(audio) - 32000) <= 2
    assert dominant_frequency(audio) == pytest.approx(440, abs=1)


def test_mp3(tmp_path):
    if tuple(int(p) for p in sf.__libsndfile_version__.split(".")[:2]) < (1, 1):
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write MP3")
    path = tmp_path / "x.mp3"
    sf.write(path, sine(440, 44100, 2.0), 44100, format="MP3")
    audio = load_audio(path)
    assert abs(len(audio) - 32000) <= 420  # at most one MP3 frame (1152 samples at 44.1 kHz) off
    assert dominant_frequency(audio) == pytest.approx(440, abs=1)
    assert audio_info(path).format == "mp3/mpeg_layer_iii"


def test_m4a_aac_via_pyav(tmp_path):
    path = encode(tmp_path / "x.m4a", "aac", 44100, sine(440, 44100, 2.0)[None])
    audio = load_audio(path)
    # Priming (the edit list's skip) and the last frame's padding to 1024 samples are both cut:
    # 2.0 s = 88200 samples at 44.1 kHz is 86.1 AAC frames, which decode to 88.2k + 0.9 frame of padding.
    assert len(audio) == 32000
    assert dominant_frequency(audio) == pytest.approx(440, abs=1)
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.format) == (44100, 1, "mov/aac")
    assert info.duration == pytest.approx(2.0, abs=0.05)


def test_webm_opus_via_pyav(tmp_path):
    path = encode(tmp_path / "x.webm", "libopus", 48000, sine(440, 48000, 2.0)[None], container_format="webm")
    audio = load_audio(path)
    assert abs(len(audio) - 32000) <= 400
    assert dominant_frequency(audio) == pytest.approx(440, abs=1)
    assert audio_info(path).format == "matroska/opus"


def test_pyav_packed_int16_stereo_is_plain_mean(tmp_path):
    rng = np.random.default_rng(2)
    channels = rng.integers(-32768, 32768, (2, 8000), dtype=np.int16)
    path = encode(tmp_path / "pcm.mka", "pcm_s16le", 16000, channels, container_format="matroska")
    audio = load_audio(path)
    expected = (channels.astype(np.float64).mean(axis=0) / 32768).astype(np.float32)
    np.testing.assert_array_equal(audio, expected)


def per_frame_reference(path: Path) -> np.ndarray:
    """Mono at the native rate, converted and mixed one PyAV frame at a time (the former decoder)."""
    import av

    pieces = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            array = frame.to_ndarray()
            if not frame.format.is_planar:
                array = array.reshape(-1, frame.layout.nb_channels).T
            if array.dtype == np.int16:
                array = array / np.float32(32768)
            pieces.append(reference_mean(array))
    return np.concatenate(pieces)


@pytest.mark.parametrize(
    "suffix, codec, rate, container_format",
    [("m4a", "aac", 44100, None), ("webm", "libopus", 48000, "webm"), ("mka", "pcm_s16le", 22050, "matroska")],
)
@pytest.mark.integration
def test_pyav_chunks_equal_frame_by_frame_decoding(tmp_path, suffix, codec, rate, container_format):
    rng = np.random.default_rng(4)
    seconds = 2.5 * 65536 / rate  # several DECODE_FRAMES chunks
    left = sine(440, rate, seconds, 0.4) + rng.normal(0, 0.05, int(rate * seconds)).astype(np.float32)
    stereo = np.stack([left, sine(1300, rate, seconds, 0.3)])
    if codec.startswith("pcm_s16"):
        stereo = (stereo * 32767).astype(np.int16)
    path = encode(tmp_path / f"x.{suffix}", codec, rate, stereo, container_format=container_format)
    expected = per_frame_reference(path)
    assert len(expected) > 2 * 65536
    native = load_audio(path, sample_rate=rate)  # same rate: no resampling, decode and mix only
    if suffix == "m4a":  # cut at the track's declared length: the last AAC frame's padding is dropped
        # The edit list counts in the movie's milliseconds: the cut lands within half of one of the end.
        assert len(native) == audio_info(path).frames < len(expected)
        assert abs(len(native) - stereo.shape[1]) <= rate // 2000
        expected = expected[: len(native)]
    assert_same_bits(native, expected)
    np.testing.assert_array_equal(np.concatenate(list(iter_blocks(path, 30000, sample_rate=rate))), native)


def test_pyav_sample_format_without_numpy_dtype(tmp_path, monkeypatch):
    import av.audio.frame

    path = encode(tmp_path / "x.m4a", "aac", 44100, sine(440, 44100, 0.5)[None])
    dtypes = {key: value for key, value in av.audio.frame.format_dtypes.items() if key != "fltp"}
    monkeypatch.setattr(av.audio.frame, "format_dtypes", dtypes)
    expect_audio_error(load_audio, path, fragment="unsupported sample format 'fltp'", name="x.m4a")


def test_without_pyav_formats_libsndfile_cannot_read_fail_one_file_at_a_time(tmp_path, monkeypatch):
    """A minimal install (exported files only, docs/deploy.md) may lack PyAV: say so per file, not with a traceback."""
    import sys

    m4a = encode(tmp_path / "x.m4a", "aac", 44100, sine(440, 44100, 0.5)[None])
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    for call in (load_audio, audio_info, lambda path: list(iter_blocks(path, 16000))):
        expect_audio_error(call, m4a, fragment="PyAV (FFmpeg), which reads more formats, is not installed: "
                                               "pip install av", name="x.m4a")
    sf.write(tmp_path / "x.flac", sine(440, 16000, 0.5), 16000)  # libsndfile formats still decode
    assert load_audio(tmp_path / "x.flac").size == 8000


def test_video_file_uses_its_audio_stream(tmp_path):
    stereo = np.stack([sine(440, 44100, 2.0), sine(440, 44100, 2.0)])
    path = encode(tmp_path / "clip.mp4", "aac", 44100, stereo, video=True)
    audio = load_audio(path)
    assert abs(len(audio) - 32000) <= 800
    assert dominant_frequency(audio) == pytest.approx(440, abs=1)
    assert audio_info(path).channels == 2


def test_video_without_audio(tmp_path):
    path = encode(tmp_path / "silent.mp4", "aac", 44100, sine(440, 44100, 0.1)[None], video=True, audio=False)
    expect_audio_error(load_audio, path, fragment="no audio stream", name="silent.mp4")
    expect_audio_error(audio_info, path, fragment="no audio stream", name="silent.mp4")


def test_unknown_wav_codec(tmp_path):
    path = tmp_path / "odd_codec.wav"
    path.write_bytes(pcm_wav(0x1234, bytes(3200)))
    expect_audio_error(load_audio, path, fragment="unsupported codec", name="odd_codec.wav")


# -- streaming ---------------------------------------------------------------------------


def test_iter_blocks_equals_load_audio_for_long_resampled_file(tmp_path):
    rng = np.random.default_rng(3)
    seconds = 30
    left = sine(440, 44100, seconds) + rng.normal(0, 0.05, 44100 * seconds).astype(np.float32)
    right = sine(1000, 44100, seconds, 0.2)
    path = tmp_path / "long.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    blocks = list(iter_blocks(path, block_samples=160000))
    assert [len(block) for block in blocks[:-1]] == [160000] * (len(blocks) - 1)
    assert 0 < len(blocks[-1]) <= 160000
    whole = load_audio(path)
    assert abs(len(whole) - 16000 * seconds) <= 2
    assert all(block.dtype == np.float32 for block in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_only_mp4_durations_cut_the_decoded_audio():
    from auricle.audio_ffmpeg import _within_duration

    chunks = [(44100, np.ones(1000, np.float32)), (44100, np.ones(1000, np.float32))]
    assert [len(c) for _, c in _within_duration(iter(chunks), (44100, 1500))] == [1000, 500]
    assert [len(c) for _, c in _within_duration(iter(chunks), None)] == [1000, 1000]
    assert [len(c) for _, c in _within_duration(iter(chunks), (48000, 10))] == [1000, 1000]  # another rate


def test_iter_blocks_equals_load_audio_for_m4a(tmp_path):
    path = encode(tmp_path / "x.m4a", "aac", 44100, sine(440, 44100, 2.0)[None])
    blocks = list(iter_blocks(path, block_samples=5000))
    assert [len(block) for block in blocks[:-1]] == [5000] * (len(blocks) - 1)
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path))


def test_iter_blocks_short_file_and_bad_arguments(int16_wav):
    path, samples = int16_wav
    (only,) = list(iter_blocks(path, block_samples=10**6))
    np.testing.assert_array_equal(only, samples / np.float32(32768))
    with pytest.raises(ValueError):
        iter_blocks(path, block_samples=0)
    with pytest.raises(ValueError):
        load_audio(path, sample_rate=0)


def test_iter_blocks_checks_the_file_at_call_time(tmp_path):
    expect_audio_error(iter_blocks, tmp_path / "gone.wav", 1000, fragment="file not found", name="gone.wav")


# -- bad files ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    samples = sine(440, 16000, 10.0)
    samples[150000] = bad  # past the first decoded chunk
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    expect_audio_error(load_audio, path, fragment="contains NaN or Inf samples", name="nan.wav")
    blocks = iter_blocks(path, block_samples=16000)
    assert len(next(blocks)) == 16000  # the bad sample is further on
    expect_audio_error(list, blocks, fragment="contains NaN or Inf samples", name="nan.wav")
    resampled = tmp_path / "nan_44k.wav"
    sf.write(resampled, samples, 44100, subtype="FLOAT")
    expect_audio_error(load_audio, resampled, fragment="contains NaN or Inf samples", name="nan_44k.wav")


def test_missing_file(tmp_path):
    path = tmp_path / "recordings" / "x.wav"
    message = expect_audio_error(load_audio, path, fragment="file not found", name="x.wav")
    assert message == f"{path}: file not found"


def test_directory(tmp_path):
    expect_audio_error(load_audio, tmp_path, fragment="is a directory", name=str(tmp_path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    message = expect_audio_error(load_audio, path, fragment="empty file (0 bytes)", name="empty.wav")
    assert message == f"{path}: empty file (0 bytes)"
    expect_audio_error(audio_info, path, fragment="empty file", name="empty.wav")


def test_wav_truncated_in_header(tmp_path, int16_wav):
    source, _ = int16_wav
    path = tmp_path / "cut_header.wav"
    path.write_bytes(source.read_bytes()[:20])
    expect_audio_error(load_audio, path, fragment="corrupt or truncated audio", name="cut_header.wav")
    expect_audio_error(audio_info, path, fragment="corrupt or truncated audio", name="cut_header.wav")


def test_wav_truncated_mid_data_gives_the_samples_present(tmp_path, int16_wav):
    source, samples = int16_wav
    path = tmp_path / "cut_data.wav"
    path.write_bytes(source.read_bytes()[: 44 + 2 * 5000 + 1])  # header claims 16000 samples
    audio = load_audio(path)
    np.testing.assert_array_equal(audio, samples[:5000] / np.float32(32768))
    assert audio_info(path).frames == 5000


def test_wav_without_samples(tmp_path, int16_wav):
    source, _ = int16_wav
    path = tmp_path / "header_only.wav"
    path.write_bytes(pcm_wav(1, b""))
    expect_audio_error(load_audio, path, fragment="no audio samples", name="header_only.wav")
    expect_audio_error(list, iter_blocks(path, 1000), fragment="no audio samples", name="header_only.wav")


def test_random_bytes_named_wav(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    expect_audio_error(load_audio, path, fragment="not an audio file or unsupported format", name="noise.wav")


def test_text_file_named_wav(tmp_path, capfd):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 100)
    expect_audio_error(load_audio, path, fragment="not an audio file or unsupported format", name="notes.wav")
    assert capfd.readouterr() == ("", "")  # neither decoder printed anything


def test_corrupt_flac(tmp_path, int16_wav):
    _, samples = int16_wav
    good = tmp_path / "good.flac"
    sf.write(good, np.tile(samples, 5), 16000, subtype="PCM_16")
    data = good.read_bytes()
    path = tmp_path / "half.flac"
    path.write_bytes(data[: len(data) // 2])
    expect_audio_error(load_audio, path, fragment="corrupt or truncated audio", name="half.flac")


def test_decoding_prints_nothing(tmp_path, capfd):
    path = encode(tmp_path / "x.m4a", "aac", 44100, sine(440, 44100, 0.5)[None])
    load_audio(path)
    audio_info(path)
    assert capfd.readouterr() == ("", "")


# -- header info -------------------------------------------------------------------------


def test_audio_info_from_header(tmp_path):
    path = tmp_path / "info.wav"
    sf.write(path, np.zeros((22050, 3), np.float32), 44100, subtype="PCM_24")
    info = audio_info(path)
    assert info == AudioInfo(str(path), 44100, 3, 22050, 0.5, "wav/pcm_24")
    expect_audio_error(audio_info, tmp_path / "nope.wav", fragment="file not found", name="nope.wav")


# -- in-memory arrays --------------------------------------------------------------------


def test_prepare_waveform_integer_arrays():
    int16 = np.array([-32768, -1, 0, 16384, 32767], dtype=np.int16)
    np.testing.assert_array_equal(prepare_waveform(int16, 16000), int16.astype(np.float32) / 32768)
    int32 = np.array([-(2**31), 0, 2**30], dtype=np.int32)
    np.testing.assert_array_equal(prepare_waveform(int32, 16000), [-1.0, 0.0, 0.5])
    uint8 = np.array([0, 64, 128, 255], dtype=np.uint8)
    np.testing.assert_array_equal(prepare_waveform(uint8, 16000), [-1.0, -0.5, 0.0, 127 / 128])


def test_prepare_waveform_two_dimensional_and_resampling():
    stereo = np.stack([sine(440, 48000, 1.0), np.full(48000, 0.25, np.float32)])
    audio = prepare_waveform(stereo, 48000)
    assert audio.dtype == np.float32 and audio.shape == (16000,)
    assert audio[1000:-1000].mean() == pytest.approx(0.125, abs=1e-3)
    assert dominant_frequency(audio - audio.mean()) == pytest.approx(440, abs=1)
    passthrough = prepare_waveform(stereo[:, :100].astype(np.float64), 16000)
    np.testing.assert_array_equal(passthrough, stereo[:, :100].astype(np.float64).mean(axis=0).astype(np.float32))


def test_prepare_waveform_torch_tensor():
    tensor = torch.linspace(-1, 1, 3200).reshape(2, 1600).requires_grad_()
    audio = prepare_waveform(tensor, 16000)
    np.testing.assert_array_equal(audio, tensor.detach().numpy().mean(axis=0, dtype=np.float64).astype(np.float32))
    half = prepare_waveform(torch.ones(800, dtype=torch.bfloat16), 8000)
    assert abs(len(half) - 1600) <= 1
    ints = prepare_waveform(torch.tensor([16384, -16384], dtype=torch.int16), 16000)
    np.testing.assert_array_equal(ints, [0.5, -0.5])


def test_prepare_waveform_returns_a_copy():
    samples = np.zeros(100, np.float32)
    audio = prepare_waveform(samples, 16000)
    audio[0] = 1
    assert samples[0] == 0


@pytest.mark.parametrize(
    ("waveform", "fragment"),
    [
        (np.array([0.0, np.nan, 0.0], np.float32), "contains NaN or Inf samples"),
        (torch.tensor([0.0, float("inf")]), "contains NaN or Inf samples"),
        (np.zeros(0, np.float32), "no audio samples"),
        (np.zeros((2, 0), np.float32), "no audio samples"),
        (np.zeros((1, 2, 3), np.float32), "expected a 1-D (samples) or 2-D (channels, samples) array"),
        (np.zeros((44100, 2), np.float32), "more channels than samples"),
        (np.zeros(10, np.complex64), "unsupported sample type"),
        (np.zeros(10, bool), "unsupported sample type"),
    ],
)
def test_prepare_waveform_errors(waveform, fragment):
    expect_audio_error(prepare_waveform, waveform, 16000, "my_array", fragment=fragment, name="my_array")


# -- file lists --------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    for relative in ["a.wav", "b.FLAC", "notes.txt", ".hidden.wav", "sub/c.mp3", "sub/deeper/d.ogg",
                     ".git/e.wav", "raw/take.xyz"]:
        path = tmp_path / "data" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path / "data"


def test_list_audio_files_folders(tree):
    assert list_audio_files([str(tree)]) == [str(tree / "a.wav"), str(tree / "b.FLAC")]
    assert list_audio_files([str(tree)], recursive=True) == [
        str(tree / "a.wav"), str(tree / "b.FLAC"), str(tree / "sub" / "c.mp3"), str(tree / "sub" / "deeper" / "d.ogg"),
    ]


def test_list_audio_files_globs(tree):
    assert list_audio_files([f"{tree}/*.wav"]) == [str(tree / "a.wav")]
    assert list_audio_files([f"{tree}/**/*.ogg"]) == [str(tree / "sub" / "deeper" / "d.ogg")]
    assert list_audio_files([f"{tree}/raw/*.xyz"]) == [str(tree / "raw" / "take.xyz")]  # extension named
    # a matched folder counts as a named folder: its audio files, recursing only with recursive=True
    assert list_audio_files([f"{tree}/sub/*"]) == [str(tree / "sub" / "c.mp3"), str(tree / "sub" / "deeper" / "d.ogg")]
    assert list_audio_files([f"{tree}/s*"]) == [str(tree / "sub" / "c.mp3")]
    pattern = f"{tree}/*.m4a"
    message = expect_audio_error(list_audio_files, [pattern], fragment="no files match", name=pattern)
    assert message == f"{pattern}: no files match"


def test_list_audio_files_named_files_order_and_duplicates(tree):
    notes, missing = str(tree / "notes.txt"), str(tree / "missing.wav")
    assert list_audio_files([notes, missing]) == [notes, missing]
    b, a = str(tree / "b.FLAC"), str(tree / "a.wav")
    assert list_audio_files([b, str(tree), f"{tree}/*.wav", a]) == [b, a]
    assert list_audio_files(Path(b)) == [b]  # a single path is not split into characters


def test_recursive_globs_do_not_enter_linked_folders(tree, monkeypatch):
    # Links back up the tree: glob's ** follows them and lists files again at every depth, for minutes.
    (tree / "sub" / "up").symlink_to(tree)
    (tree / "self").symlink_to(".")
    (tree / "same.wav").symlink_to(tree / "a.wav")
    expected = [str(tree / "a.wav"), str(tree / "b.FLAC"), str(tree / "sub" / "c.mp3"),
                str(tree / "sub" / "deeper" / "d.ogg")]
    assert list_audio_files([f"{tree}/**/*.*"]) == expected  # same.wav is a.wav: listed once
    assert list_audio_files([f"{tree}/**/*.ogg", f"{tree}/**/d.ogg"]) == expected[3:]
    assert list_audio_files([f"{tree}/**/.hidden.wav"]) == [str(tree / ".hidden.wav")]  # named, as glob does
    monkeypatch.chdir(tree)
    assert list_audio_files(["**/*.mp3", "s*/**/d.ogg"]) == [os.path.join("sub", "c.mp3"),
                                                            os.path.join("sub", "deeper", "d.ogg")]


# -- the official resampling of the shared reference -------------------------------------------


def test_reference_channel_mean_and_resampling():
    source = SHARED / "reference" / "inputs" / "f_stereo_44k1_2s.wav"
    official = SHARED / "reference" / "official" / "resample_f_stereo_44k1_2s.npz"
    if not (source.exists() and official.exists()):
        pytest.skip(f"{SHARED} is absent (../shared is not beside this checkout)")
    reference = np.load(official)
    assert int(reference["sr"]) == 44100
    native = load_audio(source, sample_rate=44100)  # same rate: channel mean only
    np.testing.assert_allclose(native, reference["mono_mean"], rtol=0, atol=1e-7)
    ours = load_audio(source)
    theirs = reference["resampled_16k"]
    assert ours.shape == theirs.shape
    difference = np.abs(ours - theirs)
    correlation = np.corrcoef(ours, theirs)[0, 1]
    # soxr HQ vs torchaudio's default (Hann-windowed sinc, width 6, rolloff 0.99): close, not equal
    assert difference.max() < 0.02 and correlation > 0.999, (difference.max(), correlation)


# -- truncated files: decoded as far as they go, and said to be cut short -------------


def _cut(source: Path, path: Path, fraction: float) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _read_to_the_end(path: Path):
    blocks = iter_blocks(path, 16000)
    samples = sum(len(block) for block in blocks)
    return samples, blocks.truncation


@pytest.mark.parametrize(("kind", "fraction"), [
    ("WAV", 0.1), ("WAV", 0.5), ("WAV", 0.99),
    # MP3's declared length may be an estimate, off by up to a frame: a cut of less goes unsaid.
    ("MP3", 0.1), ("MP3", 0.5), ("MP3", 0.9),
])
def test_truncated_file_is_decoded_and_reported(tmp_path, kind, fraction):
    whole = tmp_path / f"whole.{kind.lower()}"
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 5 * 16000).astype(np.float32)  # a sine's MP3 is tiny
    sf.write(whole, noise, 16000, format=kind)
    path = _cut(whole, tmp_path / f"cut.{kind.lower()}", fraction)
    samples, truncation = _read_to_the_end(path)
    assert truncation is not None
    assert truncation.declared == pytest.approx(5.0, abs=0.01)
    assert truncation.decoded == pytest.approx(samples / SAMPLE_RATE, abs=0.01) and truncation.decoded < 5.0
    assert truncation.message(str(path)).startswith(f"{path}: truncated: the header declares 5.000 s")


def test_wav_data_chunk_declaring_more_than_the_file_holds(tmp_path, int16_wav):
    source, _ = int16_wav
    path = tmp_path / "cut_data.wav"
    path.write_bytes(source.read_bytes()[: 44 + 2 * 128])  # header claims 1 s, holds 8 ms
    samples, truncation = _read_to_the_end(path)
    assert samples == 128 and truncation.declared == 1.0 and truncation.decoded == 128 / 16000


def test_wav_of_unknown_length_is_not_truncated(tmp_path, int16_wav):
    """A writer that could not seek back (a pipe) leaves 0xFFFFFFFF as the data size: not a length."""
    source, _ = int16_wav
    data = bytearray(source.read_bytes())
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    path = tmp_path / "piped.wav"
    path.write_bytes(bytes(data))
    assert _read_to_the_end(path) == (16000, None)


def _intact_variants(source: Path, folder: Path) -> list[Path]:
    """``source`` re-encoded in the formats decoded here: none of them is cut short."""
    samples, rate = sf.read(source, dtype="float32")
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    stem = source.stem
    paths = []
    for kind, suffix in [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")]:
        paths.append(folder / f"{stem}.{suffix}")
        sf.write(paths[-1], mono, rate, format=kind)
    paths.append(encode(folder / f"{stem}.lame.mp3", "libmp3lame", rate, mono[None]))  # VBR-capable encoder
    paths.append(encode(folder / f"{stem}.m4a", "aac", rate, mono[None]))  # priming trimmed by the edit list
    return paths


@pytest.mark.integration
def test_intact_files_are_not_truncated(tmp_path):
    everyday = sorted((SHARED / "data" / "everyday" / "audio").glob("*"))[:3]
    long = sorted((SHARED / "data" / "long").glob("*.flac"))[:1]
    if not everyday:
        pytest.skip("no ../shared/data/everyday")
    for source in everyday + long:
        for path in [source, *_intact_variants(source, tmp_path)]:
            samples, truncation = _read_to_the_end(path)
            assert truncation is None, f"{path}: {truncation}"


def _damaged_mp3(path: Path) -> Path:
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 5 * 16000).astype(np.float32)
    sf.write(path, noise, 16000, format="MP3")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 400] = bytes(400)  # a run of zeros mid-stream: libmpg123 resyncs
    path.write_bytes(bytes(data))
    return path


def test_mpeg_decoder_complaints_become_one_warning(tmp_path, capfd):
    from auricle.errors import AudioWarning

    path = _damaged_mp3(tmp_path / "damaged.mp3")
    with pytest.warns(AudioWarning, match=r"damaged\.mp3: the MPEG decoder met damaged or inconsistent data "
                                          r"\(libmpg123: Note: Illegal Audio-MPEG-Header"):
        audio = load_audio(path)
    assert len(audio) > 4 * 16000
    assert capfd.readouterr().err == ""  # libmpg123's own lines were caught, not printed
