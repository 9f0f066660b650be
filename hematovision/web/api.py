"""The JSON API: the same validation and model path as the upload form, without the pages.

    POST /api/predict  multipart: file (one or many), model (optional), explain (optional: 1),
                       wbc_count (optional: the film's total white-cell count, x 10^9/L),
                       wbc_includes_nrbc (optional: 1 when that count includes the nucleated
                       red cells), manual_<class> (optional: a manual count of the same film,
                       as the batch page's form names its fields); all but the files may also
                       come in the query string
    GET  /api/health
    GET  /api/model?model=NAME

The API stores nothing: results go back in the response and the images are dropped.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict

from flask import Blueprint, abort, current_app, jsonify, request

from hematovision import __version__
from hematovision.comparison import compare, comparison_json
from hematovision.differential import differential_json
from hematovision.reference import white_cell_count
from hematovision.web import manual, models, uploads, versions
from hematovision.web.classify import classify_request, request_value, requested_model
from hematovision.web.lookup import upload_folder
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
    count first corrected for the nucleated red cells counted, with wbc_includes_nrbc=1). With
    a manual count of the film, the differential is compared with it ("manual")."""
    explain = yes_or_no("explain", "for heat maps")
    includes_nucleated_red_cells = yes_or_no(
        "wbc_includes_nrbc", "when wbc_count includes the nucleated red cells")
    try:  # checked before any image is read, as every other field is
        wbc = white_cell_count(request_value("wbc_count"))
    except ValueError as exc:
        abort(400, description=str(exc))
    name, predictor = requested_model()
    by_hand = manual_count(name, predictor.classes)
    name, results = classify_request(explain=explain, model=name)
    if not any("label" in r for r in results):
        return jsonify(model=name, **made_by(predictor), results=results), 400
    served = served_differential(results, predictor.classes, current_app.config, wbc,
                                 includes_nucleated_red_cells)
    counted = differential_json(served)
    if by_hand:
        found = compare(served, by_hand.counts, by_hand.other, by_hand.beside)
        counted["manual"] = comparison_json(found) if found else None
    check = magnification_check(results, predictor.magnification)
    extra = {"magnification": {**asdict(check),
                               "batch_range": list(predictor.magnification.batch_range)}
             } if check else {}
    return jsonify(model=name, **made_by(predictor), results=results,
                   differential=counted, **extra), 200


def made_by(predictor) -> dict:
    """What answered, as a batch records it (versions.made_by): the model's version, the
    accuracy target it was served at (null: none fitted) and the app's release and commit."""
    record = versions.made_by(predictor)
    return {"model_version": record["version"], "accuracy_target": record["accuracy_target"],
            "app_version": record["app"]}


def manual_count(model: str, classes: list[str]) -> manual.ManualCount | None:
    """The manual count the request sends in the batch page's fields (`manual.field_names`:
    manual_<class> for the model's classes and manual_other), or None when it sends none; 400
    for a field the model's count has not (a misspelt class would otherwise count none) or a
    count the page would refuse."""
    sent = {key for key in [*request.form, *request.args] if key.startswith(manual.FIELD_PREFIX)}
    if not sent:
        return None
    names = manual.field_names(classes)
    unknown = sorted(sent - set(names))
    if unknown:
        abort(400, description=f"Unknown field {unknown[0][:40]!r}: a manual count for model "
                               f"{model} has the fields {', '.join(names)}.")
    counted, form = manual.read_form({n: request_value(n) for n in names}, classes)
    if counted is None:
        abort(400, description=" ".join(f"{key}: {message}" if key else message
                                        for key, message in form.errors.items()))
    if not counted.total:
        abort(400, description=f"The manual count counts no white cell: give the cells of each "
                               f"class counted ({', '.join(names)}).")
    return counted


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
    """For a load balancer or a monitor: 503 where uploads cannot be stored (a full or
    read-only disk), so that it is seen before a technologist's upload fails on it; the models
    this process serves with their versions, and those whose folder holds another model since
    it loaded them (served until a reload: workers started later would serve the new one)."""
    folder = upload_folder()
    problem = uploads.writable(folder)
    room = current_app.config["MAX_CONTENT_LENGTH"]
    if problem is None and room and (free := shutil.disk_usage(folder).free) < room:
        problem = (f"only {free / 2**20:.1f} MB free in {folder}, less than one upload may "
                   f"take ({room / 2**20:g} MB).")
    names = models.names()
    changed = [name for name in names if models.changed_on_disk(name)]
    status = ("cannot store uploads" if problem else
              "models changed on disk: reload to serve them" if changed else "ok")
    return jsonify(
        status=status, version=__version__, app_version=current_app.config["APP_VERSION"],
        models=names, default_model=models.default_name(),
        model_versions={name: models.get(name).version for name in names},
        models_changed_on_disk=changed, **({"problem": problem} if problem else {}),
    ), 200 if problem is None else 503


@bp.get("/model")
def model_card():
    """The model card of `?model=NAME` (default model when absent), as stored."""
    name = request.args.get("model") or models.default_name()
    predictor = models.get(name)
    if predictor is None:
        abort(400, description=models.unknown_model_message(name))
    return jsonify(predictor.card)
