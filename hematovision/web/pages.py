"""The upload form and the forms that change what is stored: upload, add images to a batch,
delete it or keep it longer, remove one image, the sample's details, the manual count, the
sign-off, and the name reviews are recorded under."""

from __future__ import annotations

import re
import time
from typing import NoReturn

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)

from hematovision import differential
from hematovision.cells import display_name
from hematovision.preprocess import IMAGE_SUFFIXES
from hematovision.web import (history, manual, models, recent, results, sample, signoff, uploads,
                              versions)
from hematovision.web.batch_pages import REMOVE_REASON_LENGTH, batch, count_fingerprint
from hematovision.web.classify import classify_request, new_files, uploaded_files
from hematovision.web.errors import TITLES as ERROR_TITLES
from hematovision.web.errors import refused
from hematovision.web.filters import clock_utc, how_many, isolated, retention
from hematovision.web.forms import TypedForm, plain_text
from hematovision.web.lookup import (EXPIRED, WARNING, deletion, expires_at, gone, item_or_404,
                                     load_or_404, no_store, served_model, upload_folder)
from hematovision.web.model_pages import served_acceptance
from hematovision.web.review_pages import counted_state
from hematovision.web.security import check_csrf

bp = Blueprint("pages", __name__)
bp.before_request(check_csrf)

DELETED = "Deleted from the server: the results of {images} and their stored copies."
DELETED_DAMAGED = ("Deleted the batch's damaged results from the server; its images go at the "
                   "end of their retention time.")
ADDED = "Added {images} to this batch{failed}."
HISTORY_FILES = 20  # files an upload's or addition's history entry names
REMOVE_BAD_REASON = ("The reason for removing the image was not saved, nor the image removed: "
                     "give it in at most {limit} characters of plain text, or leave it empty.")
REMOVE_LAST = ("This is the batch's only classified image left: delete the batch instead, or "
               "add the right images first.")
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
UPLOAD_TOO_MANY = ("A batch holds at most {limit} images and this upload has {sent}: upload at "
                   "most {limit}, then add the rest to the batch or start another.")
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
KEPT = "Kept this batch until {until}; any later change keeps it {retention} from then."
# An address on this site: a path from its root, not `//host` nor `/\host` (read by browsers
# as another site), with no blanks or controls.
LOCAL_ADDRESS = re.compile(r"/(?![/\\])[^\s\\\x00-\x1f\x7f]{0,2000}")
REVIEWER_SET = ("Your reviews and changes are now recorded as {name} in each batch's history, "
                "until this browser closes.")
REVIEWER_CLEARED = "Your reviews and changes are now recorded without a name."


@bp.get("/")
def home(errors: list[dict] | None = None, status: int = 200, chosen: str | None = None):
    """The upload form and the batches this browser uploaded (`recent`); after a refused
    upload, with its errors and the model it chose. `?model=NAME` preselects a model (the
    result page links so to another model)."""
    if status >= 400:
        refused(errors)
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
                 # Unidentified cells, and images called not a cell to look at before sign-off.
                 "to_review": sum(differential.needs_review(r) or results.set_aside_unseen(r)
                                  for r in b["results"]),
                 "signed": signoff.of(b, count_fingerprint(b))}
                for b in recent.batches(upload_folder())],
        recent_dropped=recent.dropped(upload_folder()),
    )
    # Its list names this browser's batches and their sample IDs: not for a shared cache.
    return no_store(make_response(page, status))


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
def file_accept() -> str:
    """The upload forms' `accept`: a hint to the file picker only (the server decodes files,
    whatever their names); every suffix we read, as some browsers leave TIFF out of image/*."""
    return ",".join(["image/*", *sorted(IMAGE_SUFFIXES)])


