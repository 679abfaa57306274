"""From a plain-language description to weighted sound classes (the text side of search).

Each AudioSet class is embedded as several short texts, all taken from the ontology,
none from any query: its whole name, each comma-separated alias in the name
("Vehicle horn, car horn, honking" gives three), the name with its description's
first sentence, and "the sound of <name>". A query's similarity to a class is the best cosine over
the class's texts, so a query that paraphrases one alias or the description is not
diluted by the rest.

The weights are a softmax over the closest classes' similarities with a small
temperature, divided by the largest: the best class weighs 1, classes nearly as close
weigh nearly as much, and those clearly further away fade out instead of being cut at
a fixed margin.

Whether the query names a sound at all is judged on the one sentence per class (name
and whole description), not on the short texts: a short string such as "xqzv blorf"
or "blue" lands close to some one-word alias ("Bleat", "Blues") by its letters alone,
while against the full sentences most unrelated words and gibberish stay under 0.30
(15 of 20 non-sound strings tried; a few, "qwerty", "the meaning of life", reach 0.35).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MatchSettings:
    """How similarities become weights (defaults chosen on benchmarks/search_queries.csv only)."""

    #: Below this best cosine to the class sentences the query names no sound. Gibberish and non-sound
    #: phrases reach 0.12-0.25 and a few up to 0.35; 0.30 let "xyzzy plugh" (0.32) through as a sound,
    #: so the refusal keeps the 0.35 it had before the class texts came.
    min_similarity: float = 0.35
    #: Softmax temperature over cosines: 0.03 halves a weight for every ~0.02 of cosine below the best.
    temperature: float = 0.03
    #: At most this many classes, and none whose weight falls under min_weight.
    max_classes: int = 8
    min_weight: float = 0.1


@dataclass(frozen=True)
class ClassWeight:
    """One class a description selects: its index, its weight in (0, 1] and the similarity behind it."""

    index: int
    weight: float
    similarity: float


def class_texts(names: Sequence[str], descriptions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The texts that stand for each class, and for each text the index of its class."""
    texts: list[str] = []
    owners: list[int] = []
    for index, (name, description) in enumerate(zip(names, descriptions)):
        variants = [name, f"the sound of {name.lower()}"]
        aliases = [part.strip() for part in name.split(",") if part.strip()]
        if len(aliases) > 1:
            variants += aliases
        first = description.strip().split(". ")[0].strip().rstrip(".")
        if first:
            variants.append(f"{name}. {first}")
        for variant in dict.fromkeys(variants):  # no text twice
            texts.append(variant)
            owners.append(index)
    return texts, np.asarray(owners, dtype=np.int64)


def class_similarity(query: np.ndarray, text_vectors: np.ndarray, owners: np.ndarray, classes: int) -> np.ndarray:
    """(classes,) the best cosine between the query vector and each class's texts."""
    cosine = text_vectors @ query
    best = np.full(classes, -1.0, dtype=np.float32)
    np.maximum.at(best, owners, cosine.astype(np.float32))
    return best


def names_a_sound(sentence_similarity: np.ndarray, settings: MatchSettings = MatchSettings()) -> bool:
    """Whether the query's best cosine to the class sentences (name and description) reaches the cutoff."""
    return float(sentence_similarity.max()) >= settings.min_similarity


def weigh(similarity: np.ndarray, settings: MatchSettings = MatchSettings()) -> list[ClassWeight]:
    """The closest classes by ``similarity`` (one per class), best first, weighted by a softmax relative to the best."""
    order = np.argsort(-similarity, kind="stable")[:settings.max_classes]
    best = float(similarity[order[0]])
    weights = np.exp((similarity[order] - best) / settings.temperature)
    return [ClassWeight(int(i), float(w), float(similarity[i])) for i, w in zip(order, weights)
            if w >= settings.min_weight]


def describe(text: str, encoder=None, settings: MatchSettings = MatchSettings()
             ) -> tuple[list[ClassWeight], int, float]:
    """The classes a description selects (empty if it names no sound), the closest class and its sentence cosine.

    ``encoder`` is a callable returning a :class:`~auricle.search.text.TextEncoder`
    (the process's shared one by default).
    """
    from auricle.search.text import class_embeddings, class_text_embeddings, text_encoder

    model = (encoder or text_encoder)()
    query = model.encode([text])[0]
    sentences = class_embeddings(model) @ query
    closest = int(np.argmax(sentences))
    if not names_a_sound(sentences, settings):
        return [], closest, float(sentences[closest])
    text_vectors, owners = class_text_embeddings(model)
    return weigh(class_similarity(query, text_vectors, owners, len(sentences)), settings), closest, \
        float(sentences[closest])
