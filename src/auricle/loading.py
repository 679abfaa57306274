"""The one loading path: a model name, a checkpoint file or folder, or an exported ``.onnx`` file -> a ready model.

:func:`load` decides, here and nowhere else, where the weights come from, which family reads
them and what runs them; ``auricle.load_model``, every CLI command, the service, HEAR,
fine-tuning (:func:`load_network`) and the distillation teachers (:func:`resolve`,
:func:`read_weights`) call it. Families are looked up in a
:class:`~auricle.models.registry.Registry` (an argument, auricle's own by default); this
module never names one. The walk, straight down:

    exported .onnx file?          -> ExportedModel (ONNX Runtime; torch never imported)
    whole-folder family?          -> refused if the caller cannot use it, else its model (MiDashengLM)
    --model beside --checkpoint?  -> refused unless the checkpoint holds that model
    weights                       -> the file given, else the Hugging Face cache, else the Hub (before torch)
    prepared graph?               -> the whole model as one cached ONNX graph (auricle.onnx.prepared), no torch
    family read, build, model     -> AudioModel / DashengModel on the engine and precision asked
    capabilities                  -> refused if the caller needs what the family lacks

Options are checked once (:class:`RunOptions`); errors are :class:`~auricle.errors.AuricleError`
subclasses of one line, warnings :class:`~auricle.errors.EngineWarning` (the CLI prints both).
Importing this module imports no torch: it is imported on the CLI's torch-free paths.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auricle.errors import CheckpointError, EngineWarning, OptionError
from auricle.models.families import Family, read_any_checkpoint
from auricle.models.files import is_exported_file, not_weights, weights_in_folder
from auricle.models.registry import DEFAULT_MODEL, REGISTRY, ModelInfo, Registry, same_size, size_name

#: How a caller that needs weights is told to give a local file when the Hub is out of reach.
CHECKPOINT_INSTEAD = "--checkpoint PATH (checkpoint=PATH in Python)"


@dataclass(frozen=True)
class RunOptions:
    """How the model should run; checked once, where it is loaded."""

    device: Any = "cpu"
    #: torch, onnx; None: torch for weights, the file's own for an exported file.
    engine: str | None = None
    #: fp32, bf16, int8, auto; None: fp32 for weights, the file's own for an exported file.
    precision: str | None = None
    threads: int | None = None
    streams: int | None = None
    #: Of "engine" and "precision", those a default chose (an option's default, AURICLE_ENGINE): an
    #: exported file's own setting wins over them, where a value the caller gave must match the file.
    defaulted: frozenset[str] = frozenset()
    #: With the onnx engine on the CPU, run the whole model as one prepared graph (cached; later
    #: runs start without torch), falling back to the encoder-only onnx engine with a warning.
    prefer_graph: bool = False

    @classmethod
    def from_flags(cls, device: str, threads: int | None, streams: int | None, engine: str, precision: str, *,
                   engine_given: bool = True, precision_given: bool = True,
                   prefer_graph: bool = False) -> RunOptions:
        """The options of a command line: ``--threads`` defaults to one per usable core, and ``--streams``
        beyond the threads is refused in the flags' words."""
        from auricle.inference.tuning import default_threads  # torch-free

        resolved = threads or default_threads()
        if streams is not None and streams > resolved:
            got = f"got {resolved}" if threads else f"{resolved} by default here, one per usable core"
            raise OptionError(f"--streams {streams} needs at least as many --threads ({got})")
        defaulted = frozenset(name for name, given in (("engine", engine_given), ("precision", precision_given))
                              if not given)
        return cls(device, engine, precision, resolved, streams, defaulted, prefer_graph)

    def given(self, name: str) -> str | None:
        """The option ``name`` if the caller chose it, else None (an exported file then decides)."""
        return None if name in self.defaulted else getattr(self, name)


@dataclass(frozen=True)
class Accepts:
    """What a caller can use; anything else is refused in one line, before loading where it can be."""

    #: Capabilities the model's family must have ("tags", "embeds", "trains", "exports", "listens",
    #: "indexes", "describes"; see :class:`~auricle.models.families.Family`). Empty: any model.
    needs: frozenset[str] = frozenset()
    #: Whether an ``auricle export`` file will do (it can tag and embed, not be trained or exported).
    exported: bool = True
    #: How refusals name the caller: a command's name (``tag`` -> "auricle tag").
    caller: str = "this command"
    #: The refusal of an exported file, ``{path}`` in it, if not the usual one (:func:`not_weights`).
    exported_refusal: str | None = None


