"""Teachers: auricle models or any ``module:function``, averaged on the AudioSet classes.

A teacher spec is one of

* a model name (``ced-mini``; weights from the Hugging Face cache or Hub),
* a checkpoint path (official ``.pt``, Hugging Face folder, auricle ``.safetensors``),
* ``package.module:function``, a callable mapping a (batch, samples) float32 16 kHz
  tensor to (batch, classes) probabilities. Its classes are AudioSet's 527 in
  model order unless the callable has an attribute ``mids`` (AudioSet MIDs in
  output order); an attribute ``identity`` (a dict, or a callable returning one)
  is recorded in the store's manifest (e.g. the sha256 of the weights it loads).

optionally followed by ``@WEIGHT`` (default 1). Classes are aligned by MID: a
teacher with another class list (YAMNet's 521) contributes to the classes it
has; each class is the weighted mean over the teachers that cover it.

CED teachers score the masked log-mel the view renderer produced (the same
tensor a student sees); so does a Dasheng tagger (its AudioSet head, or a probe
saved onto it: the same log-mel frontend, then its own input BatchNorm and
252-token chunks; fp32 only). Callables see the view waveform, so they cannot be
used with log-mel masks.

CED teachers run in fp32 unless a ``precision`` of the torch engine is asked for
(``bf16`` or ``int8``, auricle.engines): on a CPU with AMX, ced-base runs
about 4x faster in bf16. Their identity then records the precision, so a store is only
resumed, and verified, in the precision its targets were computed in. Callables
compute in whatever precision they choose.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import inspect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from auricle.devices import torch_device
from auricle.distill import DistillError, DistillUsageError, file_sha256
from auricle.errors import AuricleError
from auricle.labels import LabelSet, audioset_labels
from auricle.models.ced import CED
from auricle.models.dasheng import Dasheng

#: What CED teachers can run in (the torch engine's precisions).
TEACHER_PRECISIONS = ("fp32", "bf16", "int8")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: auricle's own callable teachers: ``distill verify`` imports these when a store names them. Any other
#: ``module:function`` in a store's manifest is imported only when the user names it again with --teacher:
#: the manifest is data, and importing what data names runs whatever the store's sender planted.
OWN_TEACHERS = frozenset({"auricle.distill.yamnet:yamnet"})
_WEIGHT = re.compile(r"^(?P<spec>.+)@(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher as given on the command line: ``SPEC[@WEIGHT]``."""

    spec: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "TeacherSpec":
        text = text.strip()
        match = _WEIGHT.match(text)
        if match and not os.path.exists(text):
            spec, weight = match["spec"], float(match["weight"])
        else:
            spec, weight = text, 1.0
            head, at, tail = text.rpartition("@")
            if at and head and not os.path.exists(text) and (os.path.exists(head) or _looks_like_a_file(head)):
                raise DistillError(f"{text}: the weight after '@' must be a positive number, not {tail!r}")
        if not spec:
            raise DistillError("empty teacher spec")
        if not 0 < weight < math.inf:  # "@1e400" parsed as inf: NaN targets, and a manifest that is not JSON
            raise DistillError(f"{text}: teacher weight must be a positive finite number")
        return cls(spec, weight)

    def __str__(self) -> str:
        return self.spec if self.weight == 1.0 else f"{self.spec}@{self.weight:g}"


@torch.inference_mode()
def ced_probabilities_from_mel(network: CED, mel: torch.Tensor, forward_features=None) -> torch.Tensor:
    """What ``CED.forward`` computes, starting from a (possibly masked) log-mel (batch, n_mels, frames).

    ``forward_features`` replaces the network's encoder call (e.g. the fused CPU encoder's).
    """
    pieces, count = network.pieces(network.normalize(mel))
    tokens = (forward_features or network.forward_features)(pieces)
    probabilities = network.activate(network.forward_head(tokens))
    return probabilities.reshape(count, -1, probabilities.shape[-1]).mean(dim=0)


