"""What a resumable ``auricle tag`` output records, and the checks before appending to one.

A ``jsonl`` or ``csv`` output records the settings that decide its rows (model, weights digest,
options: :func:`tag_run_settings`) beside it (:func:`auricle.io.writers.record_settings`); a
resumed run compares them as they acted (:func:`effective_tag_settings`), so rows computed
otherwise never mix silently with the earlier ones. :func:`appended_csv_layout` refuses to append
clip tags to an event CSV (or the reverse), and says whether an older clip-tag CSV, begun
without the ``truncated`` column, is continued without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from auricle.errors import OutputError
from auricle.io import atomic
from auricle.io.writers import EVENT_CSV_HEADER, TAG_CSV_HEADER, TAG_CSV_HEADER_V1


def tag_run_settings(model, options) -> dict:
    """What decides a resumable output's rows, as JSON values: the model, its weights and the options."""
    from auricle.fingerprints import tagger_key

    profile = options.profile
    settings = {
        "model": model.name,
        "weights": tagger_key(model)[:16],  # a checkpoint of the same name with other weights is another model
        "top_k": options.top_k,
        "threshold": options.threshold,
        "classes": list(options.classes),
        "profile": None if profile is None else {
            "source": profile.source, "events": [[e.label, list(e.class_indices), e.threshold] for e in profile.events]},
        "pool": options.pool,
        "events": None if options.events is None else asdict(options.events),
        "window": options.window.window_seconds,
        "hop": options.window.hop_seconds,
    }
    return json.loads(json.dumps(settings))  # tuples as lists, as they read back


def effective_tag_settings(settings: dict) -> dict:
    """Recorded settings as they acted: ``top_k`` null is 5 without a threshold or profile, ``hop`` null the window."""
    from auricle.inference.tagging import DEFAULT_TOP_K

    acted = dict(settings)
    if acted.get("top_k") is None and acted.get("threshold") is None and acted.get("profile") is None:
        acted["top_k"] = DEFAULT_TOP_K
    if acted.get("hop") is None:
        acted["hop"] = acted.get("window")
    return acted


def appended_csv_layout(output: str | os.PathLike, events: bool) -> bool:
    """Whether rows appended to the CSV ``output`` get the ``truncated`` column.

    Not in a clip-tag CSV an earlier version began without it. Clip-tag rows and event rows in
    one CSV would be neither table: raises :class:`OutputError` when ``output`` holds the other.
    """
    try:
        with open(output, encoding="utf-8", newline="") as handle:
            header = handle.readline().strip()
    except (OSError, UnicodeDecodeError):
        return True  # absent: a new file; unreadable: reported when it is opened
    if not events and header == ",".join(TAG_CSV_HEADER_V1):
        return False
    if header and header != ",".join(EVENT_CSV_HEADER if events else TAG_CSV_HEADER):
        holds = "events" if header == ",".join(EVENT_CSV_HEADER) else "clip tags" if header in (
            ",".join(TAG_CSV_HEADER), ",".join(TAG_CSV_HEADER_V1)) else f"another table ({header[:60]})"
        raise OutputError(f"{output}: holds {holds}, not {'events' if events else 'clip tags'}; resume with the "
                          "same --events setting, or write to another file")
    return True


def remove_stale_temporaries(output: str | os.PathLike) -> None:
    """Remove what a killed run was writing for ``output`` (``tags.json.PID.tmp``), unless that run still goes."""
    path = Path(output)
    try:
        atomic.remove_leftovers(path.parent, of={path.name}, live_too=False)
    except OSError:  # not ours to remove: they stay, as they did
        pass


__all__ = ["tag_run_settings", "effective_tag_settings", "appended_csv_layout", "remove_stale_temporaries"]
