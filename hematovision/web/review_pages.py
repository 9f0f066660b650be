"""The review: a technologist's verdict on one result, the review page of many cells at once,
and how a verdict is saved and recorded in the batch's history."""

from __future__ import annotations

import time

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from hematovision import differential
from hematovision.card import REVIEW_ORDER
from hematovision.cells import CELL_TYPES, OTHER_WHITE_CELL, display_name
from hematovision.predictor import Predictor
from hematovision.spreadsheet import whole_number
from hematovision.trust import ACCEPTED, UNIDENTIFIED
from hematovision.web import history, results, uploads
from hematovision.web.batch_pages import single
from hematovision.web.filters import how_many, is_number, verdict_text
from hematovision.web.lookup import (WARNING, expires_at, gone, item_or_404, load_or_404,
                                     no_store, served_model, upload_folder)
from hematovision.web.review_lists import (REVIEW_LISTS, class_lists, class_tabs, in_list,
                                           list_came_from, listed_in, review_list, to_confirm)
from hematovision.web.security import check_csrf

bp = Blueprint("review", __name__)
bp.before_request(check_csrf)

REVIEW_SAVED = "Saved your review of {file}: {verdict}."
REVIEW_CLEARED = "Cleared the review of {file}: the model's result counts again."
REVIEW_UNCHANGED = "{file} was already {now}: nothing changed."
REVIEWS_UNCHANGED = "The cells chosen already had those classes: nothing changed."
REVIEW_CHANGED_MEANWHILE = (
    "{file} was changed meanwhile (in another tab, or by a colleague): it is now {now}. "
    "Nothing was saved: here it is as it stands; give your class again if it should change.")
REVIEW_UNREADABLE = "This file could not be read, so there is no cell to review."
REVIEW_REMOVED = ("{file} was removed from this batch meanwhile (in another tab, or by a "
                  "colleague): nothing was saved.")
REVIEW_UNKNOWN = ("Choose one of the model's classes, another white cell, or exclude the image: "
                  "{choices}.")
# Cells one review page shows: each sends one form field, and a form may hold MAX_FORM_PARTS.
REVIEW_PAGE_CELLS = 60
# The share of the accepted cells the review page quotes its figure for (training.review_order).
REVIEW_FRACTION = 0.2
REVIEW_NOTHING_CHOSEN = "No class was chosen for any cell, so nothing was saved."
REVIEW_MANY_SAVED = "Saved your review of {cells}."
REVIEW_CONFIRMED = "Confirmed {cells} as {name}, as the model classed {them}."
REVIEW_NONE_CONFIRMED = ("No cell was left to confirm: those shown had been reviewed meanwhile, "
                         "or given another class.")
REVIEWS_KEPT = ("Not saved, as changed meanwhile (in another tab, or by a colleague): {cells}.")
REVIEW_TOO_MANY_SHOWN = "A review page shows at most {limit} cells: confirm them a page at a time."
REVIEW_CONFIRM_UNKNOWN = ("Cells are confirmed from the list of their class: one of {choices}.")
REVIEW_NOT_A_RESULT = "There is no classified image {index} in this batch to review."


@bp.post("/batch/<batch_id>/<int:index>/review")
def review(batch_id: str, index: int):
    """Record a technologist's verdict on one result (`verdict`: one of the batch's classes,
    OTHER_WHITE_CELL, "excluded", or empty to clear it). The page's form also sends `seen`,
    the verdict it showed (empty: none): a verdict given meanwhile elsewhere (another tab, a
    colleague) is not overwritten unseen (409, the page as it is now). After a verdict, back
    to the review list the page was opened from (`?show=`), else on to the next cell that
    needs review (303), or to the batch when none is left; after clearing one, or for a batch
    of one image, back to this image."""
    stored = load_or_404(batch_id)
    item = item_or_404(stored, index)
    if results.is_removed(item):
        return removed_meanwhile(batch_id, index, item)
    if differential.status_of(item) is None:
        abort(400, description=REVIEW_UNREADABLE)
    verdict = request.form.get("verdict", "")
    if verdict:
        check_verdict(verdict, stored)
    seen, meanwhile, removed, changed = request.form.get("seen"), None, False, False

    def record(batch: dict) -> None:
        nonlocal meanwhile, removed, changed
        result = batch["results"][index]
        if results.is_removed(result):
            removed = True
        elif seen is not None and (differential.verdict_of(result) or "") != seen:
            meanwhile = differential.verdict_of(result) or ""
        else:
            changed = give_verdict(batch, result, verdict or None, time.time())

    stored = uploads.update_batch(upload_folder(), batch_id, record)
    if stored is None:  # deleted between the two reads
        gone()
    if removed:
        return removed_meanwhile(batch_id, index, stored["results"][index])
    if meanwhile is not None:
        flash(REVIEW_CHANGED_MEANWHILE.format(
            file=results.name_of(item), now=review_state(stored["results"][index])), WARNING)
        return single(batch_id, index, status=409)
    if not changed:
        flash(REVIEW_UNCHANGED.format(file=results.name_of(item),
                                      now=review_state(stored["results"][index])))
    else:
        flash(REVIEW_SAVED.format(file=results.name_of(item), verdict=verdict_text(verdict))
              if verdict else REVIEW_CLEARED.format(file=results.name_of(item)))
    came_from = list_came_from(stored)
    if verdict and came_from is not None:
        return redirect(url_for("review.review_all", batch_id=batch_id, **came_from), code=303)
    if verdict and len(stored["results"]) > 1:
        following = results.next_to_review(stored["results"], index)
        if following is not None:
            # `saved`: the next page leads back to this cell, to change a verdict mis-keyed.
            return redirect(url_for("batches.single", batch_id=batch_id, index=following,
                                    saved=index), code=303)
        return redirect(url_for("batches.batch", batch_id=batch_id), code=303)
    return redirect(url_for("batches.single", batch_id=batch_id, index=index,
                            **(came_from or {})), code=303)


