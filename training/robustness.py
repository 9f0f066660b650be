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
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from hematovision.card import ROBUSTNESS, read_card, record_metrics
from hematovision.magnification import BatchCheck, batch_check
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


def reading_scale(check: BatchCheck | None) -> float:
    """The scale a batch is read at under the magnification-correction trial (docs/
    experiments.md, "Reading a batch at its measured magnification", not adopted): its median
    red-cell ratio where the batch check judged it outside the model's range, else 1."""
    return check.median_ratio if check is not None and check.outside else 1.0


def evaluate_robustness(model_dir: Path, data_dir: Path, split_file: Path | None = None,
                        split_name: str = "test", names: list[str] | None = None,
                        chunk: int = 64, progress: bool = True,
                        correct_batches: int | None = None, seed: int = 0) -> dict:
    """Accuracy and statuses of the served model on `data_dir` (or its `split_name` part of
    `split_file`) under each perturbation; images of classes the model lacks are left out.

    With `correct_batches` N, each row also gets "corrected": the figures when the images,
    shuffled with `seed`, are read in consecutive batches of N and a batch the magnification
    check judges outside the model's range is read at its median ratio (`reading_scale`), with
    how many batches that was."""
    predictor = open_model(model_dir)
    if correct_batches and (predictor.magnification is None or predictor.crop_fraction is None):
        raise SystemExit(f"Model {predictor.name!r} has no magnification reference or no "
                         "nucleus crop: there is nothing to correct")
    names = list(PERTURBATIONS) if names is None else [BASELINE] + [
        n for n in names if n != BASELINE]
    dataset = data_lib.list_image_folder(data_dir)
    files, _ = files_to_score(predictor, dataset, data_dir, split_file, split_name,
                              known_classes_only=True)
    if not files:
        raise SystemExit(f"No image of {data_dir} belongs to a class of model "
                         f"{predictor.name!r} ({', '.join(predictor.classes)})")
    if correct_batches:
        files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
        chunk = max(1, chunk // correct_batches) * correct_batches  # whole batches per chunk
    label_of = dataset.label_of()
    truth = np.array([predictor.classes.index(dataset.classes[label_of[f]]) for f in files])
    labels: dict[str, list[int]] = {n: [] for n in names}
    statuses: dict[str, list[str]] = {n: [] for n in names}
    fixed: dict[str, list[tuple[int, str]]] = {n: [] for n in names}  # (label, status)
    judged: dict[str, list[BatchCheck]] = {n: [] for n in names}  # enough measured
    for start in range(0, len(files), chunk):
        images = [load_image(path) for path in dataset.paths(files[start:start + chunk])]
        for name in names:
            changed = [PERTURBATIONS[name][1](image) for image in images]
            answers = _answers(predictor, changed)
            labels[name] += [label for label, _ in answers]
            statuses[name] += [status for _, status in answers]
            if correct_batches:
                answers, checks = _corrected(predictor, changed, answers, correct_batches)
                fixed[name] += answers
                judged[name] += checks
        if progress and sys.stderr.isatty():  # \r joins one huge line in a log
            print(f"\r{min(start + chunk, len(files))}/{len(files)} images", end="",
                  file=sys.stderr, flush=True)
    if progress and sys.stderr.isatty():
        print(file=sys.stderr)
    rows = []
    for name in names:
        correct = np.array(labels[name]) == truth
        rows.append({"name": name, "description": PERTURBATIONS[name][0],
                     "accuracy": round(float(correct.mean()), 4),
                     **status_rates(statuses[name], correct)})
        if correct_batches:
            right = np.array([label for label, _ in fixed[name]]) == truth
            outside = sorted(c.median_ratio for c in judged[name] if c.outside)
            rows[-1]["corrected"] = {
                "batches": -(-len(files) // correct_batches),
                "batches_judged": len(judged[name]),
                "batches_corrected": len(outside),
                "corrected_median_ratios": outside,
                "accuracy": round(float(right.mean()), 4),
                **status_rates([status for _, status in fixed[name]], right)}
    return {"data": data_label(data_dir, split_file, split_name), "n": len(files),
            "perturbations": rows}


def _answers(predictor, images: list[Image.Image], scale: float = 1.0) -> list[tuple[int, str]]:
    """(class index, status) of each image as served, read at `scale`."""
    return [(predictor.classes.index(p.label), p.status)
            for p in predictor.predict_images(images, scale)]


def _corrected(predictor, images: list[Image.Image], answers: list[tuple[int, str]], size: int
               ) -> tuple[list[tuple[int, str]], list[BatchCheck]]:
    """`answers` with each consecutive batch of `size` images that the magnification check
    flags read again at its median ratio, and the checks of the batches it could judge."""
    out, checks = list(answers), []
    for i in range(0, len(images), size):
        batch = images[i:i + size]
        check = batch_check([predictor.magnification.ratio(image) for image in batch],
                            predictor.magnification)
        checks += [check] if check else []
        scale = reading_scale(check)
        if scale != 1.0:
            out[i:i + len(batch)] = _answers(predictor, batch, scale)
    return out, checks


def replaced_rows(recorded: dict | None, result: dict) -> dict:
    """The recorded figures with `result`'s rows in place of theirs: after a change of the
    serving path that only some perturbations' images meet (the exposure correction, a
    brighter image). The same images, and the baseline scoring as recorded, or a stop: rows of
    two serving paths would stand side by side."""
    if not recorded or (recorded.get("data"), recorded.get("n")) != (result["data"],
                                                                     result["n"]):
        raise SystemExit("No robustness figures of these images are recorded: record every "
                         "perturbation (without --only)")
    rows = {r["name"]: r for r in result["perturbations"]}
    if rows[BASELINE] != next((r for r in recorded["perturbations"]
                               if r["name"] == BASELINE), None):
        raise SystemExit("The images as recorded score otherwise than when the figures were "
                         "recorded: record every perturbation (without --only)")
    return {**recorded, "perturbations": [rows.get(r["name"], r)
                                          for r in recorded["perturbations"]]}


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
                        help="store the figures in the model card as metrics.robustness; with "
                             "--only, replace those rows of the recorded figures (the baseline "
                             "must score as recorded)")
    parser.add_argument("--correct-batches", type=int, default=None, metavar="N",
                        help="also score each change with the images read in batches of N "
                             "(shuffled, --seed) and a batch whose magnification check is "
                             "outside the model's range read at its median red-cell ratio")
    parser.add_argument("--seed", type=int, default=0,
                        help="the shuffle of the images into batches for --correct-batches")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    model_dir = model_dir_of(args)
    result = evaluate_robustness(model_dir, args.data, args.split_file, args.split_name,
                                 args.only, correct_batches=args.correct_batches,
                                 seed=args.seed)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.record:
        recorded = read_card(model_dir).get("metrics", {}).get(ROBUSTNESS)
        record_metrics(model_dir, ROBUSTNESS,
                       replaced_rows(recorded, result) if args.only else result)
    print(f"{result['data']}, n={result['n']}")
    for r in result["perturbations"]:
        accepted = "n/a" if r["accuracy_accepted"] is None else f"{r['accuracy_accepted']:.4f}"
        print(f"{r['name']:<14} accuracy {r['accuracy']:.4f}  accepted {r['accepted_rate']:.3f} "
              f"(accuracy {accepted})  unidentified {r['unidentified_rate']:.3f}  "
              f"not_a_cell {r['not_a_cell_rate']:.3f}")
        if "corrected" in r:
            c = r["corrected"]
            fixed = "n/a" if c["accuracy_accepted"] is None else f"{c['accuracy_accepted']:.4f}"
            ratios = c["corrected_median_ratios"]
            span = f" (median ratio {ratios[0]:.2f}-{ratios[-1]:.2f})" if ratios else ""
            print(f"{'  corrected':<14} accuracy {c['accuracy']:.4f}  accepted "
                  f"{c['accepted_rate']:.3f} (accuracy {fixed})  batches corrected "
                  f"{c['batches_corrected']} of {c['batches_judged']} judged, "
                  f"{c['batches']} in all{span}")


if __name__ == "__main__":
    sys.exit(main())
