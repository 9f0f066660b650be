"""How often a model flags images unlike its training data, set by set.

    python -m training.unfamiliar --model wbc4 --cross-data ../shared/data/pbc \
        --cross-split-file saved_model/pbc8/splits.json --record

Sets: generated non-cell images (noise, blank, gradients, text renderings), natural photos
(scikit-image's bundled samples, whole and cropped), other microscopy (immunohistochemistry,
quantitative phase), and optionally another dataset's images (a different-source check, where
flags are informative rather than required). Every image goes through the serving path; the
in-domain false-flag rate comes from `training.evaluate` on the model's own test set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hematovision.batch import classify_files
from hematovision.card import UNFAMILIAR, record_metrics
from hematovision.predictor import Predictor, add_model_options, model_dir_of
from training import data as data_lib
from training.calibrate import status_rates
from training.evaluate import data_label, open_model, split_files

NATURAL_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "rocket",
                  "hubble_deep_field", "clock", "brick", "grass", "gravel", "retina", "page",
                  "text")
OTHER_MICROSCOPY = ("immunohistochemistry", "cell")
WORDS = ("HematoVision", "Report", "Sample 42", "Lorem ipsum", "WBC count", "Patient ID",
         "2026-11-23", "Figure 1", "Screenshot", "CBC results", "Hello", "0.93")


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(224, 641)), int(rng.integers(224, 481))


def _noise(rng: np.random.Generator) -> Image.Image:
    w, h = _size(rng)
    kind = rng.integers(3)
    if kind == 0:  # white noise
        array = rng.integers(0, 256, (h, w, 3))
    elif kind == 1:  # Gaussian noise around a random colour
        array = rng.normal(rng.uniform(40, 215, 3), rng.uniform(10, 60), (h, w, 3))
    else:  # blotchy, low-frequency colour noise
        small = rng.integers(0, 256, (int(rng.integers(3, 12)), int(rng.integers(3, 12)), 3))
        return Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _blank(rng: np.random.Generator) -> Image.Image:
    fixed = [(255, 255, 255), (0, 0, 0), (128, 128, 128), (235, 225, 230)]
    colour = fixed[rng.integers(len(fixed))] if rng.random() < 0.3 else tuple(
        int(v) for v in rng.integers(0, 256, 3))
    return Image.new("RGB", _size(rng), colour)


def _gradient(rng: np.random.Generator) -> Image.Image:
    w, h = _size(rng)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(angle) + yy * np.sin(angle)
    else:
        cx, cy = rng.uniform(0, w / max(w, h)), rng.uniform(0, h / max(w, h))
        t = np.hypot(xx - cx, yy - cy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return Image.fromarray((a + (b - a) * t[..., None]).astype(np.uint8))


def _text(rng: np.random.Generator) -> Image.Image:
    background = tuple(int(v) for v in (rng.integers(200, 256, 3) if rng.random() < 0.7
                                        else rng.integers(0, 256, 3)))
    image = Image.new("RGB", _size(rng), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 7))):
        font = ImageFont.load_default(size=int(rng.integers(14, 64)))
        ink = tuple(int(v) for v in rng.integers(0, 120, 3))
        xy = (int(rng.integers(0, image.width // 2)), int(rng.integers(0, image.height - 20)))
        draw.text(xy, str(rng.choice(WORDS)), fill=ink, font=font)
    return image


GENERATORS = {"noise": _noise, "blank": _blank, "gradient": _gradient, "text": _text}


def generated_images(per_kind: int = 50, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Seeded synthetic non-cell images, `per_kind` of each kind."""
    rng = np.random.default_rng(seed)
    return {kind: [make(rng) for _ in range(per_kind)] for kind, make in GENERATORS.items()}


def _with_crops(image: Image.Image, crops: int, rng: np.random.Generator) -> list[Image.Image]:
    """The whole image and `crops` random squares of 30-70 % of its short side."""
    out = [image]
    for _ in range(crops):
        side = int(min(image.size) * rng.uniform(0.3, 0.7))
        left = int(rng.integers(0, image.width - side + 1))
        top = int(rng.integers(0, image.height - side + 1))
        out.append(image.crop((left, top, left + side, top + side)))
    return out


