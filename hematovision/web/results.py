"""What a stored batch result turns into: the differential count and the CSV download."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

# A spreadsheet runs a cell that starts with one of these as a formula; file names come from
# clients, so such cells are prefixed with a quote (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ClassShare:
    name: str
    count: int
    percent: float  # of the classified images, one decimal


def differential(results: list[dict[str, Any]], classes: list[str]) -> list[ClassShare]:
    """Count and percentage per class, in the model's class order, zero counts included."""
    labels = [r["label"] for r in results if "label" in r]
    total = len(labels)
    return [
        ClassShare(c, n, round(100 * n / total, 1) if total else 0.0)
        for c in classes
        for n in [labels.count(c)]
    ]


def to_csv(results: list[dict[str, Any]], classes: list[str]) -> str:
    """One row per file: file, label, confidence, p_<class> for each class, error."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "label", "confidence", *(f"p_{c}" for c in classes), "error"])
    for r in results:
        if "label" in r:
            probabilities = [f"{r['probabilities'][c]:.4f}" for c in classes]
            row = [r["file"], r["label"], f"{r['confidence']:.4f}", *probabilities, ""]
        else:
            row = [r["file"], "", "", *([""] * len(classes)), r["error"]]
        writer.writerow([_inert(cell) for cell in row])
    return out.getvalue()


def _inert(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_START) else cell
