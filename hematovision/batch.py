"""Classify many image files: decode in a thread pool, run the model in batches.

Shared by the predict command line and the evaluation script, so reported figures come from
exactly the path users run.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from hematovision.fields import cell_inputs
from hematovision.magnification import Reference
from hematovision.predictor import (BATCH_SIZE, Outputs, Prediction, Predictor,
                                    with_white_cells)
from hematovision.preprocess import IMAGE_SUFFIXES, ImageError, load_image, to_input


@dataclass(frozen=True)
class FileResult:
    path: Path
    prediction: Prediction | None = None
    error: str | None = None
    # The image's checks: the magnification check's red_cell_ratio and the exposure check,
    # for a model whose card records their references; the white cells found, for a model
    # that crops to the nucleus.
    checks: dict = field(default_factory=dict)
    # Which white cell of a field holding several (hematovision.fields.cell_place); None for
    # an image read whole.
    cell: dict | None = None

    def to_dict(self) -> dict:
        if self.prediction is None:
            return {"file": str(self.path), "error": self.error}
        return result_entry(str(self.path), self.prediction, self.checks, self.cell)


def result_entry(file: str, prediction: Prediction, checks: dict, cell: dict | None) -> dict:
    """One classified input as the predict command's JSON lines and the API give it: the file,
    which cell of its field where it is one of several, the prediction, the image's checks."""
    return {"file": file, **({"cell": cell} if cell else {}), **prediction.to_dict(), **checks}


def image_inputs(image, size: int, crop: str, reference: Reference | None,
                 each_cell: bool) -> tuple[list[tuple[np.ndarray, dict | None]], dict]:
    """A decoded image's model inputs, each with its cell place or None
    (`hematovision.fields.cell_inputs`: with `each_cell`, one per white cell of a field holding
    several), and the image's checks: `red_cell_ratio` with a magnification `reference`, and
    for a model that crops to the nucleus `white_cells`, how many were found. The one place the
    predict command and the web app turn an image into what they classify."""
    checks = {"red_cell_ratio": reference.ratio(image)} if reference else {}
    inputs, found = cell_inputs(image, size, crop, each_cell)
    return inputs, checks if found is None else {**checks, "white_cells": found}


# Folders that archive tools and file managers leave beside images (macOS puts a "._" copy of
# every file's metadata in __MACOSX/ when it zips a folder); never images of a cell.
SKIPPED_FOLDERS = {"__MACOSX"}


