"""Heat maps (class activation maps) for the result page and the API, made on request only.

The plain prediction path never computes one: the result page fetches its overlay from a route
when the user turns the toggle on, and the API adds maps only when asked (explain=1). A model
folder without a fitted trust layer (no trust.npz, so no head weights) has no heat maps.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hematovision.exposure import Stored, as_read
from hematovision.predictor import Predictor
from hematovision.fields import centre_in
from hematovision.preprocess import at_resolution, load_image, to_input

GRID_DECIMALS = 3  # the API's map values: enough to draw it, small enough to read


def available(predictor: Predictor) -> bool:
    return predictor.trust.head_kernel is not None


def _colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 on a blue-cyan-yellow-red ramp (perceptually ordered, no matplotlib)."""
    stops = np.array([[0.0, 0, 0, 140], [0.35, 0, 170, 230], [0.65, 250, 220, 40],
                      [1.0, 220, 20, 20]])
    v = np.clip(values, 0.0, 1.0)
    channels = [np.interp(v, stops[:, 0], stops[:, i]) for i in (1, 2, 3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def overlay(model_input: np.ndarray, cam: np.ndarray, opacity: float = 0.45) -> Image.Image:
    """The CAM blended over the image the model saw (a preprocessed [-1, 1] array)."""
    base = np.clip((np.asarray(model_input) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    size = base.shape[1], base.shape[0]
    heat = Image.fromarray((cam * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    values = np.asarray(heat, dtype=np.float64) / 255.0
    colour = _colormap(values).astype(np.float64)
    # Weak evidence stays nearly transparent so the cell remains readable underneath.
    alpha = (opacity * np.sqrt(values))[..., None]
    blended = base.astype(np.float64) * (1 - alpha) + colour * alpha
    return Image.fromarray(blended.round().astype(np.uint8))


def overlay_png(model_input: np.ndarray, cam: np.ndarray) -> bytes:
    """The map blended over the image the model saw, as PNG bytes (input size square)."""
    out = io.BytesIO()
    overlay(model_input, cam).save(out, "PNG")
    return out.getvalue()


def to_json(model_input: np.ndarray, cam: np.ndarray) -> dict[str, Any]:
    """The API's "cam" entry: the raw grid (h x w, values in [0, 1]) and the overlay."""
    return {
        "grid": np.round(np.asarray(cam, dtype=np.float64), GRID_DECIMALS).tolist(),
        "overlay_png_base64": base64.b64encode(overlay_png(model_input, cam)).decode("ascii"),
    }


def stored_overlay(predictor: Predictor, image_path: Path, label: str,
                   cell: dict | None = None, exposure: Stored | None = None) -> bytes | None:
    """The overlay of a stored upload for its stored `label`, preprocessed exactly as
    `predictor` preprocesses (for wbc4: the crop around the nucleus, so it shows what the model
    looked at; for one `cell` of a field, the crop on that cell; scaled by the result's stored
    `exposure` check where it was corrected); None when the model has no
    heat maps. May raise `ImageError` if the stored copy
    is unreadable, ValueError if the model has no class `label`.

    The stored copy is the re-encoded viewing JPEG (<= 1024 px), not the original upload, so
    the model may rank the classes of this copy differently; the map is therefore drawn for
    the stored label, the one the result page captions it with, not for the copy's top class.
    Storing maps at upload time instead would slow every prediction for a view few users open."""
    # The exposure as the result stored it, not measured again on the re-encoded copy.
    image = as_read(at_resolution(load_image(image_path), predictor.short_side), exposure)
    # A cell of a field holding several: the crop on that cell, as it was classified.
    array = to_input(image, predictor.input_size, predictor.crop, centre_in(cell, image.size))
    _, cam = predictor.explain(array, label=label)
    return None if cam is None else overlay_png(array, cam)
