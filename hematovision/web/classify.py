"""Classify the files of one request: the shared path of the upload form and the JSON API.

Each file is decoded on its own, so a bad file becomes an error entry and the others are still
classified; all decoded images then go through the model in one batched call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from flask import abort, current_app, request
from PIL import Image
from werkzeug.datastructures import FileStorage

from hematovision.predictor import Predictor
from hematovision.preprocess import ImageError, load_image, to_input
from hematovision.web import models
from hematovision.web.uploads import display_name

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    file: str  # display name of the client's file
    array: np.ndarray | None = None  # model input
    image: Image.Image | None = None  # upright RGB image, kept only when it will be stored
    error: str | None = None


def decode(storage: FileStorage, input_size: int, max_pixels: int, keep_image: bool) -> Decoded:
    """One uploaded file -> model input, or an error message that is safe to show."""
    name = display_name(storage.filename)
    try:
        image = load_image(storage.read(), max_pixels=max_pixels)
    except ImageError as exc:
        return Decoded(name, error=str(exc))
    except Exception:  # noqa: BLE001 - a decoder bug on hostile input must not become a 500
        log.warning("unexpected error decoding an upload", exc_info=True)
        return Decoded(name, error="The file is not an image in a format we can read.")
    return Decoded(name, to_input(image, input_size), image if keep_image else None)


def classify(predictor: Predictor, decoded: list[Decoded]) -> list[dict[str, Any]]:
    """Results in upload order, in the predict CLI's JSON line format."""
    good = [d for d in decoded if d.array is not None]
    predictions = iter(predictor.predict_images_arrays([d.array for d in good]))
    return [
        {"file": d.file, **next(predictions).to_dict()} if d.array is not None
        else {"file": d.file, "error": d.error}
        for d in decoded
    ]


def uploaded_files(files: Iterable[FileStorage]) -> list[FileStorage]:
    """The parts that name a file: a form submitted with no file chosen sends one with no name."""
    return [f for f in files if f.filename]


def classify_request(keep_images: bool) -> tuple[str, list[Decoded], list[dict[str, Any]]]:
    """Validate and classify the current request's `file` parts with its `model` choice.

    Returns (model name, decoded files, results); aborts with 400 when there is nothing to do.
    """
    name = request.form.get("model") or models.default_name()
    predictor = models.get(name)
    if predictor is None:
        abort(400, description=models.unknown_model_message(name))
    files = uploaded_files(request.files.getlist("file"))
    if not files:
        abort(400, description="No file was uploaded: choose one or more images "
                               "(form field 'file').")
    limit = current_app.config["MAX_FILES"]
    if len(files) > limit:
        abort(400, description=f"Too many files ({len(files)}); send at most {limit} at a time.")
    max_pixels = current_app.config["MAX_IMAGE_PIXELS"]
    decoded = [decode(f, predictor.input_size, max_pixels, keep_images) for f in files]
    return name, decoded, classify(predictor, decoded)
