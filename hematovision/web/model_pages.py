"""The model pages: the list of served models, each model's card, figures and plots, and the
API page, whose example is the default model's."""

from __future__ import annotations

import hashlib
import json

from flask import Blueprint, Response, abort, current_app, render_template, request

from hematovision import differential
from hematovision.card import FLAGS, REVIEW_ORDER, recorded_evaluations
from hematovision.cells import display_name, is_white_cell
from hematovision.exposure import CARD_KEY as EXPOSURE, MAX_GAIN
from hematovision.magnification import CARD_KEY as MAGNIFICATION
from hematovision.predictor import Predictor
from hematovision.reference import SETTINGS, UNITS, catalog_intervals
from hematovision.trust import BAND, measured_at
from hematovision.web import models
from hematovision.web.filters import interval, is_number
from hematovision.web.lookup import served_model

bp = Blueprint("models", __name__)

# Above this expected calibration error on a test set, the result and model pages call the
# confidence a rough guide rather than a probability to act on.
ROUGH_ECE = 0.05

# Cells a film may hold that a model may not name, each with the class that would name it: the
# ones a technologist meets most, first.
UNNAMED_CELLS = (("a blast", "blast"), ("a reactive or atypical lymphocyte", "variant_lymphocyte"),
                 ("an immature granulocyte", "ig"), ("a nucleated red cell", "erythroblast"),
                 ("a plasma cell", "plasma_cell"), ("a basophil", "basophil"),
                 ("a smudge cell", "smudge_cell"))


@bp.app_template_global()
def unknown_cells_text(name: str, classes: list[str]) -> str:
    """The first of a model's limitations, for its page, its batches and their reports: the
    cells of other kinds it names as one of its own classes."""
    named = {display_name(c).lower() for c in classes}
    unnamed = [words for words, label in UNNAMED_CELLS
               if label not in classes and display_name(label).lower() not in named]
    return (f"{name} knows only the {len(classes)} classes it names. A cell of any other kind "
            f"({', '.join(unnamed)}) is given one of them, often with high confidence: its "
            "check for images unlike its training data was neither fitted nor measured on "
            "abnormal cells, so nothing here measures how often it sets them aside.")

FIELDS_CHECK_FILE = "fields_check.json"  # written by python -m training.fields_check --json


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
        held_out_bands=predictor.trust.bands(),
        summary={"evaluation": _largest({k: m for k, m in evaluations.items()
                                         if is_number(m.get("accuracy"))})},
        acceptance=served_acceptance(predictor),
        calibration=measured_calibration(predictor),
        rough_ece=ROUGH_ECE,
        unfamiliar_sets=unfamiliar_sets,
        robustness=robustness if isinstance(robustness.get("perturbations"), list) else None,
        differential=differential.recorded_figures(metrics),
        flags=_flags_entry(metrics),
        review_order=_review_order_entry(metrics),
        magnification=_check_entry(card, MAGNIFICATION, predictor.magnification is not None,
                                   MAGNIFICATION_SECTION),
        exposure=_check_entry(card, EXPOSURE, predictor.exposure is not None,
                              EXPOSURE_SECTION),
        exposure_max_gain=MAX_GAIN,
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
    return figures if all(is_number(v) for v in figures.values()) else None


def near_threshold_figure(predictor: Predictor | None) -> dict | None:
    """How many of a film's accepted cells a batch marks below target, and the share of
    the wrongly accepted cells among them, on normal films drawn from the model's test images
    (`training.review_order --record`): {"cells", "accepted_per_film", "checked_per_film",
    "found"}; None where not measured, or not at the confidence threshold served now."""
    metrics = predictor.card.get("metrics") if predictor else None
    entry = metrics.get(REVIEW_ORDER) if isinstance(metrics, dict) else None
    try:
        if entry["confidence_threshold"] != predictor.trust.confidence_threshold:
            return None
        marked = entry["near_threshold"]
        figures = {"cells": entry["cells"], "accepted_per_film": entry["accepted_per_film"],
                   "checked_per_film": marked["checked_per_film"], "found": marked["found"]}
    except (KeyError, TypeError):
        return None
    return figures if all(is_number(v) for v in figures.values()) else None


# What a page shows of a card's entry, each value a NUMBER, TEXT, a NUMBER or None
# (MAYBE_NUMBER), a list of any length of one shape ([shape]), a list of as many values as a
# tuple of shapes, or a dict of shapes by key (`fits`).
NUMBER, TEXT, MAYBE_NUMBER = "number", "text", "number or none"
STATUS_RATES = {"accepted_rate": NUMBER, "accuracy_accepted": MAYBE_NUMBER,
                "not_a_cell_rate": NUMBER}
