"""Augmentation and the cache of frozen-backbone activations.

The layers below the cut never change during training, so each augmented view of each image is
pushed through them once; the activations (float16; 7x7x160 per image at 224 px when cut at
block 14, 14x14x64 at block 7) are kept on disk under `cache_dir`, keyed by everything that
shapes them: the files' contents, in order, the view, the seed, the frozen weights and the code of
the preprocessing and the augmentation. A stale cache would otherwise train on inputs that serving
no longer produces, without any error. The files are keyed by content, not by path and
modification time: a data folder copied or moved again (as ours was between sessions) keeps its
cache, which for PBC's four views is an hour of CPU, while an edited file still misses it.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from hematovision import preprocess as preprocess_module
from hematovision.preprocess import NUCLEUS_CROP_FRACTION, ImageError, crop_fraction, preprocess

VALUE_RANGE = (-1.0, 1.0)  # the preprocessed input range (MobileNetV2 scaling)
DEFAULT_ZOOM = 0.2  # TrainConfig.zoom's default: cache keys name only another zoom


def build_augmenter(seed: int, colour: bool = True, zoom: float = DEFAULT_ZOOM) -> keras.Sequential:
    """Geometric and (with `colour`) stain/colour augmentation on preprocessed [-1, 1] images.

    Smears have no preferred orientation (any rotation, both flips); zoom (by up to `zoom` of
    the side) and shift mimic different crops and magnifications; hue, saturation, brightness
    and contrast jitter mimic stain and illumination differences between labs.
    """
    geometric = [
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(0.5, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom((-zoom, zoom), fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
    ]
    colours = [
        keras.layers.RandomHue(0.05, value_range=VALUE_RANGE, seed=seed + 4),
        keras.layers.RandomSaturation((0.35, 0.65), value_range=VALUE_RANGE, seed=seed + 5),
        keras.layers.RandomBrightness(0.15, value_range=VALUE_RANGE, seed=seed + 6),
        keras.layers.RandomContrast(0.2, value_range=VALUE_RANGE, seed=seed + 7),
    ]
    return keras.Sequential(geometric + (colours if colour else []), name="augment")


def weights_digest(model: keras.Model) -> str:
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()[:16]


def code_digest() -> str:
    """Digest of the code that turns a file into the frozen layers' input."""
    source = inspect.getsource(preprocess_module) + inspect.getsource(build_augmenter)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def file_stamp(path: Path) -> str:
    # Hashing PBC's 117 MB takes about a second, a small price beside recomputing a view.
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_key(bottom: keras.Model, paths: list[Path], view: int, seed: int, input_size: int,
              crop: str = "none", colour_jitter: bool = True, zoom: float = DEFAULT_ZOOM) -> str:
    """The cache entry of `cached_features` with these arguments."""
    return hashlib.sha256(
        "\n".join(
            [weights_digest(bottom), code_digest(), str(view), str(seed), str(input_size)]
            + ([f"crop={_crop_key(crop)}"] if crop != "none" else [])
            + (["colour_jitter=False"] if view and not colour_jitter else [])
            + ([f"zoom={zoom!r}"] if view and zoom != DEFAULT_ZOOM else [])
            + [file_stamp(p) for p in paths]
        ).encode()
    ).hexdigest()[:20]


def _crop_key(crop: str) -> str:
    # By the square's size, not its spelling: "nucleus" and "nucleus:0.55" cut the same images.
    # The default keeps its name, so the entries cached before this key existed stay valid.
    fraction = crop_fraction(crop)
    return "nucleus" if fraction == NUCLEUS_CROP_FRACTION else f"nucleus:{fraction!r}"


def cached_features(
    bottom: keras.Model,
    paths: list[Path],
    view: int,
    seed: int,
    input_size: int,
    cache_dir: Path,
    crop: str = "none",
    batch_size: int = 64,
    label: str = "",
    colour_jitter: bool = True,
    zoom: float = DEFAULT_ZOOM,
) -> np.ndarray:
    """Cut-layer activations of `paths`; view 0 is the clean image, view k>0 augmented."""
    key = cache_key(bottom, paths, view, seed, input_size, crop, colour_jitter, zoom)
    cache_file = Path(cache_dir) / f"features-{key}.npy"
    if cache_file.is_file():
        return np.load(cache_file)
    augment = build_augmenter(seed * 1000 + view, colour_jitter, zoom) if view else None
    forward = tf.function(lambda x: bottom(x, training=False), reduce_retracing=True)
    out = np.zeros((len(paths), *bottom.output_shape[1:]), dtype=np.float16)
    start = time.time()
    with ThreadPoolExecutor(max_workers=2) as pool:
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        pending = pool.submit(load_batch, batches[0], input_size, crop) if batches else None
        for b in range(len(batches)):
            images = pending.result()
            if b + 1 < len(batches):
                pending = pool.submit(load_batch, batches[b + 1], input_size, crop)
            if augment is not None:
                images = augment(images, training=True)
            out[b * batch_size : b * batch_size + len(images)] = forward(images).numpy()
            done = b * batch_size + len(images)
            rate = done / max(time.time() - start, 1e-6)
            progress_line(f"[features {label} view {view}] {done}/{len(paths)} "
                          f"({rate:.0f} img/s)", last=b + 1 == len(batches))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache_file, out)
    return out


def progress_line(text: str, last: bool) -> None:
    """A progress line on stderr: rewritten in place (`\\r`) on a terminal; elsewhere (a nohup
    log, a pipe) only the last, as one line, since every `\\r` update would join one huge
    line there."""
    if sys.stderr.isatty():
        print("\r" + text, end="\n" if last else "", file=sys.stderr, flush=True)
    elif last:
        print(text, file=sys.stderr, flush=True)


# Unreadable files a stop names one by one; beyond, how many more.
MAX_UNREADABLE_NAMED = 20


class UnreadableImage(SystemExit):
    """A training image that cannot be read: it stops the run with its name (a training split
    that silently lost files would no longer be the split saved with the run)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"Cannot train on {path}: {reason} Remove or replace it, then run "
                         "again.")
        self.path = path


def load_batch(paths: list[Path], input_size: int, crop: str) -> np.ndarray:
    return np.stack([_load(p, input_size, crop) for p in paths])


def _load(path: Path, input_size: int, crop: str) -> np.ndarray:
    try:
        return preprocess(path, input_size, crop)
    except (ImageError, OSError) as exc:
        raise UnreadableImage(path, str(exc)) from None


@contextmanager
def naming_every_unreadable(paths: list[Path], input_size: int, crop: str):
    """Where an image cannot be read, the run stops naming every one of `paths` that cannot
    (each read as training reads it), not only the first: a folder with a few bad files would
    otherwise cost a run started again for each."""
    try:
        yield
    except UnreadableImage as first:
        print(f"[features] {first.path} cannot be read: looking for others among the "
              f"{len(paths)} images", file=sys.stderr, flush=True)
        found = []
        for path in paths:
            try:
                preprocess(path, input_size, crop)
            except (ImageError, OSError) as exc:
                found.append(f"  {path}: {exc}")
        if len(found) <= 1:
            raise
        more = len(found) - MAX_UNREADABLE_NAMED
        raise SystemExit("\n".join([
            f"Cannot train on {len(found)} images that cannot be read:",
            *found[:MAX_UNREADABLE_NAMED], *([f"  and {more} more"] if more > 0 else []),
            "Remove or replace them, then run again."])) from None
