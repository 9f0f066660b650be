"""Out-of-fold logits by source group: calibration data from every training smear.

    python -m training.crossfit RUN_OR_MODEL_DIR [--folds 5] [--weights PATH]

A validation split of a small dataset holds few independent cells (wbc4: 639 images of only 40
smears), so a temperature and an abstention threshold fitted on it alone are noisy, and optimistic
when the split happens to be easy. This retrains the folder's tuned layers `folds` times with the
same initialisation, recipe and cached activations, each time holding out a different fold of the
source groups of train + val (stratified by class; a group never on both sides), and records the
logits of every held-out image in each of the eight orientations (`training.views`): the served
logits of `--tta-views N` are the mean of the first N, so every count can be compared on the same
fold models (`python -m training.views`). Each fold model is
early-stopped on its held-out fold, as the served model was on its validation split.
`--stopping served-epochs` instead replays the served weights' epochs and learning rates and
never looks at the held-out fold (tried once for an earlier wbc4 and not adopted; its figures
were not kept).
A run whose initialisation was itself trained on the same data is refused: its held-out folds
trained the weights every fold model starts from. The folder's model itself is not changed.
`training.calibrate` fits the temperature and the abstention threshold on these out-of-fold
logits when the folder has them; the unfamiliar-image threshold stays on the model's own
validation images, because features differ from one trained model to another.

Writes crossfit.npz (files, labels, folds, view_logits and the served mean, logits) and
crossfit.json (per-fold figures, and accuracy and NLL for 1, 4 and 8 views).
Each finished fold is kept in `crossfit-partial/` meanwhile: a run stopped part-way (five fold
models take over an hour on 2 CPU cores) resumes at the first unfinished fold when started again
with the same settings on the same model. Every fold model starts from the same state
(weights and the dropout's random-number state) with its own seed, so a resumed crossfit
trains the fold models an uninterrupted one would. Two crossfits of wbc4 run on one day agreed
to the last digit, but the one run in an earlier session (other code, other caches) stopped
three of five folds at other epochs: compare settings within one crossfit.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hematovision.card import read_card, view_count
from training import data as data_lib
from training.config import TrainConfig
from training.pretrained import file_sha256
from training.stopwatch import ELAPSED_FILE, Stopwatch
from training.views import (TTA_VIEWS, VIEW_NAMES, add_views_option, check_views, compare,
                            per_orientation)

NPZ_FILE = "crossfit.npz"
JSON_FILE = "crossfit.json"
PARTIAL_DIR = "crossfit-partial"
FOLDS = 5


def assign_folds(files: list[str], groups: list[str], labels: list[int], folds: int,
                 seed: int) -> dict[str, int]:
    """{file: fold}: each class's source groups shuffled (seeded) and dealt out in turn, so every
    fold holds about 1/folds of each class's groups and a group's files share one fold."""
    by_class: dict[int, set[str]] = {}
    for group, label in zip(groups, labels):
        by_class.setdefault(label, set()).add(group)
    rng = random.Random(seed)
    fold_of_group = {}
    for label in sorted(by_class):
        ordered = sorted(by_class[label])
        rng.shuffle(ordered)
        fold_of_group.update({g: i % folds for i, g in enumerate(ordered)})
    return {f: fold_of_group[g] for f, g in zip(files, groups)}


STOPPING = ("held-out", "served-epochs")


def crossfit(folder: Path, folds: int = FOLDS, views: int = TTA_VIEWS, weights: str = "",
             stopping: str = "held-out") -> dict:
    """Train `folds` fold models like the folder's run and store their out-of-fold logits,
    each the mean over `views` orientations of the image, as the model is served with
    (`training.export.serving_model`).

    `weights` replaces the run's initialisation file where that path now holds another model
    (e.g. `saved_model/pbc8/model.keras` after pbc8 was retrained); the frozen part of the
    initialisation must equal that of the folder's model either way.

    `stopping`: "held-out" (default) early-stops each fold model on its held-out fold, as the
    served model was early-stopped on held-out smears (its validation split); the epoch is then
    chosen on the images being scored. "served-epochs" trains every fold model for the epochs,
    at the learning rates, that trained the served weights, and never looks at the held-out fold
    before scoring it."""
    if stopping not in STOPPING:
        raise ValueError(f"stopping must be one of {STOPPING}, got {stopping!r}")
    check_views(views)  # before hours of training, not after the first fold
    # Imported here: `load` serves calibration without TensorFlow's start-up cost.
    import keras

    from training.export import serving_model
    from training.features import weights_digest
    from training.model import Classifier, trained_on
    from training.train import CachedViews, fit, start_head

    started = time.time()
    folder = Path(folder)
    record = _training_record(folder)
    if record.get("combined") == "weights":
        raise SystemExit(f"{folder} averages the weights of runs (training.ensemble --combine "
                         "weights): its fold models would be averages of the members' fold "
                         "models, which crossfit does not keep")
    if "members" in record:
        raise SystemExit(f"{folder} is an ensemble (training.ensemble): crossfit its members")
    config = TrainConfig.load(folder / "config.json")
    config.weights = weights or config.weights
    root = Path(config.data)
    source_data = trained_on(config.weights)
    if source_data and Path(source_data).resolve() == root.resolve():
        raise SystemExit(
            f"{config.weights} was itself trained on {config.data}: the images a fold holds out "
            "trained the weights every fold model starts from, so its figures would not be out "
            "of fold. Crossfit a run whose --weights were trained on other data.")
    dataset = data_lib.grouped_image_folder(root, config.max_per_class, config.source_map,
                                           config.field_notes)
    split = data_lib.load_split(folder / "splits.json", dataset)
    pool = sorted(split["train"] + split["val"])
    group_of, label_of = dict(zip(dataset.files, dataset.groups)), dataset.label_of()
    fold_of = assign_folds(pool, [group_of[f] for f in pool], [label_of[f] for f in pool],
                           folds, config.seed)
    extra_paths, extra_labels = data_lib.list_extra(config.extra_data, dataset.classes,
                                                    config.max_per_class)

    # The run's initialisation, random parts included; the folds keep config.seed, as the
    # split does.
    keras.utils.set_random_seed(config.seed_of_fit)
    classifier = Classifier(len(dataset.classes), config.input_size, config.dropout,
                            config.weights, config.tune_from_block, dataset.classes, config.head)
    served_bottom = Classifier(len(dataset.classes), config.input_size, config.dropout,
                               str(folder / "model.keras"), config.tune_from_block).bottom
    if weights_digest(classifier.bottom) != weights_digest(served_bottom):
        raise SystemExit(
            f"{config.weights} is not the initialisation of {folder}: their frozen layers "
            "differ. Pass the file the run started from with --weights.")
    features = CachedViews(classifier, config, dataset, split, extra_paths, extra_labels)
    schedule = served_schedule(folder, config) if stopping == "served-epochs" else None
    served_epochs = len(schedule) if schedule else None
    # The random-number state too, not only the weights: left running, it would hand each
    # fold the draws its predecessors left, so a resumed crossfit (its first folds skipped)
    # would train other fold models.
    initial = classifier.state()
    position = {f: i for i, f in enumerate(pool)}

    orientations = len(VIEW_NAMES)
    view_logits = np.zeros((orientations, len(pool), len(dataset.classes)), dtype=np.float32)
    per_fold = []
    partial = Partial(folder / PARTIAL_DIR, {
        "folds": folds, "orientations": orientations, "views": views, "stopping": stopping,
        "weights": config.weights,
        "model_sha256": file_sha256(folder / "model.keras"), "pool": fold_of})
    # The time of the sessions before a resume, kept with the finished folds.
    stopwatch = Stopwatch(partial.folder / ELAPSED_FILE, started,
                          earlier_known=not any(partial.has(k) for k in range(folds)))
    with tempfile.TemporaryDirectory() as logs:
        for k in range(folds):
            held = [f for f in pool if fold_of[f] == k]
            index = np.array([position[f] for f in held])
            done = partial.fold(k)
            if done is not None:
                view_logits[:, index], record = done
                per_fold.append(record)
                log(f"fold {k + 1}/{folds}: finished earlier, resumed {record}")
                continue
            kept = [f for f in pool if fold_of[f] != k]
            classifier.restore(initial)
            keras.utils.set_random_seed(config.seed_of_fit + k)
            x, y = features.for_training(kept)
            start_head(classifier, config, x, y)  # --head probe: its own, from its folds only
            if served_epochs:
                fit(classifier, config, x, y, None, served_epochs, Path(logs),
                    log_name=f"fold{k}.csv", rates=schedule)
                epochs = served_epochs
            else:
                history = fit(classifier, config, x, y, features(held, 1), config.epochs,
                              Path(logs), log_name=f"fold{k}.csv")
                epochs = int(np.argmin(history["val_loss"])) + 1
            # Through a saved copy, as export does: the in-memory model shares its top layers
            # with the training graph, so their outputs cannot be tapped unambiguously.
            classifier.full.save(Path(logs) / f"fold{k}.keras")
            one_view = serving_model(keras.models.load_model(Path(logs) / f"fold{k}.keras",
                                                             compile=False), 1)
            view_logits[:, index] = orientation_logits(one_view, dataset.paths(held), config)
            labels = np.array([label_of[f] for f in held])
            served = view_logits[:views, index].mean(axis=0)
            accuracy = float(np.mean(served.argmax(axis=1) == labels))
            per_fold.append({"fold": k, "images": len(held),
                             "groups": len({group_of[f] for f in held}),
                             "epochs": epochs,
                             "accuracy": round(accuracy, 4)})
            partial.save(k, view_logits[:, index], per_fold[-1])
            stopwatch.save()
            log(f"fold {k + 1}/{folds}: {per_fold[-1]}")

    labels = np.array([label_of[f] for f in pool])
    logits = view_logits[:views].mean(axis=0)
    # the same fold models served on each number of views (before calibration)
    by_views = compare(view_logits, labels)
    np.savez_compressed(folder / NPZ_FILE, files=np.array(pool), labels=labels,
                        folds=np.array([fold_of[f] for f in pool]), logits=logits,
                        view_logits=view_logits)
    summary = {
        "folds": folds,
        "grouped_by": "source group (smear or identical file), stratified by class",
        "images": len(pool),
        "groups": len({group_of[f] for f in pool}),
        "test_time_augmentation": views,  # orientations averaged per image
        "stopping_mode": stopping,  # one of STOPPING, for tables; the prose below for people
        "stopping": (f"every fold trained for the served model's {served_epochs} epochs and "
                     "learning rates (held-out fold not looked at)" if served_epochs
                     else "early stopping on each held-out fold"),
        **by_views[str(views)],  # accuracy and NLL as served
        "per_fold": per_fold,
        "by_views": by_views,
        "seconds": stopwatch.seconds(),  # every session; None where one went unrecorded
    }
    (folder / JSON_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    partial.discard()
    return summary


def stopping_mode(summary: dict) -> str:
    """A crossfit summary's `STOPPING` mode. A crossfit written before the mode was recorded
    says it only in its prose: "every fold trained for the served model's ..." where its fold
    models replayed the served epochs; every other one early-stopped on its held-out fold."""
    if "stopping_mode" in summary:
        return summary["stopping_mode"]
    return ("served-epochs" if summary.get("stopping", "").startswith("every fold")
            else "held-out")


def join(members: list[Path], out: Path) -> dict | None:
    """Write into `out` the out-of-fold logits of the ensemble of `members` (run or model
    folders, in `training.ensemble`'s order) and return its summary; None, saying why, where a
    member has no crossfit or the crossfits cannot be joined.

    Fold k of every member held out the same smears (the folds are dealt by the split seed the
    members share), so the mean of the members' held-out logits is what the ensemble of their
    fold-k models serves for those smears: the ensemble's out-of-fold logits, with no fold model
    trained again. The ensemble serves the mean of its members' logits in each orientation, so
    the orientations are averaged the same way."""
    members, out = [Path(m) for m in members], Path(out)
    missing = [str(m) for m in members
               if not ((m / NPZ_FILE).is_file() and (m / JSON_FILE).is_file())]
    if missing:
        log(f"no out-of-fold logits for the ensemble: {', '.join(missing)} has no crossfit")
        return None
    summaries = [json.loads((m / JSON_FILE).read_text()) for m in members]
    arrays = []
    for m in members:
        with np.load(m / NPZ_FILE) as loaded:
            arrays.append({k: loaded[k] for k in loaded.files})
    first, reference = summaries[0], arrays[0]
    for m, summary, held in zip(members[1:], summaries[1:], arrays[1:]):
        differ = [k for k in ("files", "labels", "folds")
                  if k not in held or not np.array_equal(held[k], reference[k])]
        differ += ["folds"] * (summary["folds"] != first["folds"])
        differ += ["stopping"] * (stopping_mode(summary) != stopping_mode(first))
        differ += ["view_logits"] * ("view_logits" not in held or "view_logits" not in reference)
        if differ:
            log(f"no out-of-fold logits for the ensemble: {m}'s crossfit differs from "
                f"{members[0]}'s in {', '.join(sorted(set(differ)))}")
            return None
    views = view_count(first["test_time_augmentation"])
    view_logits = np.mean([a["view_logits"] for a in arrays], axis=0)
    labels, folds = reference["labels"], reference["folds"]
    logits = view_logits[:views].mean(axis=0)
    per_fold = []
    for record in first["per_fold"]:
        k = record["fold"]
        held = folds == k
        per_fold.append({**record, "epochs": [s["per_fold"][k]["epochs"] for s in summaries],
                         "accuracy": round(float(np.mean(
                             logits[held].argmax(axis=1) == labels[held])), 4)})
    by_views = compare(view_logits, labels)
    np.savez_compressed(out / NPZ_FILE, files=reference["files"], labels=labels, folds=folds,
                        logits=logits, view_logits=view_logits)
    seconds = [s.get("seconds") for s in summaries]
    summary = {
        **{k: first[k] for k in ("folds", "grouped_by", "images", "groups",
                                 "test_time_augmentation", "stopping") if k in first},
        "stopping_mode": stopping_mode(first),
        **by_views[str(views)],
        "per_fold": per_fold,
        "by_views": by_views,
        "members": [str(m) for m in members],
        "seconds": None if None in seconds else round(sum(seconds), 1),
    }
    (out / JSON_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log(f"the ensemble's out-of-fold logits, joined from {len(members)} crossfits: "
        f"{by_views[str(views)]}")
    return summary


class Partial:
    """The finished folds of a crossfit in progress, each saved as soon as it ends. They are
    reused only by a run with identical `settings` (folds, serving mode, stopping rule,
    initialisation, the model's bytes and every file's fold); other runs start afresh."""

    SETTINGS = "settings.json"

    def __init__(self, folder: Path, settings: dict):
        self.folder = Path(folder)
        settings_file = self.folder / self.SETTINGS
        if not (settings_file.is_file()
                and json.loads(settings_file.read_text()) == json.loads(json.dumps(settings))):
            self.discard()
            self.folder.mkdir(parents=True)
            settings_file.write_text(json.dumps(settings))

    def _path(self, k: int) -> Path:
        return self.folder / f"fold{k}.npz"

    def has(self, k: int) -> bool:
        return self._path(k).is_file()

    def fold(self, k: int) -> tuple[np.ndarray, dict] | None:
        if not self.has(k):
            return None
        with np.load(self._path(k)) as arrays:
            return arrays["view_logits"], json.loads(str(arrays["record"]))

    def save(self, k: int, view_logits: np.ndarray, record: dict) -> None:
        # Written under another name first: a run killed mid-write leaves no half fold.
        temporary = self.folder / f"fold{k}.tmp.npz"
        np.savez(temporary, view_logits=view_logits, record=json.dumps(record))
        temporary.replace(self._path(k))

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _training_record(folder: Path) -> dict:
    """The run's summary: its own, or the one an exported model's card keeps."""
    if (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text())
    return read_card(folder)["training"]


def served_schedule(folder: Path, config: TrainConfig) -> list[float]:
    """The learning rate of each epoch that trained the folder's served weights: the plateau
    schedule of its validated fit up to the best epoch (replayed from its validation losses).
    A final refit replays that schedule too and logs it; refits from before it did ran at a
    constant rate and logged none."""
    from training.report import read_history
    from training.train import plateau_schedule

    folder = Path(folder)
    record = _training_record(folder)
    epochs = int(record["best_epoch"])
    if record.get("refit_on_all_training_data"):
        refit_log = folder / "refit_metrics.csv"
        logged = read_history(refit_log).get("learning_rate") if refit_log.is_file() else None
        return logged[:epochs] if logged else [config.learning_rate] * epochs
    losses = read_history(folder / "metrics.csv")["val_loss"]
    if len(losses) < epochs:
        raise SystemExit(f"{folder / 'metrics.csv'} has {len(losses)} epochs; "
                         f"the best was {epochs}")
    return plateau_schedule(losses, config)[:epochs]


def orientation_logits(one_view, paths: list[Path], config: TrainConfig) -> np.ndarray:
    """(orientations, images, classes): a one-view serving graph's logits for each orientation
    of `VIEW_NAMES` of each image file, decoded and preprocessed as served. A graph serving v
    views computes the mean of the first v (it averages the same logits), so one scoring
    serves every count, on the same fold model."""
    def logits(images: np.ndarray) -> np.ndarray:
        return one_view(images, training=False)[0].numpy()

    return np.concatenate([
        per_orientation(logits, batch)
        for batch in data_lib.preprocessed_batches(paths, config.input_size, config.crop)],
        axis=1)


def load(folder: Path, views: int) -> dict | None:
    """The folder's out-of-fold logits served on `views` orientations of each image, or None
    when it has none for that count: a crossfit from before the orientations were kept has
    only the count it was run with."""
    folder = Path(folder)
    if not (folder / NPZ_FILE).is_file() or not (folder / JSON_FILE).is_file():
        return None
    summary = json.loads((folder / JSON_FILE).read_text())
    with np.load(folder / NPZ_FILE) as arrays:
        if "view_logits" in arrays.files and views <= len(arrays["view_logits"]):
            logits = arrays["view_logits"][:views].mean(axis=0)
            summary |= {"test_time_augmentation": views,
                        **summary.get("by_views", {}).get(str(views), {})}
        elif view_count(summary.get("test_time_augmentation")) == views:
            logits = arrays["logits"]
        else:
            return None
        # "folds" stays the summary's count; each image's fold is "image_folds".
        return {**summary, "files": arrays["files"], "labels": arrays["labels"],
                "logits": logits, "image_folds": arrays["folds"]}


def log(message: str) -> None:
    print(f"[crossfit] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.crossfit",
        description="Out-of-fold logits (folds by source smear) for calibrating a model on "
                    "all its training smears; then run `python -m training.calibrate`.",
        epilog="example: python -m training.crossfit saved_model/wbc4 --folds 5",
    )
    parser.add_argument("folder", type=Path, help="a training run folder or a saved_model folder")
    parser.add_argument("--folds", type=int, default=FOLDS)
    add_views_option(parser, "score held-out images by")
    parser.add_argument("--weights", default="",
                        help="the run's initialisation file, where its recorded path has "
                             "since been overwritten")
    parser.add_argument("--stopping", choices=STOPPING, default="held-out",
                        help="how long each fold model trains: early stopping on its held-out "
                             "fold (default), or the served weights' epochs and learning rates")
    args = parser.parse_args(argv)
    if args.folds < 2:
        raise SystemExit("--folds must be at least 2")
    print(json.dumps(crossfit(args.folder, args.folds, args.tta_views, args.weights, args.stopping),
                     indent=2))


if __name__ == "__main__":
    main()