#: A Python caller: any model, any file.
ANYTHING = Accepts()


@dataclass(frozen=True)
class Source:
    """Where a model's weights are: ``weights`` (a file or folder) and the registered model asked for, if any."""

    weights: Path
    info: ModelInfo | None


def load(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None, options: RunOptions = RunOptions(),
         *, accepts: Accepts = ANYTHING, name_given: bool = False, cache_dir: str | os.PathLike | None = None,
         registry: Registry = REGISTRY, announce: Callable[[str], None] | None = None) -> Any:
    """The model ``name`` (or ``checkpoint``, which wins) ready to run as ``options`` say.

    ``name_given``: the caller chose ``name`` beside a ``checkpoint`` (``--model``), which must then
    hold that model; otherwise the name yields to the checkpoint. ``announce`` is told, in one line,
    when preparing a graph is about to take a while.
    """
    if is_exported_file(checkpoint):
        return _load_exported(checkpoint, options, accepts)
    family, info = precheck(name, checkpoint, accepts, registry)
    if family is not None and family.whole_folder:
        device, _ = _run_config(options)
        family.call("check_runs", options.engine or "torch", options.precision or "fp32", device)
        return family.call("load_folder", checkpoint, info, cache_dir)
    read = None
    if checkpoint is not None and name_given:  # read once: the same checkpoint is built below
        read = read_weights(checkpoint, registry)
        _refuse_another_model(name, registry.info(name), checkpoint, *read, registry)
    source = resolve(name, checkpoint, cache_dir=cache_dir, registry=registry)  # offline: refused before torch
    if options.prefer_graph and options.engine == "onnx" and str(options.device).split(":")[0] == "cpu" \
            and options.precision != "bf16":
        graph = _prepared_or_none(name, checkpoint, source, options, cache_dir, registry, announce)
        if graph is not None:
            return graph
    device, engine = _run_config(options)
    family, checkpoint_read = read or read_weights(source.weights, registry)
    model = family.call("model", checkpoint_read, source.info, device, engine, source.weights)
    _refuse_unable(family, getattr(model, "name", name), accepts, registry)
    return model


def load_model(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None, device: Any = "cpu",
               cache_dir: str | os.PathLike | None = None, engine: str | None = None, precision: str | None = None,
               threads: int | None = None, streams: int | None = None) -> Any:
    """``auricle.load_model``: :func:`load` with the options as keywords.

    A name (``ced-tiny`` ... ``ced-base``, ``dasheng-base`` ..., ``midashenglm-7b``) or a checkpoint
    (official ``.pt``, Hugging Face folder, auricle ``.safetensors``, a MiDashengLM folder) gives an
    :class:`~auricle.model.AudioModel`, :class:`~auricle.dasheng_model.DashengModel` or
    :class:`~auricle.language_model.AudioLanguageModel`; weights come from ``checkpoint`` if given,
    else the local Hugging Face cache, else the Hub. ``engine`` (torch, onnx), ``precision`` (fp32,
    bf16, int8, auto), ``threads`` and ``streams`` choose how the encoder runs (see
    :mod:`auricle.engines`); None is torch and fp32 for weights. A ``checkpoint`` ending in ``.onnx``
    (an ``auricle export`` file) gives an :class:`~auricle.onnx.exported.ExportedModel`, without
    importing torch; ``engine``/``precision``, where given, must match the file.
    """
    return load(name, checkpoint, RunOptions(device, engine, precision, threads, streams), cache_dir=cache_dir)


def precheck(name: str, checkpoint: str | os.PathLike | None, accepts: Accepts = ANYTHING,
             registry: Registry = REGISTRY) -> tuple[Family | None, ModelInfo | None]:
    """The refusals that need no weights and no torch: an exported file where weights are needed, a
    whole-folder family (by name or folder) the caller cannot use. Gives the family when the name or
    folder already tells it (None: the weights will), and the registered model a name denotes."""
    if is_exported_file(checkpoint):
        if not accepts.exported:
            raise CheckpointError(_exported_refusal(checkpoint, accepts))
        return None, None
    info = registry.info(name) if checkpoint is None else None
    family = registry.family(info.family) if info is not None else folder_family(checkpoint, registry)
    if family is not None and family.whole_folder:
        _refuse_unable(family, checkpoint or name, accepts, registry)
    return family, info