@bp.post("/upload")
def upload():
    """Classify the chosen files, keep the result for a while and show it (303 to its page)."""
    folder = upload_folder()
    # Checked before the images are decoded, as an addition is (the upload page sends a larger
    # selection in parts, the first here: a form sent another way may hold more).
    limit = current_app.config["MAX_BATCH_IMAGES"]
    sent = new_files(uploaded_files(request.files.getlist("file")), {})
    if sent > limit:
        abort(400, description=UPLOAD_TOO_MANY.format(limit=limit, sent=sent))
    name, items = classify_request(store_in=folder, known={})
    if not any("label" in r for r in items):
        return home(errors=items, status=400, chosen=name)
    items, _ = left_out_copies(items)
    predictor = models.get(name)
    stored = {"model": name, versions.MADE_BY: versions.made_by(predictor),
              "classes": predictor.classes, "results": items}
    history.record(stored, history.UPLOADED, images_read(items), time.time())
    try:
        batch_id = uploads.save_batch(folder, stored)
    except OSError:  # the disk refused the batch (errors.NOT_STORED): its images go too
        uploads.delete_images(folder, [r["image"] for r in items if r.get("image")])
        raise
    recent.remember(batch_id)
    return to_batch(batch_id)


def to_batch(batch_id: str):
    """After an upload or addition: 303 to the batch page; to static/upload.js, which sends a
    selection in parts and asks for JSON, the page's address, so that the messages flashed
    for the user wait for the page it opens after the last part rather than being shown to
    its request."""
    address = url_for("batches.batch", batch_id=batch_id)
    if wants_json():
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
        stored = uploads.load_batch(upload_folder(), batch_id)
    except uploads.DamagedBatch:  # deleting it is all that can still be done with it
        stored = None
    else:
        if stored is None:  # deleted already (in another tab), or at its time: no harm done
            abort(404, description=EXPIRED.format(retention=retention()))
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
        taken = results.same_image(found, index)
        if not results.classified_besides(found, taken):
            outcome["last"] = True
            return
        # Each removal leaves its place behind: without a bound, adding and removing again
        # and again would grow the batch past its size limit.
        removed = results.image_count_removed(found)
        if removed >= current_app.config["MAX_BATCH_IMAGES"]:
            outcome["too_many"] = removed
            return
        outcome.update(item=item, image=item.get("image"),
                       counted=sum(differential.counted_class(found[i]) is not None for i in taken))
        # What the image was counted as, and by whose review: its place keeps neither.
        history.record(batch, history.REMOVED, "; ".join(
            [f"{item['file']}: {reason}" if reason else item["file"],
             *(f"{results.name_of(found[i])} was {counted_state(found[i])}" for i in taken)]), now)
        for i in taken:
            found[i] = results.removed_entry(found[i], now, reason, history.reviewer())

    stored = uploads.update_batch(upload_folder(), batch_id, take_out)
    if stored is None:  # deleted between the two reads
        gone()
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
    if why := versions.replaced(stored):
        abort(409, description=f"{why} {versions.NOT_ADDED}")
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
        gone()
    recent.remember(batch_id)  # images this browser uploaded, though a colleague began it
    if wants_json():
        # One part of a selection upload.js sends in parts: "Added 5 images" of its last part
        # would misstate the upload the page opens after it (the batch lists every image).
        return to_batch(batch_id)
    failed = sum("label" not in r for r in items)
    added = results.image_count([r for r in items if "label" in r])
    flash(ADDED.format(images=how_many(added, "image"),
                       failed=f" ({failed} could not be read: listed below)" if failed else ""))
    return to_batch(batch_id)


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


bp.add_app_template_global(history.reviewer, "reviewer")
# The add form's place says why nothing can be added to a batch whose model is gone.
bp.add_app_template_global(lambda stored: None if served_model(stored["model"]) else
                           BATCH_MODEL_GONE.format(name=stored["model"]), "model_gone")
# A global, not a context variable: the reviewer form is a macro, imported without context.
bp.add_app_template_global(history.MAX_NAME_LENGTH, "REVIEWER_NAME_LENGTH")


