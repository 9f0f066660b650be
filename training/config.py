"""Training configuration: one dataclass, saved as config.json in every run folder."""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from hematovision.preprocess import crop_fraction


LAST_BLOCK = 16  # MobileNetV2's last inverted-residual block (tune_from_block's upper bound)


@dataclass
class TrainConfig:
    data: str = ""  # ImageFolder root: one sub-folder per class (e.g. kaggle_blood_cells/train)
    out: str = "runs"  # parent folder of the run folders
    weights: str = "auto"  # backbone init: auto (weights/dog_breed_mobilenetv2.h5, fetched by
    #   `python -m training.pretrained`) | imagenet (download) | none (random) | PATH (.h5 /
    #   .keras, layers copied by name); a run records the file auto chose
    head: str = "new"  # new: a freshly drawn head | weights: the --weights file's own, which
    #   must be a HematoVision model of the same classes in the same order (a checkpoint
    #   restarted, a served model tuned further), so the run starts as that model | probe: a
    #   linear probe of the initial network's pooled features over the fit's own training
    #   views (LP-FT), so fine-tuning does not start by pushing a random head's errors back
    #   through the tuned blocks; every fit fits its own (a crossfit's folds, a refit)
    input_size: int = 224  # square input side in pixels (the serving contract)
    crop: str = "none"  # none | nucleus: centre a square crop on the stained nucleus first (its
    #   side preprocess.NUCLEUS_CROP_FRACTION, 0.55, of the short side) | nucleus:F: the same
    #   square with its side F (0.2 to 1)
    tune_from_block: int = 14  # MobileNetV2 blocks from here to 16 (+ Conv_1, head) are trained;
    #   lower layers are frozen and their activations cached (lower = more capacity, slower)
    seed: int = 1337  # seeds the split, the augmentation and the weight init
    fit_seed: int = 0  # 0: --seed; else seeds only what the fit draws (the new head's initial
    #   weights, dropout, batch order; with --weights none all random weights), keeping --seed's
    #   split and augmented views (and so the cache): another member for an ensemble
    #   (`python -m training.ensemble`)
    val_fraction: float = 0.15  # share of source groups per class held out for validation
    test_fraction: float = 0.0  # share held out for a test split (0 when the data has its own)
    source_map: str = "auto"  # CSV mapping files to source smears: auto | none | PATH
    field_notes: str = "auto"  # CSV naming source smears of overlapping fields of view (often
    #   the same cell), kept in one group: auto (bccd/bccd_image_notes.csv beside the data) |
    #   none | PATH
    unassigned: str = "refit"  # images with no known source: refit (train only in the final
    #   refit on all data, never next to validation) | drop
    extra_data: str = ""  # training-only ImageFolder root(s), comma-separated, from another
    #   source (e.g. PBC single cells for the Kaggle model): classes are matched by folder name,
    #   other classes are ignored; never used for validation, early stopping or calibration
    exclude_from_training: str = ""  # a list of images (paths under --data, one per line, or
    #   the JSON of `python -m training.disputes`) that never train a model, e.g. those whose
    #   label a label audit disputes: they keep their split and are still validated, and scored
    #   out of fold by a crossfit, with their given labels
    augment: str = "cached"  # cached: the `views` views of each training image go through the
    #   frozen layers once and are cached, then reused every epoch (fast on a CPU) | online: the
    #   clean view is cached, and every epoch pushes `views - 1` freshly augmented views of each
    #   training image through the frozen layers (an epoch as long as a cached one, but an
    #   augmented view is never seen twice, at the frozen layers' cost every epoch)
    views: int = 3  # cached views per training image: the clean image + (views-1) augmented
    colour_jitter: bool = True  # augment hue, saturation, brightness, contrast (stain and light
    #   differences between labs); --no-colour-jitter keeps the geometric augmentation only
    zoom: float = 0.2  # augmented views are enlarged or shrunk at random by up to this share
    #   (Keras RandomZoom's factor: 0.2 shows 0.8 to 1.2 of the image's side, enlarging it up
    #   to 1.25 times and shrinking it to 0.83); wider for other microscopes' magnifications
    batch_size: int = 64  # mini-batch size for the tuned layers
    epochs: int = 30  # upper bound; early stopping on validation loss decides
    patience: int = 4  # epochs without validation-loss improvement before stopping
    learning_rate: float = 3e-4  # Adam; divided by 3 after each epoch without improvement
    min_learning_rate: float = 1e-6  # floor of the plateau schedule
    dropout: float = 0.3  # before the classification layer
    weight_decay: float = 0.0  # 0: off; else decoupled weight decay (AdamW, Loshchilov and
    #   Hutter 2019): each step shrinks every tuned kernel by learning rate x weight_decay of
    #   itself, apart from the loss's gradient; biases and batch-norm scales and shifts are kept
    warmup_epochs: float = 0.0  # 0: off; else the share of the first epoch (at most 1) over
    #   which the learning rate rises linearly from near 0 to its set value: Adam's first steps
    #   move every tuned weight by about the full rate whatever its gradient, and from a fresh
    #   head they can stall a fit for good (the pbc8 recipe stayed at chance with --fit-seed 2)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    ema_momentum: float = 0.0  # 0: off; else the weight of the past in an exponential moving
    #   average of the tuned weights, updated every step (Polyak averaging), which validation,
    #   early stopping, checkpoints and the saved model use instead of the last step's weights
    mixup: float = 0.0  # 0: off; else alpha of Beta(alpha, alpha): each training example's
    #   cached activations and one-hot label are blended with another example's, by a share
    #   drawn per example (mixup at the cut layer: soft targets between cells, for small data
    #   with doubtful labels); validation and early stopping see unblended images
    class_balance: bool = True  # weight the loss by inverse class frequency
    max_per_class: int = 0  # cap images per class (0: all); for smoke tests and quick trials
    cache_dir: str = "cache"  # where frozen-backbone activations are kept between runs
    name: str = ""  # suffix of the run folder name

    @property
    def seed_of_fit(self) -> int:
        """What seeds the fit's draws: --fit-seed, else --seed."""
        return self.fit_seed or self.seed

    def save(self, path: Path, **resolved) -> None:
        """The config as JSON, with `resolved` values beside the options (e.g. the tables an
        "auto" source map read), which `load` passes over."""
        Path(path).write_text(json.dumps({**asdict(self), **resolved}, indent=2) + "\n")

    def problems(self) -> list[str]:
        """What makes this config untrainable, one line each (empty when none): refused before
        anything is read or written, instead of a traceback, or a run that quietly does
        something else (Keras reads batch size 0 as its default; a fraction above 1 empties
        the training split)."""
        rules = [
            # Before the ranges: inf passes "above 0" and trains on NaN weights, and a NaN
            # fails every range with a message that does not say why.
            *[(math.isfinite(value), f"{name} must be a finite number, not {value}")
              for name, value in self._numbers().items()],
            (self.views >= 1, "views must be at least 1 (the clean image)"),
            (self.augment in CHOICES["augment"],
             f"augment must be one of {', '.join(CHOICES['augment'])}"),
            (self.head in CHOICES["head"], f"head must be one of {', '.join(CHOICES['head'])}"),
            (self.head != "weights" or self.weights not in ("auto", "none", "imagenet"),
             "head weights needs --weights PATH: a HematoVision model of these classes"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.patience >= 0, "patience must be 0 or more"),
            (self.input_size >= 32, "input_size must be at least 32 (MobileNetV2's smallest)"),
            (2 <= self.tune_from_block <= LAST_BLOCK,
             f"tune_from_block must be within 2..{LAST_BLOCK}"),
            (0 <= self.zoom < 1, "zoom must be in [0, 1) (a share of the image's side)"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be 0 (off) or above"),
            (0 <= self.warmup_epochs <= 1, "warmup_epochs must be in [0, 1] (0: off; a share "
                                           "of the first epoch)"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.ema_momentum < 1, "ema_momentum must be in [0, 1) (0: off)"),
            (self.mixup >= 0, "mixup must be 0 (off) or above (the Beta distribution's alpha)"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1): early stopping and "
                                        "calibration need a validation split"),
            (0 <= self.test_fraction < 1, "test_fraction must be in [0, 1)"),
            (self.val_fraction + self.test_fraction < 1,
             "val_fraction + test_fraction must be below 1, leaving images to train on"),
            (self.learning_rate > 0, "learning_rate must be above 0"),
            (0 <= self.min_learning_rate <= self.learning_rate,
             "min_learning_rate must be in [0, learning_rate]"),
            (self.max_per_class >= 0, "max_per_class must be 0 (all) or more"),
        ]
        try:
            crop_fraction(self.crop)
        except ValueError as error:
            rules.append((False, str(error)))
        return [message for ok, message in rules if not ok]

    def _numbers(self) -> dict[str, float]:
        """The options whose values are real numbers (learning rate, fractions, ...)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(f.default, float)}

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each option's help text: its comment above, so the two cannot drift apart."""
        texts: dict[str, str] = {}
        name = None
        for line in inspect.getsource(cls).splitlines():
            option = re.match(r"    (\w+): [^=]+=[^#]*#\s*(.*)", line)
            more = re.match(r"    #\s+(.*)", line)
            if option:
                name, texts[option.group(1)] = option.group(1), option.group(2)
            elif more and name:
                texts[name] += " " + more.group(1)
            else:
                name = None
        return texts

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        saved = json.loads(Path(path).read_text())
        # A run saved before an option existed was made without it, not with today's default.
        return cls(**{**BEFORE_OPTION_EXISTED,
                      **{k: v for k, v in saved.items() if k in known}})


BEFORE_OPTION_EXISTED = {"field_notes": "none"}
# Options that take one of a few words; argparse refuses others (a typo must not pass as a
# default: any --unassigned value but "refit" used to mean "drop").
CHOICES = {"unassigned": ("refit", "drop"), "augment": ("cached", "online"),
           "head": ("new", "weights", "probe")}
