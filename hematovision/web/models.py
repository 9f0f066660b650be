"""The models the app serves: loaded once per process, looked up by folder name.

Every complete folder under MODELS_ROOT (model_card.json + model.tflite) is loaded when the app
is created, so a corrupt model fails at startup with one clear error instead of on a user's
request, and no request pays the load time. A model's plots are read then too: a researcher
who exports a retrained model into the same folder while the app runs must not get a model
page that shows the new run's plots beside the card of the model still served; that page says
instead that the folder changed and the app needs a restart (`changed_on_disk`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from flask import Flask, current_app

from hematovision.card import CARD_FILE, ModelLoadError
from hematovision.cells import OTHER_WHITE_CELL, display_name
from hematovision.differential import EXCLUDED
from hematovision.predictor import DEFAULT_MODEL, SERVING_FILE, Predictor, available_models
from hematovision.trust import TRUST_FILE, check_accuracy_target
from hematovision.web import setting_name

# Names the review page's lists (`review_lists.REVIEW_LISTS`) and the reviewer's own verdicts
# (a white cell of a type the model does not name, an exclusion) take: a class of a served model
# named so would have its cells listed, or counted, as something else.
RESERVED_CLASS_NAMES = ("", "all", "no-white-cell", "not-a-cell", "near-threshold",
                        "over-exposed", OTHER_WHITE_CELL, EXCLUDED)
# ... and the characters that part the review page's list of the verdicts it showed.
RESERVED_CLASS_CHARACTERS = ",="
RESERVED_CLASS = (
    "The model {name!r} names a class {label!r}, which the app keeps for its own use (review "
    "lists and the reviewer's exclusion: {reserved}; no class name may hold {characters}): "
    "rename that class's training folder and train and export the model again.")
# Two classes the pages name alike ("smudge_cell" and "smudge-cell" are both "Smudge cell"),
# or one named as a reviewer's own verdict is: a reviewer could not tell which they choose.
SAME_NAME = (
    "The model {name!r} names classes {labels} that the pages would show as one name, "
    "{shown!r}: rename one class's training folder and train and export the model again.")

# Images of a model folder the model page may show; anything else there (the model files, the
# card, run logs) is not served.
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.png")
IMAGE_ORDER = ("confusion_test.png", "curves.png")  # the two the model page is about
IMAGE_CAPTIONS = {
    "confusion_test.png": "Confusion matrix on the test set (rows: true class, columns: predicted)",
    "curves.png": "Training and validation loss and accuracy per epoch",
}
# Per-evaluation figures written by training.evaluate: <prefix><evaluation name>.png
RELIABILITY_PREFIX = "reliability_"
COVERAGE_PREFIX = "coverage_"
PREFIX_CAPTIONS = {
    "confusion_": "Confusion matrix on {} (rows: true class, columns: predicted)",
    RELIABILITY_PREFIX: "Reliability diagram on {}: accuracy against confidence, before and "
    "after calibration",
    COVERAGE_PREFIX: "Accuracy on accepted images against the share accepted on {}, for every "
    "confidence threshold; dots: the operating points",
}


def init_app(app: Flask) -> None:
    """Load every model under MODELS_ROOT and pick the default one."""
    root = Path(app.config["MODELS_ROOT"])
    names = available_models(root)
    default = app.config.get("DEFAULT_MODEL")
    if not default:
        if not names:
            raise ModelLoadError(
                f"No model found in {root.resolve()}: a model is a folder holding "
                "model_card.json and model.tflite. Train and export one with "
                "`python -m training.train --data DIR --export NAME` (README, 'Training on your "
                "own data'), restore saved_model/ from git, or set HEMATOVISION_MODELS_ROOT to a "
                "folder of models."
            )
        default = DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]
    threads = int(app.config["LITERT_THREADS"])
    target = accuracy_target(app.config.get("ACCURACY_TARGET"))
    if default not in names and (not (root / str(default)).is_dir()
                                 or Path(str(default)).name != str(default)):
        raise ModelLoadError(
            f"{setting_name('DEFAULT_MODEL')} names {str(default)!r}, which is not a model "
            f"folder in {root.resolve()}; the models there are "
            f"{', '.join(names) if names else 'none'}.")
    predictors = {name: Predictor(root / name, threads, target) for name in names}
    if default not in predictors:  # an explicit default that is incomplete: Predictor says why
        predictors[default] = Predictor(root / str(default), threads, target)
    for name, predictor in predictors.items():
        taken = [c for c in predictor.classes
                 if c in RESERVED_CLASS_NAMES or set(c) & set(RESERVED_CLASS_CHARACTERS)]
        if taken:
            raise ModelLoadError(RESERVED_CLASS.format(
                name=name, label=taken[0],
                reserved=", ".join(repr(c) for c in RESERVED_CLASS_NAMES),
                characters=" or ".join(repr(c) for c in RESERVED_CLASS_CHARACTERS)))
        shown: dict[str, list[str]] = {}
        for label in [*predictor.classes, OTHER_WHITE_CELL, EXCLUDED]:
            shown.setdefault(display_name(label).casefold(), []).append(label)
        if alike := next((labels for labels in shown.values() if len(labels) > 1), None):
            raise ModelLoadError(SAME_NAME.format(
                name=name, labels=" and ".join(repr(c) for c in alike),
                shown=display_name(alike[0])))
    app.extensions["predictors"] = predictors
    app.extensions["model_plots"] = {name: _read_plots(p.model_dir)
                                     for name, p in predictors.items()}
    app.extensions["model_stamps"] = {name: _stamp(p.model_dir) for name, p in predictors.items()}
    app.config["DEFAULT_MODEL"] = str(default)


def _read_plots(model_dir: Path) -> dict[str, bytes]:
    """A model folder's PNG images (a few hundred KB), the known ones first."""
    present = sorted(p.name for p in model_dir.iterdir()
                     if p.is_file() and IMAGE_NAME.fullmatch(p.name))
    ordered = [n for n in IMAGE_ORDER if n in present] + [n for n in present
                                                         if n not in IMAGE_ORDER]
    return {name: (model_dir / name).read_bytes() for name in ordered}


