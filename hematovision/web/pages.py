"""The HTML pages: upload, results (one image or a batch), heat maps, CSV download, model
pages."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)

from hematovision import differential
from hematovision.card import FLAGS, REVIEW_ORDER, recorded_evaluations
from hematovision.cells import (CELL_TYPES, OTHER_WHITE_CELL, display_name,
                                is_nucleated_red_cell, is_white_cell)
from hematovision.comparison import Comparison, compare
from hematovision.fields import NO_WHITE_CELL
from hematovision.magnification import CARD_KEY as MAGNIFICATION
from hematovision.predictor import Predictor
from hematovision.preprocess import IMAGE_SUFFIXES, ImageError
from hematovision.reference import SETTINGS, UNITS, catalog_intervals
from hematovision.spreadsheet import whole_number
from hematovision.trust import (ACCEPTED, NOT_A_CELL, STATUS_TEXT, UNIDENTIFIED, WHITE_CELL_RULE,
                                measured_at)
from hematovision.web import (field_view, heatmap, history, manual, models, recent, results,
                              sample, signoff, uploads)
from hematovision.web.classify import classify_request, new_files, uploaded_files
from hematovision.web.errors import TITLES as ERROR_TITLES
from hematovision.web.forms import TypedForm, plain_text
from hematovision.web.security import check_csrf

bp = Blueprint("pages", __name__)
bp.before_request(check_csrf)

EXPIRED = "No such result: it may have been deleted, as results are kept for {retention}."
IMAGE_EXPIRED = "The stored image is gone: uploads are kept for {retention}."
DELETED = "Deleted from the server: the results of {images} and their stored copies."
DELETED_DAMAGED = ("Deleted the batch's damaged results from the server; its images go at the "
                   "end of their retention time.")
NO_HEAT_MAP = (
    "Model {name!r} has no heat maps: its folder has no fitted trust layer (trust.npz)."
)
# Above this expected calibration error on a test set, the result page calls the confidence a
# rough guide rather than a probability to act on.
ROUGH_ECE = 0.05
NOT_A_CELL_NO_MAP = (
    "This image did not look like the cells model {name!r} was trained on, so it has no heat "
    "map: the map would show evidence for a cell type the image is not."
)
ADDED = "Added {images} to this batch{failed}."
REMOVE_REASON_LENGTH = 200
HISTORY_FILES = 20  # files an upload's or addition's history entry names
REMOVE_BAD_REASON = ("The reason for removing the image was not saved, nor the image removed: "
                     "give it in at most {limit} characters of plain text, or leave it empty.")
REMOVE_LAST = ("This is the batch's only classified image left: delete the batch instead, or "
               "add the right images first.")
IMAGE_REMOVED = "{file} was removed from this batch, and its stored copy deleted."
REMOVED_TOO_MANY = ("{count} images have been removed from this batch already, as many as it "
                    "holds: start a new batch for the film.")
REMOVED_UNREADABLE = "Removed {file}, a file that could not be read, from this batch's list."
REMOVED_ALREADY = ("{file} had already been removed from this batch (in another tab, or by a "
                   "colleague).")
REMOVED_IMAGE = "Removed {file} from this batch ({cells}); its stored copy is deleted.{again}"
COPIES_LEFT_OUT = ("Left out {count} file{s} that {verb} byte for byte an image already in this "
                   "batch, so that no cell is counted twice: {names}.")
BATCH_MODEL_GONE = (
    "The model {name!r} that classified this batch is no longer served, so no image can be "
    "added to it: start a new batch."
)
BATCH_FULL = (
    "A batch holds at most {limit} images and this one holds {count}: add at most {room}, or "
    "start a new batch."
)
REVIEW_SAVED = "Saved your review of {file}: {verdict}."
REVIEW_CLEARED = "Cleared the review of {file}: the model's result counts again."
REVIEW_UNCHANGED = "{file} was already {now}: nothing changed."
REVIEWS_UNCHANGED = "The cells chosen already had those classes: nothing changed."
REVIEW_CHANGED_MEANWHILE = (
    "{file} was changed meanwhile (in another tab, or by a colleague): it is now {now}. "
    "Nothing was saved: here it is as it stands; give your class again if it should change.")
# The flash category of a notice that something was not saved (base.html: a warning, not the
# green of a saved change).
WARNING = "warning"
REVIEW_UNREADABLE = "This file could not be read, so there is no cell to review."
REVIEW_REMOVED = ("{file} was removed from this batch meanwhile (in another tab, or by a "
                  "colleague): nothing was saved.")
NOTHING_REVIEWED = (
    "No cell of this batch has been given a class on review yet, so there is nothing to export: "
    "review cells on their result pages first. (Cells of a field holding several white cells "
    "are not exported: a training folder holds one cell per image.)"
)
REVIEW_UNKNOWN = ("Choose one of the model's classes, another white cell, or exclude the image: "
                  "{choices}.")
FIELDS_CHECK_FILE = "fields_check.json"  # written by python -m training.fields_check --json
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
NOT_A_FIELD_CELL = "This result is a whole image, not one white cell of a field holding several."
MODEL_GONE = "The model {name!r} that classified this image is no longer served."
SAMPLE_SAVED = "Saved the sample's details."
SAMPLE_CLEARED = "Cleared the sample's details."
SAMPLE_ONE_IMAGE = ("A sample's details are given for a differential: add images to this batch "
                    "first.")
MANUAL_SAVED = "Saved your manual count of {cells}: the comparison is below."
MANUAL_CLEARED = "Cleared the manual count."
MANUAL_ONE_IMAGE = ("A manual count is compared with a differential: add images to this batch "
                    "first.")
SIGN_OFF_ONE_IMAGE = "A sign-off is given for a differential: add images to this batch first."
SIGNED_OFF = "Signed off by {name}: the page, the printed report and the differential CSV say so."
SIGN_OFF_WITHDRAWN = "Withdrew the sign-off by {name}."
# An address on this site: a path from its root, not `//host` nor `/\host` (read by browsers
# as another site), with no blanks or controls.
LOCAL_ADDRESS = re.compile(r"/(?![/\\])[^\s\\\x00-\x1f\x7f]{0,2000}")
REVIEWER_SET = ("Your reviews and changes are now recorded as {name} in each batch's history, "
                "until this browser closes.")
REVIEWER_CLEARED = "Your reviews and changes are now recorded without a name."
CLASS_GONE = "The model {name!r} no longer has the class {label!r} this image was given."


@bp.app_context_processor
def layout_context() -> dict:
    return {
        "model_names": models.names(),
        "default_model": models.default_name(),
        "retention": retention(),
        "STATUS_TEXT": STATUS_TEXT,
        "ACCEPTED": ACCEPTED,
        "UNIDENTIFIED": UNIDENTIFIED,
        "NOT_A_CELL": NOT_A_CELL,
        "EXCLUDED": differential.EXCLUDED,
        "OTHER_WHITE_CELL": OTHER_WHITE_CELL,
        "NO_WHITE_CELL": NO_WHITE_CELL,
        "WHITE_CELL_RULE": WHITE_CELL_RULE,
    }


bp.add_app_template_filter(display_name, "cell_name")


@bp.app_template_filter("isolated")
def isolated(text: str) -> str:
    """A name or ID a person typed, set apart from the sentence around it for right-to-left
    text (Unicode first-strong isolate), where markup cannot (<bdi>): a message, an attribute.
    Written right to left, "Signed off by <name>, 07 Dec" would otherwise carry the date into
    the name's direction."""
    return f"\u2068{text}\u2069"


@bp.app_template_filter("compact")
def compact(value) -> str:
    """A card value on one line: numbers to 4 significant digits, nested values flattened."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {compact(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(compact(v) for v in value)
    return str(value)


@bp.app_template_filter("sentence")
def sentence(text: str) -> str:
    """A card's free text ended as a sentence, so the page's next sentence does not run on."""
    text = str(text).rstrip()
    return text if not text or text[-1] in ".!?" else text + "."


bp.add_app_template_filter(results.name_of, "item_name")
bp.add_app_template_filter(results.image_count, "image_count")
bp.add_app_template_filter(results.first_of_image, "first_of_image")
bp.add_app_template_test(results.is_removed, "removed")
bp.add_app_template_filter(results.reviewer_of, "reviewer_of")
bp.add_app_template_filter(results.removal_reason, "removal_reason")
bp.add_app_template_filter(results.no_white_cell, "no_white_cell")
bp.add_app_template_filter(differential.flag_text, "flag_text")
bp.add_app_template_filter(differential.findings, "findings")


@bp.app_template_filter("batch_name")
def batch_name(stored: dict) -> str:
    """A batch as its pages name it: "Batch of N images", after its sample's ID where given."""
    title, described = results.batch_title(stored["results"]), sample.of(stored)
    return f"Sample {described.id} · {title}" if described.id else title


