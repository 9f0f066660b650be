"""How far the batch page's differential is from the truth, with and without reviewing the
cells the model sets aside, on batches of cells drawn from a model's test images.

    python -m training.differential --model wbc4 --data ../shared/data/kaggle_blood_cells/test --record
    python -m training.differential --model pbc8 --data ../shared/data/pbc \
        --split-file saved_model/pbc8/splits.json --record

The served model reads every test image once (the app's path: calibration, statuses). Batches
of --cells white cells are then drawn, --draws times (seeded), in two compositions: the test
set's own class shares, and a normal adult differential (NORMAL_DIFFERENTIAL, over the model's
white-cell classes) as a lab's typical film would have it; within a class, images are drawn at
random with replacement. Each batch's differential is counted three ways, as the app would:

- "accepted only": the accepted cells by the model's class, what the batch page shows before
  anyone reviews (unidentified and not-a-cell images left out);
- "no trust layer": every image by its top class, what a classifier without abstention shows;
- "unidentified reviewed": the accepted cells plus the unidentified ones counted by their true
  class, what it shows once a technologist (taken to be right) has reviewed them.

For each: the mean share of each class over the draws against the batch's true share (the bias),
the mean absolute error of each share in percentage points, and the mean of those over the
classes; and how many cells of a batch went to review. Only white cells are shares, as on the
batch page. The same at each of the card's operating points (the thresholds a server's
ACCURACY_TARGET chooses among): how many cells a lab reviews, and how far the differential is
before and after, at each accuracy target.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hematovision.card import DIFFERENTIAL, record_metrics
from hematovision.cells import is_white_cell
from hematovision.differential import NORMAL_FILM
from hematovision.predictor import Predictor, add_model_options, model_dir_of
from hematovision.trust import ACCEPTED, NOT_A_CELL, UNIDENTIFIED
from hematovision.trust import statuses as statuses_at
from training.evaluate import add_data_options, data_label, open_model, read_labelled

# A normal adult differential (shares of the white cells), inside the catalog's adult reference
# intervals (`cells.CellType.reference_percent`: neutrophils 40-70 %, lymphocytes 20-40 %,
# monocytes 2-8 %, eosinophils 1-4 %, basophils 0-1 %). Classes a normal film lacks (immature
# granulocytes, ...) get none.
NORMAL_DIFFERENTIAL = {"neutrophil": 0.60, "lymphocyte": 0.30, "monocyte": 0.06,
                       "eosinophil": 0.03, "basophil": 0.01}
WAYS = ("accepted only", "no trust layer", "unidentified reviewed")
EVERY_CELL_RIGHT = "every cell named right"
CELLS = 100  # a manual differential's count
DRAWS = 2000


def compositions(truth: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """The class shares batches are drawn with: the test set's own (its white cells), and the
    normal adult differential over the model's white classes that have test images
    (renormalised to 1); only the first where none of those is in NORMAL_DIFFERENTIAL."""
    white = [c for c in classes if is_white_cell(c)]
    counts = {c: int((truth == classes.index(c)).sum()) for c in white}
    total = sum(counts.values())
    if not total:
        raise SystemExit(f"No test image of a white-cell class of the model ({', '.join(white)}):"
                         " there is no differential to measure")
    found = {"test set": {c: n / total for c, n in counts.items()}}
    normal = {c: NORMAL_DIFFERENTIAL.get(c, 0.0) if counts[c] else 0.0 for c in white}
    if sum(normal.values()):
        found[NORMAL_FILM] = {c: s / sum(normal.values()) for c, s in normal.items()}
    return found


def batch_counts(composition: dict[str, float], cells: int) -> dict[str, int]:
    """Whole cells per class for one batch, summing to `cells` (largest remainders)."""
    exact = {c: share * cells for c, share in composition.items()}
    counts = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: counts[c] - exact[c])[:cells - sum(counts.values())]:
        counts[c] += 1
    return counts


def counted(labels: np.ndarray, statuses: np.ndarray, truth: np.ndarray, way: str
            ) -> np.ndarray:
    """The class each image adds to the differential counted `way` (-1: not counted); a way
    beside WAYS, EVERY_CELL_RIGHT, counts every image as its true class (the counting alone)."""
    if way == EVERY_CELL_RIGHT:
        return truth
    if way == "no trust layer":
        return labels
    accepted = np.where(statuses == ACCEPTED, labels, -1)
    if way == "accepted only":
        return accepted
    return np.where(statuses == UNIDENTIFIED, truth, accepted)


def simulate(truth: np.ndarray, labels: np.ndarray, statuses: np.ndarray, classes: list[str],
             composition: dict[str, float], cells: int = CELLS, draws: int = DRAWS,
             seed: int = 0) -> dict:
    """The three differentials of `draws` batches of `cells` white cells drawn with
    `composition` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    white = [classes.index(c) for c in composition]
    per_class = batch_counts(composition, cells)
    pools = {classes.index(c): np.flatnonzero(truth == classes.index(c)) for c in composition}
    shares = {way: [] for way in WAYS}
    reviewed = []
    for _ in range(draws):
        batch = np.concatenate([rng.choice(pools[classes.index(c)], n, replace=True)
                                for c, n in per_class.items() if n])
        reviewed.append(int((statuses[batch] == UNIDENTIFIED).sum()))
        for way in WAYS:
            kept = counted(labels[batch], statuses[batch], truth[batch], way)
            kept = kept[np.isin(kept, white)]
            shares[way].append([(kept == k).mean() if len(kept) else np.nan for k in white])
    truth_shares = np.array([per_class[c] / cells for c in composition])
    ways = {}
    for way in WAYS:
        values = np.array(shares[way])  # draws x classes
        bias = np.nanmean(values, axis=0) - truth_shares
        error = np.nanmean(np.abs(values - truth_shares), axis=0)
        ways[way] = {"bias_points": _points(composition, bias),
                     "abs_error_points": _points(composition, error),
                     "mean_abs_error_points": round(float(100 * error.mean()), 2)}
    return {"composition": {c: round(per_class[c] / cells, 4) for c in composition},
            "unidentified_per_batch": round(float(np.mean(reviewed)), 1), "ways": ways}


