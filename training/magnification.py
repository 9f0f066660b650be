"""The red-cell scale a model was trained at, and how well the app's magnification check
(`hematovision.magnification`) tells images of another magnification.

    python -m training.magnification --model wbc4 --data ../shared/data/kaggle_blood_cells/test --record
    python -m training.magnification --model pbc8 --data ../shared/data/pbc \
        --split-file saved_model/pbc8/splits.json --record

The reference is measured over the model's training images: the train split of its
splits.json, from the data folder that names (a seeded sample of --reference-images). A single
image is outside it beyond the training images' 1st-99th percentiles; a batch's median, beyond
the zoom span the training views were augmented with (the run's --zoom), the magnifications the
model was trained for. The check is then measured on --data (the model's test images) as
recorded and under every change of `training.robustness`, applied the same way: under its
magnification changes a flag is the check doing its job, under the others (focus, exposure,
stain, compression: the magnification unchanged) a false alarm. For each, the median ratio,
the share of images measured, the share of single images outside their range, and the share of
batches of MIN_BATCH_IMAGES images (drawn at random, seeded) whose median is outside the batch
range. `--record` stores the reference and the figures in the card
("magnification"); the app shows the check from then on.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from hematovision.card import ModelLoadError, read_card, write_card
from hematovision.magnification import (CARD_KEY, MIN_BATCH_IMAGES, Reference, batch_check,
                                        red_cell_scale)
from hematovision.predictor import add_model_options, load_failure, model_dir_of
from hematovision.preprocess import ImageError, load_image
from training import data as data_lib
from training.config import TrainConfig
from training.evaluate import (add_data_options, add_reference_options, data_label, split_files,
                               training_split)
from training.robustness import BASELINE, PERTURBATIONS

CHANGES = tuple(PERTURBATIONS)  # BASELINE first
PERCENTILES = (1, 99)  # of the training images' scales: a single image's range
BATCH_DRAWS = 2000


def zoom_span(zoom: float) -> tuple[float, float]:
    """The magnifications Keras's RandomZoom(-zoom, zoom) shows: 1/(1+zoom) to 1/(1-zoom)."""
    return round(1 / (1 + zoom), 4), round(1 / (1 - zoom), 4)


def _scales(path: Path, changes: tuple[str, ...]) -> list[float | None]:
    """The red-cell scale of one file under each change (None: unmeasurable or unreadable)."""
    try:
        image = load_image(path)
    except (ImageError, OSError):
        return [None] * len(changes)
    return [red_cell_scale(PERTURBATIONS[name][1](image)) for name in changes]


