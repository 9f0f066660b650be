"""Fit a model folder's trust layer on its own training and validation images.

    python -m training.calibrate --model wbc4

Runs at export (`training.export`) and on demand. Everything is fitted through the serving path
(`hematovision.batch.forward_files`) and only on the model's training and validation splits:
- per layer (a few intermediate layers and the final embedding, globally pooled), class means
  and a shared covariance (Ledoit-Wolf shrinkage) from the training images: the unfamiliar-image
  score is the largest over the layers of the squared Mahalanobis distance to the nearest class
  mean, each layer's divided by its median on validation;
- the temperature (minimum negative log-likelihood) and the abstention threshold (smallest
  calibrated confidence at which the accepted images reach the target accuracy): on the
  out-of-fold logits of `training.crossfit` where the folder has them, else on validation;
- on validation: the unfamiliar-image threshold (a high quantile of the validation images'
  distances), and the figures that check the whole fit.
Writes `trust.npz` and the card's "trust" section; the test sets are never read here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from hematovision.batch import forward_files
from hematovision.card import read_card, served_views, write_card
from hematovision.predictor import KERAS_FILE, Predictor, add_model_options, model_dir_of
from hematovision.preprocess import crop_fraction
from hematovision.trust import (ABSTAIN_ON_ALL, ACCEPTED, NOT_A_CELL, UNIDENTIFIED,
                                WHITE_CELL_RULE, LayerGaussians, Trust, TRUST_FILE,
                                cholesky_whitening, layer_distances, parse_accuracy_target,
                                repack, save_trust_arrays, softmax, statuses,
                                threshold_for_target, threshold_words, unsure)
from training import crossfit

ECE_BINS = 15
TARGET_ACCURACY = 0.99  # accepted held-out cells (out-of-fold, else validation) should be
#   right at least this often
# Other targets a lab may serve at (HEMATOVISION_ACCURACY_TARGET, predict --accuracy-target):
# the card lists the threshold and accepted share of each, evaluations their test figures.
OPERATING_TARGETS = (0.9, 0.95, 0.97, 0.99)
OOD_QUANTILE = 0.99  # share of in-domain validation images that must pass as familiar
# Fewer held-out images than this under a threshold: warned about and said in the card. The
# 0.99 accuracy target and the 0.99 unfamiliarity quantile each turn on the worst 1 % of the
# images: 2 of 200, and not even one image below 100, where the threshold is set by the single
# most extreme image (and real cells of the next slide land beyond it).
MIN_CALIBRATION_IMAGES = 200
# The NLL fit's search range of the temperature (golden-section search on log T).
TEMPERATURE_SEARCH = (0.05, 20.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    return _nll_of(softmax(logits, temperature), labels)


def _nll_of(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p, 1e-12))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = TEMPERATURE_SEARCH[0],
                    high: float = TEMPERATURE_SEARCH[1]) -> float:
    """The temperature minimising the NLL of held-out logits (golden-section search on log T;
    the NLL of temperature scaling is unimodal in T)."""
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return math.exp((a + b) / 2)


# Temperatures searched for the lowest ECE: log-spaced, fine enough that ECE (a step function
# of the temperature) changes little between neighbours.
TEMPERATURE_GRID = np.geomspace(0.25, 8.0, 801)
TEMPERATURE_GRID_TEXT = "801 log-spaced temperatures, 0.25 to 8"
# How the temperature is fitted on the held-out logits. NLL punishes a confident mistake without
# bound, so a few confidently wrong smears pull its temperature up and leave every other answer
# underconfident; the lowest ECE is what the displayed confidence is judged by.
TEMPERATURE_FITS = {
    "nll": "the temperature minimising the negative log-likelihood",
    "ece": f"the temperature with the lowest expected calibration error ({ECE_BINS} bins; "
           f"grid: {TEMPERATURE_GRID_TEXT})",
}


def lowest_ece_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature of TEMPERATURE_GRID with the lowest ECE on these logits (the first, on
    a tie)."""
    eces = [reliability(softmax(logits, t), labels)["ece"] for t in TEMPERATURE_GRID]
    return float(TEMPERATURE_GRID[int(np.argmin(eces))])


