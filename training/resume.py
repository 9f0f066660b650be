"""What makes a training run survive a stop: the best model so far on disk, every finished
epoch backed up, a stop that leaves a clean run folder, and a resumed fit given back the
early-stopping and learning-rate state its finished epochs left (`python -m training.train
--resume RUN`), which the plateau schedule's replay also serves (a refit, crossfit).
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from training.config import TrainConfig
from training.report import read_history


class KeepBest(keras.callbacks.Callback):
    """Writes the whole network to `checkpoint.keras` (and its epoch and validation figures to
    `checkpoint.json`) each time validation loss improves. Early stopping keeps the best weights
    only in memory, so without this an interrupted run (out of time, killed, a crash) loses
    everything it learned; the checkpoint can initialise a new run (`--weights`).
    The tuned part's weights go to `checkpoint.trainable.npz` too: a resumed run's early stopping
    restores them at the end. A run folder that has a checkpoint resumes from its figures."""

    MODEL, RECORD, TRAINABLE = "checkpoint.keras", "checkpoint.json", "checkpoint.trainable.npz"

    def __init__(self, classifier: Classifier, run_dir: Path):
        super().__init__()
        self.classifier, self.run_dir = classifier, Path(run_dir)
        record = self.run_dir / self.RECORD
        self.best = (json.loads(record.read_text())["val_loss"] if record.is_file()
                     else float("inf"))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        loss = logs.get("val_loss")
        if loss is None or not loss < self.best:
            return
        self.best = float(loss)
        self.classifier.full.save(self.run_dir / self.MODEL)
        weights = self.classifier.trainable.get_weights()
        np.savez(self.run_dir / self.TRAINABLE, *weights)
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()
                                         if k.startswith("val_")}}
        (self.run_dir / self.RECORD).write_text(json.dumps(record, indent=2) + "\n")

    def best_weights(self) -> list[np.ndarray]:
        with np.load(self.run_dir / self.TRAINABLE) as saved:
            return [saved[f"arr_{i}"] for i in range(len(saved.files))]

    @classmethod
    def discard(cls, run_dir: Path) -> None:
        for name in (cls.MODEL, cls.RECORD, cls.TRAINABLE):
            (Path(run_dir) / name).unlink(missing_ok=True)


class Backup:
    """The latest epoch's weights and optimizer state of a run's validated fit (Keras
    BackupAndRestore, in `backup/`), and whether that fit has ended, so `--resume` can go on
    from the last finished epoch, or skip a fit that had already early-stopped."""

    FOLDER, METADATA, ENDED = "backup", "training_metadata.json", "fit_ended"

    def __init__(self, run_dir: Path):
        self.folder = Path(run_dir) / self.FOLDER

    def callback(self) -> keras.callbacks.Callback:
        # Kept at the end of the fit (not Keras' default): the run may still stop before its
        # model is saved, and a resume must then see that the fit ended.
        return keras.callbacks.BackupAndRestore(str(self.folder), delete_checkpoint=False)

    def finished_epochs(self) -> int:
        metadata = self.folder / self.METADATA
        return json.loads(metadata.read_text())["epoch"] if metadata.is_file() else 0

    def ended(self) -> bool:
        return (self.folder / self.ENDED).is_file()

    def mark_ended(self) -> None:
        self.folder.mkdir(exist_ok=True)
        (self.folder / self.ENDED).touch()

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def stopped_cleanly(run_dir: Path, new: bool):
    """Around the work in a run folder. A new run that stops or fails before any epoch is kept
    (an unreadable image, Ctrl-C while caching) removes its folder, so that it
    never shadows the next run of that name (`runs/*-NAME`); a run stopped with Ctrl-C after
    that says how to go on, without a traceback."""
    try:
        yield
    except BaseException as exc:
        kept = Backup(run_dir).finished_epochs()
        if new and not kept and not any((run_dir / f).exists()
                                        for f in ("model.keras", KeepBest.MODEL)):
            shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(exc, KeyboardInterrupt):
                raise SystemExit(f"stopped before the first epoch ended; {run_dir} removed "
                                 "(cached activations are kept for the next run)") from None
        elif isinstance(exc, KeyboardInterrupt):
            raise SystemExit(f"stopped after epoch {kept}: `python -m training.train --resume "
                             f"{run_dir}` goes on from there") from None
        raise


class Resumed(keras.callbacks.Callback):
    """Put last in a resumed fit's callbacks: gives early stopping and the plateau schedule the
    state the finished epochs left them in (Keras' BackupAndRestore restores only the weights,
    the optimizer and the epoch), and marks the fit as ended when it ends."""

    def __init__(self, val_losses: list[float], config: TrainConfig,
                 early: keras.callbacks.EarlyStopping,
                 plateau: keras.callbacks.ReduceLROnPlateau, keep_best: KeepBest, backup: Backup):
        super().__init__()
        self.val_losses, self.config = val_losses, config
        self.early, self.plateau, self.keep_best, self.backup = early, plateau, keep_best, backup

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self.val_losses:
            return
        done, best = len(self.val_losses), int(np.argmin(self.val_losses))
        self.early.best, self.early.best_epoch = self.val_losses[best], best
        self.early.wait = done - 1 - best
        self.early.best_weights = self.keep_best.best_weights()
        _, next_rate, self.plateau.best = replay_plateau(self.val_losses, self.config)
        self.model.optimizer.learning_rate = next_rate

    def on_train_end(self, logs: dict | None = None) -> None:
        self.backup.mark_ended()


# The plateau schedule of `fit` (Keras ReduceLROnPlateau, patience 1), replayed by
# `plateau_schedule`: both read these.
PLATEAU_FACTOR = 1 / 3
PLATEAU_MIN_DELTA = 1e-4


def plateau_schedule(val_losses: list[float], config: TrainConfig) -> list[float]:
    """The learning rate of each epoch that the plateau schedule of `fit` gave a run with this
    validation-loss history, so another fit can replay it without validation data."""
    return replay_plateau(val_losses, config)[0]


def replay_plateau(val_losses: list[float], config: TrainConfig
                   ) -> tuple[list[float], float, float]:
    """The plateau schedule's rate for each of these epochs, its rate for the next one and the
    best loss it had seen."""
    rates, rate, best = [], config.learning_rate, float("inf")
    for loss in val_losses:
        rates.append(rate)
        if loss < best - PLATEAU_MIN_DELTA:
            best = loss
        elif rate > config.min_learning_rate:
            rate = max(rate * PLATEAU_FACTOR, config.min_learning_rate)
    return rates, rate, best


def truncate_log(path: Path, epochs: int) -> list[float]:
    """Keep the first `epochs` rows of a CSVLogger file; their validation losses."""
    lines = Path(path).read_text().splitlines(keepends=True)
    Path(path).write_text("".join(lines[:1 + epochs]))
    return read_history(path).get("val_loss", [])
