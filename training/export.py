"""Export a trained run into a self-describing `saved_model/NAME/` folder.

The folder holds the Keras model (source of truth), the LiteRT file the app serves, and
`model_card.json` with the preprocessing contract, training config, initialisation, data and
metrics. The conversion checks itself against the Keras model on a fixed batch.
`python -m training.export RUN_DIR --name NAME`
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from hematovision.card import CARD_FILE, read_card, replace_file, write_card  # noqa: E402
from hematovision.predictor import (KERAS_FILE, MODELS_ROOT_VARIABLE, SERVING_FILE,  # noqa: E402
                                     Predictor, models_root)
from hematovision.preprocess import RESAMPLE_NAME  # noqa: E402
from hematovision.trust import softmax  # noqa: E402
from training.calibrate import TEMPERATURE_FITS, fit_trust  # noqa: E402
from training.views import (TTA_VIEWS, VIEW_NAMES, add_views_option, check_views,  # noqa: E402
                            orientation_log_probabilities, unview, view)

TOLERANCE = 1e-4  # max abs difference of probabilities, LiteRT vs Keras
RUN_FILES = ("config.json", "splits.json", "summary.json", "metrics.csv", "refit_metrics.csv",
             "curves.png", "crossfit.npz", "crossfit.json")


ARCHITECTURE = "MobileNetV2 (alpha 1.0) + global average pooling + dropout + dense softmax"
# The layer of an ensemble (training.ensemble) that joins its members' last feature maps.
JOINED_MAPS = "member_maps"

# Intermediate layers whose globally pooled activations join the final embedding for the
# unfamiliar-image score: low and middle layers see colour, texture and staining statistics
# that the final, class-specific embedding no longer separates (a blank field or a gradient can
# land near a class mean there). One per resolution stage of MobileNetV2.
PROBE_LAYERS = ("block_2_add", "block_5_add", "block_9_add", "block_12_add", "block_15_add")


def serving_model(model: keras.Model, views: int = TTA_VIEWS) -> keras.Model:
    """image -> [logits, unfamiliarity features, last feature maps]: the trained classifier
    opened up at its pooling layer ("pool") and dense head ("head"). The features are the global
    averages of the `PROBE_LAYERS` present, then the pooled embedding (see `probe_layout`).
    With `views` > 1, all three are means over the first `views` orientations of `VIEW_NAMES`
    (the maps turned back first, so a class activation map still decomposes the averaged logit
    and lies on the image). The softmax moves to serving, where the temperature applies."""
    check_views(views)
    image = keras.Input(model.input_shape[1:], name="image")
    x = keras.ops.concatenate([view(image, v) for v in range(views)]) if views > 1 else image
    present = [n for n in PROBE_LAYERS if _find_layer(model, n) is not None]
    _, taps = _apply_with_taps(model, x, ["pool:input", "pool", *present])
    maps, pooled = taps["pool:input"], taps["pool"]
    probes = [keras.layers.GlobalAveragePooling2D(name=f"probe_{n}")(taps[n]) for n in present]
    features = keras.layers.Concatenate(name="probes")([*probes, pooled]) if probes else pooled
    head = _find_layer(model, "head")
    dense = keras.layers.Dense(head.units, name="logits")
    logits = dense(pooled)
    if views > 1:
        logits, features = _view_mean(logits, views), _view_mean(features, views)
        by_view = _by_view(maps, views)
        maps = keras.ops.mean(keras.ops.stack([unview(by_view[v], v) for v in range(views)]),
                              axis=0)
    served = keras.Model(image, [logits, features, maps], name="hematovision_serving")
    dense.set_weights(head.get_weights())
    return served


def _by_view(batch, views: int):
    """(views * n, ...) stacked view by view -> (views, n, ...)."""
    return keras.ops.reshape(batch, (views, -1, *batch.shape[1:]))


def _view_mean(batch, views: int):
    return keras.ops.mean(_by_view(batch, views), axis=0)


def probe_layout(model: keras.Model) -> list[dict]:
    """The layers behind the served unfamiliarity features, in order, with their widths: each
    is one set of class Gaussians in the trust layer (`training.calibrate`)."""
    layers = [n for n in PROBE_LAYERS if _find_layer(model, n) is not None]
    layout = [{"layer": n, "dim": int(_find_layer(model, n).output.shape[-1])} for n in layers]
    joined = _find_layer(model, JOINED_MAPS)
    if joined is None:
        pooled = _find_layer(model, "pool")
        return layout + [{"layer": "pool", "dim": int(pooled.output.shape[-1])}]
    # An ensemble's pooled embedding is its members' side by side (training.ensemble). Each
    # member's part gets Gaussians of its own, as each layer does: one Gaussian over the joined
    # embedding would store and invert a covariance that grows with the square of the members.
    return layout + [{"layer": "pool", "member": i, "dim": int(maps.shape[-1])}
                     for i, maps in enumerate(joined.input)]


def _find_layer(model: keras.Model, name: str):
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            found = _find_layer(layer, name)
            if found is not None:
                return found
    return None


def _apply_with_taps(model: keras.Model, x, wanted: list[str]):
    """(model(x), {name: tensor}) with the `wanted` layers' outputs ("NAME:input": a layer's
    input). Nested models (bottom, trainable) chained one after another are followed, so the
    taps can sit at any depth; every layer still runs once."""
    def base(name: str) -> str:
        return name.split(":")[0]

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)
              and any(_find_layer(layer, base(w)) is not None for w in wanted)]
    if not nested:
        own = [w for w in wanted if base(w) in {layer.name for layer in model.layers}]
        tensors = [model.get_layer(base(w)).input if w.endswith(":input")
                   else model.get_layer(base(w)).output for w in own]
        y, *found = keras.Model(model.inputs, [*model.outputs, *tensors])(x)
        return y, dict(zip(own, found))
    taps = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if layer in nested:
            x, found = _apply_with_taps(layer, x, wanted)
            taps.update(found)
        else:
            x = layer(x)
    return x, taps


def convert_to_tflite(model: keras.Model, path: Path, views: int = TTA_VIEWS) -> None:
    """float32 LiteRT flatbuffer (an int8 conversion ran slower than float32 on this CPU)."""
    # from_keras_model, not from_concrete_functions: the latter silently produced NaN-only
    # models for Keras 3 (its variables were not captured); check_export guards against it.
    converter = tf.lite.TFLiteConverter.from_keras_model(serving_model(model, views))
    # The converter prints the traced signature (hundreds of "Saved artifact ... Captures"
    # lines) on stdout, where export's only output is the model folder's path, and in a log
    # they bury everything else: kept back, and shown only when the conversion fails, where
    # they may say why.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            flatbuffer = converter.convert()
    except Exception:
        sys.stderr.write(printed.getvalue())
        raise
    replace_file(Path(path), flatbuffer)


def check_export(model: keras.Model, model_dir: Path, views: int = TTA_VIEWS,
                 seed: int = 0) -> float:
    """Max abs probability difference between the trained Keras model (its softmax, averaged
    over the `views` orientations in logit space) and the served LiteRT file on a fixed
    batch (before any calibration: the temperature is fitted after this check)."""
    rng = np.random.default_rng(seed)
    size = model.input_shape[1]
    batch = rng.uniform(-1, 1, (8, size, size, 3)).astype(np.float32)
    expected = reference_probabilities(model, batch, views)
    served = softmax(Predictor(model_dir).forward(batch).logits)
    difference = float(np.max(np.abs(expected - served)))
    if not difference <= TOLERANCE:  # also catches NaN
        raise RuntimeError(f"LiteRT export differs from Keras by {difference:.2e} > {TOLERANCE}")
    return difference


def reference_probabilities(model: keras.Model, batch: np.ndarray, views: int = TTA_VIEWS
                            ) -> np.ndarray:
    """What the served model must compute, from the trained Keras model itself: the softmax
    of its logits averaged over the first `views` orientations (`view`)."""
    return softmax(np.mean(orientation_log_probabilities(model, batch, views), axis=0))


def export_model(model: keras.Model, out_dir: Path, card: dict, crop: str = "none",
                 views: int = TTA_VIEWS) -> dict:
    """Write model.keras, model.tflite and model_card.json into `out_dir`; returns the card.
    `views`: how many orientations of each image the served model averages (`serving_model`)."""
    check_views(views)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A clone carries the weights without the training optimizer's state (2x the size).
    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    model = clean
    model.save(out_dir / KERAS_FILE)
    convert_to_tflite(model, out_dir / SERVING_FILE, views)
    size = int(model.input_shape[1])
    card = {
        "name": out_dir.name,
        "architecture": ARCHITECTURE,
        "input_size": [size, size, 3],
        "preprocessing": {
            "decode": "Pillow; EXIF orientation applied; first frame; any mode converted to RGB "
                      "(transparency flattened on white)",
            "resize": f"{size}x{size}, {RESAMPLE_NAME}, aspect ratio not kept",
            "scaling": "x / 127.5 - 1 (range [-1, 1])",
            "crop": crop,
            "function": "hematovision.preprocess.preprocess",
        },
        "files": {"keras": KERAS_FILE, "serving": SERVING_FILE},
        "test_time_augmentation": {
            "views": list(VIEW_NAMES[:views]),
            "combined": "mean of the logits (and of the unfamiliarity features and maps)",
        } if views > 1 else None,
        # The served unfamiliarity features, layer by layer (see serving_model).
        "unfamiliarity_features": probe_layout(model),
        **card,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_card(out_dir, card)
    card["export_check"] = {
        "max_abs_probability_difference_litert_vs_keras": check_export(model, out_dir, views),
        "tolerance": TOLERANCE,
    }
    write_card(out_dir, card)
    return card


# A model's name is its folder under saved_model/ and its address in the app (/models/NAME).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_target(name: str, classes: list[str], root: Path | None = None,
                 replace: bool = False) -> None:
    """Refuse an export name that the app would not serve, or one that would replace a model
    of other classes (the committed default among them) unless `replace`; run before training,
    so that hours of it do not end in either. A new version of the same classes replaces the
    old one: that is how a model is retrained."""
    if not MODEL_NAME.fullmatch(name):
        raise SystemExit(f"Model name {name!r}: use one folder name of letters, digits, '.', "
                         "'_' and '-' (it becomes saved_model/NAME and the app's /models/NAME)")
    folder = Path(root or models_root()) / name
    if (folder / CARD_FILE).is_file() and not replace:
        old = read_card(folder).get("classes")
        if old != classes:
            raise SystemExit(f"{folder} holds a model of other classes ({', '.join(old or [])}); "
                             f"exporting this one ({', '.join(classes)}) would replace it: choose "
                             "another name, or pass --replace")


def finished_run(run_dir: Path) -> tuple[dict, dict]:
    """(summary, config) of a finished training run folder, or a clear exit."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise SystemExit(f"{run_dir} is not a training run folder (no config.json)")
    if not (run_dir / "summary.json").is_file():
        raise SystemExit(
            f"{run_dir} has not finished (no summary.json): `python -m training.train --resume "
            f"{run_dir}` goes on with it; its best model so far, {run_dir / 'checkpoint.keras'}, "
            "can start a new run (--weights)")
    return (json.loads((run_dir / "summary.json").read_text()),
            json.loads((run_dir / "config.json").read_text()))