@torch.inference_mode()
def dasheng_probabilities_from_mel(network: Dasheng, mel: torch.Tensor) -> torch.Tensor:
    """What ``Dasheng.forward`` computes, starting from a (possibly masked) log-mel (batch, n_mels, frames)."""
    return network.activate(network.forward_head(network.forward_features(network.normalize(mel))))


@dataclass
class Teacher:
    """One loaded teacher: a scoring function and the MIDs of its output columns."""

    spec: TeacherSpec
    name: str
    mids: tuple[str, ...]
    identity: dict
    network: CED | Dasheng | None = None
    function: object = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: What runs ``network``'s encoder instead of the module: in fp32 the fused CPU encoder
    #: (auricle.engines.fused) where it runs, the same float32 arithmetic 9-19% faster
    #: (docs/benchmarks.md); in bf16 or int8 the torch engine of that precision.
    encoder: object = None

    @property
    def takes_mel(self) -> bool:
        return self.network is not None

    @torch.inference_mode()
    def probabilities(self, waveforms: torch.Tensor, mel: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, columns) float32 probabilities on CPU."""
        if self.network is not None:
            if mel is None:
                mel = self.network.spectrogram(waveforms.to(self.device))
            if isinstance(self.network, Dasheng):
                return dasheng_probabilities_from_mel(self.network, mel.to(self.device)).float().cpu()
            forward_features = self.encoder.forward_features if self.encoder is not None else None
            return ced_probabilities_from_mel(self.network, mel.to(self.device), forward_features).float().cpu()
        try:
            output = self.function(waveforms)
        except AuricleError:
            raise
        except Exception as error:
            raise DistillError(f"teacher {self.spec.spec}: failed on a batch ({type(error).__name__}: {error})") from None
        output = torch.as_tensor(np.asarray(output) if not isinstance(output, torch.Tensor) else output).float().cpu()
        if output.shape != (waveforms.shape[0], len(self.mids)):
            raise DistillError(f"teacher {self.spec.spec}: returned shape {tuple(output.shape)}, "
                               f"expected ({waveforms.shape[0]}, {len(self.mids)})")
        if not torch.isfinite(output).all() or output.min() < 0 or output.max() > 1:
            raise DistillError(f"teacher {self.spec.spec}: returned values outside [0, 1] (probabilities expected)")
        return output


def _label_mids(labels: LabelSet, source: str) -> tuple[str, ...]:
    """MIDs of a head's classes; custom heads are matched to AudioSet by class name."""
    audioset = audioset_labels()
    mids = []
    for item in labels:
        if item.mid:
            mids.append(item.mid)
        else:
            index = audioset.find(item.name)
            mids.append(audioset[index].mid if index is not None else "")
    if not any(mids):
        raise DistillError(f"{source}: none of the teacher's classes is an AudioSet class")
    return tuple(mids)


