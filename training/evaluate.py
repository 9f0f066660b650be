"""Evaluate a model folder on an ImageFolder directory through the serving path.

    python -m training.evaluate --data DIR [--model NAME] [--split-file splits.json] [--record NAME]

Writes metrics.json, classification_report.txt, confusion.png, reliability.png and
coverage.png (accuracy on accepted images against the share accepted, with the card's operating
points) to --out. Where the data has a Kaggle source map (one labelled cell a source smear), it
also scores each source smear by majority vote over its images; where its sources hold several
classes (a slide, a patient, an app sample), each source is scored over its own images instead.
The source map is the one the model was trained with unless --source-map says otherwise.
With --record NAME the metrics go into the model card under
metrics.NAME, and the plots into the model folder as confusion_NAME.png etc.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hematovision.batch import forward_files
from hematovision.card import NOT_EVALUATIONS, ModelLoadError, read_card, record_metrics
from hematovision.predictor import (Outputs, Predictor, add_model_options, load_failure,
                                    model_dir_of)
from hematovision.trust import NOT_A_CELL, softmax, unsure
from training import data as data_lib
from training.calibrate import ECE_BINS, nll, operating_figures, reliability, status_rates
from training.report import plot_confusion, plot_coverage, plot_reliability


def classification_metrics(y_true: list[int], y_pred: list[int], classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    matrix = confusion(np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64),
                       len(classes))
    f1 = f1_scores(matrix)
    per_class = {}
    for c, name in enumerate(classes):
        tp, support, predicted = int(matrix[c, c]), int(matrix[c].sum()), int(matrix[:, c].sum())
        per_class[name] = {"precision": round(tp / predicted if predicted else 0.0, 4),
                           "recall": round(tp / support if support else 0.0, 4),
                           "f1": round(float(f1[c]), 4), "support": support}
    present = matrix.sum(axis=1) > 0
    recall = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    total = int(matrix.sum())
    return {
        "n": total,
        "accuracy": round(float(np.trace(matrix)) / total, 4) if total else 0.0,
        "macro_f1": round(float(f1[present].mean()), 4) if present.any() else 0.0,
        "balanced_accuracy": round(float(recall[present].mean()), 4) if present.any() else 0.0,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts, rows the true class, columns the predicted one."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def f1_scores(matrix: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 TP / (support + predicted); 0 where the class is never seen nor named."""
    denominator = matrix.sum(axis=1) + matrix.sum(axis=0)
    return 2 * np.diag(matrix) / np.maximum(denominator, 1)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """Mean F1 over the classes present in `y_true` (as in `classification_metrics`)."""
    matrix = confusion(y_true, y_pred, k)
    return float(f1_scores(matrix)[matrix.sum(axis=1) > 0].mean())


def per_source_accuracy(files: list[str], y_true: list[int], y_pred: list[int],
                        groups: list[str | None]) -> dict:
    """Majority vote of each source smear's images vs its label (ties: lowest class index)."""
    votes, label = _by_smear(y_true, y_pred, groups)
    correct = [
        min(c for c, n in Counter(v).items() if n == max(Counter(v).values())) == label[g]
        for g, v in votes.items()
    ]
    return {"sources": len(correct),
            "accuracy": round(float(np.mean(correct)), 4) if correct else None,
            "images_with_known_source": int(sum(g is not None for g in groups))}


HARDEST_SMEARS = 5


def hardest_smears(y_true: list[int], y_pred: list[int], groups: list[str | None],
                   classes: list[str], top: int = HARDEST_SMEARS) -> dict:
    """Where the errors of the images with a known source smear sit. A test set of augmented
    views holds few cells (Kaggle `test`: ~70), and one smear misread in every view costs as
    much as dozens of scattered mistakes: the smears with the most wrong images, each with its
    label and what it was called, and how many smears were wrong in every image."""
    votes, label = _by_smear(y_true, y_pred, groups)
    wrong = {g: Counter(classes[p] for p in v if p != label[g]) for g, v in votes.items()}
    errors = {g: sum(called.values()) for g, called in wrong.items()}
    all_wrong = [g for g, v in votes.items() if errors[g] == len(v)]
    worst = sorted((g for g in votes if errors[g]), key=lambda g: (-errors[g], str(g)))[:top]
    return {"errors_with_known_source": sum(errors.values()),
            "smears_wrong_in_every_image": len(all_wrong),
            "errors_in_those_smears": sum(errors[g] for g in all_wrong),
            "hardest": [{"smear": str(g), "label": classes[label[g]], "images": len(votes[g]),
                         "wrong": errors[g], "called": dict(wrong[g].most_common())}
                        for g in worst]}


