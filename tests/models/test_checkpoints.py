"""Checkpoint layouts (official, Hugging Face, auricle), strict loading and the hub fallback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import auricle
from auricle.cli import cli
from auricle.errors import CheckpointError
from auricle.models.checkpoints import read_checkpoint, save_checkpoint


def official_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)


def write_hf_folder(state: dict[str, torch.Tensor], folder: Path, name: str = "ced-tiny") -> Path:
    """The layout of mispeech/ced-*: drop front_end, rename init_bn.1, prefix encoder."""
    folder.mkdir(parents=True, exist_ok=True)
    converted = {}
    for key, tensor in state.items():
        if key.startswith("front_end."):
            continue
        key = key.replace("init_bn.1.", "init_bn.")
        converted[key if key.startswith("outputlayer") else f"encoder.{key}"] = tensor.contiguous()
    save_file(converted, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"name": name, "embed_dim": 192, "num_heads": 3}))
    return folder


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (2, 32000)).astype(np.float32))


def test_official_checkpoint_infers_dimensions(tiny_checkpoint, mini_checkpoint):
    tiny = read_checkpoint(tiny_checkpoint)
    mini = read_checkpoint(mini_checkpoint)
    assert tiny.layout == mini.layout == "official"
    assert (tiny.config.embed_dim, tiny.config.num_heads) == (192, 3)
    assert (mini.config.embed_dim, mini.config.num_heads) == (256, 4)
    assert not any(key.startswith("front_end") for key in tiny.state_dict)



@pytest.fixture
def tiny_model(tiny_checkpoint):
    """The reference model loaded now, under the same torch settings as the model it is compared with bit for
    bit (the session's copy may have been made while an earlier test had other threads or streams)."""
    return auricle.load_model(checkpoint=tiny_checkpoint)


@pytest.mark.integration
def test_huggingface_layout_gives_identical_outputs(tiny_checkpoint, tiny_model, tmp_path, noise):
    folder = write_hf_folder(official_state(tiny_checkpoint), tmp_path / "ced-tiny")
    model = auricle.load_model(checkpoint=folder)
    assert read_checkpoint(folder).layout == "huggingface"
    assert torch.equal(model.probabilities(noise), tiny_model.probabilities(noise))


@pytest.mark.integration
def test_auricle_format_round_trip(tiny_model, tmp_path, noise):
    path = save_checkpoint(tiny_model.network, tmp_path / "mine.safetensors", labels=None, name="my-tiny")
    assert not path.with_suffix(".json").exists()  # one file: config and labels are in its metadata
    # The weights get the mode any new file gets (safetensors alone would make them owner-only).
    (tmp_path / "plain").write_text("")
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode
    model = auricle.load_model(checkpoint=path)
    assert model.name == "my-tiny"
    assert torch.equal(model.probabilities(noise), tiny_model.probabilities(noise))


@pytest.mark.integration
def test_auricle_format_carries_custom_labels(tiny_model, tmp_path):
    network = type(tiny_model.network)(tiny_model.network.config.__class__(embed_dim=192, num_heads=3, num_classes=3))
    path = save_checkpoint(network, tmp_path / "three.safetensors", labels=["cat", "dog", "bird"])
    model = auricle.load_model(checkpoint=path)
    assert model.labels.names == ("cat", "dog", "bird") or list(model.labels.names) == ["cat", "dog", "bird"]
    result = model.tag(np.zeros(16000, dtype=np.float32), 16000, top_k=2)
    assert {t.label for t in result.tags} <= {"cat", "dog", "bird"}


def test_missing_and_unexpected_keys_are_listed(tiny_checkpoint, tmp_path):
    state = official_state(tiny_checkpoint)
    del state["blocks.3.attn.qkv.weight"]
    state["blocks.3.attn.extra"] = torch.zeros(1)
    broken = tmp_path / "broken.pt"
    torch.save(state, broken)
    with pytest.raises(CheckpointError) as error:
        auricle.load_model(checkpoint=broken)
    message = str(error.value)
    assert "broken.pt" in message and "\n" not in message
    assert "missing: blocks.3.attn.qkv.weight" in message
    assert "unexpected: blocks.3.attn.extra" in message


def test_pickled_objects_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        read_checkpoint(path)


def test_other_frontend_is_refused(tiny_checkpoint, tmp_path):
    state = official_state(tiny_checkpoint)
    state["front_end.0.mel_scale.fb"] = torch.rand(257, 128)
    path = tmp_path / "mel128.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="frontend"):
        read_checkpoint(path)


def test_missing_checkpoint_and_unknown_model():
    with pytest.raises(CheckpointError, match="nowhere.pt: checkpoint not found"):
        auricle.load_model(checkpoint="nowhere.pt")
    with pytest.raises(CheckpointError, match="unknown model"):
        auricle.load_model("ced-huge")


def test_available_models_lists_the_four():
    models = auricle.available_models()
    assert [m.name for m in models] == ["ced-tiny", "ced-mini", "ced-small", "ced-base"]
    assert [m.audioset_map for m in models] == [48.1, 49.0, 49.6, 50.0]
    assert all(m.hf_repo.startswith("mispeech/ced-") for m in models)


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: a cache folder and a 'remote' folder."""

    def __init__(self, remote: Path, cache: Path, online: bool = True, unreachable: bool = False) -> None:
        self.remote, self.cache, self.online, self.unreachable = remote, cache, online, unreachable
        self.calls: list[tuple[str, str, bool]] = []

    def __call__(self, repo_id, filename, *, cache_dir=None, local_files_only=False, **_):
        from huggingface_hub.errors import LocalEntryNotFoundError

        self.calls.append((repo_id, filename, local_files_only))
        cached = self.cache / repo_id / filename
        if cached.is_file():
            return str(cached)
        if not local_files_only and self.unreachable:  # no network: the real hub retries, then raises this
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")
        if local_files_only or not self.online:
            raise FileNotFoundError(f"{filename} is not in the local cache")
        source = self.remote / repo_id / filename
        if not source.is_file():
            raise FileNotFoundError(f"404: {filename} not found in {repo_id}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(source.read_bytes())
        return str(cached)


@pytest.fixture
def reachable_hub(monkeypatch):
    """The hub's host counts as reachable (tests never dial out; the fake hub answers)."""
    from auricle.models import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.CONNECT_TIMEOUT: True)


