"""Does the app find each white cell of a field, and what does reading them one by one give?

    python -m training.fields_check [--model wbc4] [--bccd ../shared/data/bccd]
        [--kaggle ../shared/data/kaggle_blood_cells] [--json saved_model/wbc4/fields_check.json]

`hematovision.fields` splits a field holding several white cells into one result per cell
for a model that crops to the nucleus. Four checks on BCCD's smears scaled to 320x240 as
Kaggle's fields were made from them, and a fifth on Kaggle `train`:

1. Finding: BCCD's hand-drawn white-cell boxes. A cell found whose centre lies in a box not
   yet matched finds that box; a box no cell found is missed; a cell in no box is extra. The
   same under each change of `training.robustness` that keeps the cells in place (focus,
   exposure, stain, compression): the finder's colour test is what they try.
2. Kaggle `test` and `test_simple`: how many cells are found per image. Each image shows one
   white cell, so two or more would split an image the model was evaluated on whole.
3. Reading: BCCD's smears whose `labels.csv` names two white cells of the model's classes
   (Kaggle left them out). The classes the served model names cell by cell, as the app now
   reads them, against the one crop of the whole field it read before, both counted as
   multisets against the two labels (the labels do not say which cell is which).
4. Red cells only: fields made from the half of a BCCD smear without its white cell and that
   half's mirror image: how many the finder takes for a white cell, and what the served model
   answers, and what it would accept without `trust.WHITE_CELL_RULE` (a field of red cells
   is what most of a film shows).
5. The rule on the out-of-fold pool of `training.crossfit`: the population its adoption was
   judged on (docs/experiments.md, "No white cell found").
6. Resolution: BCCD's smears as recorded (640x480), every cell read as served (brought down to
   the training images' resolution) and at full resolution (`preprocess.at_resolution`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from hematovision.batch import image_files
from hematovision.fields import LOBE_DISTANCE, MIN_CELL_SHARE, cell_inputs, white_cells
from hematovision.predictor import Predictor, models_root, with_white_cells
from hematovision.preprocess import RESAMPLE, crop_fraction, load_image, to_input
from hematovision.card import served_views
from hematovision.trust import unsure
from training import crossfit
from training.crop_check import BCCD, FIELD_SIZE, wbc_boxes
from training.evaluate import no_white_cell_figures
from training.robustness import PERTURBATIONS

KAGGLE = Path("../shared/data/kaggle_blood_cells")


def field(bccd: Path, name: str) -> Image.Image:
    with Image.open(bccd / "JPEGImages" / name) as image:
        return image.convert("RGB").resize(FIELD_SIZE, RESAMPLE)


# The changes of training.robustness that keep every cell where it was: the finder's colour
# test is what they try. (The zooms move cells and mirror new ones in at the edges.)
KEEP_GEOMETRY = [name for name in PERTURBATIONS if not name.startswith("zoom")][1:]


def boxed_fields(bccd: Path) -> list[tuple[str, list[tuple], Image.Image]]:
    """(image name, its white-cell boxes scaled to FIELD_SIZE, the field) of every annotated
    smear with one or more, read once for every pass of `finding`."""
    smears = []
    for xml_file in sorted((bccd / "Annotations").glob("*.xml")):
        name, boxes, (width, height) = wbc_boxes(xml_file)
        if not boxes or not (bccd / "JPEGImages" / name).is_file():
            continue
        sx, sy = FIELD_SIZE[0] / width, FIELD_SIZE[1] / height
        smears.append((name, [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in boxes],
                       field(bccd, name)))
    return smears


def finding(smears: list[tuple[str, list[tuple], Image.Image]],
            change: Callable[[Image.Image], Image.Image] | None = None) -> dict:
    """Cells found against the white-cell boxes of `boxed_fields`, each field changed by
    `change` first where given."""
    boxes_total = found_total = missed = extra = 0
    by_count: Counter = Counter()
    misses, extras = [], []
    for name, scaled, image in smears:
        cells = white_cells(change(image) if change else image)
        matched: set[int] = set()
        for cell in cells:
            x, y = cell.centre
            hits = [i for i, b in enumerate(scaled)
                    if i not in matched and b[0] <= x <= b[2] and b[1] <= y <= b[3]]
            if hits:
                matched.add(hits[0])
            else:
                extra += 1
                extras.append(name)
        for i in set(range(len(scaled))) - matched:
            missed += 1
            misses.append({"image": name, "box_side": round(max(
                scaled[i][2] - scaled[i][0], scaled[i][3] - scaled[i][1]), 1),
                "white_cells": len(scaled)})
        boxes_total += len(scaled)
        found_total += len(matched)
        by_count[f"{len(scaled)} boxed, {len(cells)} found"] += 1
    return {"smears": len(smears), "boxes": boxes_total, "found": found_total, "missed": missed,
            "extra": extra, "by_count": dict(sorted(by_count.items())),
            "missed_boxes": misses, "extra_in": extras}


def kaggle_counts(kaggle: Path) -> dict:
    """Per split: images by the number of white cells found (2 stands for two or more)."""
    out = {}
    for split in ("test", "test_simple"):
        files = image_files(kaggle / split)
        if not files:
            continue
        counts: Counter = Counter()
        for file in files:
            with Image.open(file) as image:
                counts[min(len(white_cells(image.convert("RGB"))), 2)] += 1
        out[split] = {"images": len(files), "none": counts[0], "one": counts[1],
                      "several": counts[2]}
    return out


def two_cell_fields(bccd: Path, classes: list[str]) -> list[tuple[str, list[str], bool]]:
    """(image, its two labels, whether Kaggle `train` holds a smear of the same field of view)
    for each BCCD smear whose labels.csv category names two cells of `classes`."""
    notes = {r["image"]: r for r in csv.DictReader((bccd / "bccd_image_notes.csv").open())}
    fields = []
    for name, note in sorted(notes.items()):
        labels = [part.strip().lower() for part in note["labels_csv_category"].split(",")]
        if len(labels) != 2 or not all(label in classes for label in labels):
            continue
        if not (bccd / "JPEGImages" / name).is_file():
            continue
        same_view = [v if Path(v).suffix else f"{v}.jpg"
                     for v in note.get("same_field_of_view_as", "").split(";") if v]
        seen = any(notes.get(v, {}).get("kaggle_split_of_derived_crops") == "train"
                   for v in same_view)
        fields.append((name, labels, seen))
    return fields


def reading(bccd: Path, predictor: Predictor) -> dict:
    """Each two-cell field read cell by cell (as served now) and as one crop (as before)."""
    size, crop = predictor.input_size, predictor.crop
    rows = []
    for name, labels, seen in two_cell_fields(bccd, predictor.classes):
        image = field(bccd, name)
        inputs, found = cell_inputs(image, size, crop)
        cells = predictor.predict_images_arrays([array for array, _ in inputs],
                                                [found] * len(inputs))
        [whole] = predictor.predict_images_arrays([to_input(image, size, crop)], [found])
        rows.append({
            "image": name, "labels": labels, "same_view_in_kaggle_train": seen,
            "cells": [{"label": p.label, "status": p.status, "confidence": round(p.confidence, 4)}
                      for p in cells],
            "whole": {"label": whole.label, "status": whole.status,
                      "confidence": round(whole.confidence, 4)},
            "right_by_cell": _right(labels, [p.label for p in cells]),
            "accepted_right_by_cell": _right(labels, [p.label for p in cells
                                                      if p.status == "accepted"]),
            "accepted_by_cell": sum(p.status == "accepted" for p in cells),
            "right_whole": _right(labels, [whole.label]),
            "accepted_right_whole": _right(labels, [whole.label] if whole.status == "accepted"
                                           else []),
        })
    return {"fields": len(rows), "cells": 2 * len(rows),
            "split_in_two": sum(len(r["cells"]) == 2 for r in rows),
            "right_by_cell": sum(r["right_by_cell"] for r in rows),
            "accepted_by_cell": sum(r["accepted_by_cell"] for r in rows),
            "accepted_right_by_cell": sum(r["accepted_right_by_cell"] for r in rows),
            "right_whole": sum(r["right_whole"] for r in rows),
            "accepted_whole": sum(r["whole"]["status"] == "accepted" for r in rows),
            "accepted_right_whole": sum(r["accepted_right_whole"] for r in rows),
            "same_view_in_kaggle_train": [r["image"] for r in rows
                                          if r["same_view_in_kaggle_train"]],
            "per_field": rows}


def resolution(bccd: Path, predictor: Predictor) -> dict:
    """BCCD's smears as recorded (640x480, twice the pixels of the fields the model learned
    on), each white cell read as the app reads an upload: brought down to the training
    images' resolution first (`preprocess.at_resolution`, as served), and at full resolution
    (that step left out, as the app read them before it). The status of every cell of each."""
    size, crop = predictor.input_size, predictor.crop
    statuses: dict[str, Counter] = {"served": Counter(), "full_resolution": Counter()}
    sizes: Counter = Counter()
    paths = sorted(p for p in (bccd / "JPEGImages").iterdir() if p.suffix.lower() == ".jpg")
    for path in paths:
        image = load_image(path)
        sizes[f"{image.width}x{image.height}"] += 1
        for way, read in (("served", predictor.as_trained(image)[0]),
                          ("full_resolution", image)):
            inputs, found = cell_inputs(read, size, crop, each_cell=True)
            predictions = predictor.predict_images_arrays([array for array, _ in inputs],
                                                          [found] * len(inputs))
            statuses[way].update(p.status for p in predictions)
    return {"smears": len(paths), "sizes": dict(sizes), "short_side": predictor.short_side,
            **{way: {"cells": sum(c.values()), **{s: c[s] for s in
                                                  ("accepted", "unidentified", "not_a_cell")}}
               for way, c in statuses.items()}}


def red_cells_only(bccd: Path, predictor: Predictor) -> dict:
    """Fields with no white cell, made from BCCD's smears whose one white-cell box lies in one
    half: the other half and its mirror image, scaled to 320x240 like the rest (a field of red
    cells at the same magnification, such as most fields of a film are). How many white cells
    the finder sees in them, what the served model answers, and what it would accept without
    trust.WHITE_CELL_RULE (on its network's confidence and unfamiliarity alone)."""
    fields = []
    for xml_file in sorted((bccd / "Annotations").glob("*.xml")):
        name, boxes, (width, height) = wbc_boxes(xml_file)
        if len(boxes) != 1 or not (bccd / "JPEGImages" / name).is_file():
            continue
        left, _, right, _ = boxes[0]
        if left < width / 2 < right:
            continue  # the white cell spans the middle: no free half
        with Image.open(bccd / "JPEGImages" / name) as image:
            image = image.convert("RGB")
        half = (0, 0, width // 2, height) if left >= width / 2 else (
            width - width // 2, 0, width, height)
        free = image.crop(half)
        mirrored = Image.new("RGB", (2 * free.width, free.height))
        mirrored.paste(free, (0, 0))
        mirrored.paste(ImageOps.mirror(free), (free.width, 0))
        fields.append(mirrored.resize(FIELD_SIZE, RESAMPLE))
    read = [cell_inputs(f, predictor.input_size, predictor.crop, each_cell=False)
            for f in fields]
    found = [n for _, n in read]
    outputs = predictor.forward(np.stack([inputs[0][0] for inputs, _ in read]))
    answers = predictor.predictions(with_white_cells(outputs, found))
    unruled = [a for a in predictor.predictions(outputs) if a.status == "accepted"]
    statuses = Counter(a.status for a in answers)
    return {"fields": len(fields), "with_a_white_cell_found": sum(n > 0 for n in found),
            "accepted": statuses["accepted"], "unidentified": statuses["unidentified"],
            "not_a_cell": statuses["not_a_cell"],
            "accepted_without_white_cell_rule": len(unruled),
            "accepted_without_white_cell_rule_as": dict(sorted(Counter(
                a.label for a in unruled).items()))}


def white_cell_rule(model_dir: Path, predictor: Predictor, kaggle: Path) -> dict | None:
    """What trust.WHITE_CELL_RULE changes on the out-of-fold pool of `training.crossfit` (every
    training smear scored by a fold model that did not train on it), served as the card says
    (its views, temperature and confidence threshold): the population its adoption rule was
    judged on (docs/experiments.md, "No white cell found"). The pool keeps no unfamiliarity
    scores, so accepted there means at or above the threshold. None without a crossfit."""
    oof = crossfit.load(model_dir, served_views(predictor.card))
    if oof is None:
        return None
    probabilities = predictor.trust.probabilities(oof["logits"])
    confident = ~unsure(probabilities.max(axis=1), predictor.trust.confidence_threshold)
    correct = probabilities.argmax(axis=1) == oof["labels"]
    root = kaggle / "train"
    missing = []
    for name in oof["files"]:  # decoded as served (`load_image`), then searched
        missing.append(not white_cells(load_image(root / name)))
    return {"pool": {"images": len(correct), "groups": oof["groups"],
                     "views": served_views(predictor.card)},
            **no_white_cell_figures(np.array(missing), correct, confident)}


def _right(labels: list[str], named: list[str]) -> int:
    """How many of `labels` the classes `named` account for, each label once (multisets)."""
    return sum((Counter(labels) & Counter(named)).values())


def check(model_dir: Path, bccd: Path = BCCD, kaggle: Path = KAGGLE) -> dict:
    predictor = Predictor(model_dir)
    if crop_fraction(predictor.crop) is None:
        raise SystemExit(f"{model_dir.name} reads whole images (crop {predictor.crop!r}): the "
                         "app splits fields only for a model that crops to the nucleus")
    smears = boxed_fields(bccd)
    changed = {name: finding(smears, PERTURBATIONS[name][1]) for name in KEEP_GEOMETRY}
    return {"model": model_dir.name, "field_size": list(FIELD_SIZE),
            "lobe_distance": LOBE_DISTANCE, "min_cell_share": MIN_CELL_SHARE,
            "finding": finding(smears),
            "finding_changed": {name: {k: f[k] for k in ("found", "missed", "extra")}
                                for name, f in changed.items()},
            "kaggle": kaggle_counts(kaggle),
            "reading": reading(bccd, predictor),
            "red_cells_only": red_cells_only(bccd, predictor),
            "resolution": resolution(bccd, predictor),
            "white_cell_rule_out_of_fold": white_cell_rule(model_dir, predictor, kaggle)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.fields_check",
        description="Check the finding of each white cell of a field against BCCD's boxes, "
                    "and the served model's reading of fields holding two.",
        epilog="example: python -m training.fields_check --model wbc4 "
               "--json saved_model/wbc4/fields_check.json")
    parser.add_argument("--model", default="wbc4", help="a model folder under saved_model/ "
                        "(or $HEMATOVISION_MODELS_ROOT where set)")
    parser.add_argument("--models-root", type=Path, default=None)
    parser.add_argument("--bccd", type=Path, default=BCCD,
                        help="BCCD folder with Annotations/, JPEGImages/, bccd_image_notes.csv")
    parser.add_argument("--kaggle", type=Path, default=KAGGLE,
                        help="Kaggle blood-cell folder with test/ and test_simple/")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    for needed in (args.bccd / "Annotations", args.bccd / "bccd_image_notes.csv"):
        if not needed.exists():
            raise SystemExit(f"{needed}: not found (BCCD's VOC boxes and image notes)")
    result = check((args.models_root or models_root()) / args.model, args.bccd, args.kaggle)
    f, r = result["finding"], result["reading"]
    print(f"finding, {f['smears']} BCCD smears: {f['found']} of {f['boxes']} white-cell boxes "
          f"found, {f['missed']} missed, {f['extra']} cells found in no box")
    for name, changed in result["finding_changed"].items():
        print(f"  {name}: {changed['found']} found, {changed['extra']} in no box")
    for split, k in result["kaggle"].items():
        print(f"Kaggle {split}: {k['images']} images, one cell found in {k['one']}, none in "
              f"{k['none']}, several in {k['several']}")
    o = result["red_cells_only"]
    print(f"red cells only, {o['fields']} fields: a white cell found in "
          f"{o['with_a_white_cell_found']}; the model: {o['accepted']} accepted, "
          f"{o['unidentified']} unidentified, {o['not_a_cell']} not a cell")
    z = result["resolution"]
    for way, label in (("served", f"brought down to {z['short_side']} px"),
                       ("full_resolution", "at full resolution")):
        print(f"BCCD smears as recorded, {z['smears']}, {label}: {z[way]['cells']} cells, "
              f"{z[way]['accepted']} accepted, {z[way]['unidentified']} unidentified, "
              f"{z[way]['not_a_cell']} not a cell")
    w = result["white_cell_rule_out_of_fold"]
    if w:
        print(f"out of fold, {w['pool']['images']} images: no white cell found in {w['images']}, "
              f"{w['set_aside']} of them accepted without the rule; accuracy on accepted "
              f"{w['accuracy_accepted_without_rule']} without it, {w['accuracy_accepted']} with it")
    print(f"reading, {r['fields']} fields with two labelled cells ({r['cells']} cells), "
          f"{r['split_in_two']} split in two: named right cell by cell {r['right_by_cell']}, "
          f"as one crop {r['right_whole']}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
