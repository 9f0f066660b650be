"""Does the nucleus crop keep the white cell? Checked against BCCD's hand-drawn WBC boxes.

    python -m training.crop_check [--bccd ../shared/data/bccd] [--crop nucleus] [--json OUT]

The 4-class model sees only the square `hematovision.preprocess.crop_to_nucleus` cuts round the
stained nucleus, which it finds by colour. A square that missed the white cell (a platelet
clump, a second cell, a stain speck taken for the nucleus) would leave the model nothing to
classify, and no accuracy figure would say why. BCCD's original smears carry VOC boxes of every
white cell, so the crop can be checked on them: each smear is scaled from 640x480 to 320x240, as
Kaggle's fields were made from them, the square is found exactly as served, and the check
reports, per smear, whether the square's centre lies in a WBC box and how much of the best
covered box lies inside the square.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from hematovision.preprocess import RESAMPLE, crop_fraction, nucleus_square

BCCD = Path("../shared/data/bccd")
FIELD_SIZE = (320, 240)  # the Kaggle fields' size, made from BCCD's 640x480 smears
# Below this share of its box inside the square a white cell is called cut.
CUT_BELOW = 0.8
WORST = 10  # smears listed by the lowest coverage


def wbc_boxes(xml_file: Path) -> tuple[str, list[tuple[float, float, float, float]], tuple]:
    """(image file name, WBC boxes (xmin, ymin, xmax, ymax), (width, height)) of one VOC file."""
    root = ET.parse(xml_file).getroot()
    name = root.findtext("filename", "").strip()
    if not Path(name).suffix:
        name += ".jpg"  # a few BCCD annotations name the image without its suffix
    size = root.find("size")
    shape = (int(size.findtext("width")), int(size.findtext("height")))
    boxes = []
    for obj in root.iter("object"):
        if obj.findtext("name", "").strip().upper() == "WBC":
            b = obj.find("bndbox")
            boxes.append(tuple(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return name, boxes, shape


def coverage(box, square) -> float:
    """Share of `box`'s area inside `square` (both (x0, y0, x1, y1))."""
    w = max(0.0, min(box[2], square[2]) - max(box[0], square[0]))
    h = max(0.0, min(box[3], square[3]) - max(box[1], square[1]))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return w * h / area if area > 0 else 0.0


def check(bccd: Path = BCCD, crop: str = "nucleus") -> dict:
    fraction = crop_fraction(crop)
    if fraction is None:
        raise SystemExit("--crop none cuts nothing: name the nucleus crop to check")
    notes = {}
    notes_file = bccd / "bccd_image_notes.csv"
    if notes_file.is_file():
        notes = {r["image"]: r for r in csv.DictReader(notes_file.open())}
    rows = []
    for xml_file in sorted((bccd / "Annotations").glob("*.xml")):
        name, boxes, (width, height) = wbc_boxes(xml_file)
        image_file = bccd / "JPEGImages" / name
        if not boxes or not image_file.is_file():
            continue
        with Image.open(image_file) as image:
            field = image.convert("RGB").resize(FIELD_SIZE, RESAMPLE)
        sx, sy = FIELD_SIZE[0] / width, FIELD_SIZE[1] / height
        scaled = [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in boxes]
        left, top, side = nucleus_square(field, fraction)
        square = (left, top, left + side, top + side)
        cx, cy = left + side / 2, top + side / 2
        note = notes.get(name, {})
        rows.append({
            "image": name,
            "label": note.get("labels_csv_category", ""),
            "kaggle_split": note.get("kaggle_split_of_derived_crops", ""),
            "white_cells": len(boxes),
            "centre_in_a_box": any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in scaled),
            "coverage": round(max(coverage(b, square) for b in scaled), 4),
            "box_side": round(max(max(b[2] - b[0], b[3] - b[1]) for b in scaled), 1),
        })
    if not rows:
        raise SystemExit(f"no annotated smear with a white-cell box under {bccd}")
    return {"crop": crop, "square_side": round(min(FIELD_SIZE) * fraction, 1),
            "field_size": list(FIELD_SIZE), "cut_below": CUT_BELOW,
            "all": summarise(rows),
            "by_kaggle_split": {split: summarise([r for r in rows if r["kaggle_split"] == split])
                                for split in sorted({r["kaggle_split"] for r in rows})},
            "worst": sorted(rows, key=lambda r: (r["coverage"], r["image"]))[:WORST]}


def summarise(rows: list[dict]) -> dict:
    covered = np.array([r["coverage"] for r in rows])
    return {"smears": len(rows),
            "centre_in_a_box": sum(r["centre_in_a_box"] for r in rows),
            "whole_box_inside": int(np.sum(covered >= 1.0)),
            "cut": int(np.sum(covered < CUT_BELOW)),
            "median_coverage": round(float(np.median(covered)), 4),
            "several_white_cells": sum(r["white_cells"] > 1 for r in rows),
            "median_box_side": round(float(np.median([r["box_side"] for r in rows])), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.crop_check",
        description="Check the nucleus crop against BCCD's white-cell boxes.",
        epilog="example: python -m training.crop_check --json saved_model/wbc4/crop_check.json")
    parser.add_argument("--bccd", type=Path, default=BCCD,
                        help="BCCD folder with Annotations/ and JPEGImages/")
    parser.add_argument("--crop", default="nucleus", help="the crop to check (nucleus[:F])")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        crop_fraction(args.crop)
    except ValueError as error:
        parser.error(str(error))
    if not (args.bccd / "Annotations").is_dir():
        raise SystemExit(f"{args.bccd}: no Annotations/ folder (BCCD's VOC boxes)")
    result = check(args.bccd, args.crop)
    a = result["all"]
    print(f"{args.crop} (a {result['square_side']} px square in {FIELD_SIZE[0]}x{FIELD_SIZE[1]} "
          f"fields): of {a['smears']} smears, the centre lies in a white-cell box in "
          f"{a['centre_in_a_box']}, the whole box lies inside in {a['whole_box_inside']}, "
          f"less than {CUT_BELOW:.0%} of it in {a['cut']} (median coverage "
          f"{a['median_coverage']}; box side median {a['median_box_side']} px)")
    for split, s in result["by_kaggle_split"].items():
        print(f"  Kaggle {split or 'n/a'}: {s['centre_in_a_box']}/{s['smears']} centred in a box, "
              f"{s['cut']} cut", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