def removed_meanwhile(batch_id: str, index: int, item: dict):
    """A review sent for an image removed from the batch since its page was opened: nothing
    saved, and its page, which says so (409)."""
    flash(REVIEW_REMOVED.format(file=results.name_of(item)), WARNING)
    return single(batch_id, index, status=409)


def check_verdict(verdict: str, stored: dict) -> None:
    """A 400 naming the choices unless `verdict` is one of the batch's classes,
    OTHER_WHITE_CELL or EXCLUDED."""
    choices = [*stored["classes"], OTHER_WHITE_CELL, differential.EXCLUDED]
    if verdict not in choices:
        abort(400, description=REVIEW_UNKNOWN.format(choices=", ".join(choices)))


@bp.get("/batch/<batch_id>/review")
def review_all(batch_id: str):
    """The cells still to review, all on one page, each as the model read it, with a choice of
    class each; `?show=all`: every classified result, to confirm accepted ones too;
    `?show=no-white-cell`: the images in which no white cell was found, not yet reviewed;
    `?show=not-a-cell`: those called not a blood-cell image, not yet reviewed (set_aside_unseen);
    `?show=near-threshold`: the accepted cells below target, not yet reviewed;
    `?show=over-exposed`: the accepted cells of images read over-exposed, not yet reviewed;
    `?show=<class>`: the cells counted as that class (`?show=excluded`: those excluded), to
    correct the odd ones out and confirm the rest."""
    stored = load_or_404(batch_id)
    show = review_list(stored)
    listed = listed_in(show, stored["results"])
    start = min(whole_number(request.args.get("start", "")) or 0, max(len(listed) - 1, 0))
    shown = listed[start:start + REVIEW_PAGE_CELLS]
    return no_store(render_template(
        "review.html", batch=stored, listed=len(listed), start=start,
        cells=[(i, stored["results"][i]) for i in shown],
        page_cells=REVIEW_PAGE_CELLS, show=show, tabs=class_tabs(stored),
        to_review=sum(differential.needs_review(r) for r in stored["results"]),
        set_aside=sum(map(REVIEW_LISTS["not-a-cell"], stored["results"])),
        near=sum(map(REVIEW_LISTS["near-threshold"], stored["results"])),
        over_exposed=sum(map(REVIEW_LISTS["over-exposed"], stored["results"])),
        classified=sum(differential.status_of(r) is not None for r in stored["results"]),
        unconfirmed_shown=sum(to_confirm(stored["results"][i]) for i in shown),
        guide=[CELL_TYPES[c] for c in stored.get("classes", []) if c in CELL_TYPES],
        least_sure=least_sure_figure(served_model(stored["model"])) if show == "all" else None,
        expires=expires_at(stored)))


def least_sure_figure(predictor: Predictor | None) -> dict | None:
    """What checking the least sure REVIEW_FRACTION of the accepted cells found on normal films
    drawn from the model's test images (`training.review_order --record`): {"cells",
    "accepted_per_film", "wrong_per_film", "fraction", "checked_per_film", "found_least_sure",
    "found_upload_order"}; None where not measured, or not at the confidence threshold served
    now."""
    metrics = predictor.card.get("metrics") if predictor else None
    entry = metrics.get(REVIEW_ORDER) if isinstance(metrics, dict) else None
    try:
        if entry["confidence_threshold"] != predictor.trust.confidence_threshold:
            return None
        row = next(r for r in entry["fractions"] if r["fraction"] == REVIEW_FRACTION)
        figures = {**{k: entry[k] for k in ("cells", "accepted_per_film", "wrong_per_film")},
                   **{k: row[k] for k in ("fraction", "checked_per_film", "found_least_sure",
                                          "found_upload_order")}}
    except (KeyError, TypeError, StopIteration):
        return None
    return figures if all(is_number(v) for v in figures.values()) else None