def skimage_samples(names: tuple[str, ...], crops: int = 8, seed: int = 0) -> list[Image.Image]:
    """scikit-image's bundled sample images (no download), each whole and cropped."""
    from skimage import data as samples

    rng = np.random.default_rng(seed)
    images = []
    for name in names:
        array = np.asarray(getattr(samples, name)())
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        images += _with_crops(Image.fromarray(array).convert("RGB"), crops, rng)
    return images


def flag_rates(predictor: Predictor, images: list[Image.Image]) -> dict:
    statuses = [p.status for p in _predict_in_batches(predictor, images)]
    return _rates(statuses)


def _predict_in_batches(predictor: Predictor, images: list[Image.Image], size: int = 64):
    for i in range(0, len(images), size):
        yield from predictor.predict_images(images[i : i + size])


def _rates(statuses: list[str]) -> dict:
    return {"n": len(statuses), **status_rates(statuses)}


def evaluate_unfamiliar(model_dir: Path, cross_data: Path | None = None,
                        cross_split_file: Path | None = None, cross_split_name: str = "test",
                        per_kind: int = 50, seed: int = 0) -> dict:
    predictor = open_model(model_dir)
    sets = []
    for kind, images in generated_images(per_kind, seed).items():
        sets.append({"name": f"generated: {kind}", "group": "generated",
                     "description": f"{len(images)} seeded synthetic {kind} images",
                     **flag_rates(predictor, images)})
    photos = skimage_samples(NATURAL_PHOTOS, seed=seed)
    sets.append({"name": "natural photos", "group": "natural",
                 "description": f"scikit-image samples ({', '.join(NATURAL_PHOTOS)}), each "
                                "whole and as 8 random crops",
                 **flag_rates(predictor, photos)})
    microscopy = skimage_samples(OTHER_MICROSCOPY, seed=seed)
    sets.append({"name": "other microscopy", "group": "other",
                 "description": "scikit-image immunohistochemistry (DAB/haematoxylin) and "
                                "quantitative-phase cell images, whole and 8 crops each",
                 **flag_rates(predictor, microscopy)})
    if cross_data:
        dataset = data_lib.list_image_folder(cross_data)
        files = (split_files(cross_split_file, cross_split_name, dataset, cross_data)
                 if cross_split_file else dataset.files)
        results = list(classify_files(predictor, dataset.paths(files), progress=True))
        statuses = [r.prediction.status for r in results if r.prediction]
        shared = [r.prediction.status for r, f in zip(results, files)
                  if r.prediction and f.split("/", 1)[0] in predictor.classes]
        where = data_label(cross_data, cross_split_file, cross_split_name)
        sets.append({"name": "other dataset", "group": "cross",
                     "description": f"{where}: different source, {len(files)} images",
                     **_rates(statuses),
                     "shared_classes": {"classes": sorted(set(dataset.classes)
                                                          & set(predictor.classes)),
                                        **_rates(shared)}})
    return {"sets": sets, "seed": seed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.unfamiliar",
        description="Flag rates of a saved model on generated non-cell images, natural photos, "
                    "other microscopy and (optionally) another dataset.",
        epilog="example: python -m training.unfamiliar --model pbc8 "
               "--cross-data ../shared/data/kaggle_blood_cells/test --record",
    )
    add_model_options(parser)
    parser.add_argument("--cross-data", type=Path, default=None,
                        help="an ImageFolder from another source (different-source check)")
    parser.add_argument("--cross-split-file", type=Path, default=None,
                        help="splits.json: use only --cross-split-name of --cross-data")
    parser.add_argument("--cross-split-name", default="test")
    parser.add_argument("--per-kind", type=int, default=50, help="generated images per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true",
                        help="store the rates in the model card as metrics.unfamiliar")
    args = parser.parse_args(argv)
    model_dir = model_dir_of(args)
    result = evaluate_unfamiliar(model_dir, args.cross_data, args.cross_split_file,
                                 args.cross_split_name, args.per_kind, args.seed)
    if args.record:
        record_metrics(model_dir, UNFAMILIAR, result)
    for s in result["sets"]:
        print(f"{s['name']:<22} n={s['n']:<5} not_a_cell {s['not_a_cell_rate']:.3f}  "
              f"unidentified {s['unidentified_rate']:.3f}  accepted {s['accepted_rate']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
