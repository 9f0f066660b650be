"""What a stored batch result turns into: the differential count, the status counts, the
technologist's reviews, the CSV download and the reviewed cells as a training folder.

Only accepted results enter the differential: an unidentified cell (the model is too unsure)
or an image unlike the training data would otherwise be counted as whatever class happened to
score highest, and a differential is only as good as its least certain cell. A technologist's
review (stored as the result's `review`: {"label", "at"}) overrides the model either way: a
reviewed cell counts as the class the reviewer gave, an unidentified one included, and a cell
the reviewer excluded is not counted whatever the model said. Of the counted cells, only white
cells are shares of the differential; cells of the other classes a model names (platelets,
nucleated red cells) are counted beside it, per 100 white cells, as a lab reports nucleated red
cells.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hematovision.cells import is_nucleated_red_cell, is_white_cell
from hematovision.magnification import BatchCheck, Reference, batch_check
from hematovision.reference import (ABOVE, Flag, corrected_count, flag, flag_beside, intervals,
                                    measure, measure_beside)
from hematovision.trust import ACCEPTED, NOT_A_CELL, STATUSES, UNIDENTIFIED

# A spreadsheet runs a cell that starts with one of these as a formula; file names come from
# clients, so such cells are prefixed with a quote (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A reviewer's verdict for an image that should not be counted at all (no cell, two cells, out
# of focus, a smudge cell), beside the model's classes.
EXCLUDED = "excluded"
# Why a classified result is not in the differential.
LEFT_OUT_REASONS = (UNIDENTIFIED, NOT_A_CELL, EXCLUDED)


@dataclass(frozen=True)
class AbsoluteCount:
    """A share as cells per litre, given the film's total white-cell count."""
    value: float  # x 10^9/L, two decimals
    low: float  # the share's 95 % counting range times the total count, two decimals
    high: float
    reference: tuple[float, float] | None  # the absolute reference interval, x 10^9/L
    flag: Flag | None  # as ClassShare.flag, against `reference`


@dataclass(frozen=True)
class ClassShare:
    name: str
    count: int
    percent: float  # of the accepted white cells, one decimal
    # Where the film's share lies, given how many cells were counted (`counting.share_range`),
    # in percent, one decimal; (0, 100) when none was counted.
    low: float = field(default=0.0, compare=False)
    high: float = field(default=100.0, compare=False)
    # The adult reference interval it is read against, in percent, and where the share lies
    # against it (`hematovision.reference`); None for a class without one, within it, or while
    # cells await review (Differential.awaiting_review).
    reference: tuple[float, float] | None = field(default=None, compare=False)
    flag: Flag | None = field(default=None, compare=False)
    absolute: AbsoluteCount | None = field(default=None, compare=False)  # given a total count


@dataclass(frozen=True)
class OtherCount:
    """A class counted beside the differential, per 100 counted white cells."""
    name: str
    count: int
    per_100_white: float | None  # one decimal; None when no white cell was counted
    # Its 95 % counting range per 100 white cells (`reference.measure_beside`, one decimal),
    # its reference interval in that unit (nucleated red cells: 0-0) and where it lies
    # against it (`reference.flag_beside`; None within it, without one, or while cells await
    # review).
    low: float | None = field(default=None, compare=False)
    high: float | None = field(default=None, compare=False)
    reference: tuple[float, float] | None = field(default=None, compare=False)
    flag: Flag | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Differential:
    shares: list[ClassShare]  # the model's white-cell classes, in its order, zeros included
    white_cells: int  # counted white cells: the base of the shares
    others: list[OtherCount]  # the model's other classes (counted cells), zeros included
    reviewed: int  # of the white cells, those counted by a reviewer's verdict
    # Unidentified results without a verdict. While there are any, no share is flagged: the
    # accepted cells alone lean towards the classes the model is sure of, and on normal films
    # drawn from wbc4's test images half of them were flagged wrongly (`training.flags`).
    awaiting_review: int = 0
    white_cells_per_litre: float | None = None  # the film's total count, x 10^9/L
    # The count as given, where it included nucleated red cells and was corrected for those
    # counted (`reference.corrected_count`) into `white_cells_per_litre`; else None.
    uncorrected_white_cells_per_litre: float | None = None
    nucleated_red_cells: int = 0  # counted cells of the model's nucleated red-cell classes


