"""What a stored batch result turns into: the differential count, the status counts and the
CSV download.

Only accepted results enter the differential: an unidentified cell (the model is too unsure)
or an image unlike the training data would otherwise be counted as whatever class happened to
score highest, and a differential is only as good as its least certain cell. Of the accepted
cells, only white cells are shares of the differential; cells of the other classes a model
names (platelets, nucleated red cells) are counted beside it, per 100 white cells, as a lab
reports nucleated red cells.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hematovision.cells import is_white_cell
from hematovision.magnification import BatchCheck, Reference, batch_check
from hematovision.trust import ACCEPTED, STATUSES

# A spreadsheet runs a cell that starts with one of these as a formula; file names come from
# clients, so such cells are prefixed with a quote (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ClassShare:
    name: str
    count: int
    percent: float  # of the accepted white cells, one decimal


@dataclass(frozen=True)
class OtherCount:
    name: str
    count: int
    per_100_white: float | None  # one decimal; None when no white cell was accepted


@dataclass(frozen=True)
class Differential:
    shares: list[ClassShare]  # the model's white-cell classes, in its order, zeros included
    white_cells: int  # accepted white cells: the base of the shares
    others: list[OtherCount]  # the model's other classes (accepted cells), zeros included


def status_of(result: dict[str, Any]) -> str | None:
    """The trust status of a classified result; None for a file that could not be read."""
    if "label" not in result:
        return None
    return result["status"]


def differential(results: list[dict[str, Any]], classes: list[str]) -> Differential:
    """The white-cell differential of the accepted results, and the model's other classes
    counted beside it."""
    count = Counter(r["label"] for r in results if status_of(r) == ACCEPTED)
    white = [c for c in classes if is_white_cell(c)]
    total = sum(count[c] for c in white)
    return Differential(
        shares=[ClassShare(c, count[c], _per(count[c], total) if total else 0.0) for c in white],
        white_cells=total,
        others=[OtherCount(c, count[c], _per(count[c], total) if total else None)
                for c in classes if not is_white_cell(c)],
    )


def counted_label(result: dict[str, Any]) -> str:
    """The class a result adds to the differential: its label when accepted and a white cell,
    else empty."""
    if status_of(result) == ACCEPTED and is_white_cell(result["label"]):
        return result["label"]
    return ""


def _per(count: int, total: int) -> float:
    """`count` per 100 of `total` (a percentage), one decimal."""
    return round(100 * count / total, 1)


def magnification_check(results: list[dict[str, Any]],
                        reference: Reference | None) -> BatchCheck | None:
    """The batch's magnification check (`hematovision.magnification.batch_check`) on its
    measured red-cell ratios; None where the model records no reference or too few images were
    measured."""
    if reference is None:
        return None
    return batch_check([r.get("red_cell_ratio") for r in results], reference)


def status_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    """How many classified results have each status (every status listed, zeros included)."""
    statuses = [status_of(r) for r in results]
    return {s: statuses.count(s) for s in STATUSES}


def to_csv(results: list[dict[str, Any]], classes: list[str]) -> str:
    """One row per file: file, label (the model's top class, as in the API), status (whether to
    trust that label), confidence, p_<class> for each class, error, differential_class: the
    label of an accepted white cell only, so a spreadsheet that counts or filters by it counts
    what the differential counts, and red_cell_ratio: the image's red-cell size over the
    training images' (the magnification check; empty where unmeasured). Columns are added
    last, so that earlier ones keep their places."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "label", "status", "confidence", *(f"p_{c}" for c in classes),
                     "error", "differential_class", "red_cell_ratio"])
    for r in results:
        status = status_of(r)
        if status is not None:
            probabilities = [f"{r['probabilities'][c]:.4f}" for c in classes]
            ratio = r.get("red_cell_ratio")
            row = [r["file"], r["label"], status, f"{r['confidence']:.4f}", *probabilities, "",
                   counted_label(r), "" if ratio is None else f"{ratio:.3f}"]
        else:
            row = [r["file"], "", "", "", *([""] * len(classes)), r["error"], "", ""]
        writer.writerow([_inert(cell) for cell in row])
    return out.getvalue()


def _inert(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_START) else cell
