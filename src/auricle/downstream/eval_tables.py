"""The tables of an evaluation report: the text table ``auricle evaluate`` prints and its per-class CSV.

Both read the report's :meth:`to_dict` (so a value is shown as the JSON report has it); undefined
values read ``-`` in the text table and are empty in the CSV. Neither needs numpy or torch.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auricle.downstream.evaluate import EventReport, TaggingReport

#: The CSV's columns for a tagging report, and for an event report.
TAGGING_CSV_HEADER = ("label", "positives", "average_precision", "auc", "d_prime")
EVENT_CSV_HEADER = ("label", "reference_events", "predicted_events", "segment_f1", "segment_precision",
                    "segment_recall", "event_f1", "event_precision", "event_recall", "psds1")


def _format(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def report_table(report: TaggingReport | EventReport) -> str:
    """The report as text: a header line, one line per class, the summary lines (no final newline)."""
    data = report.to_dict()
    lines = [f"{data['model']}: {data['files']} files"]
    # The column is as wide as its header at least: names shorter than "class" shifted the header.
    width = max([len("class"), *(len(c["label"]) for c in data["classes"])])
    if data["task"] == "tagging":
        lines.append(f"  {'class':<{width}}  {'pos':>5}  {'AP':>6}  {'AUC':>6}  {'dprime':>6}")
        for c in data["classes"]:
            lines.append(f"  {c['label']:<{width}}  {c['positives']:>5}  {_format(c['average_precision']):>6}  "
                         f"{_format(c['auc']):>6}  {_format(c['d_prime']):>6}")
        lines.append(f"  mAP {_format(data['mAP'])}   mean AUC {_format(data['mean_auc'])}   d' {_format(data['d_prime'])}")
        return "\n".join(lines)
    lines.append(f"  {'class':<{width}}  {'ref':>4}  {'pred':>4}  {'seg F1':>6}  {'ev F1':>6}  {'ev P':>6}  {'ev R':>6}")
    for c in data["classes"]:
        lines.append(f"  {c['label']:<{width}}  {c['reference_events']:>4}  {c['predicted_events']:>4}  "
                     f"{_format(c['segment']['f1']):>6}  {_format(c['event']['f1']):>6}  "
                     f"{_format(c['event']['precision']):>6}  {_format(c['event']['recall']):>6}")
    seg, evt = data["segment_based"], data["event_based"]
    lines.append(f"  segment-based ({data['settings']['segment_seconds']:g} s): F1 {_format(seg['f1'])} "
                 f"(P {_format(seg['precision'])}, R {_format(seg['recall'])}), macro F1 {_format(seg['macro_f1'])}")
    lines.append(f"  event-based (collar 200 ms / 20%): F1 {_format(evt['f1'])} "
                 f"(P {_format(evt['precision'])}, R {_format(evt['recall'])}), macro F1 {_format(evt['macro_f1'])}")
    if data["psds"]:
        lines.append("  " + "   ".join(f"{name.upper()} {_format(value)}" for name, value in data["psds"].items()))
    return "\n".join(lines)


def report_csv(report: TaggingReport | EventReport) -> str:
    """The per-class table as CSV text (header row first, ``\\n`` line ends)."""
    data = report.to_dict()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if data["task"] == "tagging":
        writer.writerow(TAGGING_CSV_HEADER)
        for c in data["classes"]:
            writer.writerow([c["label"], c["positives"], c["average_precision"], c["auc"], c["d_prime"]])
    else:
        writer.writerow(EVENT_CSV_HEADER)
        for c in data["classes"]:
            s, e = c["segment"], c["event"]
            writer.writerow([c["label"], c["reference_events"], c["predicted_events"], s["f1"], s["precision"],
                             s["recall"], e["f1"], e["precision"], e["recall"], c["psds1"]])
    return out.getvalue()


__all__ = ["report_table", "report_csv", "TAGGING_CSV_HEADER", "EVENT_CSV_HEADER"]