@dataclass(frozen=True)
class ReviewSummary:
    reviewed: int  # results with a reviewer's verdict
    labelled: int  # of them, those given a class (not excluded): the reviewed-cells archive
    accepted: int  # of them, results the model had accepted: a check of its accepted answers
    overruled: int  # of those, the ones given another class, or excluded
    to_review: int  # unidentified results still without a verdict


def status_of(result: dict[str, Any]) -> str | None:
    """The trust status of a classified result; None for a file that could not be read."""
    if "label" not in result:
        return None
    return result["status"]


def verdict_of(result: dict[str, Any]) -> str | None:
    """The reviewer's verdict on a result (a class or EXCLUDED), or None where it has none."""
    review = result.get("review")
    return review.get("label") if isinstance(review, dict) else None


def counted_class(result: dict[str, Any]) -> str | None:
    """The class a result adds to the counts: the reviewer's verdict where there is one (none
    when excluded), else the model's label when it accepted it; None for everything else."""
    verdict = verdict_of(result)
    if verdict is not None:
        return None if verdict == EXCLUDED else verdict
    return result["label"] if status_of(result) == ACCEPTED else None


def needs_review(result: dict[str, Any]) -> bool:
    """An unidentified result no reviewer has given a verdict yet."""
    return status_of(result) == UNIDENTIFIED and verdict_of(result) is None


def left_out_reason(result: dict[str, Any]) -> str | None:
    """Why a classified result is not counted (one of LEFT_OUT_REASONS); None when it is
    counted, or for a file that could not be read."""
    if status_of(result) is None or counted_class(result) is not None:
        return None
    return EXCLUDED if verdict_of(result) == EXCLUDED else status_of(result)


def differential(results: list[dict[str, Any]], classes: list[str],
                 reference_intervals: dict[str, tuple[float, float]] | None = None,
                 white_cells_per_litre: float | None = None,
                 absolute_intervals: dict[str, tuple[float, float]] | None = None,
                 count_includes_nucleated_red_cells: bool = False) -> Differential:
    """The white-cell differential of the counted results (`counted_class`), each share read
    against its interval in `reference_intervals` (percent, by class; the catalog's when
    None), and the model's other classes counted beside it. Given the film's total count
    (`white_cells_per_litre`, x 10^9/L), each share is also an absolute count, read against
    `absolute_intervals` (the catalog's when None); a count that includes the nucleated red
    cells (`count_includes_nucleated_red_cells`) is first corrected for those counted."""
    counted = [(counted_class(r), verdict_of(r) is not None) for r in results]
    count = Counter(c for c, _ in counted if c is not None)
    white = [c for c in classes if is_white_cell(c)]
    total = sum(count[c] for c in white)
    nucleated_red_cells = sum(count[c] for c in classes if is_nucleated_red_cell(c))
    uncorrected = None
    if (white_cells_per_litre is not None and count_includes_nucleated_red_cells
            and nucleated_red_cells and total):
        uncorrected, white_cells_per_litre = white_cells_per_litre, corrected_count(
            white_cells_per_litre, total, nucleated_red_cells)
    reference = intervals() if reference_intervals is None else reference_intervals
    absolute = (intervals(absolute=True) if absolute_intervals is None
                else absolute_intervals)
    awaiting = sum(1 for r in results if needs_review(r))

    def flagged(c: str, interval, per_litre: float | None = None) -> Flag | None:
        # None while cells await review (Differential.awaiting_review says why).
        return None if awaiting else flag(count[c], total, interval, per_litre)

    def share(c: str) -> ClassShare:
        percent, low, high = measure(count[c], total)
        return ClassShare(c, count[c], percent, round(low, 1), round(high, 1), reference.get(c),
                          flagged(c, reference.get(c)), in_litres(c))

    def in_litres(c: str) -> AbsoluteCount | None:
        if white_cells_per_litre is None or not total:
            return None
        value, low, high = measure(count[c], total, white_cells_per_litre)
        return AbsoluteCount(value, round(low, 2), round(high, 2), absolute.get(c),
                             flagged(c, absolute.get(c), white_cells_per_litre))

    def beside(c: str) -> OtherCount:
        if not total:
            return OtherCount(c, count[c], None, reference=reference.get(c))
        value, low, high = measure_beside(count[c], total)
        return OtherCount(c, count[c], value, round(low, 1), round(high, 1), reference.get(c),
                          None if awaiting else flag_beside(count[c], total, reference.get(c)))

    return Differential(
        shares=[share(c) for c in white],
        white_cells=total,
        others=[beside(c) for c in classes if not is_white_cell(c)],
        reviewed=sum(1 for c, reviewed in counted if reviewed and c in white),
        awaiting_review=awaiting,
        white_cells_per_litre=white_cells_per_litre,
        uncorrected_white_cells_per_litre=uncorrected,
        nucleated_red_cells=nucleated_red_cells,
    )