def _by_smear(y_true: list[int], y_pred: list[int], groups: list[str | None]
              ) -> tuple[dict[str, list[int]], dict[str, int]]:
    """({smear: its images' predictions}, {smear: its label}); images of no known source are
    left out."""
    votes: dict[str, list[int]] = defaultdict(list)
    label: dict[str, int] = {}
    for g, t, p in zip(groups, y_true, y_pred):
        if g is not None:
            votes[g].append(p)
            label[g] = t
    return votes, label


def per_source_figures(y_true: list[int], y_pred: list[int], groups: list[str | None],
                       classes: list[str], top: int = HARDEST_SMEARS) -> dict:
    """Each source's accuracy over its own images, every image judged against its own label,
    for sources holding cells of several classes (a slide, a patient, an app sample): such a
    source has no one label, so a majority vote, or a list of its "wrong" images judged
    against one label, would be wrong. The sources with the lowest accuracy, each with its
    confusions ("monocyte as neutrophil")."""
    pairs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for g, t, p in zip(groups, y_true, y_pred):
        if g is not None:
            pairs[g].append((t, p))
    accuracy = {g: float(np.mean([t == p for t, p in v])) for g, v in pairs.items()}
    lowest = sorted((g for g in pairs if accuracy[g] < 1), key=lambda g: (accuracy[g], str(g)))
    return {"sources": len(pairs),
            "images_with_known_source": int(sum(len(v) for v in pairs.values())),
            "scored": "each source over its own images, each image against its own label",
            "lowest": [{"source": str(g), "images": len(pairs[g]),
                        "wrong": int(sum(t != p for t, p in pairs[g])),
                        "accuracy": round(accuracy[g], 4),
                        "confusions": dict(Counter(f"{classes[t]} as {classes[p]}"
                                                   for t, p in pairs[g] if t != p).most_common())}
                       for g in lowest[:top]]}


BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_LEVEL = 0.95
# Fewer resampled sources than this: no interval. A percentile bootstrap over n sources draws
# from at most C(2n-1, n) distinct resamples (1 for one source, 10 for three), so its interval
# is degenerate or far too narrow; from 5 sources (126 resamples) it begins to show the spread,
# and it is still wide, as it should be.
MIN_SOURCES = 5


def group_bootstrap(statistic, groups: list, rounds: int = BOOTSTRAP_ROUNDS,
                    level: float = BOOTSTRAP_LEVEL, seed: int = 0) -> list[float]:
    """Percentile interval of `statistic(index)` when whole groups are resampled with
    replacement. The augmented images of one source smear are not independent (Kaggle `test`:
    2,487 images of ~70 smears), so resampling images would give an interval far too narrow;
    resampling smears gives the spread another draw of smears would show."""
    members = data_lib.group_members(groups)
    rng = np.random.default_rng(seed)
    values = [statistic(np.concatenate([members[k] for k in rng.integers(0, len(members),
                                                                         len(members))]))
              for _ in range(rounds)]
    tail = (1 - level) / 2
    return [round(float(v), 4) for v in np.quantile(values, [tail, 1 - tail])]


