"""What the page modules share: a stored batch, one of its results, a served model and the
upload folder, each found or a 404 that says why; the flash category of a warning; and the
header that keeps private responses out of caches."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from flask import abort, current_app, request

from hematovision.predictor import Predictor
from hematovision.web import models, results, uploads
from hematovision.web.filters import clock_utc, retention, time_left

EXPIRED = ("No such result: it may have been deleted, as a batch is deleted {retention} after "
           "its last change.")
NOT_SAVED = ("This batch is no longer on the server (a batch is deleted {retention} after its "
             "last change, or at once with Delete now), so what you sent was not saved. To count "
             "these cells, upload the images again.")
IMAGE_REMOVED = "{file} was removed from this batch, and its stored copy deleted."
# The flash category of a notice that something was not saved (base.html: a warning, not the
# green of a saved change).
WARNING = "warning"


def upload_folder() -> Path:
    return Path(current_app.config["UPLOAD_FOLDER"])


def served_model(name: str) -> Predictor | None:
    """The loaded model of that exact name (`models.get` would fall back to the default)."""
    return models.get(name) if name in models.names() else None


def expires_at(stored: dict) -> float:
    """When a stored batch is deleted: `RETENTION_SECONDS` after its last change or upload
    (uploads.kept_from), by which time the purge takes it (uploads.purge_expired)."""
    return uploads.kept_from(stored) + current_app.config["RETENTION_SECONDS"]


def item_or_404(stored: dict, index: int) -> dict:
    count = len(stored["results"])
    if index >= count:
        # Its addresses number every result, removed images and a field's cells included,
        # so the count of images the batch page gives is not the bound.
        abort(404, description=f"This batch has no image or cell numbered {index}: its "
                               f"addresses number them from 0 to {count - 1}.")
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
        gone()
    return stored


def gone() -> NoReturn:
    """The 404 of a batch no longer stored: a page asked for may have been deleted; a form sent
    to it (a review, a sign-off, "Keep it") saved nothing, which its sender must be told."""
    message = NOT_SAVED if request.method == "POST" else EXPIRED
    abort(404, description=message.format(retention=retention()))


def deletion(stored: dict) -> dict:
    """When the batch is deleted, as the JSON a page left open asks for (static/app.js): the
    time, in ISO 8601 and in words, and the seconds left as the server counts them."""
    expires = expires_at(stored)
    left = time_left(expires)
    return {"expires": results.iso_time(expires), "expires_text": clock_utc(expires),
            "seconds_left": left["seconds"] if left["known"] else None}


def no_store(response, status: int | None = None):
    """Results and uploaded images are private: keep them out of shared and browser caches."""
    response = current_app.make_response(response if status is None else (response, status))
    response.headers["Cache-Control"] = "no-store"
    return response