@bp.app_template_filter("status")
def status(result: dict) -> str | None:
    """accepted / unidentified / not_a_cell of a stored result; None for an unreadable file."""
    return differential.status_of(result)


bp.add_app_template_filter(results.iso_time, "iso_utc")


@bp.app_template_filter("clock_utc")
def clock_utc(timestamp: float, seconds: bool = False) -> str:
    """A moment for people, with its day (retention may be set to days): in UTC, and said so,
    since the server's zone is not theirs; with `seconds`, to the second (a history's changes
    come seconds apart). A time a damaged file holds instead of one: "an unknown time"."""
    if not results.is_time(timestamp):
        return "an unknown time"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime(
        f"%d %b %Y, %H:%M{':%S' if seconds else ''} UTC")


@bp.app_template_filter("fixed")
def fixed(value, digits: int = 4) -> str:
    """A card or score number with `digits` decimals; a dash where the card has none."""
    return f"{value:.{digits}f}" if _is_number(value) else "—"


@bp.app_template_filter("pct")
def pct(value, digits: int = 1) -> str:
    """A 0..1 share as a percentage with `digits` decimals; a dash where the card has none."""
    return f"{value * 100:.{digits}f} %" if _is_number(value) else "—"


@bp.app_template_filter("interval")
def interval(bounds) -> str:
    """A reference interval, as labs write it: "40–70" (percent), "2–7.5" (x 10^9/L); "0" for
    none at all (nucleated red cells in an adult)."""
    low, high = bounds
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"


@bp.app_template_filter("probability_pct")
def probability_pct(value, digits: int = 1) -> str:
    """A model's probability as a percentage with `digits` decimals, never rounded to a
    certainty it does not have: with one decimal, 99.95 % and above reads "> 99.9 %", a
    non-zero value below 0.05 % "< 0.1 %"."""
    shown = pct(value, digits)
    step = 10.0**-digits
    if shown == pct(1.0, digits):
        return f"> {100 - step:.{digits}f} %"
    if _is_number(value) and value > 0 and shown == pct(0.0, digits):
        return f"< {step:.{digits}f} %"
    return shown


@bp.app_template_global()
def decimals_apart(value, threshold, scale: float = 1.0, least: int = 1) -> int:
    """The fewest decimals (from `least`) at which `value` and `threshold`, times `scale`, print
    differently, so that a score shown beside its threshold never looks equal to it while the
    check says it is above or below (rounding keeps the order of numbers that print apart);
    `least` where they are equal or either is missing."""
    if not (_is_number(value) and _is_number(threshold)):
        return least
    for digits in range(least, 7):
        if f"{value * scale:.{digits}f}" != f"{threshold * scale:.{digits}f}":
            return digits
    return least


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@bp.get("/")
def home(errors: list[dict] | None = None, status: int = 200, chosen: str | None = None):
    """The upload form and the batches this browser uploaded (`recent`); after a refused
    upload, with its errors and the model it chose. `?model=NAME` preselects a model (the
    result page links so to another model)."""
    predictors = {name: models.get(name) for name in models.names()}
    chosen = chosen or request.args.get("model")
    formats = sorted(
        {
            s.lstrip(".").upper().replace("JPEG", "JPG").replace("TIFF", "TIF")
            for s in IMAGE_SUFFIXES
        }
    )
    length = current_app.config["MAX_CONTENT_LENGTH"]
    limit_mb = None if length is None else length / 2**20  # null: no limit
    page = render_template(
        "home.html",
        predictors=predictors,
        formats=formats,
        suffixes=",".join(sorted(IMAGE_SUFFIXES)),
        accept=file_accept(),
        limit_mb=limit_mb,
        max_files=current_app.config["MAX_FILES"],
        errors=errors or [],
        chosen=chosen if chosen in predictors else models.default_name(),
        acceptance={name: served_acceptance(p) for name, p in predictors.items()},
        recent=[{"batch": b, "expires": expires_at(b),
                 "to_review": sum(map(differential.needs_review, b["results"])),
                 "signed": signoff.of(b, count_fingerprint(b))}
                for b in recent.batches(upload_folder())],
    )
    return page, status


@bp.app_template_global()
def upload_part() -> dict[str, int | str]:
    """The most files and bytes ("" where the server sets no byte limit) one request of the
    upload form may carry, and the images a batch may hold: static/upload.js sends a selection
    beyond one request in parts of this size into one batch. The byte bound leaves room for
    the form's own fields and each file's part headers."""
    config = current_app.config
    files = config["MAX_FILES"]
    if config["MAX_FORM_PARTS"] is not None:  # the token and the model are parts too
        files = max(min(files, config["MAX_FORM_PARTS"] - 2), 1)
    length = config["MAX_CONTENT_LENGTH"]
    return {"files": files,
            "bytes": "" if length is None else max(length - 2**16 - 1024 * files, 1),
            "batch": config["MAX_BATCH_IMAGES"]}


@bp.app_template_global()
def image_url(batch_id: str, index: int, item: dict, thumbnail: bool = False) -> str:
    """Where a result's image is shown from: the stored upload, or for one white cell of a
    field holding several, the field with that cell outlined (as a thumbnail, too small to
    tell the cells apart, the cell as the model read it)."""
    if item.get("cell"):
        page = "pages.model_view_image" if thumbnail else "pages.field_image"
        return url_for(page, batch_id=batch_id, index=index)
    return url_for("pages.uploaded_image", image_id=item.get("image", ""))


bp.add_app_template_global(history.reviewer, "reviewer")
# A global, not a context variable: the reviewer form is a macro, imported without context.
bp.add_app_template_global(history.MAX_NAME_LENGTH, "REVIEWER_NAME_LENGTH")


@bp.app_template_global()
def file_accept() -> str:
    """The upload forms' `accept`: a hint to the file picker only (the server decodes files,
    whatever their names); every suffix we read, as some browsers leave TIFF out of image/*."""
    return ",".join(["image/*", *sorted(IMAGE_SUFFIXES)])


@bp.post("/upload")
def upload():
    """Classify the chosen files, keep the result for a while and show it (303 to its page)."""
    folder = upload_folder()
    name, items = classify_request(store_in=folder, known={})
    if not any("label" in r for r in items):
        return home(errors=items, status=400, chosen=name)
    items, _ = left_out_copies(items)
    stored = {"model": name, "classes": models.get(name).classes, "results": items}
    history.record(stored, history.UPLOADED, images_read(items), time.time())
    batch_id = uploads.save_batch(folder, stored)
    recent.remember(batch_id)
    return to_batch(batch_id)


def to_batch(batch_id: str):
    """After an upload or addition: 303 to the batch page; to static/upload.js, which sends a
    selection in parts and asks for JSON, the page's address, so that the messages flashed
    for the user wait for the page it opens after the last part rather than being shown to
    its request."""
    address = url_for("pages.batch", batch_id=batch_id)
    if request.accept_mimetypes.best == "application/json":
        return {"batch": address}
    return redirect(address, code=303)