@bp.post("/batch/<batch_id>/review")
def review_many(batch_id: str):
    """Record the verdicts of the review page at once (`verdict-<n>`: one of the batch's
    classes, OTHER_WHITE_CELL or "excluded"; empty leaves that result as it is). The page
    sends `seen`, each cell it showed with the verdict it had (`3=,5=neutrophil`): a cell
    given another verdict meanwhile elsewhere (another tab, a colleague) keeps it, and the
    message names it. From a
    class list, `confirm` (that class) also confirms the cells shown that were left as they
    were: each still counted as the model accepted it gets the class as its verdict. Any
    unknown verdict or result refuses the whole form (400) and saves none. Then back to the
    review page's list while it holds something to do (a class list: while it holds cells,
    and after confirming, cells to confirm), then on to the next class with cells to confirm;
    else to the batch (303)."""
    stored = load_or_404(batch_id)
    verdicts: dict[int, str] = {}
    for key, verdict in request.form.items():
        if not key.startswith("verdict-") or not verdict:
            continue
        number = key.removeprefix("verdict-")
        verdicts[shown_index(stored, number)] = verdict
        check_verdict(verdict, stored)
    listing, start = review_list(stored), whole_number(request.args.get("start", ""))
    confirm = request.form.get("confirm", "")
    if confirm and (confirm != listing or confirm not in stored["classes"]):
        abort(400, description=REVIEW_CONFIRM_UNKNOWN.format(choices=", ".join(stored["classes"])))
    seen = seen_verdicts(stored, request.form.get("seen"), required=bool(confirm))
    # Where the form came from: the same list, and in a list that pages (every cell, a class),
    # the same page; after confirming, a class list's first page, where those still to confirm
    # now are.
    pages_on = listing == "all" or (listing in class_lists(stored) and not confirm)
    show = {**({"show": listing} if listing else {}),
            **({"start": start} if pages_on and start else {})}
    if not verdicts and not confirm:
        flash(REVIEW_NOTHING_CHOSEN)
        return redirect(url_for("review.review_all", batch_id=batch_id, **show), code=303)
    now, saved, confirmed, kept = time.time(), 0, 0, []

    def record(batch: dict) -> None:
        nonlocal saved, confirmed
        found = batch["results"]
        # Under the batch's lock: a cell reviewed meanwhile, elsewhere, keeps that review.
        for index, verdict in verdicts.items():
            if results.is_removed(found[index]) or (seen is not None and index in seen and (
                    differential.verdict_of(found[index]) or "") != seen[index]):
                kept.append(index)
                continue
            saved += give_verdict(batch, found[index], verdict, now)
        if not confirm:
            return
        for index in seen.keys() - verdicts.keys():  # `seen` is required with `confirm`
            if (seen[index] == "" and to_confirm(found[index])
                    and found[index]["label"] == confirm):
                give_verdict(batch, found[index], confirm, now, confirmed=True)
                confirmed += 1

    stored = uploads.update_batch(upload_folder(), batch_id, record)
    if stored is None:  # deleted between the two reads
        gone()
    found = stored["results"]
    if saved or confirm:
        flash(reviews_saved(saved, confirmed, confirm))
    elif not kept:
        flash(REVIEWS_UNCHANGED)
    if kept:
        flash(REVIEWS_KEPT.format(cells=", ".join(
            f"{results.name_of(found[i])} (now {review_state(found[i])})" for i in sorted(kept))),
            WARNING)
    if listing in REVIEW_LISTS:
        # Back to the list while it still holds something to do (every cell: while any is
        # still to review), else to the batch.
        left = REVIEW_LISTS["" if listing == "all" else listing]
        if any(left(r) for r in found):
            return redirect(url_for("review.review_all", batch_id=batch_id, **show), code=303)
        return redirect(url_for("batches.batch", batch_id=batch_id), code=303)
    # A class list. Reviews saved alone: the same list and page while it holds cells. After
    # confirming: the same list while it holds cells to confirm, then the next class that does.
    if not confirm and any(in_list(listing)(r) for r in found):
        return redirect(url_for("review.review_all", batch_id=batch_id, **show), code=303)
    names = class_lists(stored)
    following = names[names.index(listing):] + names[:names.index(listing)]
    pending = next((c for c in following if any(to_confirm(r) and in_list(c)(r) for r in found)),
                   None)
    if pending is not None:
        return redirect(url_for("review.review_all", batch_id=batch_id, show=pending), code=303)
    return redirect(url_for("batches.batch", batch_id=batch_id), code=303)


