"""What a stored batch result turns into beside its differential (`hematovision.differential`):
the status counts, the technologist's reviews, the CSV downloads and the reviewed cells as a
training folder.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hematovision.cells import OTHER_WHITE_CELL
from hematovision.comparison import Comparison
# set_aside_unseen: the web's lists, sign-off and CSV ask it here, as of every result's state.
from hematovision.differential import (EXCLUDED, ClassShare, Differential, counted_class,
                                       counted_label, differential, flag_text, needs_review,
                                       set_aside_unseen, status_of, verdict_of)
from hematovision.exposure import COLOURS, Exposure, Stored, stored
from hematovision.magnification import BatchCheck, Reference, batch_check
from hematovision.reference import measure
from hematovision.spreadsheet import inert
from hematovision.trust import (ACCEPTED, NOT_A_CELL, STATUSES, UNIDENTIFIED, short_of_target,
                               stored_band)

if TYPE_CHECKING:  # signoff reads this module's counted_unseen
    from hematovision.web.signoff import SignOff


# Verdicts that are no label to train a model on: none, an exclusion, a white cell of a type the
# model does not name (blasts and variant lymphocytes under one name).
NOT_LABELS = (None, EXCLUDED, OTHER_WHITE_CELL)


@dataclass(frozen=True)
class ReviewSummary:
    reviewed: int  # results with a reviewer's verdict
    labelled: int  # of them, those given a class (not excluded): the reviewed-cells archive
    accepted: int  # of them, results the model had accepted: a check of its accepted answers
    overruled: int  # of those, the ones given another class, or excluded
    to_review: int  # unidentified results still without a verdict


def served_differential(results: list[dict[str, Any]], classes: list[str], config,
                        white_cells_per_litre: float | None = None,
                        count_includes_nucleated_red_cells: bool = False) -> Differential:
    """`differential` against the intervals a server's `config` serves (REFERENCE_INTERVALS,
    ABSOLUTE_REFERENCE_INTERVALS), as the batch page, its CSV and the API count it, its flags
    held while images called not a blood-cell image wait to be looked at (set_aside_unseen)."""
    return differential(results, classes, config["REFERENCE_INTERVALS"], white_cells_per_litre,
                        config["ABSOLUTE_REFERENCE_INTERVALS"],
                        count_includes_nucleated_red_cells,
                        sum(map(set_aside_unseen, results)))


# The last columns of both CSV downloads: what made the results (versions.columns).
MADE_BY_COLUMNS = ("model", "model_version", "accuracy_target", "app_version")
DIFFERENTIAL_COLUMNS = (
    "class", "white_cell", "count", "percent", "range_95_low", "range_95_high",
    "reference_low", "reference_high", "flag", "per_100_white", "per_litre", "per_litre_low",
    "per_litre_high", "per_litre_reference_low", "per_litre_reference_high", "per_litre_flag",
    "white_cells", "awaiting_review", "white_cells_per_litre",
    "uncorrected_white_cells_per_litre", "sample", "manual_count", "manual_percent",
    "manual_difference", "manual_p_value", "manual_white_cells", "signed_off_by",
    "signed_off_at", "comment", "not_a_cell_unreviewed", *MADE_BY_COLUMNS,
    "near_threshold_unreviewed")
# The per-result CSV's last columns: the result's band of held-out images (`held_out_band`)
# and whether it is an accepted cell below target no one has looked at.
BAND_COLUMNS = ("band_low", "band_high", "band_images", "band_right", "near_threshold")
# How the image's exposure was corrected before the model read it: the red, green and blue
# gains ("Rx1.333 Gx1.333 Bx1.335"); "within" the training images' backgrounds, "unmeasured"
# (too little bare slide), "over-exposed" or "not corrected (too far)"; empty for a model
# with no exposure reference.
EXPOSURE_COLUMN = "exposure_correction"


def differential_csv(counted: Differential, sample_id: str = "",
                     comparison: Comparison | None = None, signed: SignOff | None = None,
                     set_aside: int = 0, model: tuple[str, ...] = ("", "", "", ""),
                     near: dict[str, int] | None = None) -> str:
    """The differential as a table for a spreadsheet or a laboratory system: one row per
    white-cell class (count, percent, 95 % range, reference interval and flag as on the batch
    page; per litre where the total count was given) and one per other class (its count, and
    for nucleated red cells per 100 white cells), each with the batch's white cells counted,
    unidentified cells awaiting review (no flag is given while there are any, nor while images
    called not a blood-cell image wait to be looked at), total count and sample ID, and who
    signed the count off, when, and their comment (empty unless `signed` still stands). A flag
    reads "high", "low", "high?" or "low?" (within counting error), empty within the
    interval. Given a manual count of the film (`comparison`), each white-cell class's row
    also has its manual count and percent, the difference in points and its p-value
    (`hematovision.comparison`),
    a nucleated red-cell class's the same per 100 white cells, and each row the manual count's
    white cells; and each row the images called not a blood-cell image that no one has looked
    at where a white cell may be (`set_aside`: set_aside_unseen; the count is not signed while
    there are any), what made the results: the model, its version, the accuracy target and
    the app's version (`model`: versions.columns), and the row's class's accepted cells below
    target no one has looked at (`near`: near_threshold_by_class). Columns are added last, so
    that earlier ones keep their places."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(DIFFERENTIAL_COLUMNS)
    batch = [counted.white_cells, counted.awaiting_review,
             _number(counted.white_cells_per_litre),
             _number(counted.uncorrected_white_cells_per_litre), inert(sample_id)]
    by_hand = {row.name: row for row in comparison.classes} if comparison else {}
    manual_total = [comparison.manual_white_cells if comparison else "",
                    *([inert(signed.by), iso_time(signed.at), inert(signed.comment)]
                      if signed and signed.current else ["", "", ""]), set_aside,
                    *map(inert, model)]
    near = near or {}
    # A class compared with the manual count that the batch did not count (the manual count's
    # other white cells, where no reviewer called any so) has a row too, of none.
    _, low, high = measure(0, counted.white_cells)
    missing = [ClassShare(name, 0, 0.0, round(low, 1), round(high, 1))
               for name in by_hand if name not in {s.name for s in counted.shares}]
    for s in [*counted.shares, *missing]:
        a, m = s.absolute, by_hand.get(s.name)
        writer.writerow([
            s.name, "yes", s.count, f"{s.percent:.1f}", f"{s.low:.1f}", f"{s.high:.1f}",
            *_bounds(s.reference), flag_text(s.flag), "",
            *([f"{a.value:.2f}", f"{a.low:.2f}", f"{a.high:.2f}", *_bounds(a.reference),
               flag_text(a.flag)] if a else [""] * 6), *batch,
            *([m.manual_count, f"{m.manual_percent:.1f}", f"{m.difference:.1f}",
               f"{m.p_value:.4g}"] if m else [""] * 4), *manual_total, near.get(s.name, 0)])
    beside = {row.name: row for row in comparison.beside} if comparison else {}
    for o in counted.others:
        m = beside.get(o.name)
        writer.writerow([o.name, "no", o.count, "", _number(o.low), _number(o.high),
                         *_bounds(o.reference), flag_text(o.flag), _number(o.per_100_white),
                         *[""] * 6, *batch,
                         *([m.manual_count, f"{m.manual_per_100_white:.1f}",
                            f"{m.difference:.1f}", f"{m.p_value:.4g}"] if m else [""] * 4),
                         *manual_total, near.get(o.name, 0)])
    return out.getvalue()