def _stamp(model_dir: Path) -> tuple:
    """What changes when a model is exported or calibrated again into its folder: its card,
    serving file and trust layer's modification times and sizes (None for one missing)."""
    def of(path: Path):
        try:
            found = os.stat(path)
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size
    return of(model_dir / CARD_FILE), of(model_dir / SERVING_FILE), of(model_dir / TRUST_FILE)


def changed_on_disk(name: str) -> bool:
    """Whether model `name`'s folder holds another model than the one this process loaded
    (exported again, or removed): the served model stays the loaded one until a reload."""
    return _stamp(get(name).model_dir) != current_app.extensions["model_stamps"][name]


def accuracy_target(value) -> float | None:
    """The ACCURACY_TARGET setting as a number (None: the model cards' own targets)."""
    if value is None or value == "":
        return None
    setting = "The setting ACCURACY_TARGET (environment variable HEMATOVISION_ACCURACY_TARGET)"
    try:
        if isinstance(value, bool):
            raise TypeError
        target = float(value)
    except (TypeError, ValueError):
        raise ModelLoadError(f"{setting} must be a number such as 0.95, not {value!r}.") \
            from None
    try:
        check_accuracy_target(target)
    except ValueError as exc:
        raise ModelLoadError(f"{setting}: {exc}") from None
    return target


def names() -> list[str]:
    return list(current_app.extensions["predictors"])


def default_name() -> str:
    return current_app.config["DEFAULT_MODEL"]


def get(name: str | None) -> Predictor | None:
    """The predictor of model `name` (the default when empty), or None if there is none."""
    return current_app.extensions["predictors"].get(name or default_name())


def unknown_model_message(name: str) -> str:
    return f"Unknown model {name!r}; available models: {', '.join(names())}."


def images(name: str) -> list[str]:
    """File names of the PNG images of model `name` as loaded, the known ones first."""
    return list(current_app.extensions["model_plots"][name])


def image(name: str, file_name: str) -> bytes | None:
    """One of those images, as loaded; None for a name that is not one of them."""
    return current_app.extensions["model_plots"][name].get(file_name)


def trust_images(file_names: list[str]) -> list[str]:
    """The reliability diagrams and coverage plots among a model folder's images, in the given
    order: they belong with the calibration and abstention figures."""
    return [f for f in file_names if f.startswith((RELIABILITY_PREFIX, COVERAGE_PREFIX))]


def caption(file_name: str) -> str:
    if file_name in IMAGE_CAPTIONS:
        return IMAGE_CAPTIONS[file_name]
    for prefix, text in PREFIX_CAPTIONS.items():
        if file_name.startswith(prefix):
            return text.format(file_name.removeprefix(prefix).removesuffix(".png"))
    return file_name.removesuffix(".png").replace("_", " ").replace("-", " ").capitalize()
