"""Test-time views: the orientations a served model averages, and how many to serve.

Cells have no up or down, so the served model (`training.export.serving_model`) may classify
each image in several orientations and average them: the first 4 of `VIEW_NAMES` are the flips,
all 8 every orientation of a square.

    python -m training.views saved_model/NAME

measures the folder's validation accuracy and NLL on 1, 4 and 8 views: its Keras model
classifies each validation image (splits.json: val, decoded and preprocessed as served) once in
each orientation, and serving `v` views averages the logits of the first `v`, as the served
graph does. Where the folder's crossfit (`training.crossfit`) kept every orientation, the same
figures on its out-of-fold logits follow: every smear of train + val, each scored by a fold
model that never saw it, all counts on the same fold models. The figures are before calibration
(T = 1): the temperature is fitted after the views are chosen. Writes views.json into the
folder; `python -m training.export --tta-views N` serves the count chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from hematovision.card import read_card  # noqa: E402
from hematovision.predictor import KERAS_FILE, Predictor  # noqa: E402
from training.data import preprocessed_batches  # noqa: E402

VIEW_NAMES = ("as is", "flipped left-right", "flipped up-down", "both",
              "mirrored on the diagonal", "turned 90° clockwise", "turned 90° anticlockwise",
              "mirrored on the other diagonal")
VIEW_COUNTS = (1, 4, 8)  # one view, the flips, or every orientation
TTA_VIEWS = 4  # the default: chosen on validation accuracy (README: "Test-time augmentation")
JSON_FILE = "views.json"
# Written on 2026-12-02 before any eight-view figure was computed, the same for every model.
RULE = ("serve 8 views instead of 4 only if validation accuracy rises by at least 0.002 and "
        "validation NLL does not rise")


def check_views(views: int) -> None:
    if views not in VIEW_COUNTS:
        raise ValueError(f"test-time views must be one of {VIEW_COUNTS}, got {views!r}")


def view(images, v: int):
    """Orientation `v` of a batch of square images (or feature maps), numbered as `VIEW_NAMES`:
    the bit 4 transposes, then the bit 1 flips left-right and the bit 2 up-down. Works on
    numpy arrays and on Keras tensors inside a graph (keras.ops)."""
    import keras  # here, not at import: the command lines read the names without TensorFlow

    if v & 4:
        images = keras.ops.transpose(images, (0, 2, 1, 3))
    if v & 1:
        images = keras.ops.flip(images, axis=2)
    if v & 2:
        images = keras.ops.flip(images, axis=1)
    return images


def unview(images, v: int):
    """The inverse of `view`: the flips (each its own inverse), then the transpose."""
    import keras

    images = view(images, v & 3)
    return keras.ops.transpose(images, (0, 2, 1, 3)) if v & 4 else images


def per_orientation(predict, batch: np.ndarray, views: int = len(VIEW_NAMES)) -> np.ndarray:
    """(views, n, ...): `predict` (a batch in, an array out) on each of the first `views`
    orientations of the batch."""
    return np.stack([predict(np.asarray(view(batch, v))) for v in range(views)])


def orientation_log_probabilities(model, batch: np.ndarray, views: int = len(VIEW_NAMES)
                                  ) -> np.ndarray:
    """(views, n, classes): a trained Keras classifier's log-probabilities for the first
    `views` orientations of the batch. They are its logits up to a per-image constant, which
    neither the mean over views nor the softmax sees."""
    return np.log(np.maximum(per_orientation(model.predict_on_batch, batch, views), 1e-30))


def compare(log_probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and NLL (T = 1) of the mean over the first v orientations, for each count."""
    return {str(v): _scores(mean, labels) for v, mean in _view_means(log_probabilities)}


def _view_means(log_probabilities: np.ndarray):
    """(v, mean over the first v orientations) for each count of views."""
    return ((v, log_probabilities[:v].mean(axis=0)) for v in VIEW_COUNTS)


def _scores(mean: np.ndarray, labels: np.ndarray) -> dict:
    from training.calibrate import nll  # calibrate reads crossfit, which reads these names

    return {"accuracy": round(float(np.mean(mean.argmax(axis=1) == labels)), 4),
            "nll": round(nll(mean, labels), 4)}