def is_hidden(relative: Path) -> bool:
    """Whether a path inside a searched folder is one to pass over: a hidden file or folder
    (".DS_Store", macOS "._name.jpg" metadata files, ".ipynb_checkpoints") or an archive
    tool's folder."""
    return any(part.startswith(".") or part in SKIPPED_FOLDERS for part in relative.parts)


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder` (by extension, any depth), sorted, hidden ones left out.

    Linked folders are followed (a class folder often gathers others by symlink; Python 3.11's
    rglob does not follow them), each real folder once, so a link to a parent cannot loop.
    Whatever else bears an image's name is listed too (a broken link, a link loop, a named
    pipe): reading it fails with its reason (`preprocess.load_image`), where leaving it out
    would lose it without a word."""
    folder = Path(folder)
    found, seen = [], set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for name in names:
            p = Path(top, name)
            if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p.relative_to(folder)):
                found.append(p)
    return sorted(found)


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given; folders searched recursively for image files, in sorted order. Each
    file once, by where it really is: one given twice, or in a folder given beside it, would
    count its cells twice in a differential."""
    out: dict[str, Path] = {}
    for path in map(Path, paths):
        for found in image_files(path) if path.is_dir() else [path]:
            out.setdefault(os.path.realpath(found), found)
    return list(out.values())


# A decoded image -> the image the model reads, with what was measured on the way
# (`Predictor.as_trained`).
AsTrained = Callable[[Image.Image], tuple[Image.Image, dict]]


def _decode(path: Path, size: int, crop: str, reference: Reference | None = None,
            each_cell: bool | None = None, as_trained: AsTrained | None = None):
    """(model input, None, image checks) or (None, error message, {}). The checks hold the
    red-cell ratio (`red_cell_ratio`) only with a magnification `reference`.

    With `each_cell` None, the model input is one array (training).
    Otherwise it is a list of (input, cell place or None), and for a model that crops to the
    nucleus the checks also hold `white_cells`, how many were found (`image_inputs`): with
    `each_cell` True, a field holding several gives one input per cell; with False, the whole
    image's one input. With `as_trained`, the image is first brought to what the model was
    trained on (a served model's resolution and exposure), its findings joining the checks.
    `load_image` turns every decoder failure into ImageError; OSError here only means the
    file itself could not be opened."""
    try:
        image = load_image(path)
    except ImageError as exc:
        return None, str(exc), {}
    except OSError as exc:
        return None, f"Cannot read the file ({exc.strerror or exc}).", {}
    image, found = as_trained(image) if as_trained else (image, {})
    if each_cell is None:
        checks = {"red_cell_ratio": reference.ratio(image)} if reference else {}
        return to_input(image, size, crop), None, {**found, **checks}
    inputs, checks = image_inputs(image, size, crop, reference, each_cell)
    return inputs, None, {**found, **checks}


def decoded_chunks(paths: list[Path], size: int, crop: str,
                   reference: Reference | None = None, each_cell: bool | None = None,
                   as_trained: AsTrained | None = None) -> Iterator[list[tuple]]:
    """[(path, model input or None, error or None, image checks), ...] per chunk of
    BATCH_SIZE, in order; the next chunk decodes in a thread pool while the caller runs the
    model on this one. Red cells are measured only against a magnification `reference`; with
    `each_cell` True or False, each model input is a list of (input, cell place or None) and
    white cells are counted; `as_trained`: see `_decode`."""
    chunks = [paths[i : i + BATCH_SIZE] for i in range(0, len(paths), BATCH_SIZE)]

    def decode(path: Path):
        return _decode(path, size, crop, reference, each_cell, as_trained)

    with ThreadPoolExecutor(max_workers=2) as pool:
        decoded_next = pool.map(decode, chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            decoded = list(decoded_next)
            if k + 1 < len(chunks):
                decoded_next = pool.map(decode, chunks[k + 1])
            yield [(path, *outcome) for path, outcome in zip(chunk, decoded)]


def classify_files(
    predictor: Predictor, paths: list[Path], progress: bool = False, each_cell: bool = False
) -> Iterator[FileResult]:
    """Yield one result per path, in order; unreadable files give an error result. With a
    magnification reference in the model's card, each result gets its red_cell_ratio, with
    an exposure reference its `exposure` check (`Predictor.as_trained`); for a model that
    crops to the nucleus, the number of white cells found in its image (`white_cells`). With `each_cell`, a field holding several white cells gives one result
    per cell, each naming its cell (as the web app reads uploads)."""
    meter = _Progress(len(paths), progress)
    reference = predictor.magnification
    chunks = decoded_chunks(paths, predictor.input_size, predictor.crop, reference, each_cell,
                            predictor.as_trained)
    for chunk in chunks:
        # One entry per model input: (path, input, error, image checks, cell place).
        entries = [(path, array, error, checks, place)
                   for path, inputs, error, checks in chunk
                   for array, place in (inputs if inputs is not None else [(None, None)])]
        predictions = predictor.predict_each([entry[1] for entry in entries],
                                             [entry[3].get("white_cells") for entry in entries])
        for (path, _, error, checks, place), prediction in zip(entries, predictions):
            yield FileResult(path, prediction, None if prediction else error, checks, place)
        meter.advance(len(chunk))
    meter.close()


def forward_files(predictor: Predictor, paths: list[Path], progress: bool = False
                  ) -> tuple[Outputs, list[bool]]:
    """The served network's raw outputs (logits, unfamiliarity features; for a model that
    crops to the nucleus, the white cells found in each image) for the readable files, each
    read whole, and which files were readable; for fitting and evaluating the trust layer on
    exactly the serving path."""
    meter = _Progress(len(paths), progress)
    parts, readable, found = [], [], []
    for chunk in decoded_chunks(paths, predictor.input_size, predictor.crop, each_cell=False,
                                as_trained=predictor.as_trained):
        decoded = [(inputs[0][0], checks) for _, inputs, _, checks in chunk if inputs]
        readable += [inputs is not None for _, inputs, _, _ in chunk]
        found += [checks.get("white_cells") for _, checks in decoded]
        if decoded:
            parts.append(predictor.forward(np.stack([array for array, _ in decoded])))
        meter.advance(len(chunk))
    meter.close()
    if not parts:
        size = predictor.input_size
        return predictor.forward(np.zeros((0, size, size, 3), np.float32)), readable
    return with_white_cells(Outputs(np.concatenate([p.logits for p in parts]),
                                    np.concatenate([p.features for p in parts])),
                            None if all(c is None for c in found) else found), readable


class _Progress:
    """`done/total images (rate/s)` on one stderr line: rewritten in place on a terminal,
    written once at the end elsewhere (a log would hold every state joined by carriage returns
    in one long line)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.done, self.start = total, enabled, 0, time.time()
        self.live = enabled and sys.stderr.isatty()

    def line(self) -> str:
        rate = self.done / max(time.time() - self.start, 1e-9)
        return f"{self.done}/{self.total} images ({rate:.0f}/s)"

    def advance(self, n: int) -> None:
        self.done += n
        if self.live:
            print(f"\r{self.line()}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.total:
            print("" if self.live else self.line(), file=sys.stderr)
