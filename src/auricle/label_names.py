"""Looking a class up by name: the lookup key, MID shapes, close matches for "did you mean".

Shared by :mod:`auricle.labels` (label sets, class selection) and :mod:`auricle.ontology`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from auricle.errors import LabelError

_MID_PATTERN = re.compile(r"^/[a-z]/\S+$")
_MAX_SUGGESTIONS = 4


def _key(name: str) -> str:
    """Lookup key of a name: case-insensitive, surrounding whitespace ignored."""
    return name.strip().casefold()


def _looks_like_mid(text: str) -> bool:
    return bool(_MID_PATTERN.match(text))


def close_matches(query: str, candidates: Iterable[str], limit: int = _MAX_SUGGESTIONS) -> list[str]:
    """Close matches of ``query`` among ``candidates`` (difflib ratio), best first.

    Besides plain similarity, a candidate scores well when the query equals one
    of its comma-separated aliases (``smoke alarm`` -> ``Smoke detector, smoke
    alarm``) or when the candidate is one of the query's words (``Dog bark`` ->
    ``Dog``, ``Bark``).
    """
    query_key = _key(query)
    words = set(re.findall(r"[\w-]+", query_key))
    scores: dict[str, float] = {}
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(query_key)
    for candidate in candidates:
        key = _key(candidate)
        matcher.set_seq1(key)
        score = matcher.ratio()
        if query_key in (alias.strip() for alias in key.split(",")):
            score = max(score, 0.95)
        elif key in words:
            score = max(score, 0.7)
        elif key.startswith(query_key) and len(query_key) >= 4:
            score = max(score, 0.65)
        if score >= 0.6 and score > scores.get(candidate, 0.0):
            scores[candidate] = score
    ranked = sorted(scores, key=lambda c: (-scores[c], c))
    return ranked[:limit]


def _unknown(kind: str, query: str, candidates: Iterable[str]) -> LabelError:
    if _looks_like_mid(query):
        return LabelError(f"unknown {kind} MID {query!r}")
    suggestions = close_matches(query, candidates)
    hint = f" (did you mean {', '.join(repr(s) for s in suggestions)}?)" if suggestions else ""
    return LabelError(f"unknown {kind} {query!r}{hint}")
