"""The one loading path (auricle.loading): families looked up as data, options checked once, refusals in one line."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import auricle
from auricle.errors import CheckpointError, EngineWarning, OptionError
from auricle.loading import Accepts, RunOptions, load, load_network, precheck, resolve
from auricle.models import hub
from auricle.models.families import FAMILIES, Family
from auricle.models.registry import REGISTRY, ModelInfo, Registry

SRC = Path(__file__).resolve().parent.parent / "src" / "auricle"


# -- a toy family, registered in a registry of its own: what adding a family takes ---------------------------
@dataclass(frozen=True)
class ToyConfig:
    embed_dim: int = 4


@dataclass
class ToyCheckpoint:
    weight: torch.Tensor
    source: str


class ToyModel:
    """The toy family's user-facing model: a name and a linear layer."""

    def __init__(self, network: torch.nn.Module, name: str, device, engine) -> None:
        self.network, self.name, self.device, self.engine = network, name, device, engine


def toy_build(checkpoint: ToyCheckpoint) -> torch.nn.Module:
    network = torch.nn.Linear(checkpoint.weight.shape[1], checkpoint.weight.shape[0], bias=False)
    network.weight.data.copy_(checkpoint.weight)
    return network.eval()


TOY = Family(
    "toy", "Toy", frozenset({"tags"}),
    holds=lambda tensors, meta: set(tensors) == {"toy.weight"},
    read=lambda path, tensors, stored, meta: ToyCheckpoint(tensors["toy.weight"], str(path)),
    build=toy_build,
    model=lambda checkpoint, info, device, engine, where: ToyModel(
        toy_build(checkpoint), info.name if info is not None else Path(where).stem, device, engine),
    scratch=lambda config: torch.nn.Linear(config.embed_dim, config.embed_dim, bias=False),
)
TOY_INFO = ModelInfo("toy-small", ToyConfig(), 0.0, None, "example/toy-small", "", "toy")
#: auricle's own registry plus the toy family, asked first; auricle's REGISTRY itself is left as it was.
TOYS = Registry(REGISTRY.models + (TOY_INFO,), (TOY, *FAMILIES))