def folder_family(checkpoint: str | os.PathLike | None, registry: Registry = REGISTRY) -> Family | None:
    """The whole-folder family whose folder ``checkpoint`` is (a look at its config, no weights read), else None."""
    return next((family for family in registry.families
                 if family.is_folder is not None and family.call("is_folder", checkpoint)), None)


def family_named(name: str, checkpoint: str | os.PathLike | None, registry: Registry = REGISTRY) -> Family | None:
    """The family ``name`` or a folder ``checkpoint`` denotes without reading weights; None if only weights tell
    (or the name is unknown: that is reported where the model is loaded)."""
    if is_exported_file(checkpoint):
        return None
    try:
        return folder_family(checkpoint, registry) if checkpoint is not None else \
            registry.family(registry.info(name).family)
    except CheckpointError:
        return None


def resolve(name: str | None, checkpoint: str | os.PathLike | None = None, *,
            cache_dir: str | os.PathLike | None = None, instead: str = CHECKPOINT_INSTEAD,
            registry: Registry = REGISTRY) -> Source:
    """Where the weights of ``checkpoint`` (a file or folder), else of the registered model ``name``, are:
    downloaded into the Hugging Face cache if need be. Torch-free; ``instead`` says, in the error, how
    the caller takes a local file."""
    if checkpoint is not None:
        if is_exported_file(checkpoint):
            raise CheckpointError(not_weights(checkpoint))
        return Source(Path(checkpoint), None)
    from auricle.models.hub import fetch_weights

    info = registry.info(name or DEFAULT_MODEL)
    if not info.hf_repo:
        raise CheckpointError(f"{info.name}: weights are published only on Zenodo ({info.zenodo_url}); "
                              "download them and pass checkpoint=PATH")
    # ``instead`` only when it is not fetch_weights' own default (test doubles take the short form).
    more = {} if instead == CHECKPOINT_INSTEAD else {"instead": instead}
    return Source(Path(fetch_weights(info, cache_dir=cache_dir, **more)), info)


def read_weights(path: str | os.PathLike, registry: Registry = REGISTRY) -> tuple[Family, Any]:
    """The family holding the weights at ``path`` and its strictly read checkpoint (imports torch)."""
    if is_exported_file(path):
        raise CheckpointError(not_weights(path))
    return read_any_checkpoint(path, registry.families)


def load_network(name: str, checkpoint: str | os.PathLike | None = None, *, from_scratch: bool = False,
                 seed: int = 0, name_given: bool = False, accepts: Accepts = ANYTHING,
                 registry: Registry = REGISTRY) -> tuple[Any, str]:
    """The bare network to train (no labels needed) and where its weights came from, in words.

    ``from_scratch``: an untrained network of the model ``name``, drawn from ``seed`` (the same
    seed gives the same weights).
    """
    import torch

    if from_scratch:
        if checkpoint is not None:
            raise CheckpointError("--from-scratch and --checkpoint exclude each other")
        info = registry.info(name)
        family = registry.family(info.family)
        _refuse_unable(family, info.name, accepts, registry)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return family.call("scratch", info.config), f"{info.name} (random initialisation, seed {seed})"
    precheck(name, checkpoint, accepts, registry)
    read = None
    if checkpoint is not None and name_given:
        read = read_weights(checkpoint, registry)
        _refuse_another_model(name, registry.info(name), checkpoint, *read, registry)
    source = resolve(name, checkpoint, registry=registry)
    family, checkpoint_read = read or read_weights(source.weights, registry)
    network = family.call("build", checkpoint_read)
    _refuse_unable(family, name if source.info is not None else str(checkpoint), accepts, registry)
    return network, (f"{source.info.name} ({source.weights})" if source.info is not None else str(checkpoint))


def weights_file(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None,
                 hub_cache: str | os.PathLike | None = None, registry: Registry = REGISTRY) -> Path:
    """The file holding the weights ``checkpoint`` (or else the model ``name``) denotes; downloaded if need be."""
    if checkpoint is None:
        from auricle.models.hub import fetch_weights

        return Path(fetch_weights(registry.info(name), cache_dir=hub_cache))
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    return weights_in_folder(path) if path.is_dir() else path


