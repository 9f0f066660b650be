"""What a stored batch result turns into: the differential count, the status counts and the
CSV download.

Only accepted results enter the differential: an unidentified cell (the model is too unsure)
or an image unlike the training data would otherwise be counted as whatever class happened to
score highest, and a differential is only as good as its least certain cell.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from hematovision.trust import ACCEPTED, STATUSES

# A spreadsheet runs a cell that starts with one of these as a formula; file names come from
# clients, so such cells are prefixed with a quote (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ClassShare:
    name: str
    count: int
    percent: float  # of the accepted images, one decimal


def status_of(result: dict[str, Any]) -> str | None:
    """The trust status of a classified result; None for a file that could not be read."""
    if "label" not in result:
        return None
    return result["status"]


def differential(results: list[dict[str, Any]], classes: list[str]) -> list[ClassShare]:
    """Count and percentage per class of the accepted results, in the model's class order,
    zero counts included."""
    labels = [r["label"] for r in results if status_of(r) == ACCEPTED]
    total = len(labels)
    return [
        ClassShare(c, n, round(100 * n / total, 1) if total else 0.0)
        for c in classes
        for n in [labels.count(c)]
    ]


def status_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    """How many classified results have each status (every status listed, zeros included)."""
    statuses = [status_of(r) for r in results]
    return {s: statuses.count(s) for s in STATUSES}


def to_csv(results: list[dict[str, Any]], classes: list[str]) -> str:
    """One row per file: file, label (the model's top class, as in the API), status (whether to
    trust that label), confidence, p_<class> for each class, error, and differential_class: the
    label of an accepted result only, so a spreadsheet that counts or filters by it counts
    what the differential counts (last, so that earlier columns keep their places)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "label", "status", "confidence", *(f"p_{c}" for c in classes),
                     "error", "differential_class"])
    for r in results:
        status = status_of(r)
        if status is not None:
            probabilities = [f"{r['probabilities'][c]:.4f}" for c in classes]
            counted = r["label"] if status == ACCEPTED else ""
            row = [r["file"], r["label"], status, f"{r['confidence']:.4f}", *probabilities, "",
                   counted]
        else:
            row = [r["file"], "", "", "", *([""] * len(classes)), r["error"], ""]
        writer.writerow([_inert(cell) for cell in row])
    return out.getvalue()


def _inert(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_START) else cell