def temperature_at_bound(temperature: float, criterion: str) -> str | None:
    """A warning where the fitted temperature sits on an end of its search (within 1 %): the
    held-out logits did not set it. At the top, their best fit is no confidence at all (a model
    that learned nothing: every cell comes back unidentified); at the bottom, they are all
    right with margins too wide to calibrate on (too few or too easy held-out images)."""
    low, high = ((TEMPERATURE_SEARCH) if criterion == "nll"
                 else (float(TEMPERATURE_GRID[0]), float(TEMPERATURE_GRID[-1])))
    if temperature >= high / 1.01:
        return (f"warning: temperature {temperature:.3f} is the upper bound of its search "
                f"({low:g} to {high:g}): the held-out images give the model's answers no "
                "confidence, as for a model that learned nothing (every cell would come back "
                "unidentified). Check the run's validation figures before serving it")
    if temperature <= low * 1.01:
        return (f"warning: temperature {temperature:.3f} is the lower bound of its search "
                f"({low:g} to {high:g}): the held-out images are all right by wide margins, "
                "too few or too easy to calibrate on")
    return None


def served_temperature(fitted: float, criterion: str, correct: np.ndarray
                       ) -> tuple[float, str | None]:
    """The temperature a card serves, and its note where the held-out logits did not set it.
    Held-out images all right (`correct`) hold no error to calibrate on: every sharpening fits
    them better, so the fit runs to its lower bound, or to wherever their probabilities round
    to 1. Served, that would make the model's first wrong answer certain (a probability of
    1e-100 for the right class), so the model's own confidences (temperature 1) are served
    instead. At the upper bound the fit stands: every cell unidentified is the honest answer of
    a model that learned nothing."""
    if correct.all():
        return 1.0, (f"Not calibrated: the {len(correct)} held-out images are all right, so "
                     f"every sharpening fits them better (the fit ran to temperature "
                     f"{fitted:.3f}): too few or too easy to calibrate on, the model's own "
                     "confidences are served (temperature 1). Hold out more images, or run "
                     "training.crossfit")
    warning = temperature_at_bound(fitted, criterion)
    if warning is None:
        return fitted, None
    note = warning.removeprefix("warning: ")
    return fitted, note[0].upper() + note[1:]


def calibration_size(confidence_images: int, unfamiliarity_images: int) -> dict:
    """The card's record of how many held-out images the thresholds rest on, with a note
    where either is below MIN_CALIBRATION_IMAGES (the app may show it beside the trust
    layer)."""
    fewest = min(confidence_images, unfamiliarity_images)
    record = {"confidence_threshold_images": confidence_images,
              "unfamiliarity_threshold_images": unfamiliarity_images,
              "minimum_advised": MIN_CALIBRATION_IMAGES,
              "below_minimum": fewest < MIN_CALIBRATION_IMAGES}
    if record["below_minimum"]:
        record["note"] = (f"The thresholds rest on {fewest} held-out images (fewer than "
                          f"{MIN_CALIBRATION_IMAGES}): each is set by the one or two most "
                          "extreme of them, so expect more real cells unidentified or flagged "
                          "not a cell than the targets say")
    return record


def fit_temperature_by(criterion: str, logits: np.ndarray, labels: np.ndarray) -> float:
    if criterion not in TEMPERATURE_FITS:
        raise SystemExit(f"Unknown temperature fit {criterion!r}; use one of "
                         f"{', '.join(TEMPERATURE_FITS)}")
    if criterion == "ece":
        return lowest_ece_temperature(logits, labels)
    return fit_temperature(logits, labels)


# Compared held out beside TEMPERATURE_FITS, not served (README, "Fitting the temperature by
# ECE": it failed its rule): the temperature and one bias per class, fitted together by NLL
# (Alexandari, Kundaje and Shrikumar 2020). Unlike a temperature it can change the top class,
# so it could undo what the class-balanced loss costs plain accuracy.
BIAS_CORRECTED = "bcts"


def fit_bias_corrected_temperature(logits: np.ndarray, labels: np.ndarray
                                   ) -> tuple[float, np.ndarray]:
    """(T, b) minimising the NLL of softmax(logits / T + b), the first class's bias fixed at 0
    (a shift common to all classes changes nothing). Convex in (1 / T, b): L-BFGS from T = 1,
    b = 0."""
    from scipy.optimize import minimize  # requirements-train.txt; the app never calibrates
    from scipy.special import log_softmax

    logits = np.asarray(logits, np.float64)
    onehot = np.eye(logits.shape[1])[labels]

    def loss_and_gradient(params):
        scale, bias = params[0], np.concatenate([[0.0], params[1:]])
        log_p = log_softmax(logits * scale + bias, axis=1)
        residual = (np.exp(log_p) - onehot) / len(labels)  # d loss / d scores, as in the probe
        gradient = np.concatenate([[np.sum(residual * logits)], residual.sum(axis=0)[1:]])
        return -(onehot * log_p).sum() / len(labels), gradient

    start = np.concatenate([[1.0], np.zeros(logits.shape[1] - 1)])
    fitted = minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B").x
    return 1.0 / fitted[0], np.concatenate([[0.0], fitted[1:]])


