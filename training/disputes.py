"""Label audit: the source groups whose given label the out-of-fold models dispute.

    python -m training.disputes RUN_OR_MODEL_DIR [--below 0.3] [--out FILE] [--sheet PNG]

A crossfit (`training.crossfit`) scores every train + validation image with a fold model that
never saw its smear. Where those models give a smear's own label a low probability on the
whole, averaged over all its images, either the label is wrong or the cell is one the model
cannot read; both are worth a technologist's look before the data trains the next model, and
such a list is what `--exclude-from-training` of `training.train` takes. Judged per source
group, not per image: the Kaggle images of one smear are augmented views of one cell, so they
share one label and one verdict.

Probabilities are before calibration (temperature 1), on the crossfit's served views. Writes a
JSON file (the rule, every disputed group with its files, the model's call and both
probabilities, most disputed first) and, with `--sheet`, a contact sheet with one image of each
disputed group, cut as the model sees it, for review.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hematovision.card import view_count
from hematovision.trust import softmax
from training import data as data_lib
from training.config import TrainConfig
from training.crossfit import load

BELOW = 0.3  # a group is disputed when the mean probability of its own label is under this


def disputes(folder: Path, below: float = BELOW, data: str = "") -> dict:
    """The groups of the folder's crossfit whose mean out-of-fold probability of their given
    label is below `below`, most disputed first. `data` replaces the folder's data path where
    it does not resolve from here."""
    folder = Path(folder)
    if not 0 < below <= 1:
        raise SystemExit(f"--below must be in (0, 1], got {below}")
    config = TrainConfig.load(folder / "config.json")
    summary = _crossfit_summary(folder)
    views = view_count(summary["test_time_augmentation"])
    held = load(folder, views)
    dataset = data_lib.grouped_image_folder(Path(data or config.data), config.max_per_class,
                                           config.source_map, config.field_notes)
    group_of = dict(zip(dataset.files, dataset.groups))
    files = [str(f) for f in held["files"]]
    missing = [f for f in files if f not in group_of]
    if missing:
        raise SystemExit(f"{len(missing)} images of {folder}'s crossfit are not in "
                         f"{dataset.root} (e.g. {missing[0]}): pass the data it ran on with --data")
    probabilities = softmax(held["logits"])
    members: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        members.setdefault(group_of[f], []).append(i)
    labels = held["labels"]
    disputed = []
    for group, index in members.items():
        label = int(labels[index[0]])
        mean = probabilities[index].mean(axis=0)
        if mean[label] < below:
            called = int(np.argmax(mean))
            disputed.append({
                "group": group,
                "label": dataset.classes[label],
                "called": dataset.classes[called],
                "p_label": round(float(mean[label]), 4),
                "p_called": round(float(mean[called]), 4),
                "fold": int(held["image_folds"][index[0]]),
                "files": [files[i] for i in index],
            })
    disputed.sort(key=lambda d: (d["p_label"], d["group"]))
    flagged = [f for d in disputed for f in d["files"]]
    return {
        "source": str(folder),
        "data": str(dataset.root),
        "crop": config.crop,  # how the model cut the images (and the contact sheet cuts them)
        "rule": (f"source groups whose mean out-of-fold probability of their given label, "
                 f"before calibration, on {views} views, is below {below}"),
        "below": below,
        "views": views,
        "groups": len(members),
        "images": len(files),
        "disputed_groups": len(disputed),
        "disputed_images": len(flagged),
        "by_label": {c: sum(d["label"] == c for d in disputed) for c in dataset.classes},
        "disputed": disputed,
        "files": sorted(flagged),
    }


def _crossfit_summary(folder: Path) -> dict:
    path = folder / "crossfit.json"
    if not path.is_file():
        raise SystemExit(f"{folder} has no crossfit: run python -m training.crossfit {folder}")
    return json.loads(path.read_text())


def contact_sheet(report: dict, out: Path, columns: int = 6, side: int = 224) -> Path:
    """One image per disputed group, cut and sized as the model sees it, captioned with the
    group, its label, the model's call and the label's probability."""
    from PIL import Image, ImageDraw

    from hematovision.preprocess import preprocess

    root = Path(report["data"])
    count = max(1, len(report["disputed"]))
    rows = -(-count // columns)
    caption = 28
    sheet = Image.new("RGB", (columns * side, rows * (side + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, entry in enumerate(report["disputed"]):
        # The served preprocessing, scaled back to pixels: the cell as the model sees it.
        array = (preprocess(root / entry["files"][0], side, report["crop"]) + 1.0) * 127.5
        cell = Image.fromarray(np.clip(array.round(), 0, 255).astype(np.uint8))
        x, y = (n % columns) * side, (n // columns) * (side + caption)
        sheet.paste(cell, (x, y))
        draw.text((x + 3, y + side + 1), entry["group"][:24], fill="black")
        draw.text((x + 3, y + side + 14),
                  f"{entry['label'][:3]} -> {entry['called'][:3]}  p={entry['p_label']:.2f}",
                  fill="firebrick")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.disputes",
        description="List the source groups whose given label the crossfit's out-of-fold "
                    "models dispute (a label audit), for review or --exclude-from-training.",
        epilog="example: python -m training.disputes saved_model/wbc4 --sheet disputes.png",
    )
    parser.add_argument("folder", type=Path, help="a run or saved_model folder with a crossfit")
    parser.add_argument("--below", type=float, default=BELOW,
                        help="dispute a group when the mean probability of its label is below "
                             f"this (default {BELOW})")
    parser.add_argument("--data", default="", help="the data the crossfit ran on, where the "
                                                   "folder's recorded path does not resolve")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON here (default: print it)")
    parser.add_argument("--sheet", type=Path, default=None,
                        help="also write a contact sheet PNG of the disputed groups")
    args = parser.parse_args(argv)
    report = disputes(args.folder, args.below, args.data)
    text = json.dumps(report, indent=1) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    if args.sheet:
        contact_sheet(report, args.sheet)
    print(f"[disputes] {report['disputed_groups']} of {report['groups']} groups "
          f"({report['disputed_images']} of {report['images']} images): {report['by_label']}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