@pytest.fixture
def toy_weights(tmp_path) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / "toy.safetensors"
    save_file({"toy.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, str(path))
    return path


def test_a_new_family_loads_through_the_one_function_from_a_registry_of_its_own(toy_weights, monkeypatch):
    model = load(checkpoint=toy_weights, registry=TOYS)
    assert isinstance(model, ToyModel) and model.name == "toy"
    assert torch.equal(model.network.weight, torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert model.engine.engine == "torch" and model.engine.precision == "fp32" and model.device.type == "cpu"
    # By name: its weights come from the hub (faked), as every family's do.
    monkeypatch.setattr(hub, "fetch_weights", lambda info, cache_dir=None: toy_weights)
    assert load("toy-small", registry=TOYS).name == "toy-small"
    network, origin = load_network("toy-small", registry=TOYS)
    assert isinstance(network, torch.nn.Linear) and origin == f"toy-small ({toy_weights})"
    # Nothing global changed: auricle's registry knows no toy.
    with pytest.raises(CheckpointError, match="toy-small: unknown model"):
        auricle.load_model("toy-small")
    assert TOY not in REGISTRY.families


def test_a_caller_that_needs_what_a_family_lacks_is_refused_in_the_familys_words(toy_weights):
    with pytest.raises(OptionError) as error:
        load(checkpoint=toy_weights, accepts=Accepts(frozenset({"listens"}), caller="listen"), registry=TOYS)
    assert str(error.value) == "toy: auricle listen takes CED models"  # the families that can, by title
    network, _ = load_network("toy-small", from_scratch=True, seed=3, registry=TOYS)
    assert network.weight.shape == (4, 4)


def test_a_whole_folder_family_is_recognised_and_refused_before_any_weights_are_read(tmp_path):
    folder = tmp_path / "talker"
    folder.mkdir()
    talker = Family("talker", "Talker", frozenset({"describes"}), is_folder=lambda path: Path(str(path)) == folder,
                    check_runs=lambda *args: None, load_folder=lambda path, info, cache, precision: ("talker", path),
                    refusal="{subject}: talks; not for `{caller}`")
    registry = Registry(REGISTRY.models, (talker, *FAMILIES))
    assert load(checkpoint=folder, registry=registry) == ("talker", folder)
    with pytest.raises(OptionError, match=f"^{folder}: talks; not for `auricle tag`$"):
        precheck("ced-mini", folder, Accepts(frozenset({"tags"}), caller="tag"), registry)


def test_a_caller_says_what_will_do_instead_and_how_it_refuses(toy_weights, tmp_path, monkeypatch):
    """`auricle serve` takes a tagger or an audio-language model; describe refuses the rest in its own words."""
    folder = tmp_path / "talker"
    folder.mkdir()
    talker = Family("talker", "Talker", frozenset({"describes"}), is_folder=lambda path: Path(str(path)) == folder,
                    check_runs=lambda *args: None, load_folder=lambda path, info, cache, precision: ("talker", path))
    registry = Registry(TOYS.models, (talker, *TOYS.families))
    serves = Accepts(frozenset({"tags"}), caller="serve", or_needs=frozenset({"describes"}))
    assert load(checkpoint=folder, accepts=serves, registry=registry) == ("talker", folder)
    assert load(checkpoint=toy_weights, accepts=serves, registry=registry).name == "toy"
    describes = Accepts(frozenset({"describes"}), refusal="{given}: not a talker")
    # What the caller gave, not the model's name.
    with pytest.raises(OptionError, match=f"^{toy_weights}: not a talker$"):
        load(checkpoint=toy_weights, accepts=describes, registry=registry)
    # A name tells the family: refused before its weights are looked for (no download for a model it cannot use).
    monkeypatch.setattr(hub, "fetch_weights", lambda *args, **kwargs: pytest.fail("weights fetched"))
    with pytest.raises(OptionError, match="^Toy-Small: not a talker$"):
        load("Toy-Small", accepts=describes, registry=registry)


def test_a_whole_folder_family_is_refused_a_way_to_run_before_the_device_is_looked_for(tmp_path):
    """"runs on the CPU, not on cuda" (the family's words) comes before "no CUDA device here" (the machine's)."""
    folder = tmp_path / "talker"
    folder.mkdir()
    asked = []

    def check_runs(engine, precision, device):
        asked.append((engine, precision, device.type))
        if device.type != "cpu":
            raise OptionError(f"talkers run on the CPU, not on {device}")

    talker = Family("talker", "Talker", frozenset({"describes"}), is_folder=lambda path: Path(str(path)) == folder,
                    check_runs=check_runs, load_folder=lambda path, info, cache, precision: torch.get_num_threads())
    registry = Registry(REGISTRY.models, (talker, *FAMILIES))
    with pytest.raises(OptionError, match="^talkers run on the CPU, not on cuda:3$"):
        load(checkpoint=folder, options=RunOptions("cuda:3"), registry=registry)
    threads = torch.get_num_threads()
    try:  # a thread count a default chose leaves torch's own; one the caller chose is set
        assert load(checkpoint=folder, options=RunOptions.from_flags("cpu", None, None, "torch", "fp32"),
                    registry=registry) == threads
        assert load(checkpoint=folder, options=RunOptions.from_flags("cpu", 1, None, "torch", "fp32"),
                    registry=registry) == 1
    finally:
        torch.set_num_threads(threads)
    assert asked[-1] == ("torch", "fp32", "cpu")


def test_an_exported_file_is_refused_where_weights_are_needed_in_the_callers_words(tmp_path):
    exported = tmp_path / "model.onnx"
    with pytest.raises(CheckpointError) as error:
        precheck("ced-mini", exported, Accepts(exported=False, caller="probe"))
    assert str(error.value).startswith(f"{exported}: an exported ONNX file can tag and embed") \
        and "give probe the model's weights" in str(error.value)
    with pytest.raises(CheckpointError, match=f"^{exported}: no way$"):
        load(checkpoint=exported, accepts=Accepts(exported=False, exported_refusal="{path}: no way"))
    with pytest.raises(CheckpointError, match="an exported ONNX file can tag and embed"):
        resolve(None, exported)  # where weights are looked for (teachers, fine-tuning), never an exported file


def test_options_from_flags_are_checked_once():
    with pytest.raises(OptionError, match=r"^--streams 3 needs at least as many --threads \(got 2\)$"):
        RunOptions.from_flags("cpu", 2, 3, "torch", "fp32")
    options = RunOptions.from_flags("cpu", 2, 2, "onnx", "int8", engine_given=False, prefer_graph=True)
    assert (options.threads, options.streams, options.prefer_graph) == (2, 2, True)
    # A default yields to an exported file's own setting; what the caller chose must match it.
    assert options.given("engine") is None and options.given("precision") == "int8"


def test_a_model_name_beside_a_checkpoint_of_another_size_is_refused_only_when_chosen(tiny_checkpoint):
    with pytest.raises(OptionError) as error:
        load("ced-mini", tiny_checkpoint, name_given=True)
    assert str(error.value) == (f"--model ced-mini does not match --checkpoint {tiny_checkpoint}: the checkpoint "
                                "holds ced-tiny, not ced-mini; drop --model or name the checkpoint's model")
    assert load("ced-mini", tiny_checkpoint).name == "ced_tiny_perturbed"  # the default name yields


def test_both_public_names_are_the_one_function(tiny_checkpoint, tmp_path):
    from auricle import model as old_path

    for load_model in (auricle.load_model, old_path.load_model):
        with pytest.raises(CheckpointError, match="runs in ONNX Runtime, not the torch engine"):
            load_model(checkpoint=_exported_stub(tmp_path), engine="torch")
        assert load_model(checkpoint=tiny_checkpoint).name == "ced_tiny_perturbed"


def _exported_stub(tmp_path: Path) -> Path:
    path = tmp_path / "stub.onnx"
    path.write_bytes(b"")
    return path


def test_a_graph_that_cannot_be_prepared_warns_and_runs_the_weights(tiny_checkpoint, monkeypatch):
    pytest.importorskip("onnxruntime")
    from auricle.onnx import prepared

    def refuse(*args, **kwargs):
        raise prepared.PrepareError("tiny: no graph today")

    monkeypatch.setattr(prepared, "prepared_model", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EngineWarning)
        model = load(checkpoint=tiny_checkpoint, options=RunOptions(engine="onnx", prefer_graph=True))
    assert model.engine.config.engine == "onnx"
    assert [str(w.message) for w in caught if w.category is EngineWarning] == [
        "tiny: no graph today; running only the encoder in ONNX Runtime"]


def test_only_the_loading_path_asks_whether_an_input_is_an_exported_file():
    askers = sorted(str(path.relative_to(SRC)) for path in SRC.rglob("*.py")
                    if "is_exported_file(" in path.read_text() and path.name != "files.py")
    # auricle export asks it of the file it is told to write, to name it as every reader will recognise it.
    assert askers == ["cli/export.py", "loading.py"]


@pytest.mark.integration
def test_no_import_runs_from_a_lower_layer_up():
    sys.path.insert(0, str(SRC.parent.parent / "benchmarks"))
    try:
        from import_arrows import arrows, family_branches
    finally:
        sys.path.pop(0)
    found = arrows(SRC)
    assert [arrow for arrow in found if arrow[4] == "import"] == []
    # The version is read from auricle.version, below every layer, not from the face.
    assert [arrow for arrow in found if arrow[4] == "version"] == []
    # No module outside a family's own decides by a family's name: the registry and Accepts do. The ONNX
    # wing is the exception: it builds and reads each exporting family's graph (docs/architecture.md).
    assert [branch for branch in family_branches(SRC) if not branch[0].startswith("auricle.onnx.")] == []


@pytest.mark.integration
def test_importing_the_loading_path_imports_no_torch():
    script = "import sys, auricle.loading, auricle.models.registry; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(SRC.parent)})
    assert result.stdout.strip() == "False", result.stderr
