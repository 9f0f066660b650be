"""Shared fixtures: tiny generated images and a tiny exported model (never the real data)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
CELL_COLORS = [(200, 60, 60), (60, 60, 200), (120, 60, 160), (200, 150, 200)]  # one per class


def make_image(path: Path, color: tuple[int, int, int], size=(64, 48), fmt: str = "JPEG") -> Path:
    """A small image with a disc of `color` on a light background (a cartoon cell)."""
    # zlib.crc32, not hash(): str hashes change from one interpreter run to the next.
    rng = np.random.default_rng(zlib.crc32(f"{path.name}{color}".encode()))
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 3) ** 2
    array = np.full((h, w, 3), 235, dtype=np.uint8)
    array[disc] = color
    array = np.clip(array + rng.integers(-8, 8, array.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt)
    return path


def make_smear(diameter: float, size=(320, 240), seed: int = 0, pale_centres: bool = True
               ) -> Image.Image:
    """A cartoon blood film: pink red cells `diameter` pixels across (pale centres), scattered
    without overlapping over about a third of a pale background, and a little noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    array = np.full((h, w, 3), (226, 216, 220), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    centres: list[tuple[float, float]] = []
    for _ in range(4000):
        if len(centres) * np.pi * diameter ** 2 / 4 > 0.33 * w * h:
            break
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if all((x - a) ** 2 + (y - b) ** 2 > (1.1 * diameter) ** 2 for a, b in centres):
            centres.append((x, y))
            distance = np.hypot(xx - x, yy - y)
            array[distance < diameter / 2] = (192, 140, 160)
            if pale_centres:
                array[distance < diameter / 5] = (212, 182, 192)
    array += rng.normal(0, 3, array.shape)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def with_transparent_margins(image: Image.Image, margin: tuple[int, int] = (160, 120)
                             ) -> Image.Image:
    """`image` in the middle of a larger, fully transparent canvas (RGBA), `margin` pixels
    wide left and right, and top and bottom: a cut-out exported as a PNG. The margins hide
    black (0, 0, 0, 0), as most tools save them."""
    canvas = Image.new("RGBA", (image.width + 2 * margin[0], image.height + 2 * margin[1]),
                       (0, 0, 0, 0))
    canvas.paste(image.convert("RGBA"), margin)
    return canvas


NUCLEUS_VIOLET = (90, 60, 160)  # passes the nucleus colour test: blue well above red, dark green


def with_nuclei(image: Image.Image, nuclei: list[tuple[float, float, float]], lobes: int = 1,
                ) -> Image.Image:
    """A copy of a smear with a violet nucleus at each (x, y, radius): one disc, or `lobes`
    discs of a third of that radius in a row, apart as a segmented neutrophil's lobes are."""
    array = np.asarray(image.convert("RGB")).copy()
    h, w = array.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    for x, y, radius in nuclei:
        if lobes == 1:
            discs = [(x, y, radius)]
        else:
            step = radius * 1.2
            discs = [(x + (k - (lobes - 1) / 2) * step, y, radius / 3) for k in range(lobes)]
        for cx, cy, r in discs:
            array[(xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2] = NUCLEUS_VIOLET
    return Image.fromarray(array)


@pytest.fixture(scope="session")
def tiny_keras_model():
    """A small Keras classifier with the serving contract: 224x224x3 in, pooled features
    (layer "pool") into a 4-way softmax (layer "head")."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_keras_model) -> Path:
    """A `saved_model/`-style folder (Keras + LiteRT + card) holding the tiny model, as 'tiny'."""
    from training.export import export_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    export_model(
        tiny_keras_model,
        out,
        {
            "description": "tiny test model",
            "classes": CLASSES,
            "initialisation": "random (test)",
            "metrics": {},
        },
    )
    return out


@pytest.fixture(scope="session")
def trusted_model_dir(tmp_path_factory, tiny_keras_model) -> Path:
    """The tiny model exported with a trust layer fitted by `training.calibrate` on a tiny
    generated ImageFolder (its own train/val split), as 'trusted'."""
    import json

    from training.calibrate import fit_trust
    from training.export import export_model

    base = tmp_path_factory.mktemp("trusted")
    split: dict[str, list[str]] = {"train": [], "val": []}
    for name, color in zip(CLASSES, CELL_COLORS):
        for i in range(8):
            make_image(base / "data" / name / f"{i}.jpg", color)
            split["val" if i < 3 else "train"].append(f"{name}/{i}.jpg")
    out = base / "models" / "trusted"
    export_model(tiny_keras_model, out, {
        "description": "tiny test model with a trust layer", "classes": CLASSES,
        "initialisation": "random (test)", "metrics": {},
        "training": {"config": {"data": str(base / "data")}},
    })
    (out / "splits.json").write_text(json.dumps(split))
    fit_trust(out, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(base folder, run folder) of a real one-epoch training run on 4 x 4 generated images."""
    from training import train
    from training.config import TrainConfig

    base = tmp_path_factory.mktemp("train")
    for name, color in zip(CLASSES, CELL_COLORS):
        for i in range(4):
            make_image(base / "data" / name / f"{name}_{i}.jpg", color)
    config = TrainConfig(data=str(base / "data"), out=str(base / "runs"), views=2, epochs=1,
                         batch_size=8, val_fraction=0.25, cache_dir=str(base / "cache"), seed=3,
                         weights="none")
    return base, train.train(config)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """An ImageFolder tree: 4 classes x 6 images, each class its own colour."""
    for name, color in zip(CLASSES, CELL_COLORS):
        for i in range(6):
            make_image(tmp_path / "data" / name / f"{name}_{i}.jpg", color)
    return tmp_path / "data"


@pytest.fixture
def models_root(tmp_path, trusted_model_dir):
    """The models a web test's app serves: one copy of the trusted tiny model, "tiny". A module
    whose app serves others defines its own."""
    from tests.web_helpers import make_models_root

    return make_models_root(tmp_path / "models", trusted_model_dir, names=("tiny",))


@pytest.fixture
def app(tmp_path, models_root):
    """The web app on the `models_root` fixture of the requesting test module."""
    from tests.web_helpers import make_app

    return make_app(tmp_path, models_root)


@pytest.fixture
def client(app):
    return app.test_client()


# Converted LiteRT files, by what was converted (`_conversion_key`), for the whole session.
_CONVERTED: dict[tuple, bytes] = {}


@pytest.fixture(autouse=True)
def convert_each_model_once(monkeypatch):
    """Many tests export the one `trained_run` model, and its LiteRT conversion (15-30 s) was
    most of their time: a model converted before is given the same file again. What is
    converted is keyed by the network's config and weights, the views and the converter and
    serving-graph functions themselves, so a test that replaces either (to make the conversion
    fail) converts for real. Only where training.export is already imported: tests that never
    touch it do not pay TensorFlow's import."""
    import sys

    export = sys.modules.get("training.export")
    if export is None:
        return
    convert = export.convert_to_tflite

    def converted_once(model, path, views=export.TTA_VIEWS):
        key = _conversion_key(model, views, export)
        if key not in _CONVERTED:
            convert(model, path, views)
            _CONVERTED[key] = Path(path).read_bytes()
        else:
            Path(path).write_bytes(_CONVERTED[key])

    monkeypatch.setattr(export, "convert_to_tflite", converted_once)


def _conversion_key(model, views: int, export) -> tuple:
    import hashlib

    digest = hashlib.sha256(model.to_json().encode())
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    # The functions themselves, not their ids, which a later function may take again; the
    # converter as the class holds it (read through the class, a new bound method each time).
    converter = vars(export.tf.lite.TFLiteConverter).get("from_keras_model")
    return digest.hexdigest(), views, converter, export.serving_model