def report_text(metrics: dict, classes: list[str]) -> str:
    lines = [f"{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name in classes:
        m = metrics["per_class"][name]
        lines.append(f"{name:<14}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}"
                     f"{m['support']:>10}")
    lines.append(f"\naccuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
                 f"n {metrics['n']}")
    return "\n".join(lines) + "\n"


def split_files(split_file: Path, split_name: str, dataset: data_lib.Dataset, data_dir: Path,
                classes: list[str] | None = None) -> list[str]:
    """The files of one split of a splits.json, in the dataset's order, or a clear stop: an
    unreadable file, an unknown split name, a split made for other `classes` than the model's
    (None: not checked, for another model's data), or one whose images are not all under
    `data_dir` (scored anyway, a subset would be recorded as the split's figures)."""
    saved = read_split(Path(split_file), split_name)
    made_for = saved.get("classes")
    if classes is not None and isinstance(made_for, list) and made_for != classes:
        raise SystemExit(f"{split_file} was made for the classes {', '.join(map(str, made_for))};"
                         f" the model has {', '.join(classes)}: pass the model's own split file")
    present = set(dataset.files)
    absent = [f for f in saved[split_name] if f not in present]
    if absent:
        raise SystemExit(
            f"{len(absent)} of the {len(saved[split_name])} images of {split_file}:{split_name} "
            f"are not under {data_dir} (first: {absent[0]}): evaluate on the data the split "
            f"was made from" + (f" ({saved['root']})" if saved.get("root") else ""))
    if not saved[split_name]:
        raise SystemExit(f"{split_file}:{split_name} is empty: nothing to evaluate ("
                         + empty_split_cause(Path(split_file), split_name, saved) + ")")
    wanted = set(saved[split_name])
    return [f for f in dataset.files if f in wanted]


def empty_split_cause(split_file: Path, split_name: str, saved: dict) -> str:
    """Why a run's split came out empty, from the run's config.json beside the split file (a
    run or model folder): no fraction asked for it, or too few source groups to give it one."""
    option = {"test": "test_fraction", "val": "val_fraction"}.get(split_name)
    if option is None:
        return f"the {split_name} split holds no image"
    flag = f"--{option.replace('_', '-')}"
    try:
        fraction = json.loads((split_file.parent / "config.json").read_text())[option]
    except (OSError, ValueError, KeyError, TypeError):  # a split file without its run's config
        return f"a run trained with {flag} 0 keeps no {split_name} split"
    if not fraction:
        return f"the run was trained with {flag} 0, which keeps no {split_name} split"
    groups = saved.get("groups")
    held = (f" ({sum(groups.values())} source groups in all)"
            if isinstance(groups, dict) and all(isinstance(n, int) for n in groups.values())
            else "")
    return (f"the run asked for {flag} {fraction}, but its data had too few source groups"
            f"{held} for that share to take one: train on images of more sources")


def evaluate(model_dir: Path, data_dir: Path, out_dir: Path, split_file: Path | None = None,
             split_name: str = "test", known_classes_only: bool = False,
             source_map: str | None = None) -> dict:
    """Score the model on the data through the serving path and write the report files."""
    scored = score(model_dir, data_dir, split_file, split_name, known_classes_only, source_map)
    write_report(scored, out_dir)
    return scored.metrics


@dataclass
class Scored:
    """An evaluation's figures, and the per-image values its plots are drawn from."""

    metrics: dict
    classes: list[str]
    reliability_before: dict
    reliability_after: dict
    confidence: np.ndarray
    correct: np.ndarray
    unfamiliar: np.ndarray
    no_white_cell: np.ndarray  # images never accepted either (trust.WHITE_CELL_RULE)


@dataclass
class Labelled:
    """The served model's outputs on a labelled folder (`read_labelled`)."""

    dataset: data_lib.Dataset
    files: list[str]  # the images read, in order
    y_true: np.ndarray  # their labels, as indices of the model's classes
    outputs: Outputs
    failed: list[str]  # images that could not be read, left out
    missing: list[str]  # the folder's classes the model lacks (known_classes_only)


def read_labelled(predictor: Predictor, data_dir: Path, split_file: Path | None = None,
                  split_name: str = "test", known_classes_only: bool = False) -> Labelled:
    """Run the model on the labelled images to score (`files_to_score`), as served; an image
    that cannot be read is named on stderr and left out, and nothing to score stops with why."""
    dataset = data_lib.list_image_folder(data_dir)
    files, missing = files_to_score(predictor, dataset, data_dir, split_file, split_name,
                                    known_classes_only)
    if missing and not files:
        raise SystemExit(f"{data_dir} holds no image of the model's classes "
                         f"({', '.join(predictor.classes)})")
    label_of = dataset.label_of()
    # Its progress is rewritten in place with \r: on a terminal only (one huge line in a log).
    outputs, readable = forward_files(predictor, dataset.paths(files),
                                      progress=sys.stderr.isatty())
    failed = [f for f, ok in zip(files, readable) if not ok]
    files = [f for f, ok in zip(files, readable) if ok]
    for f in failed:
        print(f"unreadable, left out: {Path(data_dir) / f}", file=sys.stderr)
    if not files:
        raise SystemExit(f"None of the {len(failed)} images could be read: nothing to evaluate")
    y_true = np.array([predictor.classes.index(dataset.classes[label_of[f]]) for f in files],
                      dtype=np.int64)
    return Labelled(dataset, files, y_true, outputs, failed, missing)


def score(model_dir: Path, data_dir: Path, split_file: Path | None = None,
          split_name: str = "test", known_classes_only: bool = False,
          source_map: str | None = None) -> Scored:
    """`known_classes_only` scores another dataset's images of the model's classes (PBC's
    four white-cell types for `wbc4`: cells from another lab, stain and scanner) and leaves
    out the rest, naming them; a split file then need not be the model's own. `source_map`:
    a path, "auto" or "none" (`data.find_source_map`); None: the one the model was trained
    with (`trained_source_map`)."""
    predictor = open_model(model_dir)
    labelled = read_labelled(predictor, data_dir, split_file, split_name, known_classes_only)
    dataset, files, y_true, outputs = (labelled.dataset, labelled.files, labelled.y_true,
                                       labelled.outputs)
    failed, missing = labelled.failed, labelled.missing
    predictions = predictor.predictions(outputs)
    y_pred = [predictor.classes.index(p.label) for p in predictions]
    metrics = classification_metrics(list(y_true), y_pred, predictor.classes)
    metrics.update({"data": str(data_dir), "model": predictor.name,
                    "unreadable_files": [str(Path(data_dir) / f) for f in failed]})
    if missing:
        metrics["classes_left_out"] = missing
    if split_file:
        metrics["split"] = f"{Path(split_file).name}:{split_name}"
    before = reliability(softmax(outputs.logits), y_true)
    after = reliability(predictor.trust.probabilities(outputs.logits), y_true)
    metrics["calibration"] = {
        "bins": ECE_BINS, "temperature": predictor.trust.temperature,
        "ece_before": round(before["ece"], 4), "ece_after": round(after["ece"], 4),
        "nll_before": round(nll(outputs.logits, y_true), 4),
        "nll_after": round(nll(outputs.logits, y_true, predictor.trust.temperature), 4),
    }
    correct = np.array(y_pred) == y_true
    metrics["trust"] = status_rates([p.status for p in predictions], correct)
    confidence = np.array([p.confidence for p in predictions])
    unfamiliar = np.array([p.status == NOT_A_CELL for p in predictions])
    no_cell = outputs.without_white_cell()
    if outputs.white_cells is not None:
        confident = ~unfamiliar & ~unsure(confidence, predictor.trust.confidence_threshold)
        metrics["no_white_cell"] = no_white_cell_figures(no_cell, correct, confident)
    points = predictor.card.get("trust", {}).get("operating_points", [])
    if points:
        metrics["operating_points"] = operating_figures(confidence, correct, unfamiliar, points,
                                                        no_cell)
    setting = trained_source_map(predictor.card) if source_map is None else source_map
    groups, many, map_path = source_groups(dataset, Path(data_dir), files, setting)
    if setting not in ("auto", "none") and not any(g is not None for g in groups):
        note = f"note: the source map {map_path} names none of the images scored"
        if source_map is None:
            # The map the model trained with is its training data's: other data (the app's
            # reviewed cells) may carry its own tables, and an interval that took its images
            # for independent sources would be far too narrow.
            groups, many, map_path = source_groups(dataset, Path(data_dir), files, "auto")
            note += (": the data folder's own is read instead (--source-map auto)" if map_path
                     else ", nor has the data folder one")
        print(note + ("" if any(g is not None for g in groups) else
                      ": each image is resampled as its own source"), file=sys.stderr)
    if any(g is not None for g in groups):  # e.g. Kaggle train's unassigned images: none
        metrics["source_map"] = str(map_path)
        if many:
            metrics["per_source"] = per_source_figures(list(y_true), y_pred, groups,
                                                       predictor.classes)
        else:
            metrics["per_source_smear"] = {
                **per_source_accuracy(files, list(y_true), y_pred, groups),
                **hardest_smears(list(y_true), y_pred, groups, predictor.classes)}
    metrics["intervals"] = intervals(files, groups, y_true, np.array(y_pred),
                                    len(predictor.classes))
    return Scored(metrics, predictor.classes, before, after, confidence, correct, unfamiliar,
                  no_cell)


def trained_source_map(card: dict) -> str:
    """The --source-map setting the model was trained with (its card's training config),
    "auto" where the card has none: a path as given, or "auto" (then resolved again against
    the evaluated data, which may be another folder than the training data)."""
    config = card.get("training", {}).get("config", {})
    return config.get("source_map") or "auto"


def source_groups(dataset: data_lib.Dataset, data_dir: Path, files: list[str], setting: str
                  ) -> tuple[list, bool, Path | None]:
    """(each of `files`' source group, None where unknown; whether a source holds cells of
    several classes; the map read) under the source map `setting`."""
    source_map = data_lib.find_source_map(data_dir, setting)
    if source_map is None:
        return [None] * len(files), False, None
    # Smears of one field of view (often the same cell) are one unit of the bootstrap and
    # of the per-smear vote, as they are one group in training.
    data_lib.assign_groups(dataset, source_map, data_lib.find_field_notes(data_dir, "auto"))
    group_of = dict(zip(dataset.files, dataset.groups))
    return [group_of[f] for f in files], dataset.sources_hold_many_cells, source_map


def no_white_cell_figures(missing: np.ndarray, correct: np.ndarray, confident: np.ndarray
                          ) -> dict:
    """The images in which no white cell was found (`missing`): how many, how often the model's
    top class was right on them, and how many the trust layer would otherwise have accepted
    (`confident`: familiar and at or above the confidence threshold), which
    trust.WHITE_CELL_RULE sets aside for review, with how many of those were right; and the
    accuracy on accepted images without the rule and with it."""
    set_aside = missing & confident

    def accuracy(chosen: np.ndarray) -> float | None:
        return round(float(correct[chosen].mean()), 4) if chosen.any() else None

    return {"images": int(missing.sum()), "rate": round(float(missing.mean()), 4),
            "accuracy": accuracy(missing),
            "set_aside": int(set_aside.sum()), "set_aside_right": int(correct[set_aside].sum()),
            "accuracy_accepted_without_rule": accuracy(confident),
            "accuracy_accepted": accuracy(confident & ~missing)}


def open_model(model_dir: Path) -> Predictor:
    """The served model of `model_dir`, or a stop that says why it cannot be used and which
    models there are (never a traceback)."""
    try:
        return Predictor(model_dir)
    except ModelLoadError as exc:
        raise SystemExit(load_failure(exc))


def files_to_score(predictor: Predictor, dataset: data_lib.Dataset, data_dir: Path,
                   split_file: Path | None, split_name: str, known_classes_only: bool
                   ) -> tuple[list[str], list[str]]:
    """The files of `dataset` (or of its split) to score, and the dataset's classes the model
    lacks. Those classes stop the evaluation unless `known_classes_only`, which leaves their
    images out and does not ask the split file to have been made for the model's classes."""
    missing = [c for c in dataset.classes if c not in predictor.classes]
    if missing and not known_classes_only:
        raise SystemExit(f"{data_dir} has classes the model does not know: {missing} "
                         "(--known-classes-only scores the images of the others)")
    files = (split_files(split_file, split_name, dataset, data_dir,
                         None if known_classes_only else predictor.classes)
             if split_file else dataset.files)
    if missing:
        label_of = dataset.label_of()
        files = [f for f in files if dataset.classes[label_of[f]] in predictor.classes]
    return files, missing


def data_label(data_dir: Path, split_file: Path | None, split_name: str) -> str:
    """How a card names the images a figure was measured on: the folder, and the split."""
    return str(data_dir) + (f" ({Path(split_file).name}:{split_name})" if split_file else "")


def training_split(model_dir: Path, train_data: Path | None
                   ) -> tuple[Path, data_lib.Dataset, list[str]]:
    """A model's training images, as the commands that measure a reference over them read
    them: the data folder its splits.json names (or `train_data`, where it has moved since),
    that folder as a dataset, and the files of its train split; or a stop that says why."""
    splits_path = Path(model_dir) / "splits.json"
    if not splits_path.is_file():
        raise SystemExit(f"{model_dir} has no splits.json: its training images are unknown")
    root = train_data or json.loads(splits_path.read_text()).get("root")
    if not root:
        raise SystemExit(f"{splits_path} does not name its data folder: pass --train-data")
    root = Path(root)
    training = data_lib.list_image_folder(root)
    return root, training, split_files(splits_path, "train", training, root)


def add_reference_options(parser) -> None:
    """--train-data and --workers, as `training_split`'s commands take them."""
    parser.add_argument("--train-data", type=Path, default=None,
                        help="the training data folder, where it has moved since the model's "
                             "splits.json recorded it")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)


