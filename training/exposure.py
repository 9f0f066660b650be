"""The slide backgrounds a model was trained on, and what reading other exposures and lamps
against them (`hematovision.exposure`) does to its answers.

    python -m training.exposure --model pbc8 --data ../shared/data/pbc \
        --split-file saved_model/pbc8/splits.json --record
    python -m training.exposure --model wbc4 --data ../shared/data/kaggle_blood_cells/test --record

The reference is measured over every training image: the train split of the model's
splits.json, from the data folder it names. Then the model's test images (--data) are scored
under each change of CHANGES, the way another exposure or lamp changes an image, twice: read
as they are, and as served, with the correction. For each: accuracy over all images, the
statuses and the accuracy of the accepted ones (as `training.robustness` reports them), and
how many images the correction scaled or could not. `--record` stores the reference and the
figures in the card ("exposure"); the app corrects images from then on, and the model is
another version (`predictor.model_version`).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hematovision.card import read_card, write_card
from hematovision.exposure import CARD_KEY, Exposure, scaled, slide_background
from hematovision.predictor import add_model_options, model_dir_of
from hematovision.preprocess import ImageError, load_image
from training import data as data_lib
from training.calibrate import status_rates
from training.evaluate import (add_data_options, add_reference_options, data_label, open_model,
                               split_files, training_split)
from training.robustness import Perturb, _answers, brightness


def lamp(red: float, green: float, blue: float) -> Perturb:
    """Another lamp's colour: each channel scaled by its factor (clipped)."""
    return lambda image: scaled(image, (red, green, blue))


# Name -> (what it mimics, the change). The first is the baseline; robustness's exposure steps
# (x0.75, x1.25) and milder ones a session or a lamp's age makes, and tinted lamps.
CHANGES: dict[str, tuple[str, Perturb]] = {
    "as recorded": ("the images unchanged (baseline)", lambda image: image),
    "darker": ("under-exposed: brightness x0.75", brightness(0.75)),
    "a little darker": ("slightly under-exposed: brightness x0.9", brightness(0.9)),
    "a little brighter": ("slightly over-exposed: brightness x1.1", brightness(1.1)),
    "brighter": ("over-exposed: brightness x1.25", brightness(1.25)),
    "warmer lamp": ("a warmer (yellower) lamp: green x0.95, blue x0.85", lamp(1.0, 0.95, 0.85)),
    "cooler lamp": ("a cooler (bluer) lamp: red x0.88, green x0.95", lamp(0.88, 0.95, 1.0)),
}


def _background(path: Path) -> list[float]:
    """One file's slide background and its brightest tenth's spread (NaN: unreadable or
    unmeasurable)."""
    try:
        measured = slide_background(load_image(path))
    except (ImageError, OSError):
        measured = None
    return [np.nan] * 4 if measured is None else [*measured[0], measured[1]]