def measure(folder: Path, data: Path | None = None) -> dict:
    import keras

    folder = Path(folder)
    card = read_card(folder)
    root = Path(data or card["training"]["config"]["data"])
    if not root.is_dir():
        raise SystemExit(f"{root}, the data {folder.name} was trained on, is not a folder from "
                         f"here ({Path.cwd()}): run where training ran, or pass --data DIR")
    files = json.loads((folder / "splits.json").read_text()).get("val")
    if not files:
        raise SystemExit(f"{folder}/splits.json has no validation images")
    predictor = Predictor(folder)  # the input size and crop the model is served with
    labels = np.array([predictor.classes.index(f.split("/", 1)[0]) for f in files])
    model = keras.models.load_model(folder / KERAS_FILE, compile=False)
    log_probabilities = np.concatenate(
        [orientation_log_probabilities(model, batch) for batch in preprocessed_batches(
            [root / f for f in files], predictor.input_size, predictor.crop)], axis=1)
    # Which count is served is the card's to say (`hematovision.card.served_views`).
    return {"split": "splits.json:val", "images": len(files),
            "before_calibration": compare(log_probabilities, labels),
            **out_of_fold(folder), "rule": RULE,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def out_of_fold(folder: Path) -> dict:
    """{"out_of_fold": figures of each count} from the folder's crossfit, where it kept the
    logits of every orientation (its "by_views"); else nothing."""
    from training.crossfit import JSON_FILE as CROSSFIT_JSON

    path = folder / CROSSFIT_JSON
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if "by_views" not in summary:
        return {}
    return {"out_of_fold": {k: summary.get(k) for k in ("images", "groups", "folds")}
            | {"before_calibration": summary["by_views"]}}


def out_of_fold_at_temperature(folder: Path) -> dict:
    """Per count of views: out-of-fold accuracy, NLL, the temperature that minimises that NLL
    and the NLL at it, and the confusion matrix (rows the true class, columns the predicted
    one, in the model's class order), from the folder's crossfit.npz (a run folder or a model
    folder). Two recipes whose logits differ in scale (mixup, label smoothing) compare on the
    NLL after that one-parameter fit, as the served pipeline applies a fitted temperature
    anyway; the matrix shows which confusions a recipe changes, not only how many."""
    from training.calibrate import fit_temperature, nll
    from training.crossfit import NPZ_FILE
    from training.evaluate import confusion

    path = Path(folder) / NPZ_FILE
    if not path.is_file():
        raise SystemExit(f"{folder} has no {NPZ_FILE}: run `python -m training.crossfit "
                         f"{folder}` first")
    with np.load(path) as saved:
        view_logits, labels = saved["view_logits"], saved["labels"]
    figures = {}
    for v, mean in _view_means(view_logits):
        t = fit_temperature(mean, labels)
        figures[str(v)] = _scores(mean, labels) | {
            "temperature": round(t, 4), "nll_at_temperature": round(nll(mean, labels, t), 4),
            "confusion": confusion(labels, mean.argmax(axis=1), mean.shape[1]).tolist()}
    return figures


def add_views_option(parser: argparse.ArgumentParser, verb: str) -> None:
    """--tta-views N and its shorthand --no-tta, for export and crossfit alike."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tta-views", type=int, choices=VIEW_COUNTS, default=TTA_VIEWS,
                       help=f"{verb} the mean over this many orientations of each image: the "
                            "4 flips (default) or those and their transposes (8); each costs "
                            "one forward pass")
    group.add_argument("--no-tta", dest="tta_views", action="store_const", const=1,
                       help=f"{verb} one view per image (same as --tta-views 1)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.views",
        description="Validation accuracy and NLL of a model served on 1, 4 and 8 orientations.",
        epilog="example: python -m training.views saved_model/wbc4",
    )
    parser.add_argument("folder", type=Path, help="an exported model folder")
    parser.add_argument("--data", type=Path, default=None,
                        help="the data it was trained on, where the card's path does not resolve")
    parser.add_argument("--out-of-fold", action="store_true",
                        help="only print the out-of-fold figures of the folder's crossfit.npz "
                             "(a run or model folder), with each count's NLL-fitted temperature "
                             "and the NLL at it; runs no model and writes nothing")
    args = parser.parse_args(argv)
    if args.out_of_fold:
        print(json.dumps(out_of_fold_at_temperature(args.folder)))
        return
    result = measure(args.folder, args.data)
    (args.folder / JSON_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["before_calibration"]))


if __name__ == "__main__":
    main()
