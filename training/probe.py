"""Linear probe: how well a backbone's frozen features separate the classes, out of fold.

A recipe trial on `wbc4` (train, then a five-fold crossfit) costs an hour and a half on two
cores. Pooling one layer's activations and fitting a regularised logistic regression on the same
folds costs minutes per backbone, so candidate initialisations (what a `--weights` file brings to
the layers a run freezes) can be ranked before any of them is fine-tuned. The probe is a pointer
for choosing the next trial, not a model: nothing it fits is served.

    python -m training.probe saved_model/wbc4 --weights weights/pbc8-b11/model.keras \
        weights/pbc8-b7-ema/model.keras weights/dog_breed_mobilenetv2.h5 --out saved_model/wbc4/probe.json
    python -m training.probe saved_model/wbc4 --weights NEW.keras --append   # one more row

The folder must hold a crossfit (`training.crossfit`): its images, labels and folds are the ones
probed, so probe figures sit beside the recipes' out-of-fold figures on the same smears. The
images are read from the folder's `config.json` data path (or `--data`), decoded and cropped as
served.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from hematovision.preprocess import crop_fraction
from training.calibrate import nll
from training.config import TrainConfig
from training.crossfit import NPZ_FILE
from training.data import class_weights
from training.views import TTA_VIEWS, check_views

LAYER = "block_13_project_BN"  # the cut of the 4-class recipe: what its frozen part hands on
LAMBDAS = (0.001, 0.01, 0.1)  # L2 strengths (per standardised feature), each reported
JSON_FILE = "probe.json"
# --head probe's strength: the grid's middle, the best for the served wbc4's initialisation
# (probe table), fixed before the first run that used it, not tuned on any held-out figure.
HEAD_L2 = 0.01


def fit_linear(features: np.ndarray, labels: np.ndarray, classes: int, l2: float,
               sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(weights, bias) of a multinomial logistic regression: mean cross-entropy (weighted by
    `sample_weight`, where given) + l2 * |W|^2, minimised by L-BFGS from zero (convex, so the
    result does not depend on a seed)."""
    d = features.shape[1]
    onehot = np.eye(classes)[labels]
    share = (np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, float))
    share = (share / share.sum())[:, None]

    def loss_and_gradient(flat: np.ndarray):
        w, b = flat[:-classes].reshape(d, classes), flat[-classes:]
        log_p = log_softmax(features @ w + b, axis=1)
        residual = (np.exp(log_p) - onehot) * share
        loss = -(onehot * log_p * share).sum() + l2 * (w ** 2).sum()
        gradient = np.concatenate([(features.T @ residual + 2 * l2 * w).ravel(),
                                   residual.sum(axis=0)])
        return loss, gradient

    result = minimize(loss_and_gradient, np.zeros(d * classes + classes), jac=True,
                      method="L-BFGS-B", options={"maxiter": 1000})
    return result.x[:-classes].reshape(d, classes), result.x[-classes:]


def out_of_fold_logits(features: np.ndarray, labels: np.ndarray, folds: np.ndarray,
                       l2: float) -> np.ndarray:
    """Each fold's logits from a probe fitted on the other folds, features standardised with
    the other folds' mean and spread (a held-out fold's labels and statistics never reach it)."""
    classes = int(labels.max()) + 1
    logits = np.zeros((len(labels), classes))
    for k in np.unique(folds):
        train, held = folds != k, folds == k
        w, b = standardised_fit(features[train], labels[train], classes, l2)
        logits[held] = features[held] @ w + b
    return logits