@bp.post("/reviewer")
def set_reviewer():
    """Record this browser's later reviews and changes under the name given (`reviewer`;
    empty: none), then back to the page the form was on (`next`, an address on this site)."""
    back = back_to(url_for("pages.home"))
    try:
        name = history.read_name(request.form)
    except ValueError:  # the error page, with the way back to the page the form was on
        return render_template("error.html", code=400, title=ERROR_TITLES[400], back=back,
                               message=history.BAD_NAME.format(limit=history.MAX_NAME_LENGTH)
                               ), 400
    history.remember(name)
    flash(REVIEWER_SET.format(name=isolated(name)) if name else REVIEWER_CLEARED)
    return redirect(back, code=303)


def wants_json() -> bool:
    """Whether the page's script sent the form (upload.js, app.js), asking for JSON instead of
    the page a browser goes to."""
    return request.accept_mimetypes.best == "application/json"


def back_to(default: str) -> str:
    """Where a form goes back to: its `next`, the page it was on, if that is an address on this
    site (never another site); else `default`."""
    back = request.form.get("next", "")
    return back if LOCAL_ADDRESS.fullmatch(back) else default


@bp.post("/batch/<batch_id>/keep")
def keep(batch_id: str):
    """Keep the batch `RETENTION_SECONDS` from now, as any change to it does, for one that is
    read, not changed (a count waiting for its signer); nothing else changes and the history
    records nothing. Then back to the page the form was on (`next`); asked for JSON (app.js,
    so that a page's unsaved choices stay where they are), the new deletion time instead."""
    back = back_to(url_for("batches.batch", batch_id=batch_id))
    stored = uploads.update_batch(upload_folder(), batch_id, lambda batch: None, renew=True)
    if stored is None:
        gone()
    message = KEPT.format(until=clock_utc(expires_at(stored)), retention=retention())
    if wants_json():
        return no_store(jsonify({**deletion(stored), "message": message}))
    flash(message)
    return redirect(back, code=303)


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
        gone()
    flash(SAMPLE_SAVED if described != sample.Sample() else SAMPLE_CLEARED)
    return redirect(url_for("batches.batch", batch_id=batch_id), code=303)


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
        shown, newer = request.form.get(signoff.SIGNED_FIELD), []

        def withdraw(b: dict) -> None:
            # The page's form names the sign-off it showed: a colleague's given since is not
            # withdrawn unseen (a form without the field, sent by hand, withdraws what stands).
            if shown is not None and (signer := signoff.signed_meanwhile(b, shown)):
                newer.append(signer)
                return
            signed = signoff.of(b, count_fingerprint(b))
            if signed:
                withdrawn.append(signed.by)
                history.record(b, history.WITHDRAWN, f"signed off by {signed.by}", time.time())
            signoff.withdraw(b)

        if uploads.update_batch(upload_folder(), batch_id, withdraw) is None:
            gone()
        if newer:
            flash(signoff.NOT_WITHDRAWN.format(name=isolated(newer[0])), WARNING)
            return batch(batch_id, status=409)
        if withdrawn:
            flash(SIGN_OFF_WITHDRAWN.format(name=isolated(withdrawn[0])))
        return redirect(url_for("batches.batch", batch_id=batch_id), code=303)
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
        signer = signoff.signed_meanwhile(found, request.form.get(signoff.SIGNED_FIELD, ""))
        if request.form.get(signoff.SHOWN_FIELD, "") != count:
            refused, status = signoff.CHANGED_MEANWHILE, 409
        elif signer is not None:
            refused, status = signoff.SIGNED_MEANWHILE.format(name=isolated(signer)), 409
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
        gone()
    if refused is not None:
        return batch(batch_id, status=status, signoff_form=TypedForm(form.typed, {"": refused}))
    flash(SIGNED_OFF.format(name=isolated(name)))
    return redirect(url_for("batches.batch", batch_id=batch_id), code=303)


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
        gone()
    flash(MANUAL_SAVED.format(cells=how_many(counted.total, "white cell")) if counted.total
          else MANUAL_CLEARED)
    return redirect(url_for("batches.batch", batch_id=batch_id, _anchor="manual-title"), code=303)


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