def add_data_options(parser, data_help: str) -> None:
    """--data, --split-file and --split-name, as every command that scores a labelled folder
    (or one split of it) takes them; `files_to_score` and `data_label` read them."""
    parser.add_argument("--data", type=Path, required=True, help=data_help)
    parser.add_argument("--split-file", type=Path, default=None,
                        help="splits.json: use only --split-name of --data")
    parser.add_argument("--split-name", default="test")


def write_report(scored: Scored, out_dir: Path) -> None:
    """metrics.json, classification_report.txt and the confusion, reliability and coverage
    plots, into `out_dir`."""
    metrics, classes = scored.metrics, scored.classes
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "classification_report.txt").write_text(report_text(metrics, classes))
    title = f"{metrics['model']} on {Path(metrics['data']).name}"
    plot_confusion(np.array(metrics["confusion_matrix"]), classes, out_dir / "confusion.png",
                   title=title)
    plot_reliability(scored.reliability_before, scored.reliability_after,
                     metrics["calibration"]["temperature"], out_dir / "reliability.png",
                     title=title)
    plot_coverage(scored.confidence, scored.correct, scored.unfamiliar | scored.no_white_cell,
                  metrics.get("operating_points", []), out_dir / "coverage.png", title=title)


def intervals(files: list[str], groups: list, y_true: np.ndarray, y_pred: np.ndarray,
              k: int, min_sources: int = MIN_SOURCES) -> dict:
    """95 % intervals of accuracy and macro-F1 (over the `k` classes) over resampled source
    smears. There is none for ECE: a percentile bootstrap of ECE sits mostly above the figure,
    because ECE grows when resampling repeats smears and fewer of them fill its bins.

    Where some images have a known smear, only those are resampled: an image of unknown source
    is an augmented view of one of the same smears (about half of Kaggle test), and counting it
    as an independent draw would make the interval far too narrow. Where no image has a known
    source (PBC: one cell per image), each image is its own unit. A resample that misses a
    class scores macro-F1 over the classes it holds, as a test set without that class would."""
    if not files:
        return {}
    known = np.array([g is not None for g in groups])
    if known.any():
        index, units = np.flatnonzero(known), [g for g in groups if g is not None]
    else:
        index, units = np.arange(len(files)), list(files)
    y_true, y_pred = y_true[index], y_pred[index]
    record = {"level": BOOTSTRAP_LEVEL, "rounds": BOOTSTRAP_ROUNDS,
              "resampled": "source smears" if known.any() else "images",
              "units": len(set(units)), "images": len(index)}
    if known.any() and record["units"] < min_sources:
        # No "accuracy" key: the model page and the tables show no interval then.
        return {**record, "rounds": 0,
                "omitted": f"only {record['units']} source(s) in the evaluated set; a resampled "
                           f"interval needs at least {min_sources} (resampling one source "
                           "repeats one figure, and the images of one source are no "
                           "independent draws)"}
    return {
        **record,
        "accuracy": group_bootstrap(lambda i: np.mean(y_pred[i] == y_true[i]), units),
        "macro_f1": group_bootstrap(lambda i: macro_f1(y_true[i], y_pred[i], k), units),
    }