def measure(paths: list[Path], changes: tuple[str, ...], workers: int) -> np.ndarray:
    """(len(paths), len(changes)) red-cell scales, NaN where unmeasurable."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(_scales, paths, [changes] * len(paths), chunksize=16))
    return np.array([[np.nan if s is None else s for s in row] for row in rows], dtype=float)


def reference_entry(scales: np.ndarray, zoom: float) -> dict:
    """The card entry's reference part from the training images' scales (NaN: unmeasured)."""
    measured = scales[~np.isnan(scales)]
    if len(measured) < MIN_BATCH_IMAGES:
        raise SystemExit(f"Only {len(measured)} of {len(scales)} training images had red "
                         "cells to measure: no reference can be recorded")
    median = float(np.median(measured))
    low, high = np.percentile(measured, PERCENTILES) / median
    return {"red_cell_scale": round(median, 5),
            "single_image_range": [round(float(low), 3), round(float(high), 3)],
            "batch_range": list(zoom_span(zoom)),
            "min_batch_images": MIN_BATCH_IMAGES}


def check_rows(scales: np.ndarray, reference: Reference, changes: tuple[str, ...],
               draws: int = BATCH_DRAWS, seed: int = 0) -> list[dict]:
    """For each change (a column of `scales`): how the check reads the images so changed."""
    rng = np.random.default_rng(seed)
    batches = [rng.choice(len(scales), MIN_BATCH_IMAGES, replace=False) for _ in range(draws)]
    rows = []
    for i, name in enumerate(changes):
        ratios = [None if np.isnan(s) else s / reference.red_cell_scale for s in scales[:, i]]
        measured = [r for r in ratios if r is not None]
        checks = [batch_check([ratios[j] for j in batch], reference) for batch in batches]
        rows.append({
            "name": name, "description": PERTURBATIONS[name][0],
            "median_ratio": round(float(np.median(measured)), 3) if measured else None,
            "measured": round(len(measured) / len(ratios), 4),
            "single_outside": round(sum(map(reference.single_outside, ratios)) / len(ratios), 4),
            "batches_checked": round(sum(c is not None for c in checks) / draws, 4),
            "batches_outside": round(sum(bool(c and c.outside) for c in checks) / draws, 4),
        })
    return rows


def largest_short_side(paths: list[Path]) -> int:
    """The training images' largest short side in pixels, from their headers: the resolution
    the app brings finer images down to (`hematovision.preprocess.at_resolution`). The largest,
    not a typical one: an image within the training images' own range (PBC's are 254 to 256
    px) is read as it is, as the figures recorded on the test sets were."""
    sides = []
    for path in paths:
        with Image.open(path) as image:
            sides.append(min(image.size))
    return max(sides)


def run(model_dir: Path, data_dir: Path, split_file: Path | None, split_name: str,
        train_data: Path | None, reference_images: int, workers: int) -> dict:
    try:
        card = read_card(model_dir)
    except ModelLoadError as exc:
        raise SystemExit(load_failure(exc))
    root, training, train = training_split(model_dir, train_data)
    # Both sets are found before either is measured: a wrong path stops at once.
    dataset = data_lib.list_image_folder(data_dir)
    files = (split_files(split_file, split_name, dataset, data_dir) if split_file
             else dataset.files)

    # Headers only: cheap over every training image, and the largest of a sample would bring
    # down a training image finer than the sample's largest.
    largest = largest_short_side(training.paths(train))
    rng = np.random.default_rng(0)
    if len(train) > reference_images:
        train = sorted(rng.choice(train, reference_images, replace=False).tolist())
    config = card.get("training", {}).get("config", {})
    zoom = float(config.get("zoom", TrainConfig.zoom))  # cards before --zoom: its default
    print(f"reference: {len(train)} training images of {root}", file=sys.stderr)
    entry = reference_entry(measure(training.paths(train), (BASELINE,), workers)[:, 0], zoom)
    entry["max_short_side"] = largest
    reference = Reference.from_card({CARD_KEY: entry})
    entry["reference"] = {"data": f"{root} (splits.json:train)", "images": len(train)}

    print(f"check: {len(files)} images of {data_dir}", file=sys.stderr)
    scales = measure(dataset.paths(files), CHANGES, workers)
    entry["check"] = {"data": data_label(data_dir, split_file, split_name), "n": len(files),
                      "batch_draws": BATCH_DRAWS,
                      "rows": check_rows(scales, reference, CHANGES)}
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.magnification",
        description="Measure a model's training images' red-cell scale (the app's "
                    "magnification check) and how the check reads its test images at other "
                    "magnifications.",
        epilog="example: python -m training.magnification --model wbc4 "
               "--data ../shared/data/kaggle_blood_cells/test --record",
    )
    add_model_options(parser)
    add_data_options(parser, "an ImageFolder of the model's test images")
    add_reference_options(parser)
    parser.add_argument("--reference-images", type=int, default=1500,
                        help="training images measured for the reference (a seeded sample)")
    parser.add_argument("--record", action="store_true",
                        help=f"store the reference and the figures in the model card "
                             f"('{CARD_KEY}')")
    args = parser.parse_args(argv)
    model_dir = model_dir_of(args)
    entry = run(model_dir, args.data, args.split_file, args.split_name, args.train_data,
                args.reference_images, args.workers)
    if args.record:
        card = read_card(model_dir)
        card[CARD_KEY] = entry
        write_card(model_dir, card)
    single, batch = entry["single_image_range"], entry["batch_range"]
    print(f"red-cell scale of the training images: {entry['red_cell_scale']} of the short side "
          f"({entry['reference']['images']} images); one image outside {single[0]}-{single[1]}"
          f" times it, a batch's median outside {batch[0]}-{batch[1]} times it")
    print(f"their largest short side: {entry['max_short_side']} px (finer images are brought "
          "down to it before they are read)")
    print(f"{entry['check']['data']}, n={entry['check']['n']}")
    for r in entry["check"]["rows"]:
        print(f"{r['name']:<12} median ratio {r['median_ratio']}  measured {r['measured']:.3f}  "
              f"single images outside {r['single_outside']:.3f}  batches of "
              f"{MIN_BATCH_IMAGES} outside {r['batches_outside']:.3f} "
              f"(checked {r['batches_checked']:.3f})")


if __name__ == "__main__":
    sys.exit(main())
