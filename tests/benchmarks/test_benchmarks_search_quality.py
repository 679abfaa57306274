"""benchmarks/search_quality.py: its ranking metrics on a hand example, and its query set's own rules."""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("search_quality", ROOT / "benchmarks" / "search_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_ap_and_recall_at_k_on_a_hand_ranking(quality):
    relevant = np.array([True, False, True, False])
    scores = np.array([0.9, 0.8, 0.7, 0.1])  # ranked: hit, miss, hit, miss
    assert quality.ranking_ap(scores, relevant) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert [quality.recall_at(scores, relevant, k) for k in (1, 2, 3, 10)] == [0.5, 0.5, 1.0, 1.0]
    # Tied scores are ranked together: one threshold, precision 2/4 there.
    assert quality.ranking_ap(np.ones(4), relevant) == pytest.approx(0.5)
    # A query answered with nothing counts as a total miss.
    assert quality.ranking_ap(None, relevant) == 0.0 and quality.recall_at(None, relevant, 5) == 0.0


def test_queries_name_real_classes_but_never_say_them(quality):
    from auricle.labels import audioset_labels

    names = set(audioset_labels().names)
    queries = quality.read_queries()
    assert len(queries) >= 60
    for query in queries:
        assert set(query.classes) <= names, query
        for name in query.classes:
            for part in {name, *(piece.strip() for piece in name.split(","))}:
                assert not re.search(rf"\b{re.escape(part.lower())}\b", query.text.lower()), (query.text, part)
