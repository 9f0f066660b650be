"""Several trained runs served as one network: `python -m training.ensemble RUN RUN [...] --name NAME`.

Runs of one recipe that differ only in what their fits drew (`--fit-seed`: the new head's
initial weights, dropout, batch order) make partly different mistakes; the mean of their logits
is usually more accurate and better calibrated than any one of them. Members must share their
split and their frozen blocks (the same initialisation below `--tune-from-block`), so the
ensemble is one network: the frozen blocks run once, then each member's tuned blocks side by
side; their last feature maps are joined and pooled into one dense head that holds each
member's head weights divided by the number of members. Its logits are then exactly the mean
of the members' logits, and its class activation map (the head-weighted sum of the joined maps)
the mean of theirs, so export, the trust layer, the heat maps and the app serve it as any other
model. It costs each member's tuned blocks once more per image; `benchmarks/bench_inference.py`
measures that.

Members may differ in their recipe beyond the fit seed (weight decay, dropout, ...): each
member's record in summary.json names its own value of every setting they do not share.

Writes a run folder `runs/<time>-mobilenetv2-<size>-NAME/` as training does (model.keras,
config.json and splits.json of the first member, summary.json with every member's record and
the ensemble's own one-view validation figures), for `python -m training.export`. Where
every member has a crossfit (`training.crossfit`) of the same folds, the folder also gets the
ensemble's out-of-fold logits, the mean of the members' (`training.crossfit.join`): the
ensemble's calibration data and its out-of-fold figures, with no fold model trained again.
A member is a training run folder or an exported model folder (which keeps its run's files).

`--combine weights` instead averages the members' weights into one member's network (a uniform
"model soup", Wortsman et al. 2022): one member's size and serving time, where the logit
ensemble grows with every member. The head is linear, so were the members' tuned blocks equal
its logits would be the mean of theirs; they are not, and the blocks are not linear, so how
close it comes to the logit ensemble is measured (its one-view validation figures in
summary.json), not assumed. It has no out-of-fold logits:
the members' crossfits hold their fold models' logits, not their weights, so export calibrates
it on validation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from training import crossfit, data as data_lib  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.export import JOINED_MAPS, finished_run  # noqa: E402
from training.features import cached_features, weights_digest  # noqa: E402
from training.model import apply_top  # noqa: E402
from training.calibrate import nll  # noqa: E402
from training.train import probability_figures, start_run_folder, training_files  # noqa: E402

# What one network needs its members to share beside their split and frozen weights (both
# checked): the same images, cut the same way, and the same cut.
SHARED_FIELDS = ("data", "input_size", "crop", "tune_from_block")
# Config fields that are not part of a member's recipe, or that each member's record names
# already (its fit seed and warm-up).
NOT_RECIPE = ("out", "name", "cache_dir", "fit_seed", "warmup_epochs")


def member_prefix(index: int) -> str:
    """The first member keeps its layers' names (the unfamiliarity features tap its middle
    blocks by name); the others' are renamed, since one network may not hold a name twice."""
    return f"member{index}_" if index else ""


def merge(models: list[keras.Model], tune_from_block: int, dropout: float
          ) -> tuple[keras.Model, keras.Model]:
    """(image -> probabilities, cut-layer activations -> probabilities) of the ensemble of
    `models` (each a `training.model.Classifier.full` as saved: nested "bottom" and
    "trainable"). The members' layer objects are reused, renamed; the models passed in are
    spent."""
    bottoms = [m.get_layer("bottom") for m in models]
    if len({weights_digest(b) for b in bottoms}) > 1:
        raise SystemExit("The members' frozen blocks differ (another initialisation or "
                         "--tune-from-block): they cannot share one frozen part")
    tops = [m.get_layer("trainable") for m in models]
    cut = keras.Input(shape=tuple(bottoms[0].output_shape[1:]), name="cut_features")
    maps = []
    for i, top in enumerate(tops):
        for layer in top.layers:
            if not isinstance(layer, keras.layers.InputLayer):
                layer.name = member_prefix(i) + layer.name
        maps.append(apply_top(top, cut, tune_from_block, member_prefix(i)))
    joined = keras.layers.Concatenate(name=JOINED_MAPS)(maps)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(joined)
    head = keras.layers.Dense(int(tops[0].output_shape[-1]), activation="softmax", name="head")
    trainable = keras.Model(cut, head(keras.layers.Dropout(dropout, name="dropout")(pooled)),
                            name="trainable")
    # Each member's pooled maps meet its own head weights, divided by the count: the logits
    # are the members' mean (biases averaged alike).
    kernels, biases = zip(*(top.get_layer(member_prefix(i) + "head").get_weights()
                            for i, top in enumerate(tops)))
    head.set_weights([np.concatenate(kernels) / len(tops), np.mean(biases, axis=0)])
    image = keras.Input(shape=models[0].input_shape[1:], name="image")
    full = keras.Model(image, trainable(bottoms[0](image)), name="hematovision")
    return full, trainable


