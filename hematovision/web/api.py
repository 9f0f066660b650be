"""The JSON API: the same validation and model path as the upload form, without the pages.

    POST /api/predict  multipart: file (one or many), model (optional), explain (optional: 1),
                       wbc_count (optional: the film's total white-cell count, x 10^9/L),
                       wbc_includes_nrbc (optional: 1 when that count includes the nucleated
                       red cells); all but the files may also come in the query string
    GET  /api/health
    GET  /api/model?model=NAME

The API stores nothing: results go back in the response and the images are dropped.
"""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, abort, current_app, jsonify, request

from hematovision import __version__
from hematovision.differential import differential_json
from hematovision.reference import white_cell_count
from hematovision.web import models
from hematovision.web.classify import classify_request, request_value
from hematovision.web.results import magnification_check, served_differential

bp = Blueprint("api", __name__, url_prefix="/api")


# Values of a yes-or-no field (explain, wbc_includes_nrbc); anything else is refused rather
# than silently read as "no".
YES = {"1", "true", "yes", "on"}
NO = {"", "0", "false", "no", "off"}


@bp.post("/predict")
def predict():
    """Per-file results like `python -m hematovision.predict --json`, and the differential of
    the accepted cells; 400 if none succeeded. With explain=1 each classified file also gets its
    heat map ("cam"). With wbc_count, the differential's shares are also absolute counts (the
    count first corrected for the nucleated red cells counted, with wbc_includes_nrbc=1)."""
    explain = yes_or_no("explain", "for heat maps")
    includes_nucleated_red_cells = yes_or_no(
        "wbc_includes_nrbc", "when wbc_count includes the nucleated red cells")
    try:  # checked before any image is read, as every other field is
        wbc = white_cell_count(request_value("wbc_count"))
    except ValueError as exc:
        abort(400, description=str(exc))
    name, results = classify_request(explain=explain)
    if not any("label" in r for r in results):
        return jsonify(model=name, results=results), 400
    predictor = models.get(name)
    counted = differential_json(served_differential(results, predictor.classes,
                                                    current_app.config, wbc,
                                                    includes_nucleated_red_cells))
    check = magnification_check(results, predictor.magnification)
    extra = {"magnification": {**asdict(check),
                               "batch_range": list(predictor.magnification.batch_range)}
             } if check else {}
    return jsonify(model=name, results=results, differential=counted, **extra), 200


def yes_or_no(field: str, meaning: str) -> bool:
    """A yes-or-no field of the request (YES, NO); 400 for anything else."""
    value = request_value(field).lower()
    if value in YES:
        return True
    if value not in NO:
        abort(400, description=f"Unknown {field} value {value[:20]!r}: send {field}=1 (or true) "
                               f"{meaning}, or leave it out.")
    return False


@bp.get("/health")
def health():
    return jsonify(
        status="ok", version=__version__, models=models.names(), default_model=models.default_name()
    )


@bp.get("/model")
def model_card():
    """The model card of `?model=NAME` (default model when absent), as stored."""
    name = request.args.get("model") or models.default_name()
    predictor = models.get(name)
    if predictor is None:
        abort(400, description=models.unknown_model_message(name))
    return jsonify(predictor.card)