def _points(classes, shares: np.ndarray) -> dict[str, float]:
    """Shares (0..1) as percentage points, by class."""
    return {c: round(float(100 * v), 2) for c, v in zip(classes, shares)}


@dataclass(frozen=True)
class Answers:
    """The served model's reading of labelled images, one entry per image."""
    predictor: Predictor
    truth: np.ndarray  # the true class (index into the model's classes)
    labels: np.ndarray  # the model's top class
    statuses: np.ndarray  # its trust status as served
    confidence: np.ndarray  # its calibrated confidence
    no_white_cell: np.ndarray  # no white cell found in the image (Outputs.without_white_cell)


def served_answers(model_dir: Path, data_dir: Path, split_file: Path | None = None,
                   split_name: str = "test") -> Answers:
    """How the served model reads the labelled images (`evaluate.read_labelled`, known classes
    only), through the app's path: calibration, statuses."""
    predictor = open_model(model_dir)
    labelled = read_labelled(predictor, data_dir, split_file, split_name,
                             known_classes_only=True)
    predictions = predictor.predictions(labelled.outputs)
    return Answers(predictor, labelled.y_true,
                   np.array([predictor.classes.index(p.label) for p in predictions]),
                   np.array([p.status for p in predictions]),
                   np.array([p.confidence for p in predictions]),
                   labelled.outputs.without_white_cell())


