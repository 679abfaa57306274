"""Tagging with an exported ONNX file (``auricle export``) through ONNX Runtime, without PyTorch.

An exported file holds the whole model (frontend, piece splitting, encoder, head)
and, in its metadata, the class labels. That is all tagging needs, so
:class:`ExportedModel` runs it with only numpy and onnxruntime: a short command
does not pay the 1-2 s that importing torch costs (docs/benchmarks.md, cold
start). Results have the same format as :class:`auricle.model.AudioModel`'s and,
for an fp32 file, the same values within the export's checked tolerance
(probabilities within 1e-4 of the torch model).

    model = ExportedModel("ced-mini.onnx")
    result = model.tag("recording.wav", top_k=5, events=True)
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from auricle.audio import SAMPLE_RATE, prepare_batch, prepare_waveform
from auricle.errors import AuricleError, CheckpointError
from auricle.inference.pipeline import Tagger, embedded_file, finite_embeddings, finite_probabilities
from auricle.inference.results import Embeddings
from auricle.onnx.sessions import stream_sessions
from auricle.onnx.rows import Framing, InexactRows, MelPeaks, Row, loudest_frame, rows
from auricle.inference.streams import StreamPool, run_here, split_bounds
from auricle.inference.tuning import default_batch_size, default_streams, default_threads
from auricle.labels import AudioClass, LabelSet
from auricle.models.files import is_exported_file, not_weights  # noqa: F401  (where they lived first)

#: Pieces (10.12 s each) per call when embedding a long recording; each call also runs two it discards.
PIECES_PER_ROW = 8

#: What an exported file must declare in its metadata to be tagged with.
REQUIRED_METADATA = ("producer", "labels", "input", "precision", "frontend", "piece_frames", "encoder")


class ExportedModel(Tagger):
    """An ``auricle export`` file (waveform input) run by ONNX Runtime on the CPU: tagging and probabilities.

    ``threads`` (default one per usable core) and ``streams`` (calls at once,
    each on ``threads // streams`` threads; default one per thread) as for the
    ``onnx`` engine (:mod:`auricle.engines.onnx`). Embeddings need a file
    exported with ``--piece-embeddings`` (:attr:`can_embed`).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, streams: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such file")
        if threads is not None and threads < 1:
            raise AuricleError(f"threads must be at least 1, got {threads}")
        self.threads = threads or default_threads()
        if streams is not None and not 1 <= streams <= self.threads:
            raise AuricleError(f"streams must be between 1 and the thread count ({self.threads}), got {streams}")
        self._streams = min(streams or default_streams(self.threads), self.threads)
        try:
            self._sessions = stream_sessions(str(self.path), self.threads, self._streams)
        except ImportError as error:
            raise AuricleError(f"{self.path}: running an exported file needs onnxruntime: "
                               f"pip install 'auricle[onnx]'") from error
        except Exception as error:  # ORT raises its own exception types for unreadable files
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{self.path}: not a loadable ONNX model ({message})") from error
        first = self._sessions[0]
        self.metadata: dict[str, str] = dict(first.get_modelmeta().custom_metadata_map)
        self.labels = _labels(self.path, self.metadata)
        self.name = self.metadata.get("model") or self.path.stem
        self.precision = self.metadata["precision"]
        if self.metadata["input"] != "waveform" or [i.name for i in first.get_inputs()] != ["waveforms"]:
            raise CheckpointError(f"{self.path}: takes {self.metadata['input']} input; tagging needs a file "
                                  f"exported with waveform input (auricle export without --mel-input)")
        outputs = [item.name for item in first.get_outputs()]
        if "probabilities" not in outputs:
            raise CheckpointError(f"{self.path}: has no 'probabilities' output")
        self._output = outputs.index("probabilities")
        self._clip_output = outputs.index("embedding") if "embedding" in outputs else None
        self._pieces_output = (outputs.index("piece_embeddings")
                               if "piece_embeddings" in outputs and self._clip_output is not None else None)
        # Per-piece embeddings span piece_frames frontend hops.
        hop = json.loads(self.metadata["frontend"])["hop_length"]
        self._piece_seconds = int(self.metadata["piece_frames"]) * hop / SAMPLE_RATE
        try:  # how a long recording is cut into calls (auricle.onnx.rows); None: in one call
            self._framing: Framing | None = Framing.from_metadata(self.metadata)
        except InexactRows:
            self._framing = None
        self._pool = (StreamPool(self._streams, max(1, self.threads // self._streams), torch_threads=False)
                      if self._streams > 1 else None)

    def __repr__(self) -> str:
        return (f"ExportedModel(path={str(self.path)!r}, name={self.name!r}, classes={len(self.labels)}, "
                f"precision={self.precision!r}, threads={self.threads}, streams={self._streams})")

    @property
    def batch_size(self) -> int:
        return default_batch_size("cpu", self._streams)

    @property
    def embedding_dim(self) -> int:
        """Width of the encoder (the file's ``embedding`` output)."""
        return int(json.loads(self.metadata["encoder"])["embed_dim"])

    @property
    def streams(self) -> int:
        return self._streams

    def probabilities(self, waveforms: np.ndarray, *, finite: bool = True) -> np.ndarray:
        """(batch, samples) 16 kHz clips of equal length -> (batch, classes) float32 probabilities.

        A numpy array (or list) in gives a numpy array out; a torch tensor in gives a tensor
        out, as :meth:`auricle.model.AudioModel.probabilities` does; ``finite`` as there.
        """
        torch = sys.modules.get("torch")  # a tensor can only come from a program that imported torch
        given_tensor = torch is not None and isinstance(waveforms, torch.Tensor)
        result = self._score_now(prepare_batch(waveforms))
        if finite:
            finite_probabilities(result)
        return torch.from_numpy(result) if given_tensor else result

    @property
    def can_embed(self) -> bool:
        """Whether the file has the ``piece_embeddings`` output (``auricle export --piece-embeddings``)."""
        return self._pieces_output is not None

    def embed_waveform(self, waveform: np.ndarray, name: str = "<array>", batch_size: int | None = None) -> Embeddings:
        """Embeddings of one 16 kHz mono signal, as :meth:`auricle.model.AudioModel.embed_waveform` computes them.

        A long recording goes through a few pieces per call, on all streams, with the
        results of one call (:mod:`auricle.onnx.rows`). ``batch_size`` is
        accepted for the shared signature and unused.
        """
        waveform = prepare_waveform(waveform, SAMPLE_RATE, name)  # integers scaled, NaN refused, as tag() does
        return finite_embeddings(self._embeddings(name, lambda: [waveform]))

    def _embed_file(self, path: str | os.PathLike, batch_size: int | None = None) -> Embeddings:
        # A long file is decoded twice (loudest frame, then rows) rather than held whole.
        return embedded_file(path, lambda blocks: self._embeddings(str(path), blocks))

    def _stream_pool(self) -> StreamPool | None:
        return self._pool

    def _embed_file_on_stream(self, stream: int, path: str | os.PathLike, batch_size: int | None = None) -> Embeddings:
        return embedded_file(path, lambda blocks: self._embeddings(str(path), blocks, stream))

    def _embeddings(self, name: str, blocks: Callable[[], Iterable[np.ndarray]],
                    stream: int | None = None) -> Embeddings:
        """``stream``: run every call here, on that stream's session (we are its worker); else on all streams."""
        if self._pieces_output is None:
            raise AuricleError(f"{self.path}: this exported file has no per-piece embeddings; export it with "
                               f"--piece-embeddings, or load the model's weights to embed")
        framing = self._framing
        if framing is None:
            return self._one_call(name, np.concatenate(list(blocks())), stream)
        short = PIECES_PER_ROW * framing.piece_samples + framing.half  # shorter: one call
        held: list[np.ndarray] = []
        samples = 0
        source = iter(blocks())
        for block in source:
            held.append(block)
            samples += len(block)
            if samples >= short:
                break
        else:
            return self._one_call(name, np.concatenate(held) if held else np.zeros(0, dtype=np.float32), stream)
        peaks = MelPeaks(framing)
        try:
            loudest = loudest_frame(itertools.chain(held, source), peaks)
            held.clear()
            pieces = self._row_pieces(rows(blocks(), peaks, loudest, PIECES_PER_ROW), stream)
        except InexactRows:
            return self._one_call(name, np.concatenate(list(blocks())), stream)
        return self._result(name, loudest.samples, pieces.mean(axis=0, dtype=np.float64).astype(np.float32), pieces)

    def _one_call(self, name: str, waveform: np.ndarray, stream: int | None = None) -> Embeddings:
        """The whole recording in one call: what the graph computes, by definition."""
        if len(waveform) == 0:
            raise AuricleError(f"{name}: no audio samples")
        outputs = self._outputs(stream or 0, np.ascontiguousarray(waveform, dtype=np.float32)[None])
        return self._result(name, len(waveform), outputs[self._clip_output][0], outputs[self._pieces_output][:, 0, :])

    def _row_pieces(self, parts: Iterable[Row], stream: int | None = None) -> np.ndarray:
        """The kept piece embeddings of every row, in order; rows run on all streams, or here on ``stream``'s."""
        in_flight: deque[tuple[Row, Future]] = deque()
        pieces: list[np.ndarray] = []

        def collect(keep: int) -> None:
            while len(in_flight) > keep:
                row, future = in_flight.popleft()
                found = future.result()[self._pieces_output][row.skip:, 0, :]
                pieces.append(found if row.keep is None else found[: row.keep])

        for row in parts:
            batch = row.samples[np.newaxis]
            future = (self._pool.submit(self._outputs, batch) if self._pool is not None and stream is None
                      else run_here(self._outputs, stream or 0, batch))
            in_flight.append((row, future))
            collect(keep=2 * self._streams)
        collect(keep=0)
        return np.concatenate(pieces)

    def _result(self, name: str, samples: int, clip: np.ndarray, pieces: np.ndarray) -> Embeddings:
        duration = samples / SAMPLE_RATE
        starts = np.arange(len(pieces)) * self._piece_seconds
        return Embeddings(file=name, duration=duration, model=self.name, clip=clip, windows=pieces,
                          starts=starts, ends=np.minimum(starts + self._piece_seconds, duration))

    # -- scoring for the pipeline --------------------------------------------------
    def _run(self, stream: int, batch: np.ndarray) -> np.ndarray:
        return self._outputs(stream, batch)[self._output]

    def _outputs(self, stream: int, batch: np.ndarray) -> list[np.ndarray]:
        return self._sessions[stream % len(self._sessions)].run(None, {"waveforms": batch})

    def _submit(self, batch: np.ndarray) -> Future:
        if self._pool is not None:
            return self._pool.submit(self._run, batch)
        return run_here(self._run, 0, batch)

    def _score_now(self, batch: np.ndarray) -> np.ndarray:
        # Sessions are sized for one stream, so a batch is spread over the streams.
        parts = split_bounds(len(batch), self._streams) if self._pool is not None else [(0, len(batch))]
        if len(parts) == 1:
            return self._run(0, batch)
        return np.concatenate(self._pool.map(self._run, [batch[start:end] for start, end in parts]))


def _labels(path: Path, metadata: dict[str, str]) -> LabelSet:
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing or not metadata["producer"].startswith("auricle"):
        raise CheckpointError(f"{path}: not an auricle export (metadata lacks {', '.join(missing) or 'producer'}); "
                              f"write one with `auricle export`")
    try:
        names = json.loads(metadata["labels"])
        mids = json.loads(metadata.get("label_mids", "null")) or [""] * len(names)
        return LabelSet(tuple(AudioClass(index, mid, name) for index, (mid, name) in enumerate(zip(mids, names,
                                                                                                      strict=True))))
    except (ValueError, TypeError, AuricleError) as error:
        raise CheckpointError(f"{path}: unreadable class labels in its metadata ({error})") from error


def load_exported(path: str | os.PathLike, *, device: str = "cpu", engine: str | None = None,
                  precision: str | None = None, threads: int | None = None,
                  streams: int | None = None) -> ExportedModel:
    """:class:`ExportedModel` of ``path``; a bad file or a request it cannot meet raises :class:`CheckpointError`.

    The file fixes how the model runs (ONNX Runtime on the CPU, the precision it was
    exported at), so ``device``, ``engine`` and ``precision``, where given, must agree
    with it (``precision="auto"`` takes the file's).
    """
    if str(device) != "cpu":
        raise CheckpointError(f"{path}: an exported ONNX file runs on the CPU only, not {device}")
    if engine not in (None, "onnx"):
        raise CheckpointError(f"{path}: an exported ONNX file runs in ONNX Runtime, not the {engine} engine")
    model = ExportedModel(path, threads=threads, streams=streams)
    if precision not in (None, "auto", model.precision):
        fix = ("bf16 needs the torch engine and the model's weights" if precision == "bf16"
               else f"export with{'' if precision == 'int8' else 'out'} --int8 for {precision}")
        raise CheckpointError(f"{path}: holds an {model.precision} model, not {precision} ({fix})")
    return model


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """What an exported file declares (labels, frontend parameters, ...); needs only ONNX Runtime, not torch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # read, not run
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)