def seen_verdicts(stored: dict, field: str | None, required: bool) -> dict[int, str] | None:
    """The review page's `seen` field read: each cell it showed, by index, with the verdict
    it had ("" for none). None where the form did not send it (and none was `required`); a
    400 for a result that is not one, or for more cells than a page shows."""
    if field is None and not required:
        return None
    entries = (field or "").split(",")
    if len(entries) > REVIEW_PAGE_CELLS:
        abort(400, description=REVIEW_TOO_MANY_SHOWN.format(limit=REVIEW_PAGE_CELLS))
    seen = {}
    for entry in entries:
        number, _, verdict = entry.partition("=")
        seen[shown_index(stored, number)] = verdict
    return seen


def shown_index(stored: dict, number: str) -> int:
    """The index `number` names of a classified result of the batch, or of one whose image was
    removed from it since (the page that sent it was opened before); a 400 for any other."""
    index = whole_number(number)
    if index is None or index >= len(stored["results"]) or (
            differential.status_of(stored["results"][index]) is None
            and not results.is_removed(stored["results"][index])):
        abort(400, description=REVIEW_NOT_A_RESULT.format(index=number[:12]))
    return index


def reviews_saved(reviewed: int, confirmed: int, confirm: str) -> str:
    """The flash message after the review page's form: how many cells were given a class and
    how many confirmed as `confirm`."""
    saved = [REVIEW_MANY_SAVED.format(cells=how_many(reviewed, "cell"))] if reviewed else []
    if confirm:
        saved.append(REVIEW_CONFIRMED.format(cells=how_many(confirmed, "cell"),
                                             name=display_name(confirm),
                                             them="it" if confirmed == 1 else "them") if confirmed
                     else REVIEW_NONE_CONFIRMED)
    return " ".join(saved)


def give_verdict(batch: dict, result: dict, verdict: str | None, at: float,
                 confirmed: bool = False) -> bool:
    """Save a reviewer's verdict on one of the batch's results (None: clear it), under the
    name this browser gave, and record it in the batch's history (in place, under the lock);
    whether it changed anything."""
    if verdict == differential.verdict_of(result):
        return False  # the same again (or nothing to clear): the first review, by whom, stands
    history.record(batch, history.REVIEWED, review_change(result, verdict, confirmed), at)
    if verdict:
        result["review"] = {"label": verdict, "at": at, "by": history.reviewer()}
    else:
        result.pop("review", None)
    return True


def review_change(result: dict, verdict: str | None, confirmed: bool = False) -> str:
    """A review about to be saved (None: cleared; `confirmed`: from its class list's "Confirm
    the rest"), in words, with what the result was before, for the batch's history."""
    before = (review_state(result) if differential.verdict_of(result) is not None
              else model_said(result))
    now = verdict_text(verdict) if verdict else "review cleared"
    if confirmed:
        now = f"{now}, confirmed with the rest of its class list"
    return f"{results.name_of(result)}: {now} (was {before})"


def counted_state(result: dict) -> str:
    """How the differential counts a result now, and on whose word, in words (the history of a
    removal): "counted as X, reviewed by Y", "counted as X as the model accepted it", "not
    counted, ..."."""
    if "label" not in result:
        return "not counted (it could not be read)"
    counted, verdict = differential.counted_class(result), differential.verdict_of(result)
    by = results.reviewer_of(result)
    reviewed = f"reviewed{f' by {by}' if by else ''}"
    if counted is not None:
        return (f"counted as {display_name(counted)}, {reviewed}" if verdict
                else f"counted as {display_name(counted)} as the model accepted it")
    if verdict:
        return f"not counted ({verdict_text(verdict)}, {reviewed})"
    return f"not counted, {model_said(result)}"


def model_said(result: dict) -> str:
    """What the model said of a classified result, in words: "accepted as X by the model",
    "unidentified by the model, first choice X", "called not a blood-cell image by the model"
    (its label there is no class it named: the history had read "the model's X, not a cell")."""
    status, name = result["status"], display_name(result["label"])
    if status == ACCEPTED:
        return f"accepted as {name} by the model"
    if status == UNIDENTIFIED:
        return f"unidentified by the model, first choice {name}"
    return "called not a blood-cell image by the model"


def review_state(result: dict) -> str:
    """Where a result's review stands, in words: "reviewed as <class>", "not reviewed", or
    "removed from the batch"."""
    if results.is_removed(result):
        return "removed from the batch"
    verdict = differential.verdict_of(result)
    return f"reviewed as {verdict_text(verdict)}" if verdict else "not reviewed"
