"""How many orientations of each image to serve: a model's validation figures on 1, 4 and 8.

    python -m training.views saved_model/NAME

The folder's Keras model classifies each of its validation images (splits.json: val, decoded
and preprocessed as served) once in each of the eight orientations of `training.export.view`;
a model serving `v` views averages the logits of the first `v`, as `serving_model` does.
Accuracy and NLL are before calibration (T = 1): the temperature is fitted after the views are
chosen. Writes views.json into the folder; `python -m training.export --tta-views N` serves
the count chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from hematovision.batch import decoded_chunks  # noqa: E402
from hematovision.card import read_card, served_views  # noqa: E402
from hematovision.predictor import KERAS_FILE, Predictor  # noqa: E402
from training.calibrate import nll  # noqa: E402

JSON_FILE = "views.json"
# Written on 2026-12-02 before any eight-view figure was computed (README: "Test-time
# augmentation"), and the same for every model.
RULE = ("serve 8 views instead of 4 only if validation accuracy rises by at least 0.002 and "
        "validation NLL does not rise")


def orientation_logits(model, paths: list[Path], size: int, crop: str) -> np.ndarray:
    """(8, images, classes): the model's log-probabilities (logits up to a per-image constant,
    which neither the mean over views nor the softmax sees) for each orientation."""
    from training.export import VIEW_NAMES, view

    out = []
    for chunk in decoded_chunks(paths, size, crop):
        for path, array, error in chunk:
            if array is None:  # a validation image: nothing to skip it for
                raise SystemExit(f"{path}: {error}")
        batch = np.stack([array for _, array, _ in chunk])
        out.append([np.log(np.maximum(model.predict_on_batch(np.asarray(view(batch, v))),
                                      1e-30)) for v in range(len(VIEW_NAMES))])
    return np.concatenate(out, axis=1)


def compare(logits: np.ndarray, labels: np.ndarray, counts=(1, 4, 8)) -> dict:
    """Accuracy and NLL (T = 1) of the mean over the first v orientations, for each v."""
    figures = {}
    for v in counts:
        mean = logits[:v].mean(axis=0)
        figures[str(v)] = {"accuracy": round(float(np.mean(mean.argmax(axis=1) == labels)), 4),
                           "nll": round(nll(mean, labels), 4)}
    return figures


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
    logits = orientation_logits(model, [root / f for f in files], predictor.input_size,
                                predictor.crop)
    return {"split": "splits.json:val", "images": len(files),
            "before_calibration": compare(logits, labels), "served": served_views(card),
            "rule": RULE, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.views",
        description="Validation accuracy and NLL of a model served on 1, 4 and 8 orientations.",
        epilog="example: python -m training.views saved_model/wbc4",
    )
    parser.add_argument("folder", type=Path, help="an exported model folder")
    parser.add_argument("--data", type=Path, default=None,
                        help="the data it was trained on, where the card's path does not resolve")
    args = parser.parse_args(argv)
    result = measure(args.folder, args.data)
    (args.folder / JSON_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["before_calibration"]))


if __name__ == "__main__":
    main()