@pytest.mark.integration
def test_name_downloads_once_then_uses_cache(tiny_checkpoint, tmp_path, monkeypatch, noise, tiny_model,
                                             reachable_hub):
    import huggingface_hub

    write_hf_folder(official_state(tiny_checkpoint), tmp_path / "remote" / "mispeech" / "ced-tiny")
    hub = FakeHub(tmp_path / "remote", tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    model = auricle.load_model("ced-tiny")
    assert model.name == "ced-tiny"
    assert ("mispeech/ced-tiny", "model.safetensors", False) in hub.calls
    assert torch.equal(model.probabilities(noise), tiny_model.probabilities(noise))

    hub.calls.clear()
    hub.online = False
    auricle.load_model("tiny")
    assert all(local_only for _, _, local_only in hub.calls)


def test_offline_without_cache_says_how_to_pass_a_file(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub(tmp_path, tmp_path / "cache", online=False))
    with pytest.raises(CheckpointError) as error:
        auricle.load_model("ced-mini")
    message = str(error.value)
    assert "ced-mini" in message and "--checkpoint" in message and "mispeech/ced-mini" in message


def test_an_unreachable_hub_is_asked_once(tmp_path, monkeypatch, reachable_hub, caplog):
    """Where the host answers but the hub fails, each try waits through its retries: the second file is not tried."""
    import logging

    import huggingface_hub

    hub = FakeHub(tmp_path, tmp_path / "cache", unreachable=True)

    def retrying(*args, **kwargs):  # as the hub does, through its logger, before it gives up
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        return hub(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", retrying)
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError, match="--checkpoint"):
        auricle.load_model("ced-mini")
    assert [filename for _, filename, local_only in hub.calls if not local_only] == ["model.safetensors"]
    assert "Retrying" not in caplog.text  # auricle's one line says it all


def test_a_hub_that_cannot_be_reached_is_not_asked(tmp_path, monkeypatch):
    """Offline, the hub's own tries took ~26 s and 11 lines of retries: a quick probe of its host answers first."""
    import huggingface_hub

    from auricle.models import hub as auricle_hub

    hub = FakeHub(tmp_path, tmp_path / "cache", unreachable=True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setattr(auricle_hub, "hub_reachable", lambda timeout=auricle_hub.CONNECT_TIMEOUT: False)
    with pytest.raises(CheckpointError, match=r"mispeech/ced-mini: huggingface\.co cannot be reached\)"):
        auricle.load_model("ced-mini")
    assert hub.calls and all(local_only for _, _, local_only in hub.calls)  # the cache was looked in, no more


def test_hf_hub_offline_is_honoured_without_dialling(tmp_path, monkeypatch):
    import huggingface_hub

    from auricle.models import hub as auricle_hub

    def never(timeout=0.0):
        raise AssertionError("HF_HUB_OFFLINE=1 must not dial the hub")

    hub = FakeHub(tmp_path, tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setattr(auricle_hub, "hub_reachable", never)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"HF_HUB_OFFLINE is set\)"):
        auricle.load_model("ced-mini")
    assert hub.calls and all(local_only for _, _, local_only in hub.calls)


@pytest.mark.integration
def test_offline_tag_and_serve_answer_in_one_line_before_torch_loads(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty cache: one auricle line (it came after 26 s and 11 lines of retries)."""
    from no_torch_support import without_torch

    empty = tmp_path / "hf"
    empty.mkdir()
    for command in (["tag", str(tmp_path / "x.wav")], ["serve", "--port", "0"]):
        if command[0] == "tag":
            (tmp_path / "x.wav").write_bytes(b"")  # never read: the model is refused first
        result = without_torch(*command, HF_HUB_OFFLINE="1", HF_HOME=str(empty), HF_HUB_CACHE=str(empty / "hub"))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("auricle: error: ced-mini: weights are not in the local cache")
        assert "HF_HUB_OFFLINE is set" in lines[0] and "--checkpoint PATH" in lines[0]


def test_files_that_are_not_weights_say_why_in_one_line(tmp_path):
    pickled = tmp_path / "objects.pt"
    torch.save({"weights": Path("elsewhere")}, pickled)  # a Python object: never unpickled
    with pytest.raises(CheckpointError) as error:
        auricle.load_model(checkpoint=pickled)
    assert str(error.value) == (f"{pickled}: not a loadable weights-only checkpoint (it is not a PyTorch file of "
                                "tensors alone, and auricle never unpickles anything else)")
    assert "weights_only" not in str(error.value)
    # A recording or a text file passed as weights: said in words, not torch's "(101)".
    recording, notes = tmp_path / "take.wav", tmp_path / "notes.pt"
    soundfile.write(recording, np.zeros(1600, np.float32), 16000)
    notes.write_text("hello")
    for path, what in ((recording, "is a WAV recording"), (notes, "is not a PyTorch checkpoint")):
        with pytest.raises(CheckpointError) as error:
            auricle.load_model(checkpoint=path)
        assert str(error.value) == (f"{path}: {what}; give a .pt checkpoint, a .safetensors file or a Hugging Face "
                                    "model folder")
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"\x08\x07")
    result = CliRunner().invoke(cli, ["finetune", str(tmp_path), "--checkpoint", str(exported), "-o",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"auricle: error: {exported}: an exported ONNX file can tag and embed "
                                          "(auricle tag, evaluate, serve, listen, embed), not train; give "
                                          "finetune the model's weights (.pt, .safetensors or a Hugging Face folder)"]


@pytest.mark.integration
def test_cached_weights_are_found_without_asking_the_hub(tiny_checkpoint, tiny_model, tmp_path, monkeypatch, noise):
    """The Hugging Face cache's layout is read directly: no huggingface_hub import (~0.3 s of a short command)."""
    import huggingface_hub

    from auricle.models.hub import cached_file

    folder = tmp_path / "hub" / "models--mispeech--ced-tiny"
    snapshot = write_hf_folder(official_state(tiny_checkpoint), folder / "snapshots" / "0123abc")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *args, **kwargs: pytest.fail("asked the hub"))
    model = auricle.load_model("ced-tiny")
    assert model.name == "ced-tiny"
    assert torch.equal(model.probabilities(noise), tiny_model.probabilities(noise))
    assert cached_file("mispeech/ced-tiny", "model.safetensors") == snapshot / "model.safetensors"
    # Another revision named as main, a missing file, another cache: not found here (the hub is asked then).
    (folder / "refs" / "main").write_text("fedcba9")
    assert cached_file("mispeech/ced-tiny", "model.safetensors") is None
    assert cached_file("mispeech/ced-tiny", "model.safetensors", tmp_path / "elsewhere") is None
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (folder / "refs" / "main").write_text("0123abc\n")
    assert cached_file("mispeech/ced-tiny", "model.safetensors") == snapshot / "model.safetensors"
