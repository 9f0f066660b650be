"""A batch as it stands, read only: its page, its printed report, each result's page, and its
downloads (the results, the differential and the history as CSV, the reviewed cells as a
training folder)."""

from __future__ import annotations

import time

from flask import (Blueprint, Response, abort, current_app, jsonify, redirect, render_template,
                   request, url_for)

from hematovision import differential
from hematovision.cells import CELL_TYPES, display_name, is_nucleated_red_cell
from hematovision.comparison import Comparison, compare
from hematovision.reference import catalog_intervals
from hematovision.spreadsheet import whole_number
from hematovision.trust import NOT_A_CELL, uncalibrated_note
from hematovision.web import (heatmap, history, manual, models, results, sample, signoff, uploads,
                              versions)
from hematovision.web.errors import refused
from hematovision.web.forms import TypedForm
from hematovision.web.lookup import (deletion, expires_at, item_or_404, load_or_404, no_store,
                                     served_model, upload_folder)
from hematovision.web.model_pages import (ROUGH_ECE, flag_errors, lab_reference,
                                          measured_calibration, near_threshold_figure,
                                          served_acceptance)
from hematovision.web.review_lists import REVIEW_LISTS, class_tabs, list_came_from

bp = Blueprint("batches", __name__)

# The most characters a removal's reason may have. Here rather than beside pages.remove, which
# refuses longer ones, as the image page's form says it too and pages imports this module.
REMOVE_REASON_LENGTH = 200
NOTHING_REVIEWED = (
    "No cell of this batch has been given a class on review yet, so there is nothing to export: "
    "review cells on their result pages first. (Cells of a field holding several white cells "
    "are not exported: a training folder holds one cell per image.)"
)


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
    near = [i for i, r in enumerate(stored["results"]) if results.near_threshold(r)]
    replaced = versions.replaced(stored)
    # The figures a page quotes of its model (review bias, flag errors, the magnification
    # check's range) are the served model's: not those of another version that made the batch.
    predictor = None if versions.replaced(stored, statuses=False) else served_model(
        stored["model"])
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
        # Images called not a blood-cell image that no one has looked at: the count may lack
        # a white cell among them.
        set_aside_unseen=[r for r in stored["results"] if results.set_aside_unseen(r)],
        # Accepted cells no one has looked at where held-out cells as sure fell short of the
        # accuracy target: counted, but to look at first.
        near_threshold_cells=near,
        # ... the target their bands fall short of (one per batch: its model's, as served),
        # and how many each class counts.
        near_target=results.held_out_band(stored["results"][near[0]])["target"] if near else None,
        near_by_class=results.near_threshold_by_class(stored["results"]),
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
        signed_shown=signoff.shown_as(stored),
        few_cells=differential.DIFFERENTIAL_CELLS,
        magnification=results.magnification_check(stored["results"], reference),
        magnification_range=reference.batch_range if reference else None,
        # Those called not a blood-cell image alone: the accepted ones measuring the training
        # images' size say nothing of a screenshot or noise among them.
        unlike_magnification=results.magnification_check(
            [r for r in stored["results"] if differential.status_of(r) == NOT_A_CELL],
            reference),
        exposure=results.exposure_summary(stored["results"]),
        exposure_elsewhere=results.exposure_elsewhere(
            stored["results"], stored["model"], exposure_references(), reference),
        predictor=predictor,
        # The app serves another version of the batch's model now (web/versions.py).
        replaced=replaced,
    )