def load_prepared(name: str = DEFAULT_MODEL, checkpoint: str | os.PathLike | None = None, *,
                  precision: str = "fp32", threads: int | None = None, streams: int | None = None,
                  cache: str | os.PathLike | None = None, hub_cache: str | os.PathLike | None = None,
                  announce: Callable[[str], None] | None = None, registry: Registry = REGISTRY) -> Any:
    """The model as one ONNX Runtime graph (:mod:`auricle.onnx.prepared`): from the cache, else exported first.

    ``precision``: fp32, int8 or auto. Raises :class:`~auricle.onnx.prepared.PrepareError` when the
    graph cannot reproduce the weights, its export breaks or the cache cannot keep it (the weights can
    still run with ``load_model(engine="onnx")``), :class:`~auricle.errors.CheckpointError` for weights
    that cannot be found or read.
    """
    from auricle.onnx.prepared import graph_precision, prepared_model

    precision = graph_precision(precision)
    weights = weights_file(name, checkpoint, hub_cache, registry)
    return prepared_model(weights, name if checkpoint is None else None, precision=precision, threads=threads,
                          streams=streams, cache=cache, announce=announce,
                          build=lambda: load(name, checkpoint, cache_dir=hub_cache, registry=registry))


def _load_exported(path: str | os.PathLike, options: RunOptions, accepts: Accepts) -> Any:
    """An ``auricle export`` file: it fixes engine and precision, so only what the caller chose is checked."""
    precheck(DEFAULT_MODEL, path, accepts)
    from auricle.onnx.exported import load_exported

    return load_exported(path, device=str(options.device), engine=options.given("engine"),
                         precision=options.given("precision"), threads=options.threads, streams=options.streams)


def _prepared_or_none(name: str, checkpoint: str | os.PathLike | None, source: Source, options: RunOptions,
                      cache_dir: str | os.PathLike | None, registry: Registry,
                      announce: Callable[[str], None] | None) -> Any:
    """The prepared graph, or None (with an EngineWarning) when the model cannot run as one."""
    from auricle.onnx.prepared import PrepareError, graph_precision, prepared_model

    try:
        precision = graph_precision(options.precision or "fp32")
        weights = weights_in_folder(source.weights) if source.weights.is_dir() else source.weights
        if not weights.exists():
            raise CheckpointError(f"{weights}: checkpoint not found")
        return prepared_model(weights, name if checkpoint is None else None, precision=precision,
                              threads=options.threads, streams=options.streams, announce=announce,
                              build=lambda: load(name, checkpoint, cache_dir=cache_dir, registry=registry))
    except PrepareError as error:
        warnings.warn(f"{error}; running only the encoder in ONNX Runtime", EngineWarning, stacklevel=3)
        return None


def _run_config(options: RunOptions):
    """The torch device and engine config of ``options``; fails, in one line, before any weights are read."""
    import torch

    from auricle.devices import torch_device
    from auricle.engines import EngineConfig, resolve_precision

    if options.threads:
        torch.set_num_threads(options.threads)
    engine, precision = options.engine or "torch", options.precision or "fp32"
    device = torch_device(options.device)
    return device, EngineConfig(engine, resolve_precision(engine, precision, device), options.threads,
                                options.streams)


def _exported_refusal(path: str | os.PathLike, accepts: Accepts) -> str:
    if accepts.exported_refusal is not None:
        return accepts.exported_refusal.format(path=path)
    return not_weights(path, accepts.caller)


def _refuse_unable(family: Family, subject: Any, accepts: Accepts, registry: Registry) -> None:
    """Refuse a family without a capability the caller needs, naming the families that would do."""
    if family.can(accepts.needs):
        return
    takes = " or ".join(other.title for other in registry.families if other.can(accepts.needs))
    raise OptionError(family.refusal.format(subject=subject, caller=f"auricle {accepts.caller}", takes=takes))


def _refuse_another_model(name: str, info: ModelInfo, checkpoint: str | os.PathLike, family: Family, read: Any,
                          registry: Registry) -> None:
    """``--model`` beside a ``--checkpoint`` of another model (it would be ignored): one line."""
    if family.name != info.family or not same_size(read.config, info):
        raise OptionError(f"--model {name} does not match --checkpoint {checkpoint}: "
                          f"the checkpoint holds {size_name(read.config, registry)}, not {info.name}; drop --model "
                          "or name the checkpoint's model")


__all__ = ["Accepts", "ANYTHING", "RunOptions", "Source", "load", "load_model", "load_network", "load_prepared",
           "precheck", "read_weights", "resolve", "weights_file", "family_named", "folder_family"]