def interval_text(record: dict) -> str:
    """One line on the 95 % intervals of `intervals`: the figures, or why there are none."""
    if "accuracy" in record:
        return (f"95 % interval: accuracy {record['accuracy'][0]:.3f} to "
                f"{record['accuracy'][1]:.3f}, macro-F1 {record['macro_f1'][0]:.3f} to "
                f"{record['macro_f1'][1]:.3f} ({record['rounds']} resamples of "
                f"{record['units']} {record['resampled']})")
    return f"no 95 % interval: {record.get('omitted', 'nothing scored')}"


def read_split_file(path: Path) -> dict:
    """A splits.json, or a one-line reason to stop."""
    try:
        saved = json.loads(path.read_text())
    except OSError as exc:
        raise SystemExit(f"Cannot read the split file {path}: {exc.strerror or exc}")
    except ValueError:
        raise SystemExit(f"{path} is not a split file (splits.json written by training.train): "
                         "it is not JSON") from None
    if not isinstance(saved, dict):
        raise SystemExit(f"{path} is not a split file (splits.json written by training.train)")
    return saved


def read_split(path: Path, split_name: str) -> dict:
    """A splits.json holding `split_name` as a list of paths, or a one-line reason to stop."""
    saved = read_split_file(path)
    if not isinstance(saved.get(split_name), list):
        named = [k for k in data_lib.SPLIT_KEYS if isinstance(saved.get(k), list)]
        raise SystemExit(f"{path} has no split named {split_name!r} "
                         f"(it has {', '.join(named)})")
    odd = [entry for entry in saved[split_name] if not isinstance(entry, str)]
    if odd:
        raise SystemExit(f"{path}:{split_name} holds entries that are not image paths "
                         f"({len(odd)} of {len(saved[split_name])}, first: "
                         f"{json.dumps(odd[0])}): a split lists paths relative to the data "
                         "folder, as training.train writes them")
    return saved