def compare_temperature_fits(logits: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict:
    """Each criterion of TEMPERATURE_FITS, and BIAS_CORRECTED, judged on data it was not fitted
    on: for every fold, fitted on the other folds' logits and scored (ECE, NLL, accuracy) on
    this one's; "pooled" scores all folds' held-out probabilities together.
    What choosing the criterion may rest on without looking at a test set."""
    logits = np.asarray(logits, np.float64)
    forms = (*TEMPERATURE_FITS, BIAS_CORRECTED)
    result: dict = {"folds": [], **{c: {"ece": [], "nll": [], "accuracy": [], "temperature": []}
                                    for c in forms}}
    result[BIAS_CORRECTED]["bias"] = []
    held_out = {c: np.zeros_like(logits) for c in forms}
    for k in np.unique(folds):
        fit, held = folds != k, folds == k
        result["folds"].append(int(k))
        for form in forms:
            if form == BIAS_CORRECTED:
                t, bias = fit_bias_corrected_temperature(logits[fit], labels[fit])
                p = softmax(logits[held] / t + bias)
                result[form]["bias"].append([round(float(b), 4) for b in bias])
            else:
                t = fit_temperature_by(form, logits[fit], labels[fit])
                p = softmax(logits[held], t)
            held_out[form][held] = p
            result[form]["temperature"].append(round(t, 4))
            for key, value in _held_out_scores(p, labels[held]).items():
                result[form][key].append(value)
    for form in forms:
        result[form]["pooled"] = _held_out_scores(held_out[form], labels)
    return result


def _held_out_scores(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    return {"accuracy": round(float(np.mean(probabilities.argmax(axis=1) == labels)), 4),
            "nll": round(_nll_of(probabilities, labels), 4),
            "ece": round(reliability(probabilities, labels)["ece"], 4)}


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per confidence bin (equal width on [0, 1]): count, mean confidence, accuracy; and the
    expected calibration error, the count-weighted mean |accuracy - confidence|."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts, conf, acc = [], [], []
    for b in range(bins):
        members = index == b
        counts.append(int(members.sum()))
        conf.append(float(confidence[members].mean()) if members.any() else None)
        acc.append(float(correct[members].mean()) if members.any() else None)
    n = max(len(labels), 1)
    ece = sum(c / n * abs(a - f) for c, a, f in zip(counts, acc, conf) if c)
    return {"bins": bins, "ece": float(ece), "counts": counts, "confidence": conf,
            "accuracy": acc}


def operating_points(confidence: np.ndarray, correct: np.ndarray,
                     targets: Sequence[float]) -> list[dict]:
    """Per accuracy target: the threshold the abstention rule chooses on these held-out images,
    the share of them it accepts and their accuracy."""
    points = []
    for target in targets:
        threshold = threshold_for_target(confidence, correct, target)
        accepted = ~unsure(confidence, threshold)
        points.append({
            "target_accuracy": target, "confidence_threshold": threshold,
            "accepted_rate": round(float(accepted.mean()), 4),
            "accuracy_accepted": (round(float(correct[accepted].mean()), 4)
                                  if accepted.any() else None)})
    return points


def operating_figures(confidence: np.ndarray, correct: np.ndarray, unfamiliar: np.ndarray,
                      points: Sequence[dict], no_white_cell: np.ndarray | None = None
                      ) -> list[dict]:
    """The statuses and accepted accuracy of evaluated images at each of a card's operating
    points (thresholds chosen on held-out images, never on these); `no_white_cell` marks the
    images the status rule never accepts for want of a white cell (trust.statuses)."""
    figures = []
    for point in points:
        threshold = point["confidence_threshold"]
        status = statuses(confidence, unfamiliar, threshold, no_white_cell)
        figures.append({"target_accuracy": point["target_accuracy"],
                        "confidence_threshold": threshold, **status_rates(status, correct)})
    return figures


def status_rates(statuses: Sequence[str], correct: np.ndarray | None = None) -> dict:
    """Share of each status and, given which answers were right, the accuracy of the accepted
    ones (None when none was accepted)."""
    status = np.asarray(statuses)
    n = max(len(status), 1)
    rates = {f"{s}_rate": round(float(np.sum(status == s)) / n, 4)
             for s in (ACCEPTED, UNIDENTIFIED, NOT_A_CELL)}
    if correct is not None:
        accepted = status == ACCEPTED
        rates["accuracy_accepted"] = (round(float(np.asarray(correct)[accepted].mean()), 4)
                                      if accepted.any() else None)
    return rates


def fit_class_gaussians(embeddings: np.ndarray, labels: np.ndarray, num_classes: int
                        ) -> tuple[np.ndarray, np.ndarray, float]:
    """Class means, the whitening matrix W of the shared within-class covariance
    (W @ W.T = its inverse) and the Ledoit-Wolf shrinkage used: 1280 dimensions from a few
    thousand images need shrinkage towards a scaled identity to be invertible and stable.
    W is the inverse's lower Cholesky factor, so that it is stored as its lower triangle
    (`trust.save_trust_arrays`): half the bytes, the same distances."""
    x = np.asarray(embeddings, dtype=np.float64)
    means = np.stack([x[labels == c].mean(axis=0) if np.any(labels == c)
                      else np.zeros(x.shape[1]) for c in range(num_classes)])
    residuals = x - means[labels]
    n, dim = residuals.shape
    sample = residuals.T @ residuals / n
    mu = np.trace(sample) / dim
    spread = np.sum((sample - mu * np.eye(dim)) ** 2)
    squared_norms = np.sum(residuals**2, axis=1)
    noise = (np.sum(squared_norms**2) / n - np.sum(sample**2)) / n
    shrinkage = float(min(max(noise, 0.0), spread) / spread) if spread > 0 else 1.0
    covariance = shrinkage * mu * np.eye(dim) + (1 - shrinkage) * sample
    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, 1e-12 * max(values.max(), 1e-12))
    return means, cholesky_whitening(vectors / np.sqrt(values)), shrinkage


def head_weights(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The dense head's kernel (d, classes) and bias, read from the Keras model."""
    import keras

    from training.export import _find_layer

    model = keras.models.load_model(Path(model_dir) / KERAS_FILE, compile=False)
    kernel, bias = _find_layer(model, "head").get_weights()
    return kernel, bias


def labelled_outputs(predictor: Predictor, root: Path, files: list[str], progress: bool):
    """Served outputs and class indices (the model's order) for ImageFolder-relative files."""
    classes = predictor.classes
    labels = np.array([classes.index(f.split("/", 1)[0]) for f in files])
    # Its progress is rewritten in place with \r: on a terminal only (one huge line in a log).
    outputs, readable = forward_files(predictor, [root / f for f in files],
                                      progress and sys.stderr.isatty())
    return outputs, labels[np.array(readable, dtype=bool)] if files else labels


def fit_trust(model_dir: Path, data: Path | None = None, target: float = TARGET_ACCURACY,
              ood_quantile: float = OOD_QUANTILE, progress: bool = True,
              temperature_fit: str | None = None) -> dict:
    """Fit and store the trust layer of `model_dir` (see the module docstring); returns the
    card's new "trust" section. `temperature_fit` (TEMPERATURE_FITS): how the temperature is
    fitted; None keeps the card's earlier choice (NLL for a card that has none)."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    temperature_fit = temperature_fit or card.get("trust", {}).get("temperature_fit", "nll")
    root = Path(data or card["training"]["config"]["data"])
    if not root.is_dir():
        # The card keeps --data as training was given it, often relative to where it ran.
        raise SystemExit(f"{root}, the data {model_dir.name} was trained on, is not a folder "
                         f"from here ({Path.cwd()}): run where training ran, or pass --data DIR")
    split = json.loads((model_dir / "splits.json").read_text())
    if not split.get("val"):
        raise SystemExit(f"{model_dir}/splits.json has no validation images to calibrate on.")
    predictor = Predictor(model_dir)  # its current trust layer is never used below: raw outputs
    # Only the training split: images with no known source may be siblings of validation
    # images, and Gaussians fitted on those make validation look more familiar than a new
    # smear is, which sets the threshold too low.
    fit_files = split["train"]
    log(f"fitting class Gaussians on {len(fit_files)} training images of {root}")
    fit_out, fit_labels = labelled_outputs(predictor, root, fit_files, progress)
    layout = card.get("unfamiliarity_features") or [
        {"layer": "pool", "dim": int(fit_out.features.shape[1])}]
    bounds = np.cumsum([0, *(g["dim"] for g in layout)])
    fitted = [fit_class_gaussians(fit_out.features[:, a:b], fit_labels, len(predictor.classes))
              for a, b in zip(bounds[:-1], bounds[1:])]
    log(f"calibrating on {len(split['val'])} validation images")
    val_out, val_labels = labelled_outputs(predictor, root, split["val"], progress)

    # Out-of-fold logits (training.crossfit), where the folder has them, cover every training
    # smear instead of the few validation ones; the model's own validation images then check
    # the fit below.
    oof = crossfit.load(model_dir, served_views(card))
    fit_logits, fit_truth = (oof["logits"], oof["labels"]) if oof else (val_out.logits, val_labels)
    fitted_temperature = fit_temperature_by(temperature_fit, fit_logits, fit_truth)
    temperature, temperature_note = served_temperature(
        fitted_temperature, temperature_fit, fit_logits.argmax(axis=1) == fit_truth)
    if temperature_note:
        log(f"warning: {temperature_note}")
    size = calibration_size(len(fit_truth), len(val_labels))
    if size["below_minimum"]:
        log(f"warning: {size['note'][0].lower()}{size['note'][1:]}. Hold out more images "
            "(--val-fraction, more sources), or run training.crossfit, whose out-of-fold "
            "logits cover every training image")
    fitted_probabilities = softmax(fit_logits, temperature)
    held_out_confidence = fitted_probabilities.max(axis=1)
    held_out_correct = fitted_probabilities.argmax(axis=1) == fit_truth
    threshold = threshold_for_target(held_out_confidence, held_out_correct, target)
    if threshold >= ABSTAIN_ON_ALL:
        log(f"warning: no confidence threshold reached {target:g} accuracy on the "
            f"{len(fit_truth)} held-out images: every cell will be sent to review. Serve at a "
            "lower target (--target-accuracy here, ACCURACY_TARGET in the app) or improve the "
            "model")
    calibrated = softmax(val_out.logits, temperature)
    confidence = calibrated.max(axis=1)
    correct = calibrated.argmax(axis=1) == val_labels
    # Each layer's distances are divided by their validation median, so that the score (the
    # largest over the layers) weighs a 24-d and a 1280-d layer alike; ~1 for a typical image.
    unscaled = [LayerGaussians(means, whitening) for means, whitening, _ in fitted]
    raw = layer_distances(tuple(unscaled), val_out.features)
    scales = np.maximum(np.median(raw, axis=0), 1e-12)
    layers = [LayerGaussians(g.means, g.whitening, float(s)) for g, s in zip(unscaled, scales)]
    scores = (raw / scales).max(axis=1)
    # Rounded (up: never looser) as the card stores them, so the validation figures below are
    # those of the rule as served.
    ood_threshold = round_up(float(np.quantile(scores, ood_quantile)))
    kernel, bias = head_weights(model_dir)
    trust = Trust(temperature, threshold, ood_threshold, tuple(layers), kernel, bias)
    missing = val_out.without_white_cell()
    rates = status_rates([trust.status(c, s, m) for c, s, m in zip(confidence, scores, missing)],
                         correct)
    save_trust_arrays(model_dir, layers, kernel, bias, held_out_confidence, held_out_correct)

    refit = bool(card.get("training", {}).get("refit_on_all_training_data"))
    section = {
        "temperature": round(temperature, 4),
        "temperature_fit": temperature_fit,
        "temperature_rule": TEMPERATURE_FITS[temperature_fit],
        # Where the fit ran to an end of its search: what it gave, and what was done.
        **({"temperature_fitted": round(fitted_temperature, 4),
            "temperature_note": temperature_note} if temperature_note else {}),
        "confidence_threshold": threshold,
        "target_accuracy": target,
        # Fitted in sample: the accepted shares of the images the thresholds were chosen on.
        "operating_points": operating_points(held_out_confidence, held_out_correct,
                                             sorted({*OPERATING_TARGETS, target})),
        "rule": (f"Unidentified below the smallest calibrated confidence at which the accepted "
                 f"{'out-of-fold' if oof else 'validation'} images are at least {target:.0%} "
                 "correct."),
        **({"white_cell_rule": WHITE_CELL_RULE} if crop_fraction(predictor.crop) else {}),
        "ood": {
            "method": ("largest over the layers of the squared Mahalanobis distance of the "
                       "layer's globally pooled activations to the nearest class mean (shared "
                       "covariance, Ledoit-Wolf shrinkage), divided by its validation median"),
            "layers": [{**g, "validation_median": round(float(s), 2),
                        "shrinkage": round(shrinkage, 4)}
                       for g, s, (_, _, shrinkage) in zip(layout, scales, fitted)],
            "threshold": ood_threshold,
            "quantile": ood_quantile,
            "rule": (f"not_a_cell above the {ood_quantile:.0%} quantile of the validation "
                     "images' scores"),
        },
        "fitted_on": {
            "data": str(root),
            "class_gaussians": {"splits": ["train"], "images": len(fit_labels)},
            "temperature_and_confidence_threshold": (
                {"source": f"out-of-fold logits ({crossfit.NPZ_FILE})", "folds": oof["folds"],
                 "images": len(fit_truth), "groups": oof["groups"],
                 "accuracy": oof["accuracy"]} if oof else
                {"source": "validation split", "images": len(val_labels)}),
            "unfamiliarity_threshold": {"split": "val", "images": len(val_labels)},
        },
        # A refit model has trained on its validation images: its calibration is optimistic.
        "validation_seen_in_training": refit,
        "validation": {
            "n": len(val_labels),
            "accuracy": round(float(correct.mean()), 4),
            "nll_before": round(nll(val_out.logits, val_labels), 4),
            "nll_after": round(nll(val_out.logits, val_labels, temperature), 4),
            "ece_before": round(reliability(softmax(val_out.logits), val_labels)["ece"], 4),
            "ece_after": round(reliability(calibrated, val_labels)["ece"], 4),
            **{k: rates[k] for k in ("accepted_rate", "accuracy_accepted", "not_a_cell_rate")},
        },
        # How many held-out images the thresholds rest on, and a note where too few.
        "calibration_size": size,
        "files": {"arrays": "trust.npz"},
    }
    card["trust"] = section
    write_card(model_dir, card)
    log(f"temperature {temperature:.3f}, confidence threshold {threshold_words(threshold)}, "
        f"unfamiliarity threshold {ood_threshold:.3f}; validation {section['validation']}")
    return section


def round_up(value: float, decimals: int = 4) -> float:
    return math.ceil(value * 10**decimals) / 10**decimals


def log(message: str) -> None:
    print(f"[calibrate] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.calibrate",
        description="Fit a saved model's trust layer (temperature, abstention and "
                    "unfamiliar-image thresholds, class Gaussians) on its training and "
                    "validation splits.",
        epilog="example: python -m training.calibrate --model wbc4",
    )
    add_model_options(parser)
    parser.add_argument("--data", type=Path, default=None,
                        help="the training ImageFolder (default: the one in the model card)")
    parser.add_argument("--target-accuracy", type=parse_accuracy_target, default=TARGET_ACCURACY,
                        help="accepted held-out cells are right at least this often "
                             f"(default {TARGET_ACCURACY})")
    parser.add_argument("--ood-quantile", type=float, default=OOD_QUANTILE)
    parser.add_argument("--temperature-fit", choices=sorted(TEMPERATURE_FITS), default=None,
                        help="fit the temperature by lowest NLL or lowest ECE on the held-out "
                             "logits (default: the card's earlier choice, else nll)")
    parser.add_argument("--repack", action="store_true",
                        help="only rewrite the folder's trust.npz in the current storage "
                             "(whitening matrices as packed lower triangles, half the bytes), "
                             "refitting nothing")
    args = parser.parse_args(argv)
    model_dir = model_dir_of(args)
    if args.repack:
        if not (model_dir / TRUST_FILE).is_file():
            raise SystemExit(f"{model_dir} has no {TRUST_FILE} to repack")
        print(repack(model_dir))
        return
    section = fit_trust(model_dir, args.data, args.target_accuracy, args.ood_quantile,
                        temperature_fit=args.temperature_fit)
    print(json.dumps(section, indent=2))


if __name__ == "__main__":
    main()
