"""How a served model's answers change when images differ from its training images the way
another microscope, camera or stain makes them differ: magnification, focus, exposure, stain
hue and strength, compression.

    python -m training.robustness --model wbc4 --data ../shared/data/kaggle_blood_cells/test --record
    python -m training.robustness --model pbc8 --data ../shared/data/pbc \
        --split-file saved_model/pbc8/splits.json --record

Each perturbation is applied to every decoded image before the model's own preprocessing (its
crop, resize and scaling), as the imaging would; the images as recorded are scored in the same
run, as the baseline. For each: accuracy over all images (the top class, whatever the status),
the shares accepted, unidentified and flagged not a cell, and the accuracy of the accepted ones,
as the app serves them. A flag is the trust layer doing its job, not a failure: what matters for
a lab is that the accepted answers stay right, and how many cells go to review.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from hematovision.card import ROBUSTNESS, record_metrics
from hematovision.predictor import add_model_options, model_dir_of
from hematovision.preprocess import load_image
from training import data as data_lib
from training.calibrate import status_rates
from training.evaluate import add_data_options, data_label, files_to_score, open_model

Perturb = Callable[[Image.Image], Image.Image]


def zoom(factor: float) -> Perturb:
    """Another magnification, the frame kept: above 1 the centre 1/factor of each side is
    enlarged to the whole frame; below 1 the image is shrunk into the centre and the frame
    filled by mirroring it at its edges (a smear's background continues much like that)."""
    def apply(image: Image.Image) -> Image.Image:
        w, h = image.size
        if factor >= 1:
            cw, ch = w / factor, h / factor
            box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
            return image.resize((w, h), Image.Resampling.BICUBIC, box=box)
        small = np.asarray(image.resize((max(1, round(w * factor)), max(1, round(h * factor))),
                                        Image.Resampling.BICUBIC))
        top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
        pad = ((top, h - small.shape[0] - top), (left, w - small.shape[1] - left), (0, 0))
        return Image.fromarray(np.pad(small, pad, mode="symmetric"))
    return apply


def blur(radius: float) -> Perturb:
    """Out of focus: a Gaussian blur of `radius` pixels of the image as recorded."""
    return lambda image: image.filter(ImageFilter.GaussianBlur(radius))


def brightness(factor: float) -> Perturb:
    """Exposure: every pixel scaled by `factor` (clipped)."""
    return lambda image: ImageEnhance.Brightness(image).enhance(factor)


def saturation(factor: float) -> Perturb:
    """Stain strength: colour saturation scaled by `factor` (below 1: a fainter stain)."""
    return lambda image: ImageEnhance.Color(image).enhance(factor)


def hue(degrees: float) -> Perturb:
    """Stain hue: every pixel's hue turned by `degrees` on the colour wheel."""
    shift = round(degrees / 360 * 256)

    def apply(image: Image.Image) -> Image.Image:
        h, s, v = image.convert("HSV").split()
        h = h.point(lambda x: (x + shift) % 256)
        return Image.merge("HSV", (h, s, v)).convert("RGB")
    return apply


def jpeg(quality: int) -> Perturb:
    """Saved again as a JPEG of this quality (a camera's or a report's heavy compression)."""
    def apply(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return apply


# Name -> (what it mimics, the change). Moderate steps, each within what differs between labs
# or sessions; the first is the baseline every other row is compared with.
PERTURBATIONS: dict[str, tuple[str, Perturb]] = {
    "as recorded": ("the images unchanged (baseline)", lambda image: image),
    "zoom 0.8x": ("lower magnification: shrunk to 0.8, the frame filled by mirroring", zoom(0.8)),
    "zoom 1.25x": ("higher magnification: the centre enlarged 1.25 times", zoom(1.25)),
    "zoom 1.5x": ("higher magnification: the centre enlarged 1.5 times", zoom(1.5)),
    "blur 1 px": ("slightly out of focus: Gaussian blur, radius 1 pixel", blur(1)),
    "blur 2 px": ("out of focus: Gaussian blur, radius 2 pixels", blur(2)),
    "darker": ("under-exposed: brightness x0.75", brightness(0.75)),
    "brighter": ("over-exposed: brightness x1.25", brightness(1.25)),
    "faint stain": ("a fainter stain: saturation x0.6", saturation(0.6)),
    "strong stain": ("a stronger stain: saturation x1.4", saturation(1.4)),
    "hue -15": ("another stain batch: hue turned by -15 degrees", hue(-15)),
    "hue +15": ("another stain batch: hue turned by +15 degrees", hue(15)),
    "JPEG q75": ("saved again as a JPEG of quality 75 (a common export default)", jpeg(75)),
    "JPEG q30": ("saved again as a JPEG of quality 30", jpeg(30)),
}
BASELINE = next(iter(PERTURBATIONS))


def evaluate_robustness(model_dir: Path, data_dir: Path, split_file: Path | None = None,
                        split_name: str = "test", names: list[str] | None = None,
                        chunk: int = 64, progress: bool = True) -> dict:
    """Accuracy and statuses of the served model on `data_dir` (or its `split_name` part of
    `split_file`) under each perturbation; images of classes the model lacks are left out."""
    predictor = open_model(model_dir)
    names = list(PERTURBATIONS) if names is None else [BASELINE] + [
        n for n in names if n != BASELINE]
    dataset = data_lib.list_image_folder(data_dir)
    files, _ = files_to_score(predictor, dataset, data_dir, split_file, split_name,
                              known_classes_only=True)
    if not files:
        raise SystemExit(f"No image of {data_dir} belongs to a class of model "
                         f"{predictor.name!r} ({', '.join(predictor.classes)})")
    label_of = dataset.label_of()
    truth = np.array([predictor.classes.index(dataset.classes[label_of[f]]) for f in files])
    labels: dict[str, list[int]] = {n: [] for n in names}
    statuses: dict[str, list[str]] = {n: [] for n in names}
    for start in range(0, len(files), chunk):
        images = [load_image(path) for path in dataset.paths(files[start:start + chunk])]
        for name in names:
            change = PERTURBATIONS[name][1]
            for p in predictor.predict_images([change(image) for image in images]):
                labels[name].append(predictor.classes.index(p.label))
                statuses[name].append(p.status)
        if progress:
            print(f"\r{min(start + chunk, len(files))}/{len(files)} images", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    rows = []
    for name in names:
        correct = np.array(labels[name]) == truth
        rows.append({"name": name, "description": PERTURBATIONS[name][0],
                     "accuracy": round(float(correct.mean()), 4),
                     **status_rates(statuses[name], correct)})
    return {"data": data_label(data_dir, split_file, split_name), "n": len(files),
            "perturbations": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.robustness",
        description="Accuracy and trust statuses of a saved model when its images are changed "
                    "as another microscope, camera or stain would change them.",
        epilog="example: python -m training.robustness --model wbc4 "
               "--data ../shared/data/kaggle_blood_cells/test --record",
    )
    add_model_options(parser)
    add_data_options(parser, "an ImageFolder of labelled images (the model's test set)")
    parser.add_argument("--only", nargs="+", choices=list(PERTURBATIONS)[1:], default=None,
                        metavar="NAME", help="these perturbations only (the baseline always "
                                             f"runs); choices: {', '.join(list(PERTURBATIONS)[1:])}")
    parser.add_argument("--record", action="store_true",
                        help="store the figures in the model card as metrics.robustness")
    args = parser.parse_args(argv)
    if args.record and args.only:
        parser.error("--record stores every perturbation: run it without --only")
    model_dir = model_dir_of(args)
    result = evaluate_robustness(model_dir, args.data, args.split_file, args.split_name,
                                 args.only)
    if args.record:
        record_metrics(model_dir, ROBUSTNESS, result)
    print(f"{result['data']}, n={result['n']}")
    for r in result["perturbations"]:
        accepted = "n/a" if r["accuracy_accepted"] is None else f"{r['accuracy_accepted']:.4f}"
        print(f"{r['name']:<14} accuracy {r['accuracy']:.4f}  accepted {r['accepted_rate']:.3f} "
              f"(accuracy {accepted})  unidentified {r['unidentified_rate']:.3f}  "
              f"not_a_cell {r['not_a_cell_rate']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