def average_weights(models: list[keras.Model]) -> tuple[keras.Model, keras.Model]:
    """(image -> probabilities, cut-layer activations -> probabilities) of one network whose
    every weight is the mean of the members' (a uniform "model soup", Wortsman et al. 2022):
    the first member's model, its weights replaced. The frozen blocks are equal, so only the
    tuned blocks and the head change. Unlike `merge`, it costs one member's time and size;
    whether it predicts like the mean of the members' logits depends on their tuned weights
    staying close (members fine-tuned from one initialisation), which only a measurement shows.
    The models passed in are spent."""
    weights = [m.get_weights() for m in models]
    shapes = [[w.shape for w in ws] for ws in weights]
    if any(s != shapes[0] for s in shapes[1:]):
        raise SystemExit("The members' networks differ in shape: their weights cannot be "
                         "averaged")
    models[0].set_weights([np.mean(ws, axis=0, dtype=np.float64).astype(ws[0].dtype)
                           for ws in zip(*weights)])
    return models[0], models[0].get_layer("trainable")


def check_members(folders: list[Path]) -> tuple[list[dict], list[TrainConfig]]:
    """(summaries, configs) of members that can form one network, or a clear exit."""
    if len(folders) < 2:
        raise SystemExit("An ensemble needs at least two members")
    records = [finished_run(f) for f in folders]
    summaries = [summary for summary, _ in records]
    for folder, summary in zip(folders, summaries):
        if "members" in summary:
            raise SystemExit(f"{folder} is an ensemble already: name its members instead")
    configs = [TrainConfig.load(f / "config.json") for f in folders]
    first = configs[0]
    for folder, summary, config in zip(folders[1:], summaries[1:], configs[1:]):
        if summary["classes"] != summaries[0]["classes"]:
            raise SystemExit(f"{folder} has other classes than {folders[0]}")
        differ = [k for k in SHARED_FIELDS if getattr(config, k) != getattr(first, k)]
        if differ:
            raise SystemExit(f"{folder} differs from {folders[0]} in {', '.join(differ)}: "
                             "members must share their data, split and frozen part")
        if _split_of(folder) != _split_of(folders[0]):
            raise SystemExit(f"{folder} was split otherwise than {folders[0]} (splits.json): "
                             "one member's validation images would be another's training images")
    return summaries, configs


def member_settings(configs: list[TrainConfig]) -> list[dict]:
    """Each member's value of every training setting the members do not all share (empty
    dicts for draws of one recipe). The ensemble's config.json is its first member's, so
    without these an ensemble of two recipes would read as two draws of the first."""
    saved = [asdict(c) for c in configs]
    differ = [k for k in saved[0] if k not in NOT_RECIPE
              and any(s[k] != saved[0][k] for s in saved[1:])]
    return [{k: s[k] for k in differ} for s in saved]


def _split_of(folder: Path) -> dict:
    saved = json.loads((folder / "splits.json").read_text())
    return {k: saved.get(k, []) for k in data_lib.SPLIT_KEYS}


# How the members become one network: `merge` (the mean of their logits; the default) or
# `average_weights` (the mean of their weights).
COMBINE = ("logits", "weights")