def standardised_fit(features: np.ndarray, labels: np.ndarray, classes: int, l2: float,
                     sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`fit_linear` on features standardised by their own mean and spread (so that `l2` means
    the same for every layer and backbone), returned as (weights, bias) of the raw features."""
    mean, spread = features.mean(axis=0), features.std(axis=0) + 1e-6
    w, b = fit_linear((features - mean) / spread, labels, classes, l2, sample_weight)
    return w / spread[:, None], b - (mean / spread) @ w


def fit_head(classifier, x, y: np.ndarray, class_balance: bool = True,
             l2: float = HEAD_L2) -> float:
    """`--head probe` (LP-FT; Kumar et al. 2022, "Fine-tuning can distort pretrained features
    and underperform out-of-distribution"): set `classifier`'s dense head to a linear probe of
    its pooled features, as they stand, over the fit's training examples `x` (cut-layer
    activations, or `OnlineViews`, of which only the cached clean views), weighted as the loss
    will weigh them. Fine-tuning then starts from a head that already separates the classes.
    Returns the probe's accuracy on those examples (for the log)."""
    clean = getattr(x, "clean", None)
    if clean is not None:  # online views: the cached clean views come first
        x, y = clean, y[:len(clean)]
    features = classifier.embed.predict(x, batch_size=256, verbose=0).astype(np.float64)
    classes = int(classifier.head.units)
    weight_of = class_weights(list(y), classes) if class_balance else {}
    sample_weight = np.array([weight_of.get(int(c), 1.0) for c in y])
    kernel, bias = standardised_fit(features, y, classes, l2, sample_weight)
    classifier.head.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return float(np.mean((features @ kernel + bias).argmax(axis=1) == y))


def figures(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict:
    correct = logits.argmax(axis=1) == labels
    return {"accuracy": round(float(correct.mean()), 4), "nll": round(nll(logits, labels), 4),
            "per_fold": [round(float(correct[folds == k].mean()), 4) for k in np.unique(folds)]}


def embed(weights: str, paths: list[Path], config: TrainConfig, layer: str, views: int
          ) -> tuple[np.ndarray, str]:
    """(images, channels) pooled activations of `layer`, averaged over the first `views`
    orientations, under a MobileNetV2 initialised from `weights` as training would; and the
    initialisation's description."""
    import keras

    from training.data import preprocessed_batches
    from training.model import build_backbone, init_backbone
    from training.views import per_orientation

    backbone = build_backbone(config.input_size)
    initialisation = init_backbone(backbone, weights)
    try:
        cut = backbone.get_layer(layer).output
    except ValueError:
        raise SystemExit(f"MobileNetV2 has no layer {layer!r} (e.g. {LAYER})") from None
    pooled = keras.layers.GlobalAveragePooling2D()(cut)
    tap = keras.Model(backbone.input, pooled)
    batches = [per_orientation(tap.predict_on_batch, batch, views).mean(axis=0)
               for batch in preprocessed_batches(paths, config.input_size, config.crop)]
    return np.concatenate(batches).astype(np.float64), initialisation


class OtherSetting(ValueError):
    """An earlier probe (`--append`) of another layer, views, crop, crossfit or L2 grid."""


def probe(folder: Path, weights: list[str], data: Path | None = None, layer: str = LAYER,
          views: int = TTA_VIEWS, lambdas: tuple[float, ...] = LAMBDAS,
          previous: dict | None = None, crop: str | None = None) -> dict:
    """`previous`: an earlier probe whose rows these are added to (`--append`); its setting is
    checked before any image is read, as probing costs minutes per initialisation. `crop`: the
    images cropped so instead of as the folder's model was trained (ValueError if unknown);
    each row records its crop, the setting the folder's."""
    check_views(views)
    config = TrainConfig.load(folder / "config.json")
    folder_crop = config.crop
    if crop is not None:
        crop_fraction(crop)
        config = replace(config, crop=crop)
    root = Path(data or config.data)
    with np.load(folder / NPZ_FILE) as arrays:
        files, labels, folds = list(arrays["files"]), arrays["labels"], arrays["folds"]
    setting = {"layer": layer, "views": views, "crop": folder_crop, "images": len(files),
               "folds": int(len(np.unique(folds))), "crossfit": str(folder / NPZ_FILE),
               "l2": list(lambdas)}
    if previous is not None:
        for key, value in setting.items():
            if previous.get(key) != value:
                raise OtherSetting(f"the earlier probe has {key} {previous.get(key)!r}, this "
                                   f"one {value!r}: their rows do not compare")
    results = []
    for source in weights:
        started = time.perf_counter()
        features, initialisation = embed(source, [root / f for f in files], config, layer, views)
        log(f"{source}: {features.shape[1]} features of {len(files)} images")
        results.append({
            "weights": source, "crop": config.crop, "initialisation": initialisation,
            "features": features.shape[1],
            "by_l2": {str(l2): figures(out_of_fold_logits(features, labels, folds, l2),
                                       labels, folds) for l2 in lambdas},
            "seconds": round(time.perf_counter() - started, 1)})
    if previous is not None:  # a row of the same weights and crop is replaced, others kept
        probed = {(source, config.crop) for source in weights}
        results = [row for row in previous["probes"]
                   if (row["weights"], row_crop(row, previous)) not in probed] + results
    return setting | {"probes": results}


def row_crop(row: dict, result: dict) -> str:
    """The crop a row's images were cut with (rows written before --crop: the setting's)."""
    return row.get("crop", result["crop"])


def log(message: str) -> None:
    print(f"[probe] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.probe",
        description="Rank backbone initialisations by a linear probe of one frozen layer, out "
                    "of fold on a crossfit's images and folds (minutes per backbone instead of "
                    "a fine-tuning trial's hour and more).",
        epilog="example: python -m training.probe saved_model/wbc4 --weights "
               "weights/pbc8-b11/model.keras weights/dog_breed_mobilenetv2.h5")
    parser.add_argument("folder", type=Path,
                        help="a run or saved_model folder with crossfit.npz and config.json")
    parser.add_argument("--weights", nargs="+", required=True,
                        help="initialisations to probe: files (.keras/.h5, layers copied by "
                             "name, as --weights of training.train) or none")
    parser.add_argument("--data", type=Path, default=None,
                        help="the ImageFolder root, where the folder's recorded path does not "
                             "resolve")
    parser.add_argument("--layer", default=LAYER, help=f"the layer pooled (default {LAYER})")
    parser.add_argument("--views", type=int, default=TTA_VIEWS,
                        help="orientations averaged per image: 1, 4 (default) or 8")
    parser.add_argument("--crop", default=None,
                        help="crop the images so (none, nucleus or nucleus:F) instead of as "
                             "the folder's config.json says: a pointer for the crop of a "
                             "trial, as the weights are for its initialisation; each row "
                             "records its crop")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the figures (default FOLDER/{JSON_FILE})")
    parser.add_argument("--append", action="store_true",
                        help="add these rows to the figures already in the output file (same "
                             "layer, views, crossfit and L2 grid), replacing rows of the same "
                             "weights and crop")
    args = parser.parse_args(argv)
    if not (args.folder / NPZ_FILE).is_file():
        parser.error(f"{args.folder} has no {NPZ_FILE}: run python -m training.crossfit first")
    for source in args.weights:
        if source != "none" and not Path(source).is_file():
            parser.error(f"--weights {source}: no such file")
    try:
        check_views(args.views)
        if args.crop is not None:
            crop_fraction(args.crop)
    except ValueError as error:
        parser.error(str(error))
    out = args.out or args.folder / JSON_FILE
    if args.append and not out.is_file():
        parser.error(f"--append: {out} does not exist yet")
    previous = json.loads(out.read_text()) if args.append else None
    try:
        result = probe(args.folder, args.weights, args.data, args.layer, args.views,
                       previous=previous, crop=args.crop)
    except OtherSetting as error:
        parser.error(f"--append to {out}: {error}")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["probes"]:
        best = max(row["by_l2"].items(), key=lambda item: item[1]["accuracy"])
        print(f"{row['weights']}, crop {row_crop(row, result)}: out-of-fold accuracy "
              f"{best[1]['accuracy']} (NLL {best[1]['nll']}) at l2 {best[0]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