# A recorded name becomes part of file names in the model folder (confusion_NAME.png): one
# plain name, as the recorded sets are called (test, test_simple).
RECORD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def out_problem(out_dir: Path) -> str | None:
    """Why the report cannot be written to `out_dir`, or None. Found out by making the folder
    and a file in it, then removing what was made, so that the answer comes before any image
    is read and an evaluation stopped later leaves nothing behind."""
    made = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except FileExistsError:
        return f"--out {out_dir}: a file, not a folder"
    except OSError as exc:
        return f"--out {out_dir}: cannot write there ({exc.strerror or exc})"
    finally:
        for folder in made:  # the deepest first
            if folder.is_dir():
                folder.rmdir()
    return None


def record(model_dir: Path, name: str, metrics: dict, out_dir: Path) -> None:
    """Store `metrics` in the model card as metrics.<name> and copy the plots beside it."""
    # The plots first: a copy that fails then leaves the card as it was, never naming figures
    # whose plots are missing or older.
    for plot in ("confusion", "reliability", "coverage"):
        shutil.copy2(out_dir / f"{plot}.png", Path(model_dir) / f"{plot}_{name}.png")
    record_metrics(model_dir, name, {k: v for k, v in metrics.items() if k != "unreadable_files"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Evaluate a saved model on an ImageFolder directory (serving path).",
        epilog="example: python -m training.evaluate --data ../shared/data/kaggle_blood_cells/test "
               "--model wbc4 --record test",
    )
    add_data_options(parser, "ImageFolder directory")
    add_model_options(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/eval-...)")
    parser.add_argument("--record", default="", help="store the metrics in the model card as NAME")
    parser.add_argument("--source-map", default=None,
                        help="CSV of file,group (or Kaggle's map) naming each image's source, "
                             "which the per-source figures and the 95 %% intervals resample: "
                             "PATH | auto (a map beside the data, or its reviewed-*.csv "
                             "tables) | none (default: the one the model was trained with)")
    parser.add_argument("--known-classes-only", action="store_true",
                        help="score only the images of the classes the model knows and name the "
                             "classes left out: another dataset's matching classes (e.g. PBC's "
                             "four for wbc4), a check across labs and stains")
    args = parser.parse_args(argv)
    if args.record and args.known_classes_only:
        # The card's recorded sets are the model's test figures (tables, model page, trust
        # bars); a subset of another dataset read as one of them would mislead.
        parser.error("--known-classes-only scores part of another dataset: it is not "
                     "recorded in the model card (drop --record)")
    if args.record in NOT_EVALUATIONS:
        parser.error(f"--record {args.record}: the card keeps the figures of "
                     f"training.{args.record} under that name; choose another, such as test")
    if args.record and not RECORD_NAME.fullmatch(args.record):
        parser.error(f"--record {args.record}: a name of letters, digits, '.', '_' and '-' "
                     "(up to 64, starting with a letter or digit), such as test")
    model_dir = model_dir_of(args)
    out = args.out or Path("runs") / f"eval-{Path(model_dir).name}-{args.data.name}"
    # Said before any image is read, not after the whole evaluation.
    if problem := out_problem(out):
        parser.error(problem)
    if args.split_file:
        try:
            read_split(args.split_file, args.split_name)
        except SystemExit as stop:  # a usage error like the others, with their exit status
            parser.error(str(stop))
    trained = args.source_map is None
    try:
        setting = trained_source_map(read_card(model_dir)) if trained else args.source_map
    except ModelLoadError:  # said, with the models there are, by open_model
        setting = "auto"
    if setting not in ("auto", "none"):
        try:  # a missing map or a folder: said before any image is read
            data_lib.given_file(setting, "source-map")
        except SystemExit as stop:
            parser.error(f"{stop}" + (" (the map the model was trained with; pass "
                                      "--source-map PATH, auto or none)" if trained else ""))
    metrics = evaluate(model_dir, args.data, out, args.split_file, args.split_name,
                       args.known_classes_only, setting)
    if args.record:
        record(model_dir, args.record, metrics, out)
    print(report_text(metrics, read_card(model_dir)["classes"]), end="")
    if metrics.get("classes_left_out"):
        print(f"left out (classes the model does not know): {', '.join(metrics['classes_left_out'])}")
    if "per_source_smear" in metrics:
        s = metrics["per_source_smear"]
        print(f"per source smear (majority vote): {s['accuracy']:.4f} over {s['sources']} smears")
        if "hardest" in s:
            print(f"wrong in every image: {s['smears_wrong_in_every_image']} smears, "
                  f"{s['errors_in_those_smears']} of the {s['errors_with_known_source']} errors "
                  "among images of a known smear; most wrong images:")
            for h in s["hardest"]:
                print(f"  {h['smear']} ({h['label']}): {h['wrong']} of {h['images']} wrong, "
                      f"called {h['called']}")
    if "per_source" in metrics:
        s = metrics["per_source"]
        print(f"per source ({s['sources']} source(s) of several classes, no majority vote): "
              "each over its own images" + (", lowest:" if s["lowest"] else ": all right"))
        for h in s["lowest"]:
            print(f"  {h['source']}: {h['accuracy']:.4f} ({h['wrong']} of {h['images']} wrong: "
                  + ", ".join(f"{k} {n}" for k, n in h["confusions"].items()) + ")")
    print(interval_text(metrics.get("intervals", {})))
    print(f"outputs in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
