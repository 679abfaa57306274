"""MiDashengLM through the public API: auricle.load_model, describe/ask/stream, segments, memory, the hub."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")

from language_support import folder, model  # noqa: E402,F401  (fixtures)

import auricle  # noqa: E402
from auricle.language import folder as folder_checks  # noqa: E402
from auricle.errors import AudioError, CheckpointError, OptionError  # noqa: E402
from auricle.language.prompts import PRESETS  # noqa: E402
from auricle.language_model import AudioLanguageModel  # noqa: E402


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "dog.wav"
    sf.write(path, np.random.default_rng(0).standard_normal(24_000).astype(np.float32) * 0.1, 16_000)
    return path


def test_a_model_folder_loads_and_describes_a_file(model, wav):
    assert isinstance(model, AudioLanguageModel) and model.name == "midashenglm-tiny0"
    result = model.describe(wav, max_new_tokens=6)
    assert result.file == str(wav) and result.prompt == PRESETS["caption"] and result.duration == 1.5
    assert len(result.segments) == 1 and (result.segments[0].start, result.segments[0].end) == (0.0, 1.5)
    assert 1 <= result.tokens <= 6 and result.text == model.tokenizer.decode(list(result.segments[0].tokens))
    values = result.to_dict()
    assert values["text"] == result.text and values["segments"][0]["end"] == 1.5
    assert set(values["timing"]) == {"encode", "generate", "total"}
    json.dumps(values)


def test_the_answer_is_the_greedy_continuation_of_the_rendered_prompt(model, wav):
    """describe = encoder -> projector -> the prompt with the audio tokens -> greedy tokens, nothing else."""
    import torch

    from auricle.audio import load_audio

    tokens = model.network.encode_audio(torch.from_numpy(load_audio(wav)))
    audio = model.network.project(tokens[None])[0]
    ids = model.tokenizer.prompt_ids(PRESETS["music"], len(audio))
    expected = model.network.generate([ids], [audio], 6, model.tokenizer.stop_ids)[0]
    assert list(model.describe(wav, prompt="music", max_new_tokens=6).segments[0].tokens) == expected


def test_ask_takes_the_question_as_it_is_and_stream_gives_the_same_text(model, wav):
    asked = model.ask(wav, "music", max_new_tokens=6)  # a preset's name, asked literally
    assert asked.prompt == "music"
    pieces = []
    described = model.describe(wav, prompt="what is this sound", max_new_tokens=6, on_text=pieces.append)
    assert "".join(pieces) == described.text
    assert "".join(model.stream(wav, "what is this sound", max_new_tokens=6)) == described.text


def test_long_recordings_are_cut_into_segments(model):
    samples = np.random.default_rng(1).standard_normal(16_000 * 25).astype(np.float32) * 0.1
    samples[16_000 * 20:] = 0  # the last segment is digital silence
    result = model.describe(samples, max_new_tokens=3, segment_seconds=10, name="long")
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert result.segments[2].skipped == "silent" and result.segments[2].text == ""
    assert result.text == "\n".join(s.text for s in result.segments[:2])
    # A tail too short for one audio token joins the segment before it.
    tail = model.describe(samples[:16_000 * 10 + 1000], max_new_tokens=2, segment_seconds=5, name="t")
    assert [(s.start, s.end) for s in tail.segments] == [(0.0, 5.0), (5.0, 10.0625)]
    with pytest.raises(OptionError, match="at most 30 s, got 31"):
        model.describe(samples, segment_seconds=31)


def test_bad_audio_is_one_line_naming_the_file(model, tmp_path):
    short = tmp_path / "click.wav"
    sf.write(short, np.ones(800, np.float32) * 0.1, 16_000)
    with pytest.raises(AudioError, match=f"^{short}: too short to describe"):
        model.describe(short)
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros(16_000, np.float32), 16_000)
    with pytest.raises(AudioError, match=f"^{quiet}: silent"):
        model.describe(quiet)
    with pytest.raises(OptionError, match="max_new_tokens must be at least 1"):
        model.describe(quiet, max_new_tokens=0)


def test_engine_precision_and_device_other_than_the_cpu_defaults_are_refused(folder, monkeypatch):
    import torch

    from auricle import devices  # the loading path (auricle.loading) asks it for the device

    with pytest.raises(OptionError, match="stored precision"):
        auricle.load_model(checkpoint=folder, engine="onnx")
    monkeypatch.setattr(devices, "torch_device", lambda device: torch.device("cuda"))  # as on a GPU machine
    with pytest.raises(OptionError, match="on the CPU in auricle for now, not on cuda"):
        auricle.load_model(checkpoint=folder, device="cuda")


def test_a_model_too_big_for_memory_is_refused_before_loading(folder, monkeypatch):
    from auricle import language_model
    from auricle.language import model as network

    monkeypatch.setattr(folder_checks, "available_memory", lambda: 1000)
    monkeypatch.setattr(network.MiDashengLM, "load", lambda *a, **k: pytest.fail("read the weights"))
    with pytest.raises(CheckpointError, match=r"the weights need 0.0 GB of memory .* but 0.0 GB is available; "
                                              r"use a machine with more memory or a smaller precision"):
        auricle.load_model(checkpoint=folder)


class FakeSnapshots:
    """Stands in for huggingface_hub.snapshot_download: copies a 'remote' folder into a cache by pattern."""

    def __init__(self, remote, cache):
        self.remote, self.cache, self.calls = remote, cache, []

    def __call__(self, repo, cache_dir=None, allow_patterns=None, **kwargs):
        import fnmatch
        import shutil

        self.calls.append((repo, tuple(allow_patterns or ())))
        snapshot = self.cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
        snapshot.mkdir(parents=True, exist_ok=True)
        for path in self.remote.iterdir():
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns or ["*"]):
                shutil.copy(path, snapshot / path.name)
        (snapshot.parent.parent / "refs").mkdir(exist_ok=True)
        (snapshot.parent.parent / "refs" / "main").write_text("abc")
        return str(snapshot)


def test_the_registered_name_downloads_the_bf16_release_once(folder, tmp_path, monkeypatch):
    import huggingface_hub

    from auricle.models import hub

    fake = FakeSnapshots(folder, tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.CONNECT_TIMEOUT: True)
    model = auricle.load_model("midashenglm-7b", cache_dir=tmp_path / "cache")
    assert model.name == "midashenglm-7b"
    assert [repo for repo, _ in fake.calls] == ["mispeech/midashenglm-7b-1021-bf16"] * 2
    assert fake.calls[0][1] == ("*.json",)  # the size is checked before any weights come
    auricle.load_model("midashenglm-7b", cache_dir=tmp_path / "cache")
    assert len(fake.calls) == 2  # the second time from the cache


def test_the_registered_name_is_refused_before_download_when_too_big(folder, tmp_path, monkeypatch):
    import huggingface_hub

    from auricle import language_model
    from auricle.models import hub

    fake = FakeSnapshots(folder, tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.CONNECT_TIMEOUT: True)
    monkeypatch.setattr(folder_checks, "available_memory", lambda: 1000)
    with pytest.raises(CheckpointError, match="^midashenglm-7b: the weights need"):
        auricle.load_model("midashenglm-7b", cache_dir=tmp_path / "cache")
    assert [patterns for _, patterns in fake.calls] == [("*.json",)]


def test_the_registered_name_fails_fast_offline(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("asked the hub"))
    with pytest.raises(CheckpointError, match=r"^midashenglm-7b: weights are not in the local cache .*"
                                              r"HF_HUB_OFFLINE is set.*--checkpoint DIR"):
        auricle.load_model("midashenglm-7b", cache_dir=tmp_path)
