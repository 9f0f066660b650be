"""Classify the files of one request: the shared path of the upload form and the JSON API.

Each file is decoded on its own, so a bad file becomes an error entry and the others are still
classified; a field holding several white cells, for a model that crops to the nucleus, becomes
one entry per cell; all decoded images then go through the model in one batched call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flask import abort, current_app, request
from werkzeug.datastructures import FileStorage

from hematovision.predictor import Predictor
from hematovision.batch import image_inputs, result_entry
from hematovision.preprocess import ImageError, load_image
from hematovision.trust import NOT_A_CELL
from hematovision.web import heatmap, models
from hematovision.web.uploads import delete_images, display_name, save_image


@dataclass
class Decoded:
    file: str  # display name of the client's file
    array: np.ndarray | None = None  # model input
    image_id: str | None = None  # id of the stored viewing copy, when images are stored
    error: str | None = None
    checks: dict = field(default_factory=dict)  # the image's (batch.image_inputs)
    cell: dict | None = None  # which white cell of a field holding several (fields.cell_place)
    duplicate_of: str | None = None  # the file whose bytes these are (DUPLICATE)


# A file already in the batch (or sent twice in one request): byte for byte the same image,
# whose cells counted again would skew the differential.
DUPLICATE = "The same image as {first}: left out, so that its cells are not counted twice."


def decode(
    name: str, data: bytes, predictor: Predictor, max_pixels: int, store_in: Path | None
) -> list[Decoded]:
    """One uploaded file's bytes -> the predictor's model inputs: one, or one per white cell of
    a field holding several (`fields.cell_inputs`); or an error message safe to show.

    The viewing copy is stored right away, once for all the cells of a field, so that only one
    full-size image is in memory at a time, however many files the request holds.
    """
    try:  # load_image turns any decoder failure on hostile input into ImageError
        image = load_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        return [Decoded(name, error=str(exc))]
    # The model card's contract, cell by cell, as the predict command's --each-cell reads it;
    # the viewing copy below keeps the upload's own resolution.
    read, found = predictor.as_trained(image)
    inputs, checks = image_inputs(read, predictor.input_size, predictor.crop,
                                  predictor.magnification, each_cell=True)
    image_id = save_image(store_in, image) if store_in else None
    return [Decoded(name, array, image_id, checks={**found, **checks}, cell=cell)
            for array, cell in inputs]


def classify(
    predictor: Predictor, decoded: list[Decoded], explain: bool = False
) -> list[dict[str, Any]]:
    """Results in upload order, in the predict CLI's JSON line format; with `explain`, each
    classified result also gets its heat map as "cam": None when the model has none, and for an
    image unlike its training data (not_a_cell), as on the result page: such a map would show
    evidence for a cell type the image is not."""
    arrays = [d.array for d in decoded if d.array is not None]
    found = [d.checks.get("white_cells") for d in decoded if d.array is not None]
    # With `explain`, the maps come out of the same batched forward pass as the predictions.
    answers = iter(predictor.explain_arrays(arrays, white_cells=found) if explain else
                   [(p, None) for p in predictor.predict_images_arrays(arrays, found)])
    results = []
    for d in decoded:
        if d.array is None:
            results.append({"file": d.file, "error": d.error,
                            **({"duplicate_of": d.duplicate_of} if d.duplicate_of else {})})
            continue
        prediction, cam = next(answers)
        result = result_entry(d.file, prediction, d.checks, d.cell)
        if explain:
            mapped = cam is not None and prediction.status != NOT_A_CELL
            result["cam"] = heatmap.to_json(d.array, cam) if mapped else None
        results.append(result)
    return results


def request_value(field: str) -> str:
    """A setting sent as a form field or in the query string (`/api/predict?model=pbc8`, as
    `/api/model?model=` takes it); both, with different values, is refused rather than one
    silently winning."""
    form, query = request.form.get(field, "").strip(), request.args.get(field, "").strip()
    if form and query and form != query:
        abort(400, description=f"'{field}' is given twice with different values ({form[:40]!r} "
                               f"in the form, {query[:40]!r} in the address): send it once.")
    return form or query


def requested_model(name: str | None = None) -> tuple[str, Predictor]:
    """Model `name`, else the one the request names (`model`, in the form or the query
    string), else the default, and its predictor; 400 for a model this server does not
    have."""
    name = name or request_value("model") or models.default_name()
    predictor = models.get(name)
    if predictor is None:
        abort(400, description=models.unknown_model_message(name))
    return name, predictor


def uploaded_files(files: Iterable[FileStorage]) -> list[FileStorage]:
    """The parts that name a file: a form submitted with no file chosen sends one with no name."""
    return [f for f in files if f.filename]


def new_files(files: list[FileStorage], known: Iterable[str]) -> int:
    """How many of `files` hold images not in `known` (digests) nor earlier in `files`: what an
    addition would add to a batch. Each file is read to its digest and rewound."""
    seen, new = set(known), 0
    for f in files:
        digest = hashlib.sha256(f.stream.read()).hexdigest()
        f.stream.seek(0)
        new += digest not in seen
        seen.add(digest)
    return new


def classify_request(
    store_in: Path | None = None, explain: bool = False, model: str | None = None,
    known: dict[str, str] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Validate and classify the current request's `file` parts with its `model` choice, or
    with `model` where given (images added to a batch go through the batch's model).

    Returns (model name, results); aborts with 400 when there is nothing to do. With `store_in`,
    each decoded image is stored there and its result gets the stored copy's id as "image" and
    the SHA-256 of the file sent as "sha256"; with `explain`, each result gets its heat map
    (see `classify`).
    With `known` (a batch's images' digests, each with its file's name; empty for a new
    batch), a file whose bytes are those of one of them or of an earlier file of the request
    gets an error entry instead (DUPLICATE); the API, which keeps nothing, passes None.
    """
    name, predictor = requested_model(model)
    files = uploaded_files(request.files.getlist("file"))
    if not files:
        abort(
            400, description="No file was uploaded: choose one or more images (a script sends "
                             "each in the form field 'file').")
    limit = current_app.config["MAX_FILES"]
    if len(files) > limit:
        abort(400, description=f"Too many files ({len(files)}); send at most {limit} at a time.")
    max_pixels = current_app.config["MAX_IMAGE_PIXELS"]
    decoded, digests = [], []
    first = dict(known or {})  # an image's digest: the name of its first copy
    try:
        for f in files:
            name_of_file, data = display_name(f.filename), f.read()
            # Only where a batch keeps it: the API, which keeps nothing, needs no digest.
            digest = None if known is None else hashlib.sha256(data).hexdigest()
            if digest is not None and digest in first:
                here = [Decoded(name_of_file, error=DUPLICATE.format(first=first[digest]),
                                duplicate_of=first[digest])]
            else:
                here = decode(name_of_file, data, predictor, max_pixels, store_in)
                first.setdefault(digest, name_of_file)
            decoded += here
            digests += [digest] * len(here)
    except OSError:  # the disk refused an image (full): those stored before it go too
        if store_in:
            delete_images(store_in, [d.image_id for d in decoded if d.image_id])
        raise
    results = classify(predictor, decoded, explain)
    if store_in:
        for d, result, digest in zip(decoded, results, digests, strict=True):
            if d.image_id:
                result["image"] = d.image_id
                if digest:
                    result["sha256"] = digest  # what a later addition is checked against
    return name, results