def ensemble(folders: list[Path], name: str, out: Path = Path("runs"),
             combine: str = "logits") -> Path:
    """Write the run folder of the ensemble of `folders` (see the module's docstring)."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    started = time.time()
    folders = [Path(f) for f in folders]
    summaries, configs = check_members(folders)
    config = replace(configs[0], name=name, out=str(out), fit_seed=0)
    models = [keras.models.load_model(f / "model.keras", compile=False) for f in folders]
    if combine == "weights":
        full, trainable = average_weights(models)
    else:
        full, trainable = merge(models, config.tune_from_block, config.dropout)

    # Validation on one view, from the frozen part's cached activations, as training reports it.
    dataset = data_lib.grouped_image_folder(Path(config.data), config.max_per_class,
                                           config.source_map, config.field_notes)
    split = data_lib.load_split(folders[0] / "splits.json", dataset)
    label_of = dataset.label_of()
    # The clean view of the files the members cached (found in their cache, or computed once).
    used = training_files(dataset, split, config)
    clean = cached_features(full.get_layer("bottom"), dataset.paths(used), 0, config.seed,
                            config.input_size, Path(config.cache_dir), config.crop,
                            label=dataset.root.name, colour_jitter=config.colour_jitter)
    position = {f: i for i, f in enumerate(used)}
    x_val = clean[[position[f] for f in split["val"]]]
    y_val = np.array([label_of[f] for f in split["val"]])
    probabilities = trainable.predict(x_val, batch_size=256, verbose=0)
    validation = probability_figures(probabilities, y_val)
    # The log-probabilities serve as logits: their softmax is the probabilities themselves.
    validation["loss"] = round(nll(np.log(np.maximum(probabilities, 1e-12)), y_val), 4)

    run_dir = start_run_folder(config)
    (run_dir / "splits.json").write_text((folders[0] / "splits.json").read_text())
    full.save(run_dir / "model.keras")
    seconds = [s["train_seconds"] for s in summaries]
    first = summaries[0]
    summary = {
        "classes": first["classes"],
        "initialisation": (("weight average" if combine == "weights" else "ensemble")
                           + f" of {len(folders)} runs, each initialised from "
                           f"{first['initialisation']}"),
        "combined": combine,  # one of COMBINE; summaries written before it: "logits"
        "members": [{"run": str(folder), "fit_seed": c.seed_of_fit,
                     "warmup_epochs": c.warmup_epochs, "settings": settings,
                     **{k: s[k] for k in ("best_epoch", "epochs_run", "validation",
                                          "train_seconds")}}
                    for folder, s, c, settings in zip(folders, summaries, configs,
                                                      member_settings(configs))],
        "best_epoch": [s["best_epoch"] for s in summaries],
        "epochs_run": [s["epochs_run"] for s in summaries],
        "validation": validation,
        "refit_on_all_training_data": any(s["refit_on_all_training_data"] for s in summaries),
        "trained_on": first["trained_on"],
        # The members' training; merging them takes seconds.
        "train_seconds": None if None in seconds else round(sum(seconds), 1),
        "merge_seconds": round(time.time() - started, 1),
        "counts": first["counts"],
        "extra_training_images": first.get("extra_training_images", 0),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if combine == "logits":
        crossfit.join(folders, run_dir)
    else:
        # The members' held-out logits average to their logit ensemble's, not to this
        # network's: its out-of-fold logits would need each fold's models averaged.
        log("no out-of-fold logits for a weight average: export calibrates it on validation")
    log(f"{len(folders)} members; validation (one view) {validation}; run folder {run_dir}")
    return run_dir


def log(message: str) -> None:
    print(f"[ensemble] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.ensemble",
        description="Serve several runs of one recipe and split (e.g. other --fit-seed) as one "
                    "network: the mean of their logits. Writes a run folder for "
                    "`python -m training.export`.",
        epilog="example: python -m training.ensemble saved_model/pbc8 runs/*-pbc8-fit2 "
               "--name pbc8-ens2",
    )
    parser.add_argument("members", type=Path, nargs="+",
                        help="training run folders or exported model folders")
    parser.add_argument("--name", required=True, help="suffix of the new run folder's name")
    parser.add_argument("--out", type=Path, default=Path("runs"),
                        help="parent folder of the run folders")
    parser.add_argument("--combine", choices=COMBINE, default="logits",
                        help="logits (default): one network running every member, the mean of "
                             "their logits; weights: one member's network holding the mean of "
                             "their weights (a model soup: one member's size and time)")
    args = parser.parse_args(argv)
    print(ensemble(args.members, args.name, args.out, args.combine))


if __name__ == "__main__":
    main()