@bp.get("/batch/<batch_id>")
def batch(batch_id: str, add_errors: list[dict] | None = None, status: int = 200,
          sample_form: TypedForm | None = None, manual_form: TypedForm | None = None,
          signoff_form: TypedForm | None = None):
    """The batch page (a batch of one image shows that image's page); after a refused
    addition, with its errors, and after a refused sample, manual-count or sign-off form,
    with it as typed."""
    stored = load_or_404(batch_id)
    if status >= 400:
        refused(add_errors, (sample_form, manual_form, signoff_form))
    if len(stored["results"]) == 1:
        return single(batch_id, 0, add_errors, status)
    shown = count_context(stored)
    # Results the differential leaves out, with their position for the link to their page.
    not_counted = [
        (i, r, reason) for i, r in enumerate(stored["results"])
        if (reason := differential.left_out_reason(r)) is not None
    ]
    return no_store(
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
            # The images called not a blood-cell image that no one has looked at yet.
            set_aside=[i for i, r in enumerate(stored["results"])
                       if REVIEW_LISTS["not-a-cell"](r)],
            agreement=results.agreement(stored["results"], stored["classes"]),
            first_to_review=results.next_to_review(stored["results"], -1),
            sample_form=sample_form or sample.form_of(shown["sample"]),
            sample_id_length=sample.MAX_ID_LENGTH,
            manual_form=manual_form or manual.form_of(manual.of(stored)),
            manual_fields=manual_fields(stored["classes"]),
            signoff_form=signoff_form or signoff.form_of(shown["signed"]),
            signoff_refusal=signoff.refusal(stored),
            signoff_refusals=signoff.refusals(stored),
            signed_by_length=signoff.MAX_NAME_LENGTH,
            comment_length=signoff.MAX_COMMENT_LENGTH,
            # Only a model that names nucleated red cells can correct a count that includes them.
            nucleated_red_cells=any(is_nucleated_red_cell(c) for c in stored["classes"]),
            acceptance=served_acceptance(shown["predictor"]),
            near_threshold_measured=near_threshold_figure(shown["predictor"]),
            expires=expires_at(stored),
            add_errors=add_errors or [],
            others={n: models.get(n) for n in models.names() if n != stored["model"]},
            history_count=len(history.of(stored)),
        ),
        status,
    )


def exposure_references() -> dict:
    """Each served model's exposure reference (None where its card records none)."""
    return {name: models.get(name).exposure for name in models.names()}


def manual_fields(classes: list[str]) -> list[tuple[str, str]]:
    """The manual-count form's fields with their labels: the model's white-cell classes, the
    white cells of classes it does not name, then its nucleated red-cell classes."""
    def label(name: str) -> str:
        found = name[len(manual.FIELD_PREFIX):]
        return "Other white cells" if found == manual.OTHER else display_name(found)

    return [(name, label(name)) for name in manual.field_names(classes)]


@bp.get("/batch/<batch_id>/report")
def report(batch_id: str):
    """The batch's count as a report to print on one sheet: the sample, the differential with
    its ranges, intervals and flags, the cells left out, the manual count, the checks and the
    sign-off (a blank line to sign by hand where none stands). A batch of one image has no
    differential: its page."""
    stored = load_or_404(batch_id)
    if len(stored["results"]) == 1:
        return redirect(url_for("batches.single", batch_id=batch_id, index=0), code=303)
    return no_store(render_template("report.html", **count_context(stored),
                                     lab_name=current_app.config["LAB_NAME"],
                                     expires=expires_at(stored), written=time.time()))