def evaluate_differential(model_dir: Path, data_dir: Path, split_file: Path | None = None,
                          split_name: str = "test", cells: int = CELLS,
                          draws: int = DRAWS) -> dict:
    """The served model's answers on the test images, then `simulate` for each composition,
    as served and at each of the card's operating points."""
    answers = served_answers(model_dir, data_dir, split_file, split_name)
    predictor, truth, labels, statuses = (answers.predictor, answers.truth, answers.labels,
                                          answers.statuses)
    points = predictor.card.get("trust", {}).get("operating_points") or []
    results = {}
    for name, composition in compositions(truth, predictor.classes).items():
        results[name] = simulate(truth, labels, statuses, predictor.classes, composition, cells,
                                 draws)
        results[name]["operating_points"] = [
            at_threshold(point, simulate(
                truth, labels, statuses_at(answers.confidence, statuses == NOT_A_CELL,
                                           point["confidence_threshold"],
                                           answers.no_white_cell),
                predictor.classes, composition, cells, draws))
            for point in points]
    return {"data": data_label(data_dir, split_file, split_name), "n": len(truth),
            "cells": cells, "draws": draws, "compositions": results}


def at_threshold(point: dict, simulated: dict) -> dict:
    """One operating point's row: its target and threshold, the cells per batch to review, the
    mean error before and after review, and each class's bias before review (what the batch
    page quotes while cells await review, at the threshold it serves)."""
    ways = simulated["ways"]
    return {"target_accuracy": point["target_accuracy"],
            "confidence_threshold": point["confidence_threshold"],
            "unidentified_per_batch": simulated["unidentified_per_batch"],
            "accepted_only_error": ways["accepted only"]["mean_abs_error_points"],
            "reviewed_error": ways["unidentified reviewed"]["mean_abs_error_points"],
            "accepted_only_bias_points": ways["accepted only"]["bias_points"]}


def parse_drawing_options(parser: argparse.ArgumentParser, argv: list[str] | None, unit: str,
                          draws_help: str, metric: str) -> argparse.Namespace:
    """The options of a command that draws groups of cells (a `unit`: batch, film) from a
    model's labelled test images: the model, the data, --cells, --draws and --record (as
    metrics.<metric>); parsed and checked."""
    add_model_options(parser)
    add_data_options(parser, "an ImageFolder of labelled images (the model's test set)")
    parser.add_argument("--cells", type=int, default=CELLS, help=f"white cells per {unit}")
    parser.add_argument("--draws", type=int, default=DRAWS, help=draws_help)
    parser.add_argument("--record", action="store_true",
                        help=f"store the figures in the model card as metrics.{metric}")
    args = parser.parse_args(argv)
    if args.cells < 1 or args.draws < 1:
        parser.error("--cells and --draws must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.differential",
        description="How far a batch's differential is from the truth, counted from the "
                    "accepted cells only, from every top class, and after reviewing the "
                    "unidentified cells, on batches drawn from a model's test images.",
        epilog="example: python -m training.differential --model wbc4 "
               "--data ../shared/data/kaggle_blood_cells/test --record",
    )
    args = parse_drawing_options(parser, argv, "batch", "batches drawn (seeded)", DIFFERENTIAL)
    model_dir = model_dir_of(args)
    result = evaluate_differential(model_dir, args.data, args.split_file, args.split_name,
                                   args.cells, args.draws)
    if args.record:
        record_metrics(model_dir, DIFFERENTIAL, result)
    print(f"{result['data']}, n={result['n']}; {args.draws} batches of {args.cells} white cells")
    for name, figures in result["compositions"].items():
        shares = ", ".join(f"{c} {s:.0%}" for c, s in figures["composition"].items())
        print(f"{name} ({shares}): {figures['unidentified_per_batch']} cells per batch to review")
        for way, w in figures["ways"].items():
            bias = ", ".join(f"{c} {b:+.1f}" for c, b in w["bias_points"].items())
            print(f"  {way:<22} mean abs. error {w['mean_abs_error_points']:.2f} points; "
                  f"bias {bias}")
        for p in figures["operating_points"]:
            print(f"  target {p['target_accuracy']:.2f} (threshold "
                  f"{p['confidence_threshold']:.3f}): {p['unidentified_per_batch']} to review; "
                  f"error {p['accepted_only_error']:.2f} before review, "
                  f"{p['reviewed_error']:.2f} after")


if __name__ == "__main__":
    sys.exit(main())