def measure(paths: list[Path], workers: int) -> np.ndarray:
    """(len(paths), 4) backgrounds (red, green, blue) and spreads, NaN where unmeasured."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return np.array(list(pool.map(_background, paths, chunksize=32)), dtype=float)


def reference_entry(backgrounds: np.ndarray) -> dict:
    """The card entry's reference part from the training images' backgrounds and spreads
    (`measure`; NaN rows: unmeasured): their median, lowest and highest, channel by channel,
    and the widest spread."""
    measured = backgrounds[~np.isnan(backgrounds).any(axis=1)]
    if not len(measured):
        raise SystemExit(f"None of {len(backgrounds)} training images had a slide background "
                         "to measure: no reference can be recorded")

    def colour(values) -> list[float]:
        return [round(float(v), 1) for v in values]

    colours, spreads = measured[:, :3], measured[:, 3]
    return {"background": colour(np.median(colours, axis=0)),
            "low": colour(colours.min(axis=0)), "high": colour(colours.max(axis=0)),
            "max_spread": round(float(spreads.max()), 4), "measured": len(measured)}


def compare(predictor, reference: Exposure, paths: list[Path], truth: np.ndarray,
            chunk: int = 64) -> list[dict]:
    """For each change of CHANGES: the served figures with the correction and without it
    ("as read"), and the shares of images corrected and of those outside that could not be."""
    served: dict[str, list] = {name: [] for name in CHANGES}
    as_read: dict[str, list] = {name: [] for name in CHANGES}
    checks: dict[str, list] = {name: [] for name in CHANGES}
    for start in range(0, len(paths), chunk):
        images = [load_image(path) for path in paths[start:start + chunk]]
        for name, (_, change) in CHANGES.items():
            changed = [change(image) for image in images]
            checks[name] += [reference.check(image) for image in changed]
            predictor.exposure = reference
            served[name] += _answers(predictor, changed)
            predictor.exposure = None
            as_read[name] += _answers(predictor, changed)
    predictor.exposure = reference

    def figures(answers: list) -> dict:
        correct = np.array([label for label, _ in answers]) == truth
        return {"accuracy": round(float(correct.mean()), 4),
                **status_rates([status for _, status in answers], correct)}

    rows = []
    for name, (description, _) in CHANGES.items():
        found = [c for c in checks[name] if c is not None]
        n = max(len(checks[name]), 1)
        rows.append({"name": name, "description": description,
                     "corrected": round(sum(c["gains"] is not None for c in found) / n, 4),
                     "not_correctable": round(sum(c["outside"] and c["gains"] is None
                                                  for c in found) / n, 4),
                     "unmeasured": round((len(checks[name]) - len(found)) / n, 4),
                     **figures(served[name]), "as_read": figures(as_read[name])})
    return rows


def run(model_dir: Path, data_dir: Path, split_file: Path | None, split_name: str,
        train_data: Path | None, workers: int, sample: int | None = None) -> dict:
    predictor = open_model(model_dir)  # an unusable model stops here, saying why
    root, training, train = training_split(model_dir, train_data)
    # Both sets are found before either is measured: a wrong path stops at once.
    dataset = data_lib.list_image_folder(data_dir)
    files = (split_files(split_file, split_name, dataset, data_dir) if split_file
             else dataset.files)
    label_of = dataset.label_of()
    files = [f for f in files if dataset.classes[label_of[f]] in predictor.classes]
    if not files:
        raise SystemExit(f"No image of {data_dir} belongs to a class of model "
                         f"{predictor.name!r}")
    if sample and sample < len(files):
        files = sorted(np.random.default_rng(0).choice(files, sample, replace=False).tolist())

    print(f"reference: {len(train)} training images of {root}", file=sys.stderr)
    entry = reference_entry(measure(training.paths(train), workers))
    entry["reference"] = {"data": f"{root} (splits.json:train)", "images": len(train)}
    reference = Exposure.from_card({CARD_KEY: entry})
    if reference is None:
        raise SystemExit(f"The training images' backgrounds make no usable reference: {entry}")
    truth = np.array([predictor.classes.index(dataset.classes[label_of[f]]) for f in files])
    print(f"check: {len(files)} images of {data_dir}", file=sys.stderr)
    label = data_label(data_dir, split_file, split_name)
    entry["check"] = {"data": label + (f", a seeded sample of {sample}" if sample else ""),
                      "n": len(files),
                      "rows": compare(predictor, reference, dataset.paths(files), truth)}
    return entry


def _rates(r: dict) -> str:
    accepted = "n/a" if r["accuracy_accepted"] is None else f"{r['accuracy_accepted']:.4f}"
    return (f"accuracy {r['accuracy']:.4f}  accepted {r['accepted_rate']:.3f} (accuracy "
            f"{accepted})  unidentified {r['unidentified_rate']:.3f}  not_a_cell "
            f"{r['not_a_cell_rate']:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.exposure",
        description="Measure a model's training images' slide backgrounds (the app's exposure "
                    "correction) and how its test images are read under other exposures and "
                    "lamps, with the correction and without.",
        epilog="example: python -m training.exposure --model wbc4 "
               "--data ../shared/data/kaggle_blood_cells/test --record",
    )
    add_model_options(parser)
    add_data_options(parser, "an ImageFolder of the model's test images")
    add_reference_options(parser)
    parser.add_argument("--record", action="store_true",
                        help=f"store the reference and the figures in the model card "
                             f"('{CARD_KEY}')")
    parser.add_argument("--json", type=Path, default=None, help="write the entry here")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="score a seeded sample of N of the images (not with --record)")
    args = parser.parse_args(argv)
    if args.record and args.sample:
        parser.error("--record stores the figures of every test image: run it without --sample")
    model_dir = model_dir_of(args)
    entry = run(model_dir, args.data, args.split_file, args.split_name, args.train_data,
                args.workers, args.sample)
    if args.json:
        args.json.write_text(json.dumps(entry, indent=1) + "\n")
    if args.record:
        card = read_card(model_dir)
        card[CARD_KEY] = entry
        write_card(model_dir, card)
    print(f"slide background of the training images ({entry['measured']} of "
          f"{entry['reference']['images']} measured): median {entry['background']}, lowest "
          f"{entry['low']}, highest {entry['high']} (red, green, blue); widest spread of a "
          f"brightest tenth {entry['max_spread']}")
    print(f"{entry['check']['data']}, n={entry['check']['n']}")
    for r in entry["check"]["rows"]:
        print(f"{r['name']:<18} corrected {r['corrected']:.3f}, not correctable "
              f"{r['not_correctable']:.3f}")
        print(f"{'  served':<18} {_rates(r)}")
        print(f"{'  as read':<18} {_rates(r['as_read'])}")


if __name__ == "__main__":
    sys.exit(main())