def left_out_copies(items: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the results to keep, the files left out as copies of another image of the batch), the
    copies said in a message on the batch page rather than kept as results."""
    copies = [r for r in items if r.get("duplicate_of")]
    if copies:
        # Cut short: the message waits in the session cookie, which a browser drops past 4 KB.
        names = ", ".join(f"{r['file'][:40]} (the same as {r['duplicate_of'][:40]})"
                          for r in copies[:5])
        flash(COPIES_LEFT_OUT.format(count=len(copies), s="s" if len(copies) != 1 else "",
                                     verb="are" if len(copies) != 1 else "is",
                                     names=names + (", ..." if len(copies) > 5 else "")))
    return [r for r in items if not r.get("duplicate_of")], copies


@bp.post("/batch/<batch_id>/delete")
def delete(batch_id: str):
    """Delete a batch's results and stored images now, at the user's request, instead of at the
    end of the retention time; then back to the upload form, which says so."""
    try:
        stored = load_or_404(batch_id)
    except uploads.DamagedBatch:  # deleting it is all that can still be done with it
        stored = None
    uploads.delete_batch(upload_folder(), batch_id)
    recent.forget(batch_id)
    if stored is None:
        flash(DELETED_DAMAGED)
        return redirect(url_for("pages.home"), code=303)
    count = results.image_count(stored["results"])
    flash(DELETED.format(images=how_many(count, "image")))
    return redirect(url_for("pages.home", model=stored.get("model")), code=303)


@bp.post("/batch/<batch_id>/<int:index>/remove")
def remove(batch_id: str, index: int):
    """Remove one image from a batch at the user's request (a film's image uploaded to the
    wrong batch, one too blurred to count): every result of the image (each cell of a field)
    leaves the counts, its stored copy is deleted, and its place in the batch keeps its name,
    when and why (`reason`, optional). Then to the batch page, which lists it as removed (303).
    A batch's last classified image is not removed (the batch is deleted instead), nor more
    images than a batch holds (MAX_BATCH_IMAGES)."""
    stored = load_or_404(batch_id)
    item_or_404(stored, index)
    try:
        reason = plain_text(request.form.get("reason", "")[:REMOVE_REASON_LENGTH + 100],
                            REMOVE_REASON_LENGTH)
    except ValueError:
        abort(400, description=REMOVE_BAD_REASON.format(limit=REMOVE_REASON_LENGTH))
    now, outcome = time.time(), {}

    def take_out(batch: dict) -> None:
        found = batch["results"]
        item = found[index]
        if results.is_removed(item):
            outcome["already"] = item
            return
        gone = results.same_image(found, index)
        if not results.classified_besides(found, gone):
            outcome["last"] = True
            return
        # Each removal leaves its place behind: without a bound, adding and removing again
        # and again would grow the batch past its size limit.
        removed = results.image_count_removed(found)
        if removed >= current_app.config["MAX_BATCH_IMAGES"]:
            outcome["too_many"] = removed
            return
        outcome.update(item=item, image=item.get("image"),
                       counted=sum(differential.counted_class(found[i]) is not None for i in gone))
        # What the image was counted as, and by whose review: its place keeps neither.
        history.record(batch, history.REMOVED, "; ".join(
            [f"{item['file']}: {reason}" if reason else item["file"],
             *(f"{results.name_of(found[i])} was {counted_state(found[i])}" for i in gone)]), now)
        for i in gone:
            found[i] = results.removed_entry(found[i], now, reason, history.reviewer())

    stored = uploads.update_batch(upload_folder(), batch_id, take_out)
    if stored is None:  # deleted between the two reads
        abort(404, description=EXPIRED.format(retention=retention()))
    if outcome.get("last"):
        abort(400, description=REMOVE_LAST)
    if "too_many" in outcome:
        abort(400, description=REMOVED_TOO_MANY.format(count=outcome["too_many"]))
    if "already" in outcome:
        flash(REMOVED_ALREADY.format(file=results.name_of(outcome["already"])), WARNING)
        return to_batch(batch_id)
    if outcome["image"]:
        uploads.delete_image(upload_folder(), outcome["image"])
    item, counted = outcome["item"], outcome["counted"]
    if "label" not in item:
        flash(REMOVED_UNREADABLE.format(file=item["file"]))
    else:  # platelets and nucleated red cells are counted beside the white cells: "cells"
        flash(REMOVED_IMAGE.format(
            file=item["file"], cells=f"{how_many(counted, 'cell')} no longer counted" if counted
            else "nothing it held was counted",
            again=" Add it again to count it." if counted else ""))
    return to_batch(batch_id)


@bp.post("/batch/<batch_id>/add")
def add(batch_id: str):
    """Classify more images with the batch's model and add them to it (303 to the batch page),
    so that one differential can count more cells than one upload may hold. When none of the
    files can be read, nothing is added and the page says why (400)."""
    stored = load_or_404(batch_id)
    if served_model(stored["model"]) is None:
        abort(400, description=BATCH_MODEL_GONE.format(name=stored["model"]))
    # Images, not results: a field read cell by cell is one image; copies of the batch's own
    # images are left out, so they take no room. Checked before the images are decoded, to
    # refuse at once, and again as they are added: another addition may have filled the batch
    # meanwhile.
    limit = current_app.config["MAX_BATCH_IMAGES"]
    known = {r["sha256"]: r.get("file", "") for r in stored["results"] if r.get("sha256")}
    sent = new_files(uploaded_files(request.files.getlist("file")), known)
    if results.image_count(stored["results"]) + sent > limit:
        batch_full(stored, limit)
    folder = upload_folder()
    _, items = classify_request(store_in=folder, model=stored["model"], known=known)
    items, copies = left_out_copies(items)
    if copies and not items:  # all in the batch already: nothing wrong, nothing to add
        return to_batch(batch_id)
    if not any("label" in r for r in items):
        return batch(batch_id, add_errors=items + copies, status=400)
    try:
        added_to = uploads.add_to_batch(
            folder, batch_id, items, lambda held: results.image_count(held) <= limit, note_added)
    except uploads.BatchFull:
        batch_full(load_or_404(batch_id), limit)
    if added_to is None:  # deleted meanwhile
        abort(404, description=EXPIRED.format(retention=retention()))
    recent.remember(batch_id)  # images this browser uploaded, though a colleague began it
    failed = sum("label" not in r for r in items)
    added = results.image_count([r for r in items if "label" in r])
    flash(ADDED.format(images=how_many(added, "image"),
                       failed=f" ({failed} could not be read: listed below)" if failed else ""))
    return to_batch(batch_id)


def removed_meanwhile(batch_id: str, index: int, item: dict):
    """A review sent for an image removed from the batch since its page was opened: nothing
    saved, and its page, which says so (409)."""
    flash(REVIEW_REMOVED.format(file=results.name_of(item)), WARNING)
    return single(batch_id, index, status=409)


def note_added(batch: dict, fresh: list[dict]) -> None:
    """Record an addition in the batch's history (under its lock), where it added an image:
    files that could not be read, alone, change no count (another addition may have added the
    others meanwhile)."""
    if any("label" in r for r in fresh):
        history.record(batch, history.ADDED, images_read(fresh), time.time())


def images_read(items: list[dict]) -> str:
    """An upload's or addition's images in words, with their files' names (the first
    HISTORY_FILES), for the batch's history."""
    def listed(names: list[str]) -> str:
        return ", ".join(names[:HISTORY_FILES]) + (
            f" and {len(names) - HISTORY_FILES} more" if len(names) > HISTORY_FILES else "")

    read = [r["file"] for r in items if "label" in r and results.first_of_image(r)]
    failed = [r["file"] for r in items if "label" not in r]
    return "; ".join([f"{how_many(len(read), 'image')}: {listed(read)}",
                      *([f"could not be read: {listed(failed)}"] if failed else [])])


def batch_full(stored: dict, limit: int) -> NoReturn:
    """A 400 saying how many images the batch holds and how many more it takes."""
    count = results.image_count(stored["results"])
    abort(400, description=BATCH_FULL.format(limit=limit, count=count,
                                             room=max(limit - count, 0)))


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
        abort(404, description=EXPIRED.format(retention=retention()))
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
        return redirect(url_for("pages.review_all", batch_id=batch_id, **came_from), code=303)
    if verdict and len(stored["results"]) > 1:
        following = results.next_to_review(stored["results"], index)
        if following is not None:
            # `saved`: the next page leads back to this cell, to change a verdict mis-keyed.
            return redirect(url_for("pages.single", batch_id=batch_id, index=following,
                                    saved=index), code=303)
        return redirect(url_for("pages.batch", batch_id=batch_id), code=303)
    return redirect(url_for("pages.single", batch_id=batch_id, index=index,
                            **(came_from or {})), code=303)


def list_came_from(stored: dict) -> dict | None:
    """The review list (and its page) a cell page was opened from, as `?show=` and `?start=`
    name it: {"show": ..., "start": ...} for url_for, or None where it was not opened from one."""
    show = request.args.get("show")
    if show is None or show != review_list(stored):
        return None
    start = whole_number(request.args.get("start", ""))
    return {"show": show, "start": start or None}  # "": the list of cells to review