def differential_json(counted: Differential) -> dict[str, Any]:
    """The differential as the API returns it: the white cells counted, the unidentified
    cells awaiting review, each class's count, percent and 95 % counting range
    (`counting.share_range`, in percent), its reference interval and where the share lies
    against it (`reference.flag`: `outside` "above" or "below" and whether beyond counting
    error; null within it or while cells await review), and the model's other classes per 100
    white cells, where it has any."""
    out: dict[str, Any] = {
        "white_cells": counted.white_cells,
        "awaiting_review": counted.awaiting_review,
        **({"white_cells_per_litre": counted.white_cells_per_litre}
           if counted.white_cells_per_litre is not None else {}),
        **({"uncorrected_white_cells_per_litre": counted.uncorrected_white_cells_per_litre}
           if counted.uncorrected_white_cells_per_litre is not None else {}),
        "shares": [{"class": s.name, "count": s.count, "percent": s.percent,
                    "range_95": [s.low, s.high], **_against(s.reference, s.flag),
                    **({"absolute": {"value": s.absolute.value,
                                     "range_95": [s.absolute.low, s.absolute.high],
                                     **_against(s.absolute.reference, s.absolute.flag)}}
                       if s.absolute else {})}
                   for s in counted.shares]}
    if counted.others:
        out["others"] = [{"class": o.name, "count": o.count, "per_100_white": o.per_100_white,
                          "range_95": [o.low, o.high] if o.per_100_white is not None else None,
                          **_against(o.reference, o.flag)}
                         for o in counted.others]
    return out


def served_differential(results: list[dict[str, Any]], classes: list[str], config,
                        white_cells_per_litre: float | None = None,
                        count_includes_nucleated_red_cells: bool = False) -> Differential:
    """`differential` against the intervals a server's `config` serves (REFERENCE_INTERVALS,
    ABSOLUTE_REFERENCE_INTERVALS), as the batch page, its CSV and the API count it."""
    return differential(results, classes, config["REFERENCE_INTERVALS"], white_cells_per_litre,
                        config["ABSOLUTE_REFERENCE_INTERVALS"],
                        count_includes_nucleated_red_cells)


def _against(reference: tuple[float, float] | None, found: Flag | None) -> dict[str, Any]:
    """A figure's reference interval and where it lies against it, as the API gives them."""
    return {"reference": list(reference) if reference else None,
            "outside": found.direction if found else None,
            "beyond_counting_error": found.beyond_counting_error if found else None}


DIFFERENTIAL_COLUMNS = (
    "class", "white_cell", "count", "percent", "range_95_low", "range_95_high",
    "reference_low", "reference_high", "flag", "per_100_white", "per_litre", "per_litre_low",
    "per_litre_high", "per_litre_reference_low", "per_litre_reference_high", "per_litre_flag",
    "white_cells", "awaiting_review", "white_cells_per_litre",
    "uncorrected_white_cells_per_litre", "sample")


