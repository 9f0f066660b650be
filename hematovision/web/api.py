"""The JSON API: the same validation and model path as the upload form, without the pages.

    POST /api/predict  multipart: file (one or many), model (optional)
    GET  /api/health
    GET  /api/model?model=NAME

The API stores nothing: results go back in the response and the images are dropped.
"""

from __future__ import annotations

from flask import Blueprint, abort, jsonify, request

from hematovision import __version__
from hematovision.web import models
from hematovision.web.classify import classify_request

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.post("/predict")
def predict():
    """Per-file results like `python -m hematovision.predict --json`; 400 if none succeeded."""
    name, results = classify_request()
    ok = any("label" in r for r in results)
    return jsonify(model=name, results=results), 200 if ok else 400


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
