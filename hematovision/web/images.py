"""A result's images, drawn on request and never cached: the stored upload, one white cell
of a field with its square outlined, the image as the model read it, and the heat map."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Blueprint, Response, abort, send_from_directory, url_for

from hematovision import differential
from hematovision.preprocess import ImageError
from hematovision.trust import NOT_A_CELL
from hematovision.web import field_view, heatmap, results, uploads, versions
from hematovision.web.filters import retention
from hematovision.web.lookup import (image_item_or_404, load_or_404, no_store, served_model,
                                     upload_folder)

bp = Blueprint("images", __name__)

IMAGE_EXPIRED = ("The stored image is gone: a batch's images are deleted {retention} after its "
                 "last change.")
NO_HEAT_MAP = (
    "Model {name!r} has no heat maps: its folder has no fitted trust layer (trust.npz)."
)
NOT_A_CELL_NO_MAP = (
    "This image did not look like the cells model {name!r} was trained on, so it has no heat "
    "map: the map would show evidence for a cell type the image is not."
)
NOT_A_FIELD_CELL = "This result is a whole image, not one white cell of a field holding several."
MODEL_GONE = "The model {name!r} that classified this image is no longer served."
CLASS_GONE = "The model {name!r} no longer has the class {label!r} this image was given."


@bp.app_template_global()
def image_url(batch_id: str, index: int, item: dict, thumbnail: bool = False) -> str:
    """Where a result's image is shown from: the stored upload, or for one white cell of a
    field holding several, the field with that cell outlined (as a thumbnail, too small to
    tell the cells apart, the cell as the model read it)."""
    if item.get("cell"):
        page = "images.model_view_image" if thumbnail else "images.field_image"
        return url_for(page, batch_id=batch_id, index=index)
    return url_for("images.uploaded_image", image_id=item.get("image", ""))


@bp.get("/batch/<batch_id>/<int:index>/view.jpg")
def model_view_image(batch_id: str, index: int):
    """One result's image as the model read it (`field_view.model_view`): the square round its
    nucleus for a model that crops, else the whole stored image."""
    stored = load_or_404(batch_id)
    item = image_item_or_404(stored, index)
    predictor = served_model(stored["model"])
    fraction = predictor.crop_fraction if predictor else None
    return drawn_from_stored(item, "image/jpeg", lambda path: field_view.model_view(
        path, fraction, item.get("cell"), results.exposure_of(item)))


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
    if why := versions.replaced(stored, statuses=False):
        abort(404, description=f"{why} {versions.NO_HEAT_MAP}")
    if item["label"] not in predictor.classes:  # the model was retrained under the same name
        abort(404, description=CLASS_GONE.format(name=stored["model"], label=item["label"]))
    # The stored label, not the stored copy's top class: the page captions the map with it.
    return drawn_from_stored(item, "image/png", lambda path: heatmap.stored_overlay(
        predictor, path, item["label"], item.get("cell"), results.exposure_of(item)))


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
    return no_store(Response(picture, mimetype=mimetype))


@bp.get("/uploads/<image_id>.jpg")
def uploaded_image(image_id: str):
    if uploads.image_path(upload_folder(), image_id) is None:
        abort(404, description=IMAGE_EXPIRED.format(retention=retention()))
    return no_store(send_from_directory(upload_folder(), f"{image_id}.jpg", mimetype="image/jpeg"))
