"""auricle.Index.add_scores: an index filled from a model outside auricle, searched as any other."""

from __future__ import annotations

import numpy as np
import pytest

import auricle
from auricle.errors import SearchIndexError
from auricle.labels import audioset_labels
from auricle.search import ScoredFile

CLASSES = len(audioset_labels())


def scored(path, column: int, windows: int = 2) -> ScoredFile:
    window_scores = np.full((windows, CLASSES), 0.01, dtype=np.float32)
    window_scores[-1, column] = 0.9  # the sound is in the last window
    bounds = np.array([[10.0 * w, 10.0 * (w + 1)] for w in range(windows)])
    return ScoredFile(str(path), 10.0 * windows, window_scores.max(axis=0), bounds, window_scores)


@pytest.fixture
def files(tmp_path):
    paths = []
    for name in ("dog.wav", "cat.wav"):
        (tmp_path / name).write_bytes(b"not decoded: the scores come from elsewhere")
        paths.append(tmp_path / name)
    return paths


def test_scores_from_another_model_are_searched_with_their_windows(files, tmp_path):
    labels = audioset_labels()
    dog, cat = labels.index_of_name("Dog"), labels.index_of_name("Cat")
    with auricle.Index.open(tmp_path / "other.db", create=True) as index:
        report = index.add_scores([scored(files[0], dog), scored(files[1], cat, windows=1)], model="other",
                                  weights="0123456789abcdef")
        assert (report.added, report.failures) == (2, [])
        assert index.model == "other" and len(index) == 2
        hits = index.search("=Dog", top=2)
    assert [hit.file for hit in hits] == [str(files[0]), str(files[1])]
    assert hits[0].score == pytest.approx(0.9, abs=1e-3)
    assert (hits[0].segments[0].start, hits[0].segments[0].end) == (10.0, 20.0)


def test_wrong_shapes_and_gone_files_are_reported_and_the_rest_kept(files, tmp_path):
    bad = scored(files[1], 0)
    bad = ScoredFile(bad.path, bad.duration, bad.clip_scores[:521], bad.window_bounds, bad.window_scores)
    with auricle.Index.open(tmp_path / "other.db", create=True) as index:
        report = index.add_scores([bad, scored(tmp_path / "gone.wav", 0), scored(files[0], 0)], model="other",
                                  weights="k")
        assert report.added == 1 and index.files() == [str(files[0])]
    assert [reason for _, reason in report.failures] == [
        f"{files[1]}: clip scores (521,), window scores (2, 527), bounds (2, 2); the index needs (527,), "
        "(windows >= 1, 527), (windows, 2)", f"{tmp_path / 'gone.wav'}: file not found"]


def test_another_scorer_is_refused(files, tmp_path):
    with auricle.Index.open(tmp_path / "other.db", create=True) as index:
        index.add_scores([scored(files[0], 0)], model="other", weights="k")
        with pytest.raises(SearchIndexError, match="made with another model"):
            index.add_scores([scored(files[1], 0)], model="yamnet", weights="k")
        assert len(index) == 1