def check_verdict(verdict: str, stored: dict) -> None:
    """A 400 naming the choices unless `verdict` is one of the batch's classes,
    OTHER_WHITE_CELL or EXCLUDED."""
    choices = [*stored["classes"], OTHER_WHITE_CELL, differential.EXCLUDED]
    if verdict not in choices:
        abort(400, description=REVIEW_UNKNOWN.format(choices=", ".join(choices)))


# The review page's lists (`?show=`): which results each holds. The default and
# "no-white-cell" leave out reviewed results, so they shrink as reviews are saved; "all" does
# not, so it pages. Beside them, one list per class (`?show=<class>`, and EXCLUDED): the cells
# counted as that class now, for verifying the count class by class, as a technologist verifies
# an analyzer's pre-classified cells (class_list).
REVIEW_LISTS: dict[str, Callable[[dict], bool]] = {
    "": differential.needs_review,
    "all": lambda r: differential.status_of(r) is not None,
    "no-white-cell": lambda r: results.no_white_cell(r) and differential.verdict_of(r) is None,
}


def review_list(stored: dict) -> str:
    """The review page's list named by the request (`?show=`); unknown names: the default."""
    show = request.args.get("show", "")
    return show if show in REVIEW_LISTS or show in class_lists(stored) else ""


def class_lists(stored: dict) -> list[str]:
    """The review page's lists of one class each: the batch's classes, then the white cells of
    types the model does not name (OTHER_WHITE_CELL), then EXCLUDED."""
    return [*stored["classes"], OTHER_WHITE_CELL, differential.EXCLUDED]


def in_list(show: str) -> Callable[[dict], bool]:
    """Whether a result belongs to the review page's list `show`: a class list holds the cells
    counted as that class now (accepted by the model and not reviewed, or given it on review,
    OTHER_WHITE_CELL included), the EXCLUDED list those excluded on review."""
    if show in REVIEW_LISTS:
        return REVIEW_LISTS[show]
    return lambda r: (differential.counted_class(r) or differential.verdict_of(r)) == show


def to_confirm(result: dict) -> bool:
    """A cell counted as the model accepted it, which no reviewer has looked at yet."""
    return differential.status_of(result) == ACCEPTED and differential.verdict_of(result) is None


def listed_in(show: str, found: list[dict]) -> list[int]:
    """The indices of the list `show`, in the order the review page shows them. Every cell:
    least sure first (results.least_sure_first); a class list: the cells still to confirm
    first, least sure first, so that once a page of them is confirmed the next takes its place;
    the other lists: in upload order."""
    if show == "all":
        return results.least_sure_first(found)
    listed = [i for i, r in enumerate(found) if in_list(show)(r)]
    if show in REVIEW_LISTS:
        return listed
    return sorted(listed, key=lambda i: (not to_confirm(found[i]), found[i]["confidence"], i))


@dataclass(frozen=True)
class ClassTab:
    """One class list as the review page's tabs name it."""
    show: str
    cells: int
    unconfirmed: int  # of them, accepted cells no reviewer has looked at yet


def class_tabs(stored: dict) -> list[ClassTab]:
    found = stored["results"]
    tabs = []
    for show in class_lists(stored):
        mine = [r for r in found if in_list(show)(r)]
        tabs.append(ClassTab(show, len(mine), sum(to_confirm(r) for r in mine)))
    return tabs


