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

from hematovision.predictor import Predictor
from hematovision.preprocess import load_image, to_input
from hematovision.trust import overlay

GRID_DECIMALS = 3  # the API's map values: enough to draw it, small enough to read


def available(predictor: Predictor) -> bool:
    return predictor.trust.head_kernel is not None


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


def stored_overlay(predictor: Predictor, image_path: Path, label: str) -> bytes | None:
    """The overlay of a stored upload for its stored `label`, preprocessed exactly as
    `predictor` preprocesses (for wbc4: the crop around the nucleus, so it shows what the model
    looked at); None when the model has no heat maps. May raise `ImageError` if the stored copy
    is unreadable, ValueError if the model has no class `label`.

    The stored copy is the re-encoded viewing JPEG (<= 1024 px), not the original upload, so
    the model may rank the classes of this copy differently; the map is therefore drawn for
    the stored label, the one the result page captions it with, not for the copy's top class.
    Storing maps at upload time instead would slow every prediction for a view few users open."""
    array = to_input(load_image(image_path), predictor.input_size, predictor.crop)
    _, cam = predictor.explain(array, label=label)
    return None if cam is None else overlay_png(array, cam)