def differential_csv(counted: Differential, sample_id: str = "") -> str:
    """The differential as a table for a spreadsheet or a laboratory system: one row per
    white-cell class (count, percent, 95 % range, reference interval and flag as on the batch
    page; per litre where the total count was given) and one per other class (count per 100
    white cells), each with the batch's white cells counted, unidentified cells awaiting review
    (no flag is given while there are any), total count and sample ID. A flag reads "high",
    "low", "high?" or "low?" (within counting error), empty within the interval."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(DIFFERENTIAL_COLUMNS)
    batch = [counted.white_cells, counted.awaiting_review,
             _number(counted.white_cells_per_litre),
             _number(counted.uncorrected_white_cells_per_litre), _inert(sample_id)]
    for s in counted.shares:
        a = s.absolute
        writer.writerow([
            s.name, "yes", s.count, f"{s.percent:.1f}", f"{s.low:.1f}", f"{s.high:.1f}",
            *_bounds(s.reference), flag_text(s.flag), "",
            *([f"{a.value:.2f}", f"{a.low:.2f}", f"{a.high:.2f}", *_bounds(a.reference),
               flag_text(a.flag)] if a else [""] * 6), *batch])
    for o in counted.others:
        writer.writerow([o.name, "no", o.count, "", _number(o.low), _number(o.high),
                         *_bounds(o.reference), flag_text(o.flag), _number(o.per_100_white),
                         *[""] * 6, *batch])
    return out.getvalue()


def findings(counted: Differential) -> list[tuple[str, str, Flag]]:
    """The flagged figures of a differential, as a reader lists them: (class, its figure as
    shown, its flag), the shares first, then the counts per litre, then the classes counted
    beside it."""
    found = [(s.name, f"{s.percent:.1f} %", s.flag) for s in counted.shares if s.flag]
    return found + [(s.name, f"{s.absolute.value:.2f} × 10⁹/L", s.absolute.flag)
                    for s in counted.shares if s.absolute and s.absolute.flag] + [
        (o.name, f"{o.per_100_white:.1f} per 100 white cells", o.flag)
        for o in counted.others if o.flag]


def flag_text(found: Flag | None) -> str:
    """A flag as the batch page writes it: high, low, high? or low?; empty for none."""
    if found is None:
        return ""
    return ("high" if found.direction == ABOVE else "low") + (
        "" if found.beyond_counting_error else "?")


def _bounds(reference: tuple[float, float] | None) -> list[str]:
    return [f"{v:g}" for v in reference] if reference else ["", ""]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def counted_label(result: dict[str, Any]) -> str:
    """The class a result adds to the differential: its counted class when a white cell, else
    empty."""
    counted = counted_class(result)
    return counted if counted is not None and is_white_cell(counted) else ""


def left_out_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    """How many classified results the differential leaves out for each reason (every reason
    listed, zeros included)."""
    reasons = [left_out_reason(r) for r in results]
    return {reason: reasons.count(reason) for reason in LEFT_OUT_REASONS}


def review_summary(results: list[dict[str, Any]]) -> ReviewSummary:
    verdicts = [(r, verdict_of(r)) for r in results]
    return ReviewSummary(
        reviewed=sum(1 for _, v in verdicts if v is not None),
        labelled=sum(1 for _, v in verdicts if v not in (None, EXCLUDED)),
        accepted=sum(1 for r, v in verdicts if v is not None and status_of(r) == ACCEPTED),
        overruled=sum(1 for r, v in verdicts
                      if v is not None and status_of(r) == ACCEPTED and v != r["label"]),
        to_review=sum(1 for r in results if needs_review(r)),
    )


@dataclass(frozen=True)
class Agreement:
    verdict: str  # the reviewer's class, or EXCLUDED
    agreed: int  # accepted by the model as that class
    other: int  # accepted by the model as another class
    unidentified: int
    not_a_cell: int


def agreement(results: list[dict[str, Any]], classes: list[str]) -> list[Agreement]:
    """The reviewed results by the reviewer's verdict (the model's classes in its order, then
    EXCLUDED; verdicts no result has left out) against what the model said of them: a lab's
    check of the model on its own cells, class by class."""
    rows = []
    for verdict in [*classes, EXCLUDED]:
        mine = [r for r in results if verdict_of(r) == verdict]
        if mine:
            accepted = [r for r in mine if status_of(r) == ACCEPTED]
            rows.append(Agreement(
                verdict, agreed=sum(r["label"] == verdict for r in accepted),
                other=sum(r["label"] != verdict for r in accepted),
                unidentified=sum(status_of(r) == UNIDENTIFIED for r in mine),
                not_a_cell=sum(status_of(r) == NOT_A_CELL for r in mine)))
    return rows


def least_sure_first(results: list[dict[str, Any]]) -> list[int]:
    """The classified results as the review page lists every cell: least sure first (so the
    unidentified ones, then the accepted ones the model was least sure of, where its wrong
    answers mostly lie: training.review_order). By the model's confidence, which a review
    does not change, so saving verdicts never moves a cell to another page of the list."""
    classified = [i for i, r in enumerate(results) if status_of(r) is not None]
    return sorted(classified, key=lambda i: (results[i]["confidence"], i))


def next_to_review(results: list[dict[str, Any]], after: int) -> int | None:
    """The index of the next result other than `after` that needs review, looking on from
    `after` and wrapping round to the start of the batch; None when none is left."""
    order = [*range(after + 1, len(results)), *range(0, after)]
    return next((i for i in order if needs_review(results[i])), None)


def magnification_check(results: list[dict[str, Any]],
                        reference: Reference | None) -> BatchCheck | None:
    """The batch's magnification check (`hematovision.magnification.batch_check`) on its
    measured red-cell ratios; None where the model records no reference or too few images were
    measured. The cells of a field holding several share its image and its ratio: the image
    counts once."""
    if reference is None:
        return None
    return batch_check([r.get("red_cell_ratio") for r in results if _first_of_image(r)],
                       reference)


def status_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    """How many classified results have each status (every status listed, zeros included)."""
    statuses = [status_of(r) for r in results]
    return {s: statuses.count(s) for s in STATUSES}


def name_of(result: dict[str, Any]) -> str:
    """The file name, and for one white cell of a field holding several, which cell."""
    cell = result.get("cell")
    return f"{result['file']}, cell {cell['number']} of {cell['of']}" if cell else result["file"]


def no_white_cell(result: dict[str, Any]) -> bool:
    """A classified result whose image held no white cell the finder could see (models that
    crop to the nucleus: `fields.NO_WHITE_CELL`), and that was not already called not a cell."""
    return result.get("white_cells") == 0 and status_of(result) not in (None, NOT_A_CELL)


def image_count(results: list[dict[str, Any]]) -> int:
    """How many images gave these results: the cells of a field holding several are one."""
    return sum(1 for r in results if _first_of_image(r))


def _first_of_image(result: dict[str, Any]) -> bool:
    """A whole image's result, or the first cell's of a field read cell by cell."""
    return (result.get("cell") or {}).get("number", 1) == 1


def batch_title(results: list[dict[str, Any]]) -> str:
    """"Batch of N images", and where fields holding several white cells were read cell by
    cell, how many results the images gave."""
    images = image_count(results)
    title = f"Batch of {images} image{'s' if images != 1 else ''}"
    return f"{title}, {len(results)} results" if images != len(results) else title


def cell_text(result: dict[str, Any]) -> str:
    """`n/N` for the n-th of N white cells of a field, empty for a whole image (the CSV)."""
    cell = result.get("cell")
    return f"{cell['number']}/{cell['of']}" if cell else ""


def to_csv(results: list[dict[str, Any]], classes: list[str]) -> str:
    """One row per result (a file, or one white cell of a field): file, label (the model's top
    class, as in the API), status (whether to trust that label), confidence, p_<class> for
    each class, error, differential_class: the class a white cell is counted as
    (`counted_label`), so a spreadsheet that counts or filters by it counts what the
    differential counts, red_cell_ratio: the image's red-cell size over
    the training images' (the magnification check; empty where unmeasured), and
    reviewed_class: the reviewer's verdict (a class or "excluded"; empty where none), cell:
    `n/N` for the n-th of N white cells the app found in one field, each a row of its own (empty
    for an image read whole), and white_cells: how many the image held (models that crop to the
    nucleus; 0 is `fields.NO_WHITE_CELL`). Columns are added last, so that earlier ones keep
    their places."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "label", "status", "confidence", *(f"p_{c}" for c in classes),
                     "error", "differential_class", "red_cell_ratio", "reviewed_class", "cell",
                     "white_cells"])
    for r in results:
        status = status_of(r)
        if status is not None:
            probabilities = [f"{r['probabilities'][c]:.4f}" for c in classes]
            ratio = r.get("red_cell_ratio")
            row = [r["file"], r["label"], status, f"{r['confidence']:.4f}", *probabilities, "",
                   counted_label(r), "" if ratio is None else f"{ratio:.3f}",
                   verdict_of(r) or "", cell_text(r), str(r.get("white_cells", ""))]
        else:
            row = [r["file"], "", "", "", *([""] * len(classes)), r["error"], "", "", "", "", ""]
        writer.writerow([_inert(cell) for cell in row])
    return out.getvalue()