@bp.get("/batch/<batch_id>/review")
def review_all(batch_id: str):
    """The cells still to review, all on one page, each as the model read it, with a choice of
    class each; `?show=all`: every classified result, to confirm accepted ones too;
    `?show=no-white-cell`: the images in which no white cell was found, not yet reviewed;
    `?show=<class>`: the cells counted as that class (`?show=excluded`: those excluded), to
    correct the odd ones out and confirm the rest."""
    stored = load_or_404(batch_id)
    show = review_list(stored)
    listed = listed_in(show, stored["results"])
    start = min(whole_number(request.args.get("start", "")) or 0, max(len(listed) - 1, 0))
    shown = listed[start:start + REVIEW_PAGE_CELLS]
    return _no_store(render_template(
        "review.html", batch=stored, listed=len(listed), start=start,
        cells=[(i, stored["results"][i]) for i in shown],
        page_cells=REVIEW_PAGE_CELLS, show=show, tabs=class_tabs(stored),
        to_review=sum(differential.needs_review(r) for r in stored["results"]),
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
    return figures if all(_is_number(v) for v in figures.values()) else None


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
        return redirect(url_for("pages.review_all", batch_id=batch_id, **show), code=303)
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
        abort(404, description=EXPIRED.format(retention=retention()))
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
            return redirect(url_for("pages.review_all", batch_id=batch_id, **show), code=303)
        return redirect(url_for("pages.batch", batch_id=batch_id), code=303)
    # A class list. Reviews saved alone: the same list and page while it holds cells. After
    # confirming: the same list while it holds cells to confirm, then the next class that does.
    if not confirm and any(in_list(listing)(r) for r in found):
        return redirect(url_for("pages.review_all", batch_id=batch_id, **show), code=303)
    names = class_lists(stored)
    following = names[names.index(listing):] + names[:names.index(listing)]
    pending = next((c for c in following if any(to_confirm(r) and in_list(c)(r) for r in found)),
                   None)
    if pending is not None:
        return redirect(url_for("pages.review_all", batch_id=batch_id, show=pending), code=303)
    return redirect(url_for("pages.batch", batch_id=batch_id), code=303)


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


def just_saved(stored: dict, index: int) -> int | None:
    """The index `?saved=` names, where it is another result of the batch with a verdict."""
    saved = whole_number(request.args.get("saved", ""))
    if saved is None or saved == index or saved >= len(stored["results"]):
        return None
    return saved if differential.verdict_of(stored["results"][saved]) is not None else None


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


@bp.get("/batch/<batch_id>/<int:index>/view.jpg")
def model_view_image(batch_id: str, index: int):
    """One result's image as the model read it (`field_view.model_view`): the square round its
    nucleus for a model that crops, else the whole stored image."""
    stored = load_or_404(batch_id)
    item = image_item_or_404(stored, index)
    predictor = served_model(stored["model"])
    fraction = predictor.crop_fraction if predictor else None
    return drawn_from_stored(item, "image/jpeg", lambda path: field_view.model_view(
        path, fraction, item.get("cell")))


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
    if differential.verdict_of(result) is not None:
        before = review_state(result)
    else:
        before = (f"the model's {display_name(result['label'])}, "
                  f"{result['status'].replace('_', ' ')}")
    now = verdict_text(verdict) if verdict else "review cleared"
    if confirmed:
        now = f"{now}, confirmed with the rest of its class list"
    return f"{results.name_of(result)}: {now} (was {before})"


def counted_state(result: dict) -> str:
    """How the differential counts a result now, and on whose word, in words (the history of a
    removal): "counted as X, reviewed by Y", "counted as X as the model accepted it", "not
    counted (...)"."""
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
    return f"not counted (the model's {result['status'].replace('_', ' ')})"


def review_state(result: dict) -> str:
    """Where a result's review stands, in words: "reviewed as <class>", "not reviewed", or
    "removed from the batch"."""
    if results.is_removed(result):
        return "removed from the batch"
    verdict = differential.verdict_of(result)
    return f"reviewed as {verdict_text(verdict)}" if verdict else "not reviewed"


@bp.app_template_filter("verdict")
def verdict_text(verdict: str) -> str:
    """A reviewer's verdict in words: the class's display name, or what excluding means."""
    if verdict == differential.EXCLUDED:
        return "excluded from the counts"
    return display_name(verdict)


@bp.app_template_global()
def left_out_text(reason: str) -> str:
    """Why an image is not in the differential, in words (differential.LEFT_OUT_REASONS)."""
    return "Excluded on review" if reason == differential.EXCLUDED else STATUS_TEXT[reason]


def count_fingerprint(stored: dict) -> str:
    """The batch's count as it stands, as a sign-off vouches for it (`signoff.fingerprint`),
    with the reference intervals its flags are read against (REFERENCE_INTERVALS,
    ABSOLUTE_REFERENCE_INTERVALS)."""
    config = current_app.config
    return signoff.fingerprint(stored, [config["REFERENCE_INTERVALS"],
                                        config["ABSOLUTE_REFERENCE_INTERVALS"]])


def count_context(stored: dict) -> dict:
    """What the batch page and its printed report both show of a batch's count: the
    differential, the statuses, reviews, sample, manual count, sign-off and checks."""
    described = sample.of(stored)
    counted = sample_differential(stored, described)
    counts = results.status_counts(stored["results"])
    predictor = served_model(stored["model"])
    reference = predictor.magnification if predictor else None
    count = count_fingerprint(stored)
    return dict(
        batch=stored,
        differential=counted,
        counts=counts,
        classified=sum(counts.values()),
        # The images removed, each (file, reason), in the order they were uploaded.
        removed_images=[(r["file"], results.removal_reason(r)) for r in stored["results"]
                        if results.is_removed(r) and results.first_of_image(r)],
        unreadable=sum("error" in r for r in stored["results"]),
        left_out=differential.left_out_counts(stored["results"]),
        reviews=results.review_summary(stored["results"]),
        # Who reviewed the counted cells, by the names their browsers gave: on the report.
        reviewers=sorted({results.reviewer_of(r) for r in stored["results"]
                          if differential.counted_label(r) and differential.verdict_of(r)}),
        # The class lists holding accepted cells no one has confirmed yet.
        to_confirm=[t for t in class_tabs(stored) if t.unconfirmed],
        # Counted images in which no white cell was found, that no one has reviewed.
        no_white_cells_counted=sum(map(results.counted_unseen, stored["results"])),
        review_bias=predictor and differential.review_bias(
            predictor.card, predictor.trust.confidence_threshold),
        flag_errors=flag_errors(predictor),
        lab_intervals=current_app.config["REFERENCE_INTERVALS"] != catalog_intervals(),
        lab_absolute_intervals=(current_app.config["ABSOLUTE_REFERENCE_INTERVALS"]
                                != catalog_intervals(absolute=True)),
        sample=described,
        comparison=manual_comparison(stored, counted),
        signed=signoff.of(stored, count),
        signed_count=count,
        few_cells=differential.DIFFERENTIAL_CELLS,
        magnification=results.magnification_check(stored["results"], reference),
        magnification_range=reference.batch_range if reference else None,
        predictor=predictor,
    )


@bp.get("/batch/<batch_id>")
def batch(batch_id: str, add_errors: list[dict] | None = None, status: int = 200,
          sample_form: TypedForm | None = None, manual_form: TypedForm | None = None,
          signoff_form: TypedForm | None = None):
    """The batch page (a batch of one image shows that image's page); after a refused
    addition, with its errors, and after a refused sample, manual-count or sign-off form,
    with it as typed."""
    stored = load_or_404(batch_id)
    if len(stored["results"]) == 1:
        return single(batch_id, 0, add_errors, status)
    shown = count_context(stored)
    # Results the differential leaves out, with their position for the link to their page.
    not_counted = [
        (i, r, reason) for i, r in enumerate(stored["results"])
        if (reason := differential.left_out_reason(r)) is not None
    ]
    return _no_store(
        render_template(
            "batch.html",
            **shown,
            not_counted=not_counted,
            fields_left_out=results.fields_left_out(stored["results"]),
            # (index, counted in the differential) of each image with no white cell found
            # that no one has reviewed yet.
            no_white_cells=[(i, differential.counted_class(r) is not None)
                            for i, r in enumerate(stored["results"])
                            if REVIEW_LISTS["no-white-cell"](r)],
            agreement=results.agreement(stored["results"], stored["classes"]),
            first_to_review=results.next_to_review(stored["results"], -1),
            sample_form=sample_form or sample.form_of(shown["sample"]),
            sample_id_length=sample.MAX_ID_LENGTH,
            manual_form=manual_form or manual.form_of(manual.of(stored)),
            manual_fields=manual_fields(stored["classes"]),
            signoff_form=signoff_form or signoff.form_of(shown["signed"]),
            signoff_refusal=signoff.refusal(stored),
            signed_by_length=signoff.MAX_NAME_LENGTH,
            comment_length=signoff.MAX_COMMENT_LENGTH,
            # Only a model that names nucleated red cells can correct a count that includes them.
            nucleated_red_cells=any(is_nucleated_red_cell(c) for c in stored["classes"]),
            acceptance=served_acceptance(shown["predictor"]),
            expires=expires_at(stored),
            add_errors=add_errors or [],
            others={n: models.get(n) for n in models.names() if n != stored["model"]},
            history_count=len(history.of(stored)),
        ),
        status,
    )


@bp.get("/batch/<batch_id>/report")
def report(batch_id: str):
    """The batch's count as a report to print on one sheet: the sample, the differential with
    its ranges, intervals and flags, the cells left out, the manual count, the checks and the
    sign-off (a blank line to sign by hand where none stands). A batch of one image has no
    differential: its page."""
    stored = load_or_404(batch_id)
    if len(stored["results"]) == 1:
        return redirect(url_for("pages.single", batch_id=batch_id, index=0), code=303)
    return _no_store(render_template("report.html", **count_context(stored),
                                     lab_name=current_app.config["LAB_NAME"],
                                     expires=expires_at(stored)))


@bp.get("/batch/<batch_id>/<int:index>")
def single(batch_id: str, index: int, add_errors: list[dict] | None = None, status: int = 200):
    stored = load_or_404(batch_id)
    item = item_or_404(stored, index)
    of_image = results.same_image(stored["results"], index)  # each cell of its field
    held = [i for i, r in enumerate(stored["results"]) if not results.is_removed(r)]
    ranked = sorted(item.get("probabilities", {}).items(), key=lambda kv: -kv[1])
    candidates = item.get("candidates") or []  # none for a file that could not be read
    predictor = served_model(stored["model"])
    # The class the result counts as: the reviewer's where there is one.
    counted_as = differential.counted_class(item) if "label" in item else None
    # Not for an image unlike the training data: evidence for a class it is not.
    show_heat_map = bool(item.get("image")) and predictor is not None and heatmap.available(
        predictor
    ) and differential.status_of(item) != NOT_A_CELL
    return _no_store(
        render_template(
            "result.html",
            batch=stored,
            sample=sample.of(stored),
            item=item,
            index=index,
            status=differential.status_of(item),
            scores=item.get("scores") or {},
            ranked=ranked,
            candidates=candidates,
            predictor=predictor,
            heat_map_url=url_for("pages.heat_map", batch_id=batch_id, index=index)
            if show_heat_map
            else None,
            cell=CELL_TYPES.get(counted_as or ""),
            lab_reference=lab_reference(counted_as),
            # What tells the two candidates apart by eye, for the person about to review it.
            candidate_cells=[CELL_TYPES[c["label"]] for c in candidates
                             if c.get("label") in CELL_TYPES],
            verdict=differential.verdict_of(item),
            reviewed_at=at if results.is_time(at := (item.get("review") or {}).get("at")) else None,
            next_to_review=results.next_to_review(stored["results"], index),
            to_review=results.review_summary(stored["results"]).to_review,
            # The cell whose review was just saved before this page opened (`?saved=`).
            just_saved=just_saved(stored, index),
            # A review changes a signed count: the page says so before a key saves one.
            signed=signoff.of(stored, count_fingerprint(stored)),
            # The review list this page was opened from (`?show=`), which saving goes back to.
            came_from=list_came_from(stored),
            calibration=measured_calibration(predictor) if predictor else None,
            magnification=predictor.magnification if predictor else None,
            # An image of a batch is judged with its batch too: one image's measure is rough.
            batch_magnification=results.magnification_check(
                stored["results"], predictor.magnification if predictor else None),
            rough_ece=ROUGH_ECE,
            others={n: models.get(n) for n in models.names() if n != stored["model"]},
            neighbours=neighbours(held, index),
            # Which result this is of those the batch holds ("3 of 12").
            place=(sum(i <= index for i in held), len(held)),
            expires=expires_at(stored),
            add_errors=add_errors or [],
            remove_reason_length=REMOVE_REASON_LENGTH,
            # The cells of the image (each of a field's) that the differential counts now.
            image_counted=sum(differential.counted_class(stored["results"][i]) is not None
                              for i in of_image),
            # Only while another classified result would be left: else the batch goes whole.
            removable=(not results.is_removed(item)
                       and results.classified_besides(stored["results"], of_image)),
        ),
        status,
    )


def neighbours(held: list[int], index: int) -> tuple[int | None, int | None]:
    """The previous and next results of the batch, of those it holds (`held`, their indices:
    removed images' places passed over)."""
    return (max((i for i in held if i < index), default=None),
            min((i for i in held if i > index), default=None))


@bp.get("/batch/<batch_id>/<int:index>/heat-map.png")
def heat_map(batch_id: str, index: int):
    """The class activation map of one stored result's label over the model's input view, made
    on request from the stored upload by the model that classified it (never on the upload path,
    so plain predictions pay nothing for it)."""
    stored = load_or_404(batch_id)
    item = image_item_or_404(stored, index)
    if "label" not in item or not item.get("image"):
        abort(404, description="This file could not be read, so it has no heat map.")
    if differential.status_of(item) == NOT_A_CELL:  # the result page offers none either
        abort(404, description=NOT_A_CELL_NO_MAP.format(name=stored["model"]))
    predictor = served_model(stored["model"])
    if predictor is None:
        abort(404, description=MODEL_GONE.format(name=stored["model"]))
    if not heatmap.available(predictor):
        abort(404, description=NO_HEAT_MAP.format(name=stored["model"]))
    if item["label"] not in predictor.classes:  # the model was retrained under the same name
        abort(404, description=CLASS_GONE.format(name=stored["model"], label=item["label"]))
    # The stored label, not the stored copy's top class: the page captions the map with it.
    return drawn_from_stored(item, "image/png", lambda path: heatmap.stored_overlay(
        predictor, path, item["label"], item.get("cell")))


@bp.get("/batch/<batch_id>/<int:index>/field.jpg")
def field_image(batch_id: str, index: int):
    """One white cell of a field holding several: the stored field with the square the model
    read for it outlined, and the field's other cells."""
    stored = load_or_404(batch_id)
    item = image_item_or_404(stored, index)
    if not item.get("cell") or not item.get("image"):
        abort(404, description=NOT_A_FIELD_CELL)
    others = [r["cell"] for r in stored["results"]
              if r is not item and r.get("image") == item["image"] and r.get("cell")]
    return drawn_from_stored(item, "image/jpeg",
                             lambda path: field_view.outlined(path, item["cell"], others))


def drawn_from_stored(item: dict, mimetype: str, draw: Callable[[Path], bytes]) -> Response:
    """A picture `draw` makes from a result's stored upload, not to be cached; 404 where the
    stored copy is gone, before or while it is read (purged or damaged meanwhile)."""
    path = uploads.image_path(upload_folder(), item.get("image") or "")
    if path is None:
        abort(404, description=IMAGE_EXPIRED.format(retention=retention()))
    try:
        picture = draw(path)
    except (ImageError, FileNotFoundError):
        abort(404, description=IMAGE_EXPIRED.format(retention=retention()))
    return _no_store(Response(picture, mimetype=mimetype))


@bp.get("/batch/<batch_id>.csv")
def batch_csv(batch_id: str):
    stored = load_or_404(batch_id)
    return csv_download(results.to_csv(stored["results"], stored["classes"]), stored)


def csv_download(table: str, stored: dict, suffix: str = "") -> Response:
    """A CSV file of a batch to save (`download`)."""
    return download(table, "text/csv", stored, f"{suffix}.csv")


def download(content: str | bytes, mimetype: str, stored: dict, ending: str) -> Response:
    """A file of a batch to save, named after its sample where it has an ID (so a lab's
    downloads say whose film they hold) and its batch id, then `ending`."""
    name = "-".join(filter(None, ["hematovision", results.file_part(sample.of(stored).id),
                                  stored["id"][:8]]))
    response = Response(content, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}{ending}"'
    return _no_store(response)


@bp.get("/batch/<batch_id>/history")
def history_page(batch_id: str):
    """Who changed the batch, when and how (hematovision.web.history), oldest first."""
    stored = load_or_404(batch_id)
    return _no_store(render_template("history.html", batch=stored, events=history.of(stored),
                                     dropped=history.dropped(stored), kinds=history.KINDS,
                                     max_events=history.MAX_EVENTS,
                                     sample=sample.of(stored), expires=expires_at(stored)))


@bp.get("/batch/<batch_id>/history.csv")
def history_csv(batch_id: str):
    stored = load_or_404(batch_id)
    return csv_download(history.to_csv(stored), stored, "-history")


@bp.post("/reviewer")
def set_reviewer():
    """Record this browser's later reviews and changes under the name given (`reviewer`;
    empty: none), then back to the page the form was on (`next`, an address on this site)."""
    back = request.form.get("next", "")
    if not LOCAL_ADDRESS.fullmatch(back):  # never another site
        back = url_for("pages.home")
    try:
        name = history.read_name(request.form)
    except ValueError:  # the error page, with the way back to the page the form was on
        return render_template("error.html", code=400, title=ERROR_TITLES[400], back=back,
                               message=history.BAD_NAME.format(limit=history.MAX_NAME_LENGTH)
                               ), 400
    history.remember(name)
    flash(REVIEWER_SET.format(name=isolated(name)) if name else REVIEWER_CLEARED)
    return redirect(back, code=303)


@bp.get("/batch/<batch_id>/differential.csv")
def differential_csv(batch_id: str):
    """The batch's differential as the batch page counts it (given the sample's total
    white-cell count, per litre too)."""
    stored = load_or_404(batch_id)
    described = sample.of(stored)
    counted = sample_differential(stored, described)
    return csv_download(results.differential_csv(counted, described.id,
                                                 manual_comparison(stored, counted),
                                                 signoff.of(stored, count_fingerprint(stored))),
                        stored, "-differential")


def manual_comparison(stored: dict, counted: differential.Differential) -> Comparison | None:
    """A stored batch's differential against the manual count stored with it, if any."""
    by_hand = manual.of(stored)
    return by_hand and compare(counted, by_hand.counts, by_hand.other, by_hand.beside)


def sample_differential(stored: dict, described: sample.Sample) -> differential.Differential:
    """A stored batch's differential as served, with its sample's white-cell count."""
    return results.served_differential(stored["results"], stored["classes"], current_app.config,
                                       described.white_cells_per_litre,
                                       described.includes_nucleated_red_cells)


@bp.post("/batch/<batch_id>/sample")
def save_sample(batch_id: str):
    """Record the sample a batch counts (its ID and the film's total white-cell count; empty
    fields clear them), then back to the batch page (303); a field that is not one gets the
    page with the form as typed and a message (400), and what was stored stays."""
    stored = load_or_404(batch_id)
    if len(stored["results"]) == 1:
        abort(400, description=SAMPLE_ONE_IMAGE)
    described, form = sample.read_form(request.form)
    if described is None:
        return batch(batch_id, status=400, sample_form=form)
    def store(b: dict) -> None:
        before = sample.of(b)
        if before != described:  # saved unchanged: nothing to record
            now = time.time()
            sample.store(b, described, now)
            history.record(b, history.SAMPLE, f"{sample.in_words(described)}" + (
                f" (was {sample.in_words(before)})" if before != sample.Sample() else ""), now)

    if uploads.update_batch(upload_folder(), batch_id, store) is None:
        abort(404, description=EXPIRED.format(retention=retention()))
    flash(SAMPLE_SAVED if described != sample.Sample() else SAMPLE_CLEARED)
    return redirect(url_for("pages.batch", batch_id=batch_id), code=303)


@bp.post("/batch/<batch_id>/signoff")
def sign_off(batch_id: str):
    """Sign the batch's count off as checked (`signed_by`: the technologist's name or
    initials), or withdraw its sign-off (`withdraw`), then back to the batch page (303). A
    count with unidentified cells still to review, or with no white cell counted, is not
    signed (400, the page with the form and why); neither is a name that is not plain text."""
    stored = load_or_404(batch_id)
    if len(stored["results"]) == 1:
        abort(400, description=SIGN_OFF_ONE_IMAGE)
    if request.form.get(signoff.WITHDRAW_FIELD):
        withdrawn = []  # whose sign-off, as stored when it was withdrawn (under the lock)

        def withdraw(b: dict) -> None:
            signed = signoff.of(b, count_fingerprint(b))
            if signed:
                withdrawn.append(signed.by)
                history.record(b, history.WITHDRAWN, f"signed off by {signed.by}", time.time())
            signoff.withdraw(b)

        if uploads.update_batch(upload_folder(), batch_id, withdraw) is None:
            abort(404, description=EXPIRED.format(retention=retention()))
        if withdrawn:
            flash(SIGN_OFF_WITHDRAWN.format(name=isolated(withdrawn[0])))
        return redirect(url_for("pages.batch", batch_id=batch_id), code=303)
    signer, form = signoff.read_form(request.form)
    if signer is None:
        return batch(batch_id, status=400, signoff_form=form)
    name, comment = signer
    now, refused, status = time.time(), None, 400

    def record(found: dict) -> None:
        nonlocal refused, status
        # Judged under the batch's lock: a change made meanwhile in another tab counts, so the
        # count is the one the signer's page showed (its fingerprint, in the form).
        count = count_fingerprint(found)
        if request.form.get(signoff.SHOWN_FIELD, "") != count:
            refused, status = signoff.CHANGED_MEANWHILE, 409
        else:
            refused = signoff.refusal(found)
        if refused is None:
            signoff.sign(found, name, comment, now, count)
            browser, signed = history.reviewer(), found["signoff"]
            history.record(found, history.SIGNED, " ".join(
                [f"{how_many(signed['white_cells'], 'white cell').capitalize()} counted, "
                 f"{signed['reviewed']} of them reviewed.",
                 f"Comment: \u201c{comment}\u201d." if comment else "No comment.",
                 *([f"From a browser recording changes as {browser}."]
                   if browser and browser != name else [])]), now, by=name)

    if uploads.update_batch(upload_folder(), batch_id, record) is None:
        abort(404, description=EXPIRED.format(retention=retention()))
    if refused is not None:
        return batch(batch_id, status=status, signoff_form=TypedForm(form.typed, {"": refused}))
    flash(SIGNED_OFF.format(name=isolated(name)))
    return redirect(url_for("pages.batch", batch_id=batch_id), code=303)


@bp.post("/batch/<batch_id>/manual")
def save_manual(batch_id: str):
    """Record a manual count of the batch's film, to compare its differential with (every
    field empty clears it), then back to the batch page at the comparison (303); a field that
    is not a count gets the page with the form as typed and a message (400), and what was
    stored stays."""
    stored = load_or_404(batch_id)
    if len(stored["results"]) == 1:
        abort(400, description=MANUAL_ONE_IMAGE)
    counted, form = manual.read_form(request.form, stored["classes"])
    if counted is None:
        return batch(batch_id, status=400, manual_form=form)

    def store(b: dict) -> None:
        if manual.of(b) != (counted if counted.total else None):  # unchanged: nothing to record
            now = time.time()
            history.record(b, history.MANUAL, manual_change(manual.of(b), counted), now)
            manual.store(b, counted, now)

    if uploads.update_batch(upload_folder(), batch_id, store) is None:
        abort(404, description=EXPIRED.format(retention=retention()))
    flash(MANUAL_SAVED.format(cells=how_many(counted.total, "white cell")) if counted.total
          else MANUAL_CLEARED)
    return redirect(url_for("pages.batch", batch_id=batch_id, _anchor="manual-title"), code=303)


def manual_change(before: manual.ManualCount | None, counted: manual.ManualCount) -> str:
    """A manual count about to be saved, in words, with what it was before, for the batch's
    history."""
    def in_words(count: manual.ManualCount | None) -> str:
        if count is None or not count.total:
            return "none"
        cells = [f"{display_name(c)} {n}" for c, n in count.counts.items()]
        return (f"{how_many(count.total, 'white cell')}: {', '.join(cells)}, other {count.other}"
                + "".join(f"; {display_name(c)} {n} beside them"
                          for c, n in count.beside.items()))

    now = in_words(counted) if counted.total else "cleared"
    return f"{now} (was {in_words(before)})" if before is not None else now


def manual_fields(classes: list[str]) -> list[tuple[str, str]]:
    """The manual-count form's fields with their labels: the model's white-cell classes, the
    white cells of classes it does not name, then its nucleated red-cell classes."""
    def label(name: str) -> str:
        found = name[len(manual.FIELD_PREFIX):]
        return "Other white cells" if found == manual.OTHER else display_name(found)

    return [(name, label(name)) for name in manual.field_names(classes)]


@bp.get("/batch/<batch_id>/reviewed.zip")
def reviewed_zip(batch_id: str):
    """The batch's reviewed cells as a training folder (results.reviewed_archive)."""
    stored = load_or_404(batch_id)
    exported = (results.review_summary(stored["results"]).labelled
                - results.fields_left_out(stored["results"]))
    if not exported:
        abort(404, description=NOTHING_REVIEWED)
    folder = upload_folder()
    archive = results.reviewed_archive(stored, lambda image: uploads.image_path(folder, image),
                                       sample.source_group(stored))
    return download(archive, "application/zip", stored, "-reviewed.zip")


@bp.get("/uploads/<image_id>.jpg")
def uploaded_image(image_id: str):
    if uploads.image_path(upload_folder(), image_id) is None:
        abort(404, description=IMAGE_EXPIRED.format(retention=retention()))
    return _no_store(send_from_directory(upload_folder(), f"{image_id}.jpg", mimetype="image/jpeg"))


@bp.get("/models")
def model_list():
    predictors = {name: models.get(name) for name in models.names()}
    return render_template("models.html", predictors=predictors)


@bp.get("/models/<name>")
def model_page(name: str):
    predictor = served_model(name)
    if predictor is None:
        abort(404, description=models.unknown_model_message(name))
    card = predictor.card
    images = models.images(name)
    metrics = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    evaluations = recorded_evaluations(card)
    calibrated = {
        k: v for k, v in evaluations.items()
        if isinstance(v.get("calibration"), dict) or isinstance(v.get("trust"), dict)
    }
    trust = card.get("trust") if isinstance(card.get("trust"), dict) else {}
    unfamiliar = metrics.get("unfamiliar") if isinstance(metrics.get("unfamiliar"), dict) else {}
    unfamiliar_sets = [s for s in unfamiliar.get("sets") or [] if isinstance(s, dict)]
    robustness = metrics.get("robustness") if isinstance(metrics.get("robustness"), dict) else {}
    # Reliability diagrams and coverage plots go with the calibration table, the other images
    # under Figures.
    reliability = [f for f in models.trust_images(images) if trust or calibrated]
    training = card.get("training")
    training = training if isinstance(training, dict) else {}
    return render_template(
        "model.html",
        name=name,
        predictor=predictor,
        changed_on_disk=models.changed_on_disk(name),
        card=card,
        evaluations=evaluations,
        trust=trust,
        calibrated=calibrated,
        operating_points=operating_points(trust, calibrated),
        summary={"evaluation": _largest({k: m for k, m in evaluations.items()
                                         if _is_number(m.get("accuracy"))})},
        acceptance=served_acceptance(predictor),
        calibration=measured_calibration(predictor),
        unfamiliar_sets=unfamiliar_sets,
        robustness=robustness if isinstance(robustness.get("perturbations"), list) else None,
        differential=differential.recorded_figures(metrics),
        flags=_flags_entry(metrics),
        review_order=_review_order_entry(metrics),
        magnification=_magnification_entry(card, predictor),
        fields=_fields_entry(predictor),
        reliability=[(f, models.caption(f)) for f in reliability],
        images=[(f, models.caption(f)) for f in images if f not in reliability],
        training_scalars={k: v for k, v in training.items() if not isinstance(v, dict)},
        training_sections={k: v for k, v in training.items() if isinstance(v, dict)},
    )


def _fields_entry(predictor: Predictor) -> dict | None:
    """For a model that crops to the nucleus (and so reads a field holding several white cells
    cell by cell): the figures of `training.fields_check` where its folder has them."""
    if predictor.crop_fraction is None:
        return None
    path = predictor.model_dir / FIELDS_CHECK_FILE
    try:
        check = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):  # a damaged file leaves the figures out, not the page
        check = None
    usable = isinstance(check, dict) and {"finding", "reading"} <= set(check)
    return {"check": check if usable else None}


def _flags_entry(metrics: dict) -> dict | None:
    """The card's reference-interval flag figures (`training.flags --record`), where well
    formed."""
    entry = metrics.get(FLAGS)
    scenarios = entry.get("scenarios") if isinstance(entry, dict) else None
    if not isinstance(scenarios, dict) or not scenarios or not all(
            isinstance(s, dict) and isinstance(s.get("ways"), dict) for s in scenarios.values()):
        return None
    return entry


def _review_order_entry(metrics: dict) -> dict | None:
    """The card's review-order figures (`training.review_order --record`), where well formed."""
    entry = metrics.get(REVIEW_ORDER)
    rows = entry.get("fractions") if isinstance(entry, dict) else None
    if not isinstance(rows, list) or not rows or not all(
            isinstance(r, dict) and isinstance(r.get("by_class"), dict) for r in rows):
        return None
    return entry


def lab_reference(name: str | None) -> list[str]:
    """The server's own reference intervals of class `name` where a lab set them apart from
    the catalog's (whose text the cell description gives), as sentences' parts."""
    found = []
    for absolute, key in SETTINGS.items():
        own = current_app.config[key].get(name)
        if own is not None and own != catalog_intervals(absolute).get(name):
            found.append(f"{interval(own)} {UNITS[absolute]}")
    return found


def flag_errors(predictor: Predictor | None) -> dict | None:
    """How often a share was flagged wrongly on normal adult films drawn from the model's test
    images (`training.flags --record`), counted from the accepted cells alone and with the
    unidentified cells reviewed: {"cells", "accepted_only", "reviewed"} (fractions of films);
    None where not measured, not at the confidence threshold served now, or not against the
    reference intervals served now (a lab's own)."""
    metrics = predictor.card.get("metrics") if predictor else None
    entry = metrics.get(FLAGS) if isinstance(metrics, dict) else None
    served = current_app.config["REFERENCE_INTERVALS"]
    try:
        if entry["confidence_threshold"] != predictor.trust.confidence_threshold or any(
                list(served.get(c, ())) != list(v) for c, v in entry["intervals"].items()):
            return None
        ways = entry["scenarios"][differential.NORMAL_FILM]["ways"]
        figures = {"cells": entry["cells"],
                   "accepted_only": ways["accepted only"]["false_flag"],
                   "reviewed": ways["unidentified reviewed"]["false_flag"]}
    except (KeyError, TypeError):
        return None
    return figures if all(_is_number(v) for v in figures.values()) else None


def _magnification_entry(card: dict, predictor: Predictor) -> dict | None:
    """The card's magnification reference and check figures, where the served model uses them."""
    entry = card.get(MAGNIFICATION)
    check = entry.get("check") if isinstance(entry, dict) else None
    if predictor.magnification is None or not isinstance(check, dict):
        return None
    return entry if isinstance(check.get("rows"), list) else None


def _largest(evaluations: dict[str, dict]) -> tuple[str, dict] | None:
    sized = [(name, m) for name, m in evaluations.items() if _is_number(m.get("n"))]
    return max(sized, key=lambda item: item[1]["n"]) if sized else None


def measured_calibration(predictor: Predictor) -> dict | None:
    """{"set", "n", "ece"}: the calibration error after calibration on the largest recorded test
    set, or None where none was measured at the temperature served now (a refitted card's old
    figures are not this calibration's)."""
    measured = _largest({k: m for k, m in recorded_evaluations(predictor.card).items()
                         if isinstance(m.get("calibration"), dict)
                         and _is_number(m["calibration"].get("ece_after"))
                         and m["calibration"].get("temperature") == predictor.trust.temperature})
    if measured is None:
        return None
    name, m = measured
    return {"set": name, "n": m["n"], "ece": m["calibration"]["ece_after"]}


def served_acceptance(predictor: Predictor | None) -> dict | None:
    """{"set", "n", "accepted_rate"}: the share of the largest recorded test set that the served
    confidence threshold accepted, or None where no test set was measured at that threshold
    (a model without a trust layer, or a server target the card has no operating point for)."""
    if predictor is None or not predictor.trust.fitted:
        return None
    trust = predictor.card.get("trust") if isinstance(predictor.card.get("trust"), dict) else {}
    evaluations = recorded_evaluations(predictor.card)
    for row in operating_points(trust, evaluations):
        if row.get("confidence_threshold") == predictor.trust.confidence_threshold:
            measured = _largest({name: evaluations[name] for name, figures
                                 in row["evaluations"].items()
                                 if _is_number(figures.get("accepted_rate"))})
            if measured is None:
                return None
            name, m = measured
            return {"set": name, "n": m["n"],
                    "accepted_rate": row["evaluations"][name]["accepted_rate"]}
    return None


def operating_points(trust: dict, evaluations: dict) -> list[dict]:
    """One row per accuracy target of the card: its threshold and accepted share on the
    held-out images it was chosen on, then on each evaluation that recorded it."""
    points = trust.get("operating_points")
    rows = []
    for point in points if isinstance(points, list) else []:
        if not (isinstance(point, dict)
                and isinstance(point.get("target_accuracy"), (int, float))):
            continue
        measured = {}
        for split, m in evaluations.items():
            recorded = m.get("operating_points")
            for figures in recorded if isinstance(recorded, list) else []:
                # Figures measured at another threshold (the card was refitted since) are not
                # this point's: left out, so the row shows dashes.
                if isinstance(figures, dict) and measured_at(figures, point):
                    measured[split] = figures
        rows.append({**point, "evaluations": measured})
    return rows


@bp.get("/models/<name>/files/<file_name>")
def model_file(name: str, file_name: str):
    """Only the PNG images of a model folder, by exact listed name; with an ETag (its bytes'
    digest), so that a browser revalidating a plot it holds gets 304 rather than the image."""
    if served_model(name) is None or (plot := models.image(name, file_name)) is None:
        abort(404)
    response = Response(plot, mimetype="image/png")
    response.set_etag(hashlib.sha256(plot).hexdigest()[:32])
    return response.make_conditional(request)


# What the API example shows for values that differ per image: it is a schema, not a result.
PER_IMAGE = "<float>"


@bp.get("/docs/api")
def api_docs():
    """The API page. Its example response takes the default model's classes and the fitted
    figures every result carries (thresholds, temperature) from that model, exactly as the API
    rounds them; per-image values are placeholders, so no number on the page is hand-typed."""
    predictor = models.get(None)
    scores = predictor.trust.scores(0.0)
    if scores["unfamiliarity"] is not None:
        scores["unfamiliarity"] = PER_IMAGE
    example_scores = [(k, v if v == PER_IMAGE else json.dumps(v)) for k, v in scores.items()]
    return render_template("api.html", example_classes=predictor.classes,
                           example_white=[c for c in predictor.classes if is_white_cell(c)],
                           example_intervals=current_app.config["REFERENCE_INTERVALS"],
                           example_scores=example_scores)


def upload_folder() -> Path:
    return Path(current_app.config["UPLOAD_FOLDER"])


def served_model(name: str) -> Predictor | None:
    """The loaded model of that exact name (`models.get` would fall back to the default)."""
    return models.get(name) if name in models.names() else None


def expires_at(stored: dict) -> float:
    """When a stored batch is deleted: its file is written at `created` (a review rewrites it
    but keeps that time) and purged `RETENTION_SECONDS` after (uploads.purge_expired)."""
    return stored.get("created", 0) + current_app.config["RETENTION_SECONDS"]


def item_or_404(stored: dict, index: int) -> dict:
    count = len(stored["results"])
    if index >= count:
        abort(404, description=f"This batch holds {how_many(count, 'image')}, "
                               f"numbered from 0 in its addresses: there is no image {index}.")
    return stored["results"][index]


def image_item_or_404(stored: dict, index: int) -> dict:
    """`item_or_404` for a picture of the result: 404 where its image was removed."""
    item = item_or_404(stored, index)
    if results.is_removed(item):
        abort(404, description=IMAGE_REMOVED.format(file=item["file"]))
    return item


def load_or_404(batch_id: str) -> dict:
    stored = uploads.load_batch(upload_folder(), batch_id)
    if stored is None:
        abort(404, description=EXPIRED.format(retention=retention()))
    return stored


def retention() -> str:
    """How long uploads and results are kept, in words ("1 hour")."""
    return human_duration(current_app.config["RETENTION_SECONDS"])


def human_duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return how_many(int(seconds // size), unit)
    return f"{seconds:g} seconds"


@bp.app_template_global()
def how_many(count: int, unit: str) -> str:
    """A count with its unit, as the messages say it: "1 cell", "3 cells"."""
    return f"{count} {unit}{'s' if count != 1 else ''}"


def _no_store(response, status: int | None = None):
    """Results and uploaded images are private: keep them out of shared and browser caches."""
    response = current_app.make_response(response if status is None else (response, status))
    response.headers["Cache-Control"] = "no-store"
    return response