@bp.get("/batch/<batch_id>/<int:index>")
def single(batch_id: str, index: int, add_errors: list[dict] | None = None, status: int = 200):
    stored = load_or_404(batch_id)
    item = item_or_404(stored, index)
    of_image = results.same_image(stored["results"], index)  # each cell of its field
    held = [i for i, r in enumerate(stored["results"]) if not results.is_removed(r)]
    ranked = sorted(item.get("probabilities", {}).items(), key=lambda kv: -kv[1])
    candidates = item.get("candidates") or []  # none for a file that could not be read
    replaced = versions.replaced(stored, statuses=False)
    # Made by another version than the one served now: none of the new one's figures.
    predictor = None if replaced else served_model(stored["model"])
    # The class the result counts as: the reviewer's where there is one.
    counted_as = differential.counted_class(item) if "label" in item else None
    # Not for an image unlike the training data: evidence for a class it is not.
    show_heat_map = bool(item.get("image")) and predictor is not None and heatmap.available(
        predictor
    ) and differential.status_of(item) != NOT_A_CELL and not replaced
    return no_store(
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
            heat_map_url=url_for("images.heat_map", batch_id=batch_id, index=index)
            if show_heat_map
            else None,
            replaced=replaced,
            cell=CELL_TYPES.get(counted_as or ""),
            # The card's word where its temperature was not fitted (calibrate.served_temperature).
            uncalibrated=uncalibrated_note(predictor.card.get("trust")) if predictor else None,
            # A class of a researcher's model that the catalog does not describe.
            uncatalogued=counted_as if counted_as in stored["classes"]
            and counted_as not in CELL_TYPES else None,
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
            exposure_reference=predictor.exposure if predictor else None,
            # A background left uncorrected that another served model's training images hold.
            exposure_elsewhere=results.exposure_elsewhere(
                [stored["results"][i] for i in of_image], stored["model"],
                exposure_references(), predictor.magnification if predictor else None),
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


def just_saved(stored: dict, index: int) -> int | None:
    """The index `?saved=` names, where it is another result of the batch with a verdict."""
    saved = whole_number(request.args.get("saved", ""))
    if saved is None or saved == index or saved >= len(stored["results"]):
        return None
    return saved if differential.verdict_of(stored["results"][saved]) is not None else None


def neighbours(held: list[int], index: int) -> tuple[int | None, int | None]:
    """The previous and next results of the batch, of those it holds (`held`, their indices:
    removed images' places passed over)."""
    return (max((i for i in held if i < index), default=None),
            min((i for i in held if i > index), default=None))


@bp.get("/batch/<batch_id>.csv")
def batch_csv(batch_id: str):
    stored = load_or_404(batch_id)
    return csv_download(results.to_csv(stored["results"], stored["classes"],
                                       versions.columns(stored), sample.of(stored).id), stored)


def csv_download(table: str, stored: dict, suffix: str = "") -> Response:
    """A CSV file of a batch to save (`download`), in UTF-8 with a byte order mark: Excel,
    which a lab opens it in, reads a CSV without one in the computer's legacy code page, and a
    signer named Zoë came out as ZoÃ«."""
    return download("\ufeff" + table, "text/csv", stored, f"{suffix}.csv")


def download(content: str | bytes, mimetype: str, stored: dict, ending: str) -> Response:
    """A file of a batch to save, named after its sample where it has an ID (so a lab's
    downloads say whose film they hold) and its batch id, then `ending`."""
    name = "-".join(filter(None, ["hematovision", results.file_part(sample.of(stored).id),
                                  stored["id"][:8]]))
    response = Response(content, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}{ending}"'
    return no_store(response)


@bp.get("/batch/<batch_id>/expires")
def expires(batch_id: str):
    """When the batch is deleted (lookup.deletion), for a page left open (static/app.js): a
    colleague's change, or "Keep it" in another tab, moves it after the page was written."""
    return no_store(jsonify(deletion(load_or_404(batch_id))))


@bp.get("/batch/<batch_id>/history")
def history_page(batch_id: str):
    """Who changed the batch, when and how (hematovision.web.history), oldest first."""
    stored = load_or_404(batch_id)
    return no_store(render_template("history.html", batch=stored, events=history.of(stored),
                                     dropped=history.dropped(stored), kinds=history.KINDS,
                                     max_events=history.MAX_EVENTS,
                                     sample=sample.of(stored), expires=expires_at(stored)))


@bp.get("/batch/<batch_id>/history.csv")
def history_csv(batch_id: str):
    stored = load_or_404(batch_id)
    return csv_download(history.to_csv(stored), stored, "-history")


@bp.get("/batch/<batch_id>/differential.csv")
def differential_csv(batch_id: str):
    """The batch's differential as the batch page counts it (given the sample's total
    white-cell count, per litre too)."""
    stored = load_or_404(batch_id)
    described = sample.of(stored)
    counted = sample_differential(stored, described)
    return csv_download(results.differential_csv(counted, described.id,
                                                 manual_comparison(stored, counted),
                                                 signoff.of(stored, count_fingerprint(stored)),
                                                 sum(map(results.set_aside_unseen,
                                                         stored["results"])),
                                                 versions.columns(stored),
                                                 results.near_threshold_by_class(
                                                     stored["results"])),
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
                                       sample.source_group(stored), versions.columns(stored)[1])
    return download(archive, "application/zip", stored, "-reviewed.zip")