def export_run(run_dir: Path, name: str, root: Path | None = None, description: str = "",
               expects: str = "", trust: bool = True, views: int = TTA_VIEWS,
               replace: bool = False, temperature_fit: str = "nll") -> Path:
    """Export the model of a training run folder to `root/name`, with its config and split,
    then fit its trust layer on the run's training and validation images."""
    run_dir = Path(run_dir)
    summary, config = finished_run(run_dir)
    root = Path(root or models_root())
    out_dir = root / name
    # Re-exporting a model folder in place (after a change of the serving format) keeps the
    # name of the run it came from.
    in_place = out_dir.resolve() == run_dir.resolve()
    if not in_place:
        check_target(name, summary["classes"], root, replace)
    run_folder = run_dir.name
    if (out_dir / CARD_FILE).is_file():
        # A new version of a served model keeps its description unless given a new one; a
        # model of other classes under the old name does not inherit words about the old one.
        old = read_card(out_dir)
        if old.get("classes") == summary["classes"]:
            description, expects = description or old["description"], expects or old["expects"]
        if in_place:
            run_folder = old["training"]["run_folder"]
    if warning := run_warning(summary, config):
        log(f"{warning}. Exported anyway: check it before serving it")
    model = keras.models.load_model(run_dir / KERAS_FILE, compile=False)
    card = {
        "description": description,
        "expects": expects,
        "classes": summary["classes"],
        "initialisation": _initialisation(summary["initialisation"], config["weights"]),
        "training": {
            "config": config,
            "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"],
            "refit_on_all_training_data": summary["refit_on_all_training_data"],
            "trained_on": summary["trained_on"],
            "split_counts": summary["counts"],
            "train_seconds": summary["train_seconds"],
            "run_folder": run_folder,
        },
        "validation": summary["validation"],
        "metrics": {},
    }
    if "members" in summary:  # training.ensemble
        count = len(summary["members"])
        card["training"]["members"] = summary["members"]
        card["architecture"] = (
            # --combine weights: one network
            f"{ARCHITECTURE} (every weight the mean of {count} runs' weights)"
            if summary.get("combined") == "weights" else
            f"{count} MobileNetV2 (alpha 1.0) networks sharing their frozen blocks below block "
            f"{config['tune_from_block']}, their last feature maps joined + global average "
            f"pooling + dropout + one dense softmax holding each member's head / {count} (the "
            "mean of the members' logits)")
    export_model(model, out_dir, card, crop=config.get("crop", "none"), views=views)
    if not in_place:
        for file in RUN_FILES:
            if (run_dir / file).is_file():
                shutil.copy2(run_dir / file, out_dir / file)
            else:  # left by an earlier model of this name
                (out_dir / file).unlink(missing_ok=True)
        # Measured on the earlier model (training.ece_spread, training.views); the
        # ablation table stays: it is the history of recipes behind this name.
        for measured in ("ece_spread.json", "views.json"):
            (out_dir / measured).unlink(missing_ok=True)
    # The card's metrics start empty: figures measured on an earlier export go with them.
    for kind in ("confusion", "reliability", "coverage"):
        for stale in out_dir.glob(f"{kind}_*.png"):
            stale.unlink()
    if trust:
        fit_trust(out_dir, progress=False, temperature_fit=temperature_fit)
    return out_dir


