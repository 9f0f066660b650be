"""Train a HematoVision classifier: `python -m training.train --data DIR [--export NAME]`.

Reads top to bottom: config, data and split, model, cached features, fit with early stopping
(resumable: `--resume RUN`), optional refit on all data, save the run folder, export.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from training import data as data_lib  # noqa: E402
from training.config import CHOICES, TrainConfig  # noqa: E402
from training.features import (DEFAULT_ZOOM, build_augmenter, cached_features,  # noqa: E402
                               load_batch, naming_every_unreadable)
from training.model import Classifier, resolve_weights  # noqa: E402
from training.probe import fit_head  # noqa: E402
from training.report import plot_curves, read_history  # noqa: E402
from training.resume import (PLATEAU_FACTOR, PLATEAU_MIN_DELTA, Backup, KeepBest,  # noqa: E402
                             Resumed, plateau_schedule, stopped_cleanly, truncate_log)
from training.stopwatch import ELAPSED_FILE, Stopwatch  # noqa: E402

# Fewer source groups than this to train a class on: warned about. A class of three images
# split 1 / 1 / 1 learns from one, and its validation and test figures rest on one each.
THIN_CLASS = 3
# Fewer source groups than this on the validation or test side: warned about. Their figures
# (early stopping, calibration, test accuracy) then rest on one or two slides or patients,
# which differ in stain and make-up more than a split by chance shows.
THIN_SIDE = 3
# A larger share of images of unknown source than this: warned about. They are never validated
# and train only in the final refit (or not at all with --unassigned drop), so beyond about a
# fifth the served model has learned much that no validation figure speaks for.
UNASSIGNED_SHARE = 0.2


def train(config: TrainConfig, resume: Path | None = None) -> Path:
    """Run one training; returns the run folder (config, splits, metrics, curves, model).

    `resume`: the folder of a run that was stopped before it finished (`--resume`); it goes on
    from its last finished epoch with the same config and split."""
    if problems := config.problems():
        raise SystemExit("cannot train: " + "; ".join(problems))
    # The split and the cached views take config.seed explicitly; this seeds the fit's draws.
    keras.utils.set_random_seed(config.seed_of_fit)
    started = time.time()  # before the data and the cache, whose time counts too

    # Data: list, group by source, split once with a fixed seed, refuse leaks, and refuse
    # classes that cannot be learned, before a run folder exists (and before the weights, so
    # that a mistyped --data is what a first run is told of).
    dataset = data_lib.grouped_image_folder(Path(config.data), config.max_per_class,
                                           config.source_map, config.field_notes)
    log(data_lib.source_map_line(dataset))
    split = data_lib.make_split(dataset, config.val_fraction, config.test_fraction, config.seed)
    log(f"classes {dataset.classes}; " + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    check_classes(dataset, split)
    for line in split_warnings(config, dataset, split):
        log(line)
    # Training-only images from another source: more distinct cells of the same types, which a
    # dataset made of a few hundred augmented smears lacks most. Never validated on.
    extra_paths, y_extra_files = data_lib.list_extra(config.extra_data, dataset.classes,
                                                     config.max_per_class)
    split["extra_train"] = [str(p) for p in extra_paths]
    # Read now, so that a list naming other data is refused before a run folder exists.
    excluded = data_lib.excluded_files(config.exclude_from_training, dataset)
    left_out = excluded & set(split["train"])  # the rest are validated, or not in the split
    if excluded:
        log(f"{len(excluded)} images never train (--exclude-from-training); "
            f"{len(left_out)} of them are in the training split")

    if resume is None:
        config = replace(config, weights=resolve_weights(config.weights))
    # Model: MobileNetV2 backbone with the requested initialisation and a new head, or the
    # weights file's own with --head weights (built before a run folder exists: a weights file
    # that cannot be read, or whose head cannot be ours, leaves none behind).
    num_classes = len(dataset.classes)
    classifier = Classifier(num_classes, config.input_size, config.dropout, config.weights,
                            config.tune_from_block, dataset.classes, config.head)
    log(f"initialisation: {classifier.initialisation}")
    if config.weights == "none":
        log(f"warning: blocks below {config.tune_from_block} keep their random weights (frozen); "
            "expect a poor model. --weights auto starts from ImageNet.")

    done = 0  # epochs finished by earlier sessions
    if resume is None:
        run_dir = start_run_folder(config, dataset.source_tables)
    else:
        run_dir = Path(resume)
        if (run_dir / "summary.json").is_file():
            raise SystemExit(f"{run_dir} has finished; nothing to resume")
        try:
            saved = data_lib.load_split(run_dir / "splits.json", dataset)
        except ValueError as exc:  # saved for other classes, or leaking with today's groups
            saved = {"reason": str(exc)}
        if saved != {k: split.get(k, []) for k in data_lib.SPLIT_KEYS}:
            raise SystemExit(f"{run_dir}: the data no longer splits as when the run started"
                             + (f" ({saved['reason']})" if "reason" in saved else ""))
        done = Backup(run_dir).finished_epochs()
        if not done:  # stopped in its first epoch, or before epochs were backed up
            KeepBest.discard(run_dir)
        log(f"resuming {run_dir} after epoch {done}")
    data_lib.save_split(split, run_dir / "splits.json", dataset)
    # A new run stopped or failed before its first epoch leaves no folder; a stopped run
    # says how to go on.
    with stopped_cleanly(run_dir, new=resume is None):
        # Frozen-part activations of every file and view, computed once (cached on disk).
        with naming_every_unreadable([*dataset.paths(dataset.files), *extra_paths],
                                     config.input_size, config.crop):
            features = CachedViews(classifier, config, dataset, split, extra_paths,
                                   y_extra_files)
        x_train, y_train = features.for_training(split["train"])
        x_val, y_val = features(split["val"], 1)
        initial = classifier.state()
        probe_head = start_head(classifier, config, x_train, y_train, (x_val, y_val))

        # Fit on the grouped training split; early stopping and the schedule see validation only.
        # Every epoch is backed up, so a stopped run can go on (`--resume`).
        # Training time across `--resume`s; unknown for a run resumed from before it was kept.
        stopwatch = Stopwatch(run_dir / ELAPSED_FILE, started, earlier_known=not done)
        history = fit(classifier, config, x_train, y_train, (x_val, y_val), config.epochs, run_dir,
                      keep_best=KeepBest(classifier, run_dir), stopwatch=stopwatch)
        best_epoch = int(np.argmin(history["val_loss"])) + 1
        val_metrics = evaluate_features(classifier.trainable, x_val, y_val)
        log(f"best epoch {best_epoch}: validation {val_metrics}")
        epochs_run = len(history["loss"])
        if warning := stalled(val_metrics, num_classes, epochs_run >= config.epochs):
            log(warning)

        # Refit: images whose source smear is unknown may be siblings of validation images, so
        # they join only a final fit on all training data, for the epoch count validation chose.
        refit_files = split["train"] + split["val"] + split["unassigned"]
        refitted = config.unassigned == "refit" and split["unassigned"] and split["val"]
        if refitted:
            log(f"refit: training again from the start on train + val + unassigned "
                f"({len(refit_files)} images) for {best_epoch} epoch(s), the best validated "
                "count; the validation figures above are of the model before this refit")
            # From the state the validated fit started from, random numbers included, so the
            # refit does not depend on how many steps that fit took in this session.
            classifier.restore(initial)
            x_all, y_all = features.for_training(refit_files)
            start_head(classifier, config, x_all, y_all)
            # The learning rates the validated fit used up to its best epoch, replayed.
            schedule = plateau_schedule(history["val_loss"][:best_epoch], config)
            fit(classifier, config, x_all, y_all, None, best_epoch, run_dir,
                log_name="refit_metrics.csv", rates=schedule)

        classifier.full.save(run_dir / "model.keras")
        KeepBest.discard(run_dir)  # model.keras supersedes it
        Backup(run_dir).discard()
        plot_curves(history, run_dir / "curves.png")
        summary = {
            "classes": dataset.classes,
            "initialisation": classifier.initialisation,
            "best_epoch": best_epoch,
            "epochs_run": epochs_run,
            # The chance-level warning, if the fit ended with it (export repeats it).
            "stalled": warning,
            "validation": val_metrics,
            # With a refit, those figures are of the validated model before it: the refitted one
            # has trained on the validation images.
            "refit_on_all_training_data": bool(refitted),
            "trained_on": {"files": len(features.trained(refit_files if refitted
                                                         else split["train"])),
                           # online: the augmented ones drawn afresh every epoch
                           "views_per_file": config.views,
                           "augment": config.augment},
            # Training-split images left out by --exclude-from-training (still validated).
            "excluded_from_training": len(left_out),
            # Every session of a resumed run; None where a session before it went unrecorded.
            "train_seconds": stopwatch.seconds(),
            "counts": {k: len(v) for k, v in split.items()},
            # The source map's files read (config.json keeps --source-map as given).
            "source_map_tables": dataset.source_tables,
            "extra_training_images": len(extra_paths),
            **({"head_probe": probe_head} if probe_head else {}),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        stopwatch.discard()
        seconds = summary["train_seconds"]
        log(f"run folder {run_dir} (" + ("time not recorded" if seconds is None else f"{seconds} s")
            + ")")
        return run_dir


def start_head(classifier: Classifier, config: TrainConfig, x, y: np.ndarray,
               validation: tuple[np.ndarray, np.ndarray] | None = None) -> dict | None:
    """With --head probe, the fit about to start begins from a linear probe of its own
    training examples (`training.probe.fit_head`); returns the probe head's figures before
    any fine-tuning (None with another --head)."""
    if config.head != "probe":
        return None
    figures = {"training_accuracy": round(fit_head(classifier, x, y, config.class_balance), 4)}
    if validation is not None:
        figures["validation"] = evaluate_features(classifier.trainable, *validation)
    log(f"head: a linear probe of the training views, before fine-tuning {figures}")
    return figures


def start_run_folder(config: TrainConfig, source_tables: list[str] | None = None) -> Path:
    """A new run folder `OUT/<time>-mobilenetv2-<size>[-NAME]/` holding the config, with the
    source map's files read beside `source_map` ("auto" says nothing a rerun can repeat once
    the data folder gains a table); None: not known here (an ensemble's), not written."""
    run_dir = Path(config.out) / (
        time.strftime("%Y%m%d-%H%M%S") + f"-mobilenetv2-{config.input_size}"
        + (f"-{config.name}" if config.name else "")
    )
    run_dir.mkdir(parents=True)
    config.save(run_dir / "config.json", **({} if source_tables is None
                                            else {"source_map_tables": list(source_tables)}))
    return run_dir


class CachedViews:
    """Cut-layer activations of the run's files and of its extra training images, every view
    computed once (cached on disk); calling it gives (activations, labels) of some files, view
    after view. With `--augment online` only the clean view is cached and `for_training`
    hands out `OnlineViews`, which draw the augmented ones afresh."""

    def __init__(self, classifier: Classifier, config: TrainConfig, dataset: data_lib.Dataset,
                 split: dict, extra_paths: list[Path] = (), extra_labels: list[int] = ()):
        self.classifier, self.config, self.dataset = classifier, config, dataset
        self.online = config.augment == "online"
        used = training_files(dataset, split, config)
        self.label_of = dataset.label_of()
        self.excluded = data_lib.excluded_files(config.exclude_from_training, dataset)
        self.position = {f: i for i, f in enumerate(used)}
        cached = 1 if self.online else config.views  # online: the clean view only
        self.views = [self._cached(dataset.paths(used), view, dataset.root.name)
                      for view in range(cached)]
        self.extra_paths, self.extra_labels = list(extra_paths), list(extra_labels)
        empty = np.zeros((0, *classifier.bottom.output_shape[1:]), np.float16)
        extra = [self._cached(list(extra_paths), v, "extra")
                 for v in range(cached if extra_paths else 0)]
        self.extra = (np.concatenate([empty, *extra]),
                      np.array(list(extra_labels) * len(extra), dtype=np.int64))

    def __call__(self, files: list[str], views: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.array([self.position[f] for f in files], dtype=np.int64)
        x = np.concatenate([self.views[v][index] for v in range(views)])
        return x, np.array([self.label_of[f] for f in files] * views, dtype=np.int64)

    def trained(self, files: list[str]) -> list[str]:
        """`files` less those the run's `exclude_from_training` list names."""
        return [f for f in files if f not in self.excluded]

    def for_training(self, files: list[str]) -> tuple[np.ndarray | OnlineViews, np.ndarray]:
        """Every view of `files` (less the excluded), then every view of the extra training
        images; online, their clean views and then `views - 1` augmented views of each, drawn
        afresh every epoch."""
        if self.online:
            # As many looks at each image as the cached views give, the clean one included,
            # so an epoch (and the schedule counted in epochs) keeps its length; only the
            # augmented views change from epoch to epoch.
            kept = self.trained(files)
            c = self.config
            clean, y = self(kept, 1)
            views = OnlineViews(self.classifier.bottom, np.concatenate([clean, self.extra[0]]),
                                (self.dataset.paths(kept) + self.extra_paths) * (c.views - 1),
                                c.input_size, c.crop, c.seed_of_fit, c.colour_jitter, c.zoom)
            labels = list(y) + self.extra_labels
            return views, np.array(labels * c.views, dtype=np.int64)
        x, y = self(self.trained(files), self.config.views)
        return np.concatenate([x, self.extra[0]]), np.concatenate([y, self.extra[1]])

    def _cached(self, paths: list[Path], view: int, label: str) -> np.ndarray:
        c = self.config
        return cached_features(self.classifier.bottom, paths, view, c.seed, c.input_size,
                               Path(c.cache_dir), c.crop, label=label,
                               colour_jitter=c.colour_jitter, zoom=c.zoom)


class OnlineViews:
    """Training examples as the tuned layers see them (`--augment online`): the first
    `len(clean)` are cached clean views; each of the others is a file augmented afresh at
    every look (decoded, a new augmentation drawn, the frozen layers run), so an epoch never
    repeats an augmented view. Costs the frozen layers' forward pass every epoch, which the
    cache saves. A look's draws depend only on the seed and its key (epoch, batch): a run
    repeats, and one resumed after a stop draws for its later epochs the views an uninterrupted
    run would have, never those of its first epochs again."""

    def __init__(self, bottom: keras.Model, clean: np.ndarray, paths: list[Path],
                 input_size: int, crop: str, seed: int, colour_jitter: bool = True,
                 zoom: float = DEFAULT_ZOOM):
        self.clean, self.paths = clean, list(paths)
        self.input_size, self.crop = input_size, crop
        self.seed, self.colour_jitter, self.zoom = seed, colour_jitter, zoom
        self.forward = tf.function(lambda x: bottom(x, training=False), reduce_retracing=True)

    def __len__(self) -> int:
        return len(self.clean) + len(self.paths)

    def look(self, index: np.ndarray, key: tuple[int, ...]) -> np.ndarray:
        """Activations of the examples at positions `index`: clean views as cached, the others
        augmented by draws seeded by `key`."""
        index = np.atleast_1d(index)
        out = np.zeros((len(index), *self.clean.shape[1:]), np.float32)
        cached = index < len(self.clean)
        out[cached] = self.clean[index[cached]]
        if not cached.all():
            files = [self.paths[i - len(self.clean)] for i in index[~cached]]
            images = load_batch(files, self.input_size, self.crop)
            # SeedSequence hashes seed and key together: each epoch and batch draws its own
            # views, unrelated to the cached views' seeds (seed * 1000 + view).
            draw = np.random.SeedSequence([self.seed, *key]).generate_state(1)[0] % 2**31
            augment = build_augmenter(int(draw), self.colour_jitter, self.zoom)
            out[~cached] = self.forward(augment(images, training=True)).numpy()
        return out


def training_files(dataset: data_lib.Dataset, split: dict, config: TrainConfig) -> list[str]:
    """The files whose activations a run caches: all, or only those with a known source."""
    if config.unassigned == "refit":
        return dataset.files
    return sorted(f for name in data_lib.SPLITS for f in split[name])


def fit(classifier: Classifier, config: TrainConfig, x, y, validation, epochs: int,
        run_dir: Path, log_name: str = "metrics.csv",
        extra_callbacks: list[keras.callbacks.Callback] = (),
        rates: list[float] | None = None,
        keep_best: KeepBest | None = None,
        stopwatch: Stopwatch | None = None) -> dict[str, list[float]]:
    """Fit the trainable part. With validation data the rate follows the plateau schedule and
    training stops early; without it, `rates` (one per epoch, e.g. a replayed plateau schedule)
    sets the rate of each epoch, or it stays at the configured one.

    With `keep_best` (validation needed) the fit is resumable: every epoch is backed up in
    `run_dir`, and a fit started again there goes on after its last backed-up epoch, or, where
    it had ended, only restores its best weights; `stopwatch` then keeps the session's time
    with each backup. Returns the whole history either way."""
    model = classifier.trainable
    averaging = config.ema_momentum > 0
    optimizer = keras.optimizers.Adam(config.learning_rate, use_ema=averaging,
                                      ema_momentum=config.ema_momentum,
                                      weight_decay=config.weight_decay or None)
    if config.weight_decay:
        # Only kernels limit what a layer can fit; shrinking a bias or a batch-norm scale
        # towards 0 would shift its outputs instead.
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    num_classes = model.output_shape[-1]
    weights = data_lib.class_weights(list(y), num_classes) if config.class_balance else None
    if config.warmup_epochs:
        # After a scheduler's rate is set, which it then ramps up to.
        steps = max(1, round(config.warmup_epochs * -(-len(x) // config.batch_size)))
        extra_callbacks = [Warmup(steps), *extra_callbacks]
    if rates is not None:
        extra_callbacks = [keras.callbacks.LearningRateScheduler(lambda e, _: rates[e]),
                           *extra_callbacks]
    log_path = run_dir / log_name
    backup, finished = None, []
    if keep_best is not None:
        backup = Backup(run_dir)
        if backup.finished_epochs():
            # The log may hold one epoch more than the backup, if the run stopped between them.
            finished = truncate_log(log_path, backup.finished_epochs())
        if backup.ended():
            model.set_weights(keep_best.best_weights())
            return read_history(log_path)
    # Extra callbacks first: a LearningRateScheduler's rate then reaches the CSV log.
    callbacks: list = [*extra_callbacks, *([keep_best] if keep_best else []),
                       keras.callbacks.CSVLogger(str(log_path), append=bool(finished))]
    if averaging and validation is not None:
        # First, so every epoch-end callback (checkpoint, early stopping, backup) sees the
        # averaged weights. Without validation Keras puts the average in at the end of the fit.
        callbacks.insert(0, AveragedWeights(resumed=bool(finished)))
    if validation is not None:
        early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                              restore_best_weights=True)
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=PLATEAU_FACTOR, patience=1, min_delta=PLATEAU_MIN_DELTA,
            min_lr=config.min_learning_rate)
        callbacks += [early, plateau]
        if backup is not None:
            # After the CSV log: a backup never runs ahead of the log it is resumed with.
            # The time is kept after each epoch's backup (and once its data is ready).
            timer = [keras.callbacks.LambdaCallback(
                on_train_begin=lambda logs: stopwatch.save(),
                on_epoch_end=lambda epoch, logs: stopwatch.save())] if stopwatch else []
            callbacks += [backup.callback(), *timer,
                          Resumed(finished, config, early, plateau, keep_best, backup)]
        validation = (validation[0], keras.utils.to_categorical(validation[1], num_classes))
    if config.mixup > 0:
        # The class weights travel inside the blended batches, as per-example weights.
        inputs = dict(x=MixedBatches(x, y, num_classes, config.batch_size, config.mixup,
                                     weights, first_epoch=len(finished)))
    elif isinstance(x, OnlineViews):
        inputs = dict(x=ShuffledBatches(x, y, num_classes, config.batch_size, weights,
                                        first_epoch=len(finished)))
    else:
        inputs = dict(x=x, y=keras.utils.to_categorical(y, num_classes),
                      batch_size=config.batch_size, class_weight=weights, shuffle=True)
    result = model.fit(**inputs, epochs=epochs, validation_data=validation,
                       callbacks=callbacks, verbose=2)
    if backup is not None:
        return read_history(log_path)
    return {k: [float(v) for v in vs] for k, vs in result.history.items()}


class ShuffledBatches(keras.utils.PyDataset):
    """Shuffled mini-batches of `x` (cached activations, or `OnlineViews`) with one-hot targets
    and each example's class weight. Draws come from NumPy's global generator, which the run's
    seed sets."""

    def __init__(self, x: np.ndarray | OnlineViews, y: np.ndarray, num_classes: int,
                 batch_size: int, class_weight: dict[int, float] | None = None,
                 first_epoch: int = 0):
        super().__init__()
        self.x, self.batch_size = x, batch_size
        self.epoch = first_epoch  # a resumed fit's first, which keys the online views' draws
        self.targets = np.eye(num_classes, dtype=np.float32)[y]
        weight_of = np.array([(class_weight or {}).get(c, 1.0) for c in range(num_classes)],
                             dtype=np.float32)
        self.weights = weight_of[y]
        self.rng = np.random.default_rng(np.random.randint(2**31))
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def _batch(self, index: int) -> np.ndarray:
        return np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])

    def _rows(self, batch: np.ndarray, index: int) -> np.ndarray:
        if isinstance(self.x, OnlineViews):
            # The key's last 0 keeps the draws of the runs recorded so far (it once told a
            # mixup batch's own views from its partners' second draw).
            return self.x.look(batch, (self.epoch, index, 0))
        return self.x[batch].astype(np.float32)

    def __getitem__(self, index: int):
        batch = self._batch(index)
        return self._rows(batch, index), self.targets[batch], self.weights[batch]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self.rng.permutation(len(self.x))


class MixedBatches(ShuffledBatches):
    """Shuffled mini-batches in which every example is blended with another of the same batch
    (mixup, Zhang et al. 2018): activations and one-hot labels both as `lam * own + (1 - lam) *
    other`, `lam` drawn from Beta(alpha, alpha) per example, so most blends stay close to one
    cell. A class-weighted loss weighs each blend by the same shares of the two classes'
    weights."""

    def __init__(self, x: np.ndarray | OnlineViews, y: np.ndarray, num_classes: int,
                 batch_size: int, alpha: float, class_weight: dict[int, float] | None = None,
                 first_epoch: int = 0):
        super().__init__(x, y, num_classes, batch_size, class_weight, first_epoch)
        self.alpha = alpha

    def __getitem__(self, index: int):
        batch = self._batch(index)
        # Partners are the batch's own examples, so their rows are the ones already loaded:
        # online, the frozen layers run once per batch, not again for the partners.
        pick = self.rng.permutation(len(batch))
        partner = batch[pick]
        lam = self.rng.beta(self.alpha, self.alpha, len(batch)).astype(np.float32)
        mix = lambda a, b: lam.reshape(-1, *[1] * (a.ndim - 1)) * a + (  # noqa: E731
            1 - lam.reshape(-1, *[1] * (a.ndim - 1))) * b
        rows = self._rows(batch, index)
        return (mix(rows, rows[pick]), mix(self.targets[batch], self.targets[partner]),
                mix(self.weights[batch], self.weights[partner]))


class Warmup(keras.callbacks.Callback):
    """Raises the learning rate linearly over the first `steps` optimizer steps, all within
    the first epoch, to the rate that epoch started with (Goyal et al. 2017). Counted in the
    optimizer's steps, so a fit resumed after its first epoch does not warm up again."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps, self.target = steps, None

    def on_epoch_begin(self, epoch, logs=None):
        self.target = float(self.model.optimizer.learning_rate)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step < self.steps:
            self.model.optimizer.learning_rate.assign(self.target * (step + 1) / self.steps)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keeps the averaged weights (`ema_momentum`) in the model between epochs and while it is
    validated, the last step's weights while it trains. A backup is taken between epochs, so
    it holds the average in the model and the last step's weights in the optimizer's average
    slots; a resumed fit starts with them that way round and swaps them back first."""

    def __init__(self, resumed: bool):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = resumed


def check_classes(dataset: data_lib.Dataset, split: dict) -> None:
    """Stop where a class cannot be learned; warn where its held-out figures rest on one or two
    source groups (a smear, a slide, an image and its duplicates)."""
    if dataset.left_out:
        log(f"left out (no images): {', '.join(dataset.left_out)}")
    if len(dataset.classes) < 2:
        raise SystemExit(f"Only one class with images ({', '.join(dataset.classes)}) in "
                         f"{dataset.root}: a classifier needs at least two class sub-folders")
    if split.get("excluded_groups"):
        log(f"left out: {len(split['excluded_groups'])} group(s) filed under two classes (one "
            "image or cell with two labels), on no side of the split")
    counts = data_lib.class_groups(dataset, split)
    missing = [c for c, sides in counts.items() if not sides["train"]]
    if missing:
        raise SystemExit(f"No training image of known source for {', '.join(missing)}: add "
                         "images, or leave the class folder out")
    if not split["val"]:
        total = len({g for g in dataset.groups if g is not None})
        raise SystemExit(f"No validation image: the data holds {total} source group(s) ("
                         f"{group_meaning(dataset)}), too few to hold one out while each "
                         "class keeps one in training. Add images of more sources")
    for c, sides in counts.items():
        if sides["train"] < THIN_CLASS:
            log(f"warning: {c} has only {sides['train']} source group(s) to train on (train "
                f"{sides['train']}, val {sides['val']}, test {sides['test']}; "
                f"{group_meaning(dataset)}): it is learned from too few, and its validation "
                "and test figures say little. Add images of more sources")


def group_meaning(dataset: data_lib.Dataset) -> str:
    """What one source group is under the dataset's source map, in words for a message."""
    if dataset.sources_hold_many_cells:
        return "a group is one source of the source map: a slide, a patient or an app sample"
    if dataset.source_tables:
        return "a group is one source smear of the source map, with its augmented views"
    return "without a source map a group is an image with its byte-identical copies"


def split_warnings(config: TrainConfig, dataset: data_lib.Dataset, split: dict) -> list[str]:
    """Warnings on a split whose held-out figures will say little: a side given a fraction that
    got no source group, validation or test on fewer than THIN_SIDE groups, and images of
    unknown source above UNASSIGNED_SHARE of the data (never validated)."""
    group_of = dict(zip(dataset.files, dataset.groups))
    warnings = []
    for name, option, fraction in (("val", "val-fraction", config.val_fraction),
                                   ("test", "test-fraction", config.test_fraction)):
        groups = len({group_of[f] for f in split[name]})
        if fraction > 0 and not groups:
            warnings.append(f"warning: --{option} {fraction} got no source group: the {name} "
                            f"split is empty ({group_meaning(dataset)}). Add images of more "
                            "sources")
        elif 0 < groups < THIN_SIDE:
            warnings.append(f"warning: the {name} split holds {groups} source group(s) "
                            f"({len(split[name])} images): its figures rest on them alone")
    share = len(split["unassigned"]) / max(len(dataset.files), 1)
    if share > UNASSIGNED_SHARE:
        fate = ("train only in a final refit on all data, for the epoch count validation chose "
                if config.unassigned == "refit" else "are left out (--unassigned drop) ")
        warnings.append(f"warning: {len(split['unassigned'])} of {len(dataset.files)} images "
                        f"({share:.0%}) have no source in the source map: they are never "
                        f"validated and {fate}(--unassigned refit|drop). Name their sources "
                        "in the map (file,group) to split them like the others")
    return warnings


def stalled(validation: dict[str, float], num_classes: int, hit_epoch_limit: bool = False
            ) -> str | None:
    """A warning where the best validated epoch is no better than guessing (balanced accuracy
    within half a class's share of chance): a fit that stalled, which a run otherwise ends and
    saves as if it had learned. `hit_epoch_limit`: the fit ran to --epochs, so it may simply
    have been too short."""
    balanced = validation.get("balanced_accuracy")
    if balanced is None or balanced > 1.5 / num_classes:
        return None
    warning = (f"warning: validation balanced accuracy {balanced} is about chance "
               f"(1/{num_classes}): the fit did not learn. ")
    if hit_epoch_limit:
        return warning + ("It stopped at the --epochs limit: it may simply have had too few "
                          "epochs (raise --epochs); if more do not help, try --warmup-epochs 1")
    return warning + ("Try --warmup-epochs 1 (a stalled start), another --fit-seed, or a lower "
                      "--learning-rate")


def evaluate_features(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {}
    return probability_figures(model.predict(x, batch_size=256, verbose=0), y)


def probability_figures(probabilities: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy of predicted class probabilities."""
    predicted = np.argmax(probabilities, axis=1)
    recalls = [float(np.mean(predicted[y == c] == c)) for c in np.unique(y)]
    return {"accuracy": round(float(np.mean(predicted == y)), 4),
            "balanced_accuracy": round(float(np.mean(recalls)), 4)}


def log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str, dict, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a MobileNetV2 white-cell classifier on an ImageFolder directory.",
        epilog="example: python -m training.train --data ../shared/data/kaggle_blood_cells/train "
               "--weights weights/dog_breed_mobilenetv2.h5 --export wbc4",
    )
    texts = TrainConfig.help()
    for f in fields(TrainConfig):
        kind = type(f.default)
        if kind is bool:
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name,
                                action=argparse.BooleanOptionalAction, default=f.default,
                                help=texts[f.name])
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind,
                                default=f.default, choices=CHOICES.get(f.name),
                                help=f"{texts[f.name]} (default: {f.default!r})")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN",
                        help="go on with a run folder that stopped before it finished, from "
                             "its last finished epoch, with its own config (other training "
                             "options are then ignored)")
    parser.add_argument("--export", default="",
                        help="also export to saved_model/NAME ($HEMATOVISION_MODELS_ROOT/NAME "
                             "where that is set)")
    parser.add_argument("--replace", action="store_true",
                        help="let --export replace a model of other classes under NAME")
    parser.add_argument("--description", default="", help="one line for the model card")
    parser.add_argument("--expects", default="", help="what images the model expects (app hint)")
    args = vars(parser.parse_args(argv))
    # export_run's options: the card's words, and whether it may replace another model
    exporting = {"description": args.pop("description"), "expects": args.pop("expects"),
                 "replace": args.pop("replace")}
    export, resume = args.pop("export"), args.pop("resume")
    if resume is not None:
        if not (resume / "config.json").is_file():
            parser.error(f"--resume {resume}: no config.json there")
        return TrainConfig.load(resume / "config.json"), export, exporting, resume
    if not args["data"]:
        parser.error("--data is required (or --resume RUN)")
    config = TrainConfig(**args)
    if problems := config.problems():
        parser.error("; ".join(problems))
    return config, export, exporting, None


def main(argv: list[str] | None = None) -> None:
    config, export_name, exporting, resume = parse_args(argv)
    if export_name:  # a name the export would refuse is refused before hours of training
        from training.export import check_target

        classes = data_lib.list_image_folder(Path(config.data), config.max_per_class).classes
        check_target(export_name, classes, replace=exporting["replace"])
    run_dir = train(config, resume)
    if export_name:
        from training.export import export_run

        print(export_run(run_dir, export_name, **exporting))  # where the model was saved


if __name__ == "__main__":
    main()
