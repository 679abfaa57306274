"""PNG figures of an evaluation: per-class bars, and a timeline of events over a spectrogram.

matplotlib is imported here only, with the Agg backend (no display needed).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

from auricle.downstream.eval_metrics import LabelledEvent
from auricle.io import atomic

_REFERENCE_COLOUR = "#2b8a3e"
_PREDICTED_COLOUR = "#e8590c"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | os.PathLike) -> None:
    """Write atomically, so a crash never leaves half a PNG under the final name."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    suffix = os.path.splitext(path)[1][1:].lower()
    kind = suffix if suffix in figure.canvas.get_supported_filetypes() else "png"  # .svg, .pdf: as named
    with atomic.replacing(path) as temporary:
        figure.savefig(temporary, dpi=110, format=kind)


def plot_class_bars(
    path: str | os.PathLike, labels: Sequence[str], series: Mapping[str, Sequence[float]], title: str, xlabel: str
) -> None:
    """Horizontal bars per class (one colour per series), sorted by the first series; NaN draws no bar."""
    plt = _pyplot()
    names = list(series)
    values = np.array([[np.nan if v is None else v for v in series[name]] for name in names], dtype=float)
    order = np.argsort(np.nan_to_num(values[0], nan=-1.0), kind="stable")  # best at the top
    height = 0.8 / len(names)
    figure, axis = plt.subplots(figsize=(8, 1.2 + 0.32 * len(labels) * max(1, len(names) * 0.7)))
    positions = np.arange(len(labels))
    for number, name in enumerate(names):
        # The first series on top within each class, as in the legend.
        offsets = positions + ((len(names) - 1) / 2 - number) * height
        bars = axis.barh(offsets, np.nan_to_num(values[number, order]), height=height, label=name)
        axis.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.2f}" for v in values[number, order]],
                       fontsize=7, padding=2)
    axis.set_yticks(positions, [labels[i] for i in order], fontsize=8)
    axis.set_ylim(-0.6, len(labels) - 0.4)
    axis.set_xlim(0, 1.08)  # room for the value labels of bars at 1
    axis.set_xlabel(xlabel)
    axis.set_title(textwrap.fill(title, 80), fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    if len(names) > 1:
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_timeline(
    path: str | os.PathLike,
    waveform: np.ndarray,
    reference: Sequence[LabelledEvent],
    predicted: Sequence[LabelledEvent],
    classes: Sequence[str],
    title: str,
) -> None:
    """Log-mel spectrogram on top; below, per class, true (upper half) and predicted (lower half) events."""
    import torch

    from auricle.audio import SAMPLE_RATE
    from auricle.frontend import LogMel

    plt = _pyplot()
    with torch.inference_mode():
        mel = LogMel()(torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None])[0].numpy()
    duration = len(waveform) / SAMPLE_RATE
    shown = [c for c in classes if any(e.label == c for e in (*reference, *predicted))] or list(classes)
    figure, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(12, 2.6 + 0.3 * len(shown)),
        gridspec_kw={"height_ratios": [2.2, max(1.0, 0.3 * len(shown))]},
    )
    top.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, mel.shape[0]))
    top.set_ylabel("mel band")
    top.set_title(title, fontsize=10)
    row_of = {label: row for row, label in enumerate(reversed(shown))}
    for events, colour, lower in ((reference, _REFERENCE_COLOUR, 0.0), (predicted, _PREDICTED_COLOUR, -0.42)):
        for event in events:
            if event.label in row_of:
                bottom.broken_barh([(event.onset, max(event.offset - event.onset, duration / 2000))],
                                   (row_of[event.label] + lower, 0.42), facecolors=colour)
                if colour == _REFERENCE_COLOUR:  # mark true events on the spectrogram too
                    top.axvspan(event.onset, event.offset, ymin=0.97, ymax=1.0, color=colour)
    bottom.set_yticks(list(row_of.values()), list(row_of), fontsize=8)
    bottom.set_ylim(-0.6, len(shown) - 0.4)
    bottom.set_xlim(0, duration)
    bottom.set_xlabel("time (s)")
    bottom.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    bottom.legend(handles=[Patch(color=_REFERENCE_COLOUR, label="true (upper)"),
                           Patch(color=_PREDICTED_COLOUR, label="predicted (lower)")],
                  loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncols=2, frameon=False)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_report(report, path: str | os.PathLike, source: str) -> None:
    """Per-class bars of an evaluation report (AP for tagging, event and segment F1 for events), titled with
    the model and ``source`` (what it was evaluated on)."""
    import math

    if hasattr(report, "mean_average_precision"):
        # Classes without a positive file have no AP; a bar of nothing would read as AP 0.
        shown = [c for c in report.classes if not math.isnan(c.average_precision)]
        hidden = len(report.classes) - len(shown)
        note = f" ({hidden} classes without positives not shown)" if hidden else ""
        plot_class_bars(path, [c.label for c in shown], {"AP": [c.average_precision for c in shown]},
                        f"{report.model} on {source}: mAP {report.mean_average_precision:.3f}{note}",
                        "average precision")
    else:
        plot_class_bars(path, [c.label for c in report.classes],
                        {"event F1": [c.event.f1 for c in report.classes],
                         "segment F1": [c.segment.f1 for c in report.classes]},
                        f"{report.model} on {source}: event F1 {report.event_f1:.3f}, "
                        f"segment F1 {report.segment_f1:.3f}", "F1")


def plot_file_timeline(
    path: str | os.PathLike,
    file: str,
    reference: Sequence[LabelledEvent],
    predictions: Sequence,
    classes: Sequence[str],
    model: str,
) -> None:
    """:func:`plot_timeline` of one labelled ``file`` (however spelt): its true events and the predicted ones."""
    from auricle.audio import load_audio
    from auricle.downstream.evaluate import match_files

    labelled = match_files([file], {event.file for event in reference}, "--timeline")[file]
    predicted = [e for p in predictions if p.file == labelled for e in p.events]
    truth = [e for e in reference if e.file == labelled]
    plot_timeline(path, load_audio(labelled), truth, predicted, classes, f"{labelled}: {model}")


__all__ = ["plot_class_bars", "plot_timeline", "plot_report", "plot_file_timeline"]
