"""Load a model folder from `saved_model/` once and classify images with it.

Serving runs the LiteRT (TFLite) file that `training.export` converts from the Keras model and
checks against it; the Keras file in the same folder stays the source of truth for retraining.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from hematovision.preprocess import ImageSource, load_image, to_input

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODELS_ROOT = PROJECT_ROOT / "saved_model"
DEFAULT_MODEL = "wbc4"
CARD_FILE = "model_card.json"
SERVING_FILE = "model.tflite"
KERAS_FILE = "model.keras"
BATCH_SIZE = 32  # images per interpreter call; bounds memory for large batches


class ModelLoadError(RuntimeError):
    """The model folder is missing or unusable; the message says where and how to fix it."""


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
        }


def read_card(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / CARD_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(
            f"No model card at {path}. Export a trained model there with "
            "`python -m training.train --data DIR --export NAME` or restore saved_model/ from git."
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"The model card {path} is unreadable ({exc}).") from None


def available_models(root: Path = MODELS_ROOT) -> list[str]:
    """Names of the model folders under `root` that carry a model card and a serving file."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if (p / CARD_FILE).is_file() and (p / SERVING_FILE).is_file()
    )


class Predictor:
    """One loaded model: its card, ordered classes and a LiteRT interpreter."""

    def __init__(self, model_dir: Path | str, num_threads: int = 2):
        self.model_dir = Path(model_dir)
        self.card = read_card(self.model_dir)
        try:
            self.classes: list[str] = list(self.card["classes"])
            self.input_size: int = int(self.card["input_size"][0])
        except (KeyError, TypeError, IndexError, ValueError):
            raise ModelLoadError(
                f"The model card {self.model_dir / CARD_FILE} lacks 'classes' or 'input_size'."
            ) from None
        self.name: str = self.card.get("name", self.model_dir.name)
        self.crop: str = self.card.get("preprocessing", {}).get("crop", "none")
        self._interpreter = _load_interpreter(self.model_dir / SERVING_FILE, num_threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        n_out = int(self._output["shape"][-1])
        if n_out != len(self.classes):
            raise ModelLoadError(
                f"{self.model_dir / SERVING_FILE} has {n_out} outputs but its card lists "
                f"{len(self.classes)} classes; re-export the model."
            )
        self._batch = 1
        self._lock = threading.Lock()  # a LiteRT interpreter is not safe across threads

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) preprocessed float32 -> (n, classes) probabilities."""
        batch = np.asarray(batch, dtype=np.float32)
        expected = (self.input_size, self.input_size, 3)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"Expected a batch of shape (n, {expected}), got {batch.shape}")
        chunks = [batch[i : i + BATCH_SIZE] for i in range(0, len(batch), BATCH_SIZE)]
        outputs = [self._run(chunk) for chunk in chunks]
        if not outputs:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(outputs)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        with self._lock:
            if len(chunk) != self._batch:
                self._interpreter.resize_tensor_input(self._input["index"], list(chunk.shape))
                self._interpreter.allocate_tensors()
                self._batch = len(chunk)
            self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(chunk))
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output["index"]).copy()

    def predict_images(self, images: Sequence[Image.Image]) -> list[Prediction]:
        """Classify decoded RGB images (see `preprocess.load_image`)."""
        return self.predict_images_arrays(
            [to_input(image, self.input_size, self.crop) for image in images]
        )

    def predict_images_arrays(self, arrays: Sequence[np.ndarray]) -> list[Prediction]:
        """Classify preprocessed (size, size, 3) arrays (see `preprocess.to_input`)."""
        if not len(arrays):
            return []
        return [self._to_prediction(row) for row in self.predict_arrays(np.stack(arrays))]

    def predict_each(self, arrays: Sequence[np.ndarray | None]) -> list[Prediction | None]:
        """One batched call for the decoded entries; None where decoding failed, order kept."""
        predictions = iter(self.predict_images_arrays([a for a in arrays if a is not None]))
        return [next(predictions) if a is not None else None for a in arrays]

    def predict(self, source: ImageSource) -> Prediction:
        """Classify one image file, path or bytes; raises `ImageError` for a bad image."""
        return self.predict_images([load_image(source)])[0]

    def _to_prediction(self, probabilities: np.ndarray) -> Prediction:
        best = int(np.argmax(probabilities))
        return Prediction(
            label=self.classes[best],
            confidence=float(probabilities[best]),
            probabilities={c: float(p) for c, p in zip(self.classes, probabilities)},
        )


def _load_interpreter(path: Path, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter

    if not path.is_file():
        raise ModelLoadError(
            f"No serving model at {path}. Export one with `python -m training.export` "
            "or restore saved_model/ from git."
        )
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"The serving model {path} is corrupt or incompatible ({exc}). Re-export it with "
            "`python -m training.export` or restore saved_model/ from git."
        ) from None
    return interpreter