def run_warning(summary: dict, config: dict) -> str | None:
    """The chance-level warning the run ended with (`train.stalled`), also for a run whose
    summary predates it being kept there."""
    if "stalled" in summary:
        return summary["stalled"]
    from training.train import stalled

    epochs = summary.get("epochs_run")  # an ensemble's: a list, one per member
    return stalled(summary.get("validation", {}), len(summary["classes"]),
                   isinstance(epochs, int) and epochs >= config.get("epochs", 0) > 0)


def log(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


def _initialisation(recorded: str, weights: str) -> str:
    """The run's own description, completed with the weights' provenance if it lacked it."""
    from training.model import weights_provenance

    origin = weights_provenance(weights) if weights not in ("none", "imagenet") else ""
    return recorded if not origin or origin in recorded else f"{recorded} [{origin}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.export",
        description="Export a training run folder to saved_model/NAME (Keras + LiteRT + card).",
        epilog="example: python -m training.export runs/20261123-101500-mobilenetv2-224 --name wbc4",
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--root", type=Path, default=None,
                        help=f"the folder of model folders to export into (default "
                             f"${MODELS_ROOT_VARIABLE} where set, else saved_model/), as the "
                             "app's MODELS_ROOT")
    parser.add_argument("--description", default="", help="one line for the model card")
    parser.add_argument("--expects", default="", help="what images the model expects (shown in the app)")
    parser.add_argument("--no-trust", dest="trust", action="store_false",
                        help="skip fitting the trust layer (calibration, abstention, unfamiliar "
                             "images); `python -m training.calibrate` can fit it later")
    add_views_option(parser, "serve")
    parser.add_argument("--replace", action="store_true",
                        help="let the export replace a model of other classes under NAME")
    parser.add_argument("--temperature-fit", choices=sorted(TEMPERATURE_FITS), default="nll",
                        help="fit the calibration temperature by lowest NLL (default) or lowest "
                             "ECE on the held-out logits")
    args = parser.parse_args(argv)
    print(export_run(args.run_dir, args.name, args.root, args.description, args.expects,
                     args.trust, args.tta_views, args.replace, args.temperature_fit))


if __name__ == "__main__":
    main()
