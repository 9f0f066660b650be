"""The differential count of a set of classified cells: which cells it counts, each class's
share with its 95 % counting range, read against its reference interval, and the classes
counted beside it. One count for the web app's batch page, its CSV and API, and
`python -m hematovision.predict --differential`.

Each cell is a result as the predict command's JSON lines and the API give it (`label`,
`status`, `confidence`, ...), and as the web app stores it, with a technologist's review where
one was given (`review`: {"label", "at"}).

Only accepted results enter the differential: an unidentified cell (the model is too unsure)
or an image unlike the training data would otherwise be counted as whatever class happened to
score highest, and a differential is only as good as its least certain cell. A technologist's
review overrides the model either way: a reviewed cell counts as the class the reviewer gave,
an unidentified one included, and a cell the reviewer excluded is not counted whatever the
model said. Of the counted cells, only white cells are shares of the differential; cells of the
other classes a model names (platelets, nucleated red cells) are counted beside it, per 100
white cells, as a lab reports nucleated red cells. A white cell of a type the model does not
name (a blast) that a reviewer calls so (`cells.OTHER_WHITE_CELL`) is a share of its own, after
the model's classes: a manual differential counts it among its cells, and so does this one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hematovision.card import DIFFERENTIAL
from hematovision.cells import OTHER_WHITE_CELL, is_nucleated_red_cell, is_white_cell
from hematovision.exposure import stored
from hematovision.reference import (ABOVE, Flag, corrected_count, flag, flag_beside, intervals,
                                    measure, measure_beside)
from hematovision.trust import ACCEPTED, NOT_A_CELL, UNIDENTIFIED

# A reviewer's verdict for an image that should not be counted at all (no cell, two cells, out
# of focus, a smudge cell), beside the model's classes.
EXCLUDED = "excluded"
# Why a classified result is not in the differential.
LEFT_OUT_REASONS = (UNIDENTIFIED, NOT_A_CELL, EXCLUDED)
# A manual differential counts 100 cells; the batch page and the command line warn when its
# shares rest on fewer.
DIFFERENTIAL_CELLS = 100
# The composition of training.differential's batches that a lab's film is nearest.
NORMAL_FILM = "normal adult"
# The batch page and the command line say how leaving the unidentified cells out skews the
# shares where that moved them by at least this many percentage points more, on average, than
# reviewing them did.
MATERIAL_BIAS_POINTS = 1.0


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
    """A class counted beside the differential: nucleated red cells per 100 counted white
    cells, platelets as a count alone."""
    name: str
    count: int
    per_100_white: float | None  # one decimal; None when no white cell was counted, or platelets
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
    # The model's white-cell classes, in its order, zeros included; then OTHER_WHITE_CELL where a
    # reviewer counted any.
    shares: list[ClassShare]
    white_cells: int  # counted white cells: the base of the shares
    others: list[OtherCount]  # the model's other classes (counted cells), zeros included
    reviewed: int  # of the white cells, those counted by a reviewer's verdict
    # Unidentified results without a verdict. While there are any, no share is flagged: the
    # accepted cells alone lean towards the classes the model is sure of, and on normal films
    # drawn from wbc4's test images half of them were flagged wrongly (`training.flags`).
    awaiting_review: int = 0
    # Results called not a blood-cell image that may hide a white cell, no one having looked
    # (web.results.set_aside_unseen): a white cell there is missing from every share, so no
    # share is flagged while there are any either.
    images_unseen: int = 0
    white_cells_per_litre: float | None = None  # the film's total count, x 10^9/L
    # The count as given, where it included nucleated red cells and was corrected for those
    # counted (`reference.corrected_count`) into `white_cells_per_litre`; else None.
    uncorrected_white_cells_per_litre: float | None = None
    nucleated_red_cells: int = 0  # counted cells of the model's nucleated red-cell classes

    @property
    def flags_held(self) -> bool:
        """Whether flags are held back until cells or images are looked at."""
        return bool(self.awaiting_review or self.images_unseen)


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


def set_aside_unseen(result: dict[str, Any]) -> bool:
    """A result called not a blood-cell image that no one has reviewed, where the white-cell
    finder does not say its image holds none: it found one there (a field's cells, a single
    cell), or it does not run for the model (one that reads images whole). A white cell there,
    of a look or a kind the model was not trained on, is missing from the count until someone
    looks; where the finder found none either, the two agree and it stays out unseen, unless
    the image was read outside the exposures the model knows, uncorrected (over-exposed, or
    too far): there the finder misses white cells as the model does."""
    if status_of(result) != NOT_A_CELL or verdict_of(result) is not None:
        return False
    exposure = stored(result.get("exposure"))  # the result's exposure check, if whole
    return result.get("white_cells") != 0 or (
        exposure is not None and exposure.outside and not exposure.corrected)


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
                 count_includes_nucleated_red_cells: bool = False,
                 images_unseen: int = 0) -> Differential:
    """The white-cell differential of the counted results (`counted_class`), each share read
    against its interval in `reference_intervals` (percent, by class; the catalog's when
    None), and the model's other classes counted beside it. Given the film's total count
    (`white_cells_per_litre`, x 10^9/L), each share is also an absolute count, read against
    `absolute_intervals` (the catalog's when None); a count that includes the nucleated red
    cells (`count_includes_nucleated_red_cells`) is first corrected for those counted. No share
    is flagged while unidentified cells await review or `images_unseen` images called not a
    blood-cell image wait to be looked at (Differential.images_unseen)."""
    counted = [(counted_class(r), verdict_of(r) is not None) for r in results]
    count = Counter(c for c, _ in counted if c is not None)
    white = [c for c in classes if is_white_cell(c)]
    if count[OTHER_WHITE_CELL] and OTHER_WHITE_CELL not in white:
        white.append(OTHER_WHITE_CELL)
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
    held = bool(awaiting or images_unseen)

    def flagged(c: str, interval, per_litre: float | None = None) -> Flag | None:
        # None while cells or images await a look (Differential.flags_held).
        return None if held else flag(count[c], total, interval, per_litre)

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
        # Platelets are counted only: single cells say nothing of how many a film holds per
        # white cell (an estimate needs whole fields); nucleated red cells are per 100 (ICSH).
        if not total or not is_nucleated_red_cell(c):
            return OtherCount(c, count[c], None, reference=reference.get(c))
        value, low, high = measure_beside(count[c], total)
        return OtherCount(c, count[c], value, round(low, 1), round(high, 1), reference.get(c),
                          None if held else flag_beside(count[c], total, reference.get(c)))

    return Differential(
        shares=[share(c) for c in white],
        white_cells=total,
        others=[beside(c) for c in classes if not is_white_cell(c)],
        reviewed=sum(1 for c, reviewed in counted if reviewed and c in white),
        awaiting_review=awaiting,
        images_unseen=images_unseen,
        white_cells_per_litre=white_cells_per_litre,
        uncorrected_white_cells_per_litre=uncorrected,
        nucleated_red_cells=nucleated_red_cells,
    )


def differential_json(counted: Differential) -> dict[str, Any]:
    """The differential as the API returns it: the white cells counted, the unidentified
    cells awaiting review, each class's count, percent and 95 % counting range
    (`counting.share_range`, in percent), its reference interval and where the share lies
    against it (`reference.flag`: `outside` "above" or "below" and whether beyond counting
    error; null within it or while cells or images await a look: `not_a_cell_unreviewed`,
    Differential.images_unseen), and the model's other classes per 100 white cells, where it
    has any."""
    out: dict[str, Any] = {
        "white_cells": counted.white_cells,
        "awaiting_review": counted.awaiting_review,
        "not_a_cell_unreviewed": counted.images_unseen,
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


def _against(reference: tuple[float, float] | None, found: Flag | None) -> dict[str, Any]:
    """A figure's reference interval and where it lies against it, as the API gives them."""
    return {"reference": list(reference) if reference else None,
            "outside": found.direction if found else None,
            "beyond_counting_error": found.beyond_counting_error if found else None}


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


@dataclass(frozen=True)
class ReviewBias:
    """What leaving the unidentified cells out did to the differential of batches drawn from a
    model's test images (`training.differential`)."""
    cells: int  # white cells per batch
    composition: str  # the batches' class shares: NORMAL_FILM where measured
    biases: list[tuple[str, float]]  # the two classes the accepted cells alone read most off,
    #   in points (above the truth: positive)
    accepted_error: float  # each share's mean absolute error, in points, of the accepted cells
    reviewed_error: float  # the same once the unidentified cells were reviewed


def recorded_figures(metrics: dict) -> dict | None:
    """A card's differential figures (`training.differential --record`), where well formed."""
    entry = metrics.get(DIFFERENTIAL)
    if not isinstance(entry, dict) or not isinstance(entry.get("compositions"), dict):
        return None
    return entry


def review_bias(card: dict, confidence_threshold: float) -> ReviewBias | None:
    """How far a model's accepted cells alone lean its differential (`ReviewBias`), measured at
    `confidence_threshold` (the one served), in the composition nearest a lab's film (a normal
    adult differential, else the first recorded); None where not measured at that threshold (a
    server's own ACCURACY_TARGET), or where reviewing did not make the shares materially nearer
    the truth (MATERIAL_BIAS_POINTS)."""
    metrics = card.get("metrics")
    entry = recorded_figures(metrics if isinstance(metrics, dict) else {})
    if entry is None or not entry["compositions"]:
        return None
    name = NORMAL_FILM if NORMAL_FILM in entry["compositions"] else next(
        iter(entry["compositions"]))
    try:
        point = next((p for p in entry["compositions"][name]["operating_points"]
                      if p["confidence_threshold"] == confidence_threshold), None)
        if point is None:
            return None
        biases = sorted(point["accepted_only_bias_points"].items(), key=lambda kv: -abs(kv[1]))
        errors = point["accepted_only_error"], point["reviewed_error"]
    except (KeyError, TypeError, AttributeError):
        return None
    if errors[0] - errors[1] < MATERIAL_BIAS_POINTS:
        return None
    return ReviewBias(entry["cells"], name, biases[:2], *errors)