def _looks_like_a_file(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.endswith((".pt", ".pth", ".ckpt", ".safetensors", ".json"))


def is_callable_spec(spec: str) -> bool:
    """True when ``spec`` names a ``module:function`` (what :func:`load_teacher` would import)."""
    return not os.path.exists(spec) and bool(_CALLABLE.match(spec))


def _check_recorded(spec: TeacherSpec, name: str, actual: str | None, recorded: str | None) -> None:
    if recorded and actual != recorded:
        raise DistillError(f"teacher {spec.spec}: {name} is now {actual}, the store was made with {recorded}")


def _load_auricle(spec: TeacherSpec, device: torch.device, precision: str, sha256: str | None = None) -> Teacher:
    from auricle.errors import CheckpointError
    from auricle.loading import read_weights, resolve
    from auricle.models.files import weights_in_folder

    if not os.path.exists(spec.spec) and _looks_like_a_file(spec.spec):  # not "unknown model" for a typo in a path
        raise CheckpointError(f"{spec.spec}: teacher weights not found")
    if os.path.exists(spec.spec):
        weights = resolve(None, spec.spec).weights
        name = weights.stem if weights.is_file() else weights.name
        identity = {"kind": "checkpoint"}
    else:
        source = resolve(spec.spec, instead="--teacher PATH (the weights file or folder)")
        weights, name = source.weights, source.info.name
        identity = {"kind": "model"}
    if sha256 is not None:  # before the file is parsed: a recorded teacher is read only if it is the same bytes
        _check_recorded(spec, "sha256", file_sha256(weights_in_folder(weights) if weights.is_dir() else weights),
                        sha256)
    family, checkpoint = read_weights(weights)
    runs_engines = family.can({"engines"})  # the fused encoder and the bf16/int8 engines
    if not runs_engines and precision != "fp32":
        raise DistillError(f"teacher {spec.spec}: a {family.title} teacher runs in fp32 only (not {precision})")
    if not checkpoint.config.num_classes:
        raise DistillError(f"{checkpoint.source}: an encoder without a classification head cannot teach "
                           "(give a tagger, e.g. dasheng_audioset_mAP497.pt)")
    if checkpoint.labels is not None:
        labels = LabelSet.from_names(checkpoint.labels)
    elif checkpoint.config.num_classes == 527:
        labels = audioset_labels()
    else:
        raise DistillError(f"{checkpoint.source}: {checkpoint.config.num_classes} classes but no class names")
    # A file's spec is kept absolute, so verify can reload it from any working folder.
    where = os.path.abspath(spec.spec) if identity["kind"] == "checkpoint" else spec.spec
    identity.update(spec=where, name=name, sha256=file_sha256(checkpoint.source), config=checkpoint.config.to_dict())
    network = family.call("build", checkpoint).to(device).eval()
    if not runs_engines:
        encoder = None
    elif precision == "fp32":
        from auricle.engines.fused import FusedEncoder, fused_supported

        encoder = FusedEncoder(network) if fused_supported(device) else None
    else:
        from auricle.engines import EngineConfig, EngineError, make_engine

        identity["precision"] = precision  # only when not fp32: stores made before it existed still resume
        try:  # one stream: the teacher pass batches and parallelises on its own
            encoder = make_engine(network, EngineConfig("torch", precision, streams=1))
        except EngineError as error:
            raise DistillError(f"teacher {spec.spec}: {error}") from None
    return Teacher(spec, name, _label_mids(labels, checkpoint.source), identity, network=network, device=device,
                   encoder=encoder)


def _module_source(module_name: str) -> str | None:
    """The source file of ``module_name``, found without running it (its parent packages are imported)."""
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return origin if origin and origin.endswith(".py") and os.path.isfile(origin) else None


def _load_callable(spec: TeacherSpec, device: torch.device, module_sha256: str | None = None) -> Teacher:
    module_name, _, attribute = spec.spec.partition(":")
    if module_sha256 is not None:  # before the import: a recorded module runs only if it is the same source
        source = _module_source(module_name)
        _check_recorded(spec, "module_sha256", file_sha256(source) if source else None, module_sha256)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise DistillError(f"teacher {spec.spec}: cannot import {module_name} ({error})") from None
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
    if not callable(function):
        raise DistillError(f"teacher {spec.spec}: {attribute} is not a callable of {module_name}")
    mids = getattr(function, "mids", None)
    mids = tuple(mids) if mids is not None else audioset_labels().mids
    identity = {"kind": "callable", "spec": spec.spec}
    source = inspect.getsourcefile(module) if hasattr(module, "__file__") else None
    if source:
        identity["module_sha256"] = file_sha256(source)
    extra = getattr(function, "identity", None)
    if callable(extra):
        extra = extra()
    if isinstance(extra, dict):
        identity.update(extra)
    identity.setdefault("sha256", identity.get("module_sha256", ""))
    return Teacher(spec, spec.spec, mids, identity, function=function, device=device)


def load_teacher(spec: TeacherSpec | str, device: str | torch.device = "cpu", precision: str = "fp32",
                 recorded: dict | None = None) -> Teacher:
    """Load one teacher from its spec; ``precision`` applies to CED teachers (see the module docstring).

    ``recorded``: the identity a store's manifest holds for it. Its weights' ``sha256`` (a callable's
    ``module_sha256``) must be there, and is checked before the weights are read (the module imported);
    the other recorded hashes after loading.
    """
    if precision not in TEACHER_PRECISIONS:
        raise DistillError(f"teacher precision must be one of {', '.join(TEACHER_PRECISIONS)}, not {precision!r}")
    if isinstance(spec, str):
        spec = TeacherSpec.parse(spec)
    device = torch_device(device)  # one line for a device this machine lacks
    callable_spec = is_callable_spec(spec.spec)
    if recorded is None:
        return _load_callable(spec, device) if callable_spec else _load_auricle(spec, device, precision)
    required = "module_sha256" if callable_spec else "sha256"
    if not recorded.get(required):
        raise DistillUsageError(f"teacher {spec.spec}: the store records no {required}, so it cannot be checked; "
                           "refused")
    if callable_spec:
        teacher = _load_callable(spec, device, recorded[required])
    else:
        teacher = _load_auricle(spec, device, precision, recorded[required])
    for name in ("sha256", "module_sha256"):
        _check_recorded(spec, name, teacher.identity.get(name), recorded.get(name))
    return teacher


class TeacherEnsemble:
    """Teachers combined on AudioSet's classes: per class, the weighted mean of those that cover it."""

    def __init__(self, teachers: Sequence[Teacher], labels: LabelSet | None = None) -> None:
        if not teachers:
            raise DistillError("at least one teacher is needed")
        self.teachers = list(teachers)
        self.labels = labels if labels is not None else audioset_labels()
        self.num_classes = len(self.labels)
        self._columns: list[tuple[torch.Tensor, torch.Tensor]] = []
        weight_sum = torch.zeros(self.num_classes, dtype=torch.float64)
        for teacher in self.teachers:
            pairs = [(column, self.labels.find(mid)) for column, mid in enumerate(teacher.mids) if mid]
            pairs = [(column, target) for column, target in pairs if target is not None]
            if not pairs:
                raise DistillError(f"teacher {teacher.spec.spec}: no output class is in the target label set")
            source, target = (torch.tensor(values, dtype=torch.long) for values in zip(*pairs))
            self._columns.append((source, target))
            weight_sum[target] += teacher.spec.weight
        self.coverage = weight_sum > 0
        self._weight_sum = weight_sum.clamp(min=1e-300)

    @property
    def takes_mel(self) -> bool:
        """True when every teacher scores a log-mel (needed for log-mel masks)."""
        return all(teacher.takes_mel for teacher in self.teachers)

    def identities(self) -> list[dict]:
        return [dict(teacher.identity, weight=teacher.spec.weight) for teacher in self.teachers]

    def mapped_columns(self) -> list[int]:
        """How many output columns of each teacher land on a target class."""
        return [len(source) for source, _ in self._columns]

    @torch.inference_mode()
    def probabilities(self, waveforms: torch.Tensor, mel: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, num_classes) float32: weighted mean over teachers; classes nobody covers are 0."""
        total = torch.zeros(waveforms.shape[0], self.num_classes, dtype=torch.float64)
        for teacher, (source, target) in zip(self.teachers, self._columns):
            scores = teacher.probabilities(waveforms, mel).double()
            total[:, target] += teacher.spec.weight * scores[:, source]
        return (total / self._weight_sum).float()


def load_ensemble(specs: Sequence[TeacherSpec | str], device: str | torch.device = "cpu",
                  precision: str = "fp32") -> TeacherEnsemble:
    return TeacherEnsemble([load_teacher(spec, device, precision) for spec in specs])