# The columns of the reviewed-cells archive's CSV: where each image of the folder came from and
# who labelled it how; `file,group` make it the source map `training` splits the cells by.
ARCHIVE_COLUMNS = ["file", "group", "batch", "reviewed_class", "reviewed_at", "original_file",
                   "model", "model_label", "model_status", "model_confidence"]


def reviewed_archive(batch: dict[str, Any], image_path: Callable[[str], Path | None],
                     group: str) -> bytes:
    """The batch's reviewed cells as a training folder, zipped: each stored image under the
    class a reviewer gave it (`<class>/<batch>-<n>-<name>.jpg`; excluded cells and unreviewed
    ones left out, since only a person's verdict is a label to train on) and
    `reviewed-<batch>.csv`, one row per image, whose `file,group` columns (`group`: the source
    the cells came from) make it a source map for `training`. Names carry the batch id and the
    image's place in it, so the archives of several batches unpack into one training folder
    without a clash.
    An image whose stored copy is gone is left out, and so is a cell of a field holding several
    (`fields_left_out`): a training folder holds one cell per image, and training crops round
    the nucleus it finds, which in such a field lies between the cells."""
    prefix = batch["id"][:8]
    rows, out = [], io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:  # JPEGs do not compress
        for index, result in enumerate(batch["results"]):
            verdict = verdict_of(result)
            path = image_path(result.get("image") or "")
            if verdict in (None, EXCLUDED) or path is None or result.get("cell"):
                continue
            name = (f"{file_part(verdict)}/{prefix}-{index:03d}-"
                    f"{file_part(Path(result['file']).stem, 'image')}.jpg")
            archive.write(path, name)
            rows.append([name, group, batch["id"], verdict, _iso(result["review"].get("at")),
                         result["file"], batch.get("model", ""), result["label"],
                         result["status"], f"{result['confidence']:.4f}"])
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(ARCHIVE_COLUMNS)
        writer.writerows([[_inert(cell) for cell in row] for row in rows])
        archive.writestr(f"reviewed-{prefix}.csv", table.getvalue())
    return out.getvalue()


def fields_left_out(results: list[dict[str, Any]]) -> int:
    """Reviewed cells (given a class) that `reviewed_archive` leaves out as cells of a field
    holding several."""
    return sum(1 for r in results if r.get("cell") and verdict_of(r) not in (None, EXCLUDED))


def file_part(name: str, empty: str = "") -> str:
    """A name part made of letters, digits, '.', '_' and '-' only, so an archive entry or a
    download is one plain file name wherever it is saved or unpacked (`empty` when none is
    left)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or empty


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _inert(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_START) else cell