def _bounds(reference: tuple[float, float] | None) -> list[str]:
    return [f"{v:g}" for v in reference] if reference else ["", ""]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def review_summary(results: list[dict[str, Any]]) -> ReviewSummary:
    verdicts = [(r, verdict_of(r)) for r in results]
    return ReviewSummary(
        reviewed=sum(1 for _, v in verdicts if v is not None),
        labelled=sum(1 for _, v in verdicts if v not in NOT_LABELS),
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
    OTHER_WHITE_CELL and EXCLUDED; verdicts no result has left out) against what the model
    said of them: a lab's check of the model on its own cells, class by class."""
    rows = []
    for verdict in [*classes, OTHER_WHITE_CELL, EXCLUDED]:
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
    """The classified results as the review page lists every cell: those called not a
    blood-cell image first (their confidence is in a class of an image unlike the training
    images: an image of noise at 1.0000 had sorted last, among the surest), then the
    unidentified ones (one with no white cell found is unidentified however sure), then the
    accepted ones the model was least sure of first, where its wrong answers mostly lie
    (training.review_order). By the model's status and confidence, which a review does not
    change, so saving verdicts never moves a cell."""
    classified = [i for i, r in enumerate(results) if status_of(r) is not None]
    return sorted(classified, key=lambda i: (status_of(results[i]) != NOT_A_CELL,
                                             status_of(results[i]) != UNIDENTIFIED,
                                             results[i]["confidence"], i))


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
    return batch_check([r.get("red_cell_ratio") for r in results if first_of_image(r)],
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


def images_and_cells(found: list[dict[str, Any]]) -> str:
    """How many whole images and cells of fields these results are, in words ("2 images", "1
    cell of a field", "2 images and 3 cells of fields"): each cell of a field is a result of
    its own, to be looked at on its own, so a field's cells are not one image here."""
    cells = sum(1 for r in found if r.get("cell"))
    images = len(found) - cells
    return " and ".join([*([f"{images} image{'s' if images != 1 else ''}"] if images else []),
                         *([f"{cells} cell of a field" if cells == 1 else
                            f"{cells} cells of fields"] if cells else [])])


def held_out_band(result: dict[str, Any]) -> dict[str, Any] | None:
    """How often the held-out images were right whose confidence lay in this result's band
    (`trust.Trust.band`), as stored when it was classified; None for a result from before
    bands were stored, an unfamiliar image (its confidence is about something else) or none."""
    if status_of(result) not in (ACCEPTED, UNIDENTIFIED):
        return None
    return stored_band(result.get("scores"))


def near_threshold(result: dict[str, Any]) -> bool:
    """An accepted cell no one has reviewed whose band of held-out images does not show the
    accuracy that accepted cells reach as a group (`trust.short_of_target`): one to look at
    before counting it. Advice, not a status: it is counted as accepted."""
    return (status_of(result) == ACCEPTED and verdict_of(result) is None
            and short_of_target(held_out_band(result)))


def second_choice(result: dict[str, Any]) -> dict[str, Any] | None:
    """The most probable class after the one a result names ({"label", "probability"} of its
    candidates), for a cell below target to be told from; None where none is stored."""
    candidates = result.get("candidates") or []
    return next((c for c in candidates if c.get("label") != result.get("label")), None)


def near_threshold_by_class(results: list[dict[str, Any]]) -> dict[str, int]:
    """How many of each class's counted cells are accepted cells below target no one has
    looked at: a share, and its flag, that may not hold once they are."""
    return dict(Counter(r["label"] for r in results if near_threshold(r)))


def counted_unseen(result: dict[str, Any]) -> bool:
    """A result the differential counts though no white cell was found in its image and no one
    has reviewed it: its answer is about whatever lay at the centre of the crop."""
    return (no_white_cell(result) and verdict_of(result) is None
            and counted_class(result) is not None)


def image_count(results: list[dict[str, Any]]) -> int:
    """How many images gave these results: the cells of a field holding several are one; an
    image removed from its batch is none."""
    return sum(1 for r in results if first_of_image(r) and not is_removed(r))


def image_count_removed(results: list[dict[str, Any]]) -> int:
    """How many images were removed from the batch that gave these results."""
    return sum(1 for r in results if first_of_image(r) and is_removed(r))


def first_of_image(result: dict[str, Any]) -> bool:
    """A whole image's result, or the first cell's of a field read cell by cell."""
    return (result.get("cell") or {}).get("number", 1) == 1


def is_removed(result: dict[str, Any]) -> bool:
    """A result whose image was removed from its batch (`removed_entry`)."""
    return isinstance(result.get("removed"), dict)


def removed_entry(result: dict[str, Any], at: float, reason: str, by: str) -> dict[str, Any]:
    """What stays of a result once its image is removed from the batch: the file's name (and
    which cell of its field), when, why and by whom (the name the browser gave; "": none). It
    keeps the result's place, by which pages and forms name every result (a form from a page
    opened before the removal still names the cells it showed), and no digest, so the image can
    be added again."""
    return {"file": result["file"], **({"cell": result["cell"]} if result.get("cell") else {}),
            "removed": {"at": at, "reason": reason, "by": by,
                        # A file that could not be read keeps why, as its CSV row said it.
                        **({"unreadable": result.get("error") or True}
                           if "label" not in result else {})}}


def same_image(results: list[dict[str, Any]], index: int) -> list[int]:
    """The indices of the results of result `index`'s image: every cell of a field read cell
    by cell (they share its stored image), else that result alone."""
    image = results[index].get("image")
    return [i for i, r in enumerate(results) if i == index or (image and r.get("image") == image)]


def classified_besides(results: list[dict[str, Any]], gone: list[int]) -> bool:
    """Whether a classified result is left once the results `gone` (an image's: `same_image`)
    are removed: the batch's last classified image is not removed, the batch is deleted."""
    return any(status_of(r) is not None for i, r in enumerate(results) if i not in gone)


def removal_reason(result: dict[str, Any]) -> str:
    """Why a result's image was removed ("" where no reason was given)."""
    reason = result["removed"].get("reason")
    return reason if isinstance(reason, str) else ""


def removal_text(result: dict[str, Any]) -> str:
    """"removed from the batch" and why (and for a file that could not be read, why not), as
    the CSV says it."""
    reason, unreadable = removal_reason(result), result["removed"].get("unreadable")
    return "".join(["removed from the batch", f": {reason}" if reason else "",
                    f" (could not be read: {unreadable})" if isinstance(unreadable, str) else ""])


def batch_title(results: list[dict[str, Any]]) -> str:
    """"Batch of N images", and where fields holding several white cells were read cell by
    cell, how many results the images gave."""
    images, held = image_count(results), sum(not is_removed(r) for r in results)
    title = f"Batch of {images} image{'s' if images != 1 else ''}"
    return f"{title}, {held} results" if images != held else title


def cell_text(result: dict[str, Any]) -> str:
    """`n/N` for the n-th of N white cells of a field, empty for a whole image (the CSV)."""
    cell = result.get("cell")
    return f"{cell['number']}/{cell['of']}" if cell else ""


def to_csv(results: list[dict[str, Any]], classes: list[str],
           model: tuple[str, ...] = ("", "", "", ""), sample_id: str = "") -> str:
    """One row per result (a file, or one white cell of a field): file, label (the model's top
    class, as in the API), status (whether to trust that label), confidence, p_<class> for
    each class, error, differential_class: the class a white cell is counted as
    (`counted_label`), so a spreadsheet that counts or filters by it counts what the
    differential counts, red_cell_ratio: the image's red-cell size over
    the training images' (the magnification check; empty where unmeasured), and
    reviewed_class: the reviewer's verdict (a class or "excluded"; empty where none), cell:
    `n/N` for the n-th of N white cells the app found in one field, each a row of its own (empty
    for an image read whole), and white_cells: how many the image held (models that crop to the
    nucleus; 0 is `fields.NO_WHITE_CELL`), reviewed_by and reviewed_at: the name the reviewer's
    browser gave (hematovision.web.history; empty: none) and when, and model, model_version,
    accuracy_target and app_version: what made the result (versions.columns), and BAND_COLUMNS:
    the result's band of held-out images and "yes" for an accepted cell below target no
    one has looked at, and EXPOSURE_COLUMN, and sample: the sample's ID (each row, as in the
    differential CSV: a row pasted elsewhere is still told from another patient's). Columns
    are added last, so that earlier ones keep their places."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "label", "status", "confidence", *(f"p_{c}" for c in classes),
                     "error", "differential_class", "red_cell_ratio", "reviewed_class", "cell",
                     "white_cells", "reviewed_by", "reviewed_at", *MADE_BY_COLUMNS,
                     *BAND_COLUMNS, EXPOSURE_COLUMN, "sample"])
    for r in results:
        status = status_of(r)
        if status is not None:
            probabilities = [f"{r['probabilities'][c]:.4f}" for c in classes]
            ratio = r.get("red_cell_ratio")
            row = [r["file"], r["label"], status, f"{r['confidence']:.4f}", *probabilities, "",
                   counted_label(r), "" if ratio is None else f"{ratio:.3f}",
                   verdict_of(r) or "", cell_text(r), str(r.get("white_cells", "")),
                   *reviewed_by(r), *model, *band_cells(r), exposure_cell(r), sample_id]
        else:
            error = removal_text(r) if is_removed(r) else r["error"]
            row = [r["file"], "", "", "", *([""] * len(classes)), error, "", "", "",
                   cell_text(r), "", "", "", *model, *band_cells(r), "", sample_id]
        writer.writerow([inert(cell) for cell in row])
    return out.getvalue()


def band_cells(result: dict[str, Any]) -> list[str]:
    """A result's BAND_COLUMNS (empty where it stores no whole band)."""
    band = held_out_band(result)
    if band is None:
        return [""] * len(BAND_COLUMNS)
    return [f"{band['low']:g}", f"{band['high']:g}", str(band["images"]), str(band["right"]),
            "yes" if near_threshold(result) else ""]


def exposure_of(result: dict[str, Any]) -> Stored | None:
    """The result's exposure check (`Predictor.as_trained`); None where it has none, or a
    damaged one."""
    return stored(result.get("exposure"))


def exposure_cell(result: dict[str, Any]) -> str:
    """A result's EXPOSURE_COLUMN: empty for a model with no exposure reference."""
    if "exposure" not in result:
        return ""
    if result["exposure"] is None:
        return "unmeasured"
    check = exposure_of(result)
    if check is None:  # damaged
        return ""
    if not check.outside:
        return "within"
    if check.corrected:
        return " ".join(f"{c[0].upper()}x{g:.3f}" for c, g in zip(COLOURS, check.gains))
    return "over-exposed" if check.over_exposed else "not corrected (too far)"


def exposure_summary(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the batch's classified images (a field's cells share one), how many the model read
    with their exposure corrected: those of another colour (`Stored.tinted`), and the darker
    and the brighter apart, each with its count and median brightness (times the training
    images' background; a batch may mix them); and how many lay outside the training images'
    backgrounds but could not be corrected: over-exposed (with how many cells of those were
    accepted all the same, and of those how many no one has reviewed), or too far; None where
    no image was either."""
    classified = [r for r in results if first_of_image(r) and status_of(r) is not None]
    checks = [(exposure_of(r), status_of(r)) for r in classified]
    corrected = [c for c, _ in checks if c is not None and c.corrected]
    left = [(c, s) for c, s in checks if c is not None and c.outside and not c.corrected]
    # A field's cells share their image's check, but each is accepted and reviewed on its own.
    uncorrected = [(r, c) for r in results if status_of(r) is not None
                   and (c := exposure_of(r)) is not None and c.outside and not c.corrected]
    accepted = [r for r, c in uncorrected if status_of(r) == ACCEPTED and c.over_exposed]
    if not corrected and not left:
        return None

    def part(values: list[float]) -> dict[str, Any] | None:
        return {"images": len(values), "median": float(np.median(values))} if values else None

    plain = [c.brightness() for c in corrected if not c.tinted]
    return {"images": len(checks), "corrected": len(corrected),
            "tinted": part([c.brightness() for c in corrected if c.tinted]),
            "darker": part([b for b in plain if b < 1]),
            "brighter": part([b for b in plain if b >= 1]),
            "over_exposed": sum(c.over_exposed for c, _ in left),
            "over_exposed_accepted": len(accepted),
            # Of them, those no one has reviewed (over_exposed_unseen, without reading every
            # result's check again).
            "over_exposed_unreviewed": sum(verdict_of(r) is None for r in accepted),
            # Cells the differential counts from the images left uncorrected, reviewed or not:
            # the printed report names them.
            "over_exposed_counted": sum(counted_class(r) is not None and c.over_exposed
                                        for r, c in uncorrected),
            "too_far_counted": sum(counted_class(r) is not None and not c.over_exposed
                                   for r, c in uncorrected),
            "too_far": sum(not c.over_exposed for c, _ in left)}


def over_exposed_unseen(result: dict[str, Any]) -> bool:
    """An accepted cell of an image read over-exposed, as it is, that no one has reviewed: its
    confidence and band were measured on images of the exposures the model knows, not on such
    an image, so it is counted on the model's word alone (the review list "over-exposed")."""
    if status_of(result) != ACCEPTED or verdict_of(result) is not None:
        return False
    check = exposure_of(result)
    return check is not None and check.outside and not check.corrected and check.over_exposed


def exposure_elsewhere(results: list[dict[str, Any]], model: str,
                       references: dict[str, Exposure | None],
                       own: Reference | None = None) -> list[tuple[str, int]]:
    """The other models (`references`: each served model's exposure reference) whose training
    images' backgrounds hold those of this batch's images left uncorrected outside its own
    (over-exposed, or too far), each with how many: a camera's usual background may be
    another model's kind of image (PBC's single cells, white in red, sent to wbc4), which is
    better read by that model than taken again. An image whose red cells measure this model's
    own training images' size (`own`: its magnification reference) is its kind of image,
    over-exposed, and is left out (a walker's smear fields brightened in red were sent to
    pbc8, which called them all not a cell). Most first; none where no image was left."""
    def own_kind(result: dict[str, Any]) -> bool:
        ratio = result.get("red_cell_ratio")
        return own is not None and is_number(ratio) and (
            own.single_range[0] <= ratio <= own.single_range[1])

    left = [c.background for r in results if first_of_image(r) and status_of(r) is not None
            and (c := exposure_of(r)) is not None and c.outside and not c.corrected
            and not own_kind(r)]
    found = [(name, sum(reference.within(b) for b in left))
             for name, reference in references.items() if name != model and reference]
    return sorted(((name, n) for name, n in found if n), key=lambda pair: -pair[1])


# The columns of the reviewed-cells archive's CSV: where each image of the folder came from and
# who labelled it how; `file,group` make it the source map `training` splits the cells by.
ARCHIVE_COLUMNS = ["file", "group", "batch", "reviewed_class", "reviewed_at", "original_file",
                   "model", "model_label", "model_status", "model_confidence", "reviewed_by",
                   "model_version"]


def reviewed_archive(batch: dict[str, Any], image_path: Callable[[str], Path | None],
                     group: str, version: str = "") -> bytes:
    """The batch's reviewed cells as a training folder, zipped: each stored image under the
    class a reviewer gave it (`<class>/<batch>-<n>-<name>.jpg`; excluded cells and unreviewed
    ones left out, since only a person's verdict is a label to train on, and so are cells of
    a type the model does not name, a mixed lot) and
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
            if verdict in NOT_LABELS or path is None or result.get("cell"):
                continue
            name = (f"{file_part(verdict)}/{prefix}-{index:03d}-"
                    f"{file_part(Path(result['file']).stem, 'image')}.jpg")
            try:
                archive.write(path, name)
            except FileNotFoundError:  # removed from the batch, or purged, meanwhile
                continue
            rows.append([name, group, batch["id"], verdict, iso_time(result["review"].get("at")),
                         result["file"], batch.get("model", ""), result["label"],
                         result["status"], f"{result['confidence']:.4f}",
                         reviewer_of(result), version])
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(ARCHIVE_COLUMNS)
        writer.writerows([[inert(cell) for cell in row] for row in rows])
        archive.writestr(f"reviewed-{prefix}.csv", table.getvalue())
    return out.getvalue()


def reviewed_by(result: dict[str, Any]) -> list[str]:
    """[who, when (ISO 8601, UTC)] of a result's review; empty strings where it has none."""
    review = result.get("review") if verdict_of(result) is not None else None
    return [reviewer_of(result), iso_time(review.get("at"))] if review else ["", ""]


def reviewer_of(result: dict[str, Any]) -> str:
    """Who gave a result's review, by the name their browser gave ("" for none, or for a review
    saved before names were recorded)."""
    by = (result.get("review") or {}).get("by") if verdict_of(result) is not None else None
    return by if isinstance(by, str) else ""


def fields_left_out(results: list[dict[str, Any]]) -> int:
    """Reviewed cells (given a class) that `reviewed_archive` leaves out as cells of a field
    holding several."""
    return sum(1 for r in results if r.get("cell") and verdict_of(r) not in NOT_LABELS)


def file_part(name: str, empty: str = "") -> str:
    """A name part made of letters, digits, '.', '_' and '-' only, so an archive entry or a
    download is one plain file name wherever it is saved or unpacked (`empty` when none is
    left)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or empty


def is_number(value: Any) -> bool:
    """A stored or recorded number: not a flag (True is an int) or text a damaged file might
    hold instead."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_time(value: Any) -> bool:
    """A stored time (seconds since 1970) that can be shown: a number up to the year 5138,
    not a flag or text a damaged file might hold instead."""
    return is_number(value) and 0 <= value < 1e11


def iso_time(timestamp: float | None) -> str:
    """A stored time in ISO 8601, UTC, to the second, as the CSV files give it; empty for
    none, or for one that cannot be shown."""
    if not is_time(timestamp):
        return ""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