RECORDED_ON = {"data": TEXT, "images": NUMBER}
MAGNIFICATION_SECTION = {
    "red_cell_scale": NUMBER, "single_image_range": (NUMBER, NUMBER),
    "batch_range": (NUMBER, NUMBER),
    "min_batch_images": NUMBER, "reference": RECORDED_ON,
    "check": {"n": NUMBER, "data": TEXT, "batch_draws": NUMBER, "rows": [{
        "name": TEXT, "median_ratio": MAYBE_NUMBER, "measured": NUMBER,
        "single_outside": NUMBER, "batches_outside": NUMBER}]}}
EXPOSURE_SECTION = {
    "background": (NUMBER,) * 3, "low": (NUMBER,) * 3, "high": (NUMBER,) * 3,
    "max_spread": MAYBE_NUMBER, "reference": RECORDED_ON,
    "check": {"n": NUMBER, "data": TEXT, "rows": [{
        "name": TEXT, "description": TEXT, "corrected": NUMBER, "not_correctable": NUMBER,
        **STATUS_RATES, "as_read": STATUS_RATES}]}}


def fits(value, shape) -> bool:
    """Whether a card's value has `shape` (see NUMBER): a hand-edited or half-recorded card
    leaves its section off the page rather than failing it."""
    if shape == NUMBER:
        return is_number(value)
    if shape == MAYBE_NUMBER:
        return value is None or is_number(value)
    if shape == TEXT:
        return isinstance(value, str)
    if isinstance(shape, list):
        return isinstance(value, list) and all(fits(v, shape[0]) for v in value)
    if isinstance(shape, tuple):
        return (isinstance(value, list) and len(value) == len(shape)
                and all(fits(v, s) for v, s in zip(value, shape)))
    return isinstance(value, dict) and all(fits(value.get(k), s) for k, s in shape.items())


def _check_entry(card: dict, key: str, served: bool, shape: dict) -> dict | None:
    """The card's entry `key` (a reference and the figures of its check: "magnification",
    "exposure"), where the served model uses that reference and the entry is whole."""
    entry = card.get(key)
    return entry if served and fits(entry, shape) else None


def _largest(evaluations: dict[str, dict]) -> tuple[str, dict] | None:
    sized = [(name, m) for name, m in evaluations.items() if is_number(m.get("n"))]
    return max(sized, key=lambda item: item[1]["n"]) if sized else None


def measured_calibration(predictor: Predictor) -> dict | None:
    """{"set", "n", "ece", "others", "worst"}: the calibration error after calibration on the
    largest recorded test set, each other test set's ({"set", "n", "ece"}: a smaller set of
    harder images may be the worse calibrated, and a page quoting the larger alone reads
    better than the model is) and the largest of them; None where none was measured at the
    temperature served now (a refitted card's old figures are not this calibration's)."""
    measured = {k: m for k, m in recorded_evaluations(predictor.card).items()
                if isinstance(m.get("calibration"), dict) and is_number(m.get("n"))
                and is_number(m["calibration"].get("ece_after"))
                and m["calibration"].get("temperature") == predictor.trust.temperature}
    largest = _largest(measured)
    if largest is None:
        return None
    sets = [{"set": name, "n": m["n"], "ece": m["calibration"]["ece_after"]}
            for name, m in [largest, *((k, m) for k, m in measured.items() if k != largest[0])]]
    return {**sets[0], "others": sets[1:], "worst": max(s["ece"] for s in sets)}


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
                                 if is_number(figures.get("accepted_rate"))})
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
PER_IMAGE_BAND = ('{"low": <float>, "high": <float>, "images": <int>, "right": <int>, '
                  '"target": <float|null>, "below_target": <bool>}')


@bp.get("/docs/api")
def api_docs():
    """The API page. Its example response takes the default model's classes and the fitted
    figures every result carries (thresholds, temperature) from that model, exactly as the API
    rounds them; per-image values are placeholders, so no number on the page is hand-typed."""
    predictor = models.get(None)
    scores = predictor.trust.scores(0.0, 1.0)
    if scores["unfamiliarity"] is not None:
        scores["unfamiliarity"] = PER_IMAGE
    if BAND in scores:  # its figures are the band's, which differs per image
        scores[BAND] = PER_IMAGE_BAND
    example_scores = [(k, v if v in (PER_IMAGE, PER_IMAGE_BAND) else json.dumps(v))
                      for k, v in scores.items()]
    return render_template("api.html", example_classes=predictor.classes,
                           example_white=[c for c in predictor.classes if is_white_cell(c)],
                           example_intervals=current_app.config["REFERENCE_INTERVALS"],
                           example_scores=example_scores)
