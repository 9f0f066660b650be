"""Load a model folder from `saved_model/` once and classify images with it.

Serving runs the LiteRT (TFLite) file that `training.export` converts from the Keras model and
checks against it; the Keras file in the same folder stays the source of truth for retraining.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from hematovision.card import CARD_FILE, ModelLoadError, read_card, served_views
from hematovision.fields import cell_inputs
from hematovision.exposure import Exposure
from hematovision.magnification import Reference
from hematovision.preprocess import ImageSource, at_resolution, crop_fraction, load_image
from hematovision.trust import (ACCEPTED, TRUST_FILE, Trust, class_activation_map,
                                no_white_cell, use_one_blas_thread)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODELS_ROOT = PROJECT_ROOT / "saved_model"
# The app's MODELS_ROOT setting as the environment gives it: the command lines read and export
# models there too, so a researcher's own models folder is named once for all of them.
MODELS_ROOT_VARIABLE = "HEMATOVISION_MODELS_ROOT"
DEFAULT_MODEL = "wbc4"
SERVING_FILE = "model.tflite"
KERAS_FILE = "model.keras"
BATCH_SIZE = 32  # images decoded (and, with the usual four test-time views, run) together
# Images x test-time views per interpreter call (a model serving more views runs fewer images
# per call, at least one). Small calls are both the fastest and the leanest on this CPU: one
# image in four views per call classified 1.3-1.5x the images per second of 32 per call (one
# or two interpreter threads, both served models) and added nothing to the memory loading
# took, where 32 per call added 0.5 GiB (benchmarks/bench_chunk.py, README Benchmarks).
VIEWS_PER_CALL = 4
VERSION_DIGITS = 12  # of the version's hexadecimal digest: short enough to print on a report


@dataclass(frozen=True)
class Prediction:
    """One image's answer. `label` is always the model's top class; `status` says whether to
    trust it: accepted, unidentified (too unsure: review it) or not_a_cell (unlike anything
    the model was trained on). Probabilities are calibrated where the model card has a
    temperature."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    status: str = ACCEPTED
    scores: dict[str, Any] = field(default_factory=dict)

    @property
    def candidates(self) -> list[tuple[str, float]]:
        """The two most probable classes, most probable first."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: -kv[1])
        return ranked[:2]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "status": self.status,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
            "candidates": [{"label": c, "probability": p} for c, p in self.candidates],
            "scores": dict(self.scores),
        }


@dataclass(frozen=True)
class Outputs:
    """What the served network computes for a batch."""

    logits: np.ndarray  # (n, classes), before the softmax
    features: np.ndarray  # (n, d): pooled activations of a few layers, for unfamiliarity
    feature_maps: np.ndarray | None = None  # (n, h, w, d), only when asked for (CAMs)
    # (n,) white cells found in each image, for a model that crops to the nucleus where the
    # caller counted them (`fields.cell_inputs`); an image with none is not accepted
    # (trust.WHITE_CELL_RULE).
    white_cells: Sequence[int | None] | None = None

    def without_white_cell(self) -> np.ndarray:
        """(n,) True for each image in which no white cell was found (`trust.no_white_cell`);
        all False where none was counted."""
        missing = no_white_cell(self.white_cells)
        return np.zeros(len(self.logits), dtype=bool) if missing is None else missing


def load_failure(error: ModelLoadError) -> str:
    """A model that could not be loaded, and the names that can be (for the command lines)."""
    return f"{error}\navailable models: {', '.join(available_models()) or 'none'}"


def add_model_options(parser) -> None:
    """The options every command that reads one model folder takes (`model_dir_of` reads them)."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model folder name under saved_model/, or under "
                             f"${MODELS_ROOT_VARIABLE} where that is set (default "
                             f"{DEFAULT_MODEL})")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a model folder anywhere (overrides --model)")


def models_root() -> Path:
    """The folder of model folders: saved_model/, or the one HEMATOVISION_MODELS_ROOT names
    (relative to the working directory, as the app takes it)."""
    return Path(os.environ.get(MODELS_ROOT_VARIABLE) or MODELS_ROOT)


def model_dir_of(args) -> Path:
    return args.model_dir or models_root() / args.model


def available_models(root: Path | None = None) -> list[str]:
    """Names of the model folders under `root` (default `models_root()`) that carry a model
    card and a serving file."""
    root = Path(root or models_root())
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if (p / CARD_FILE).is_file() and (p / SERVING_FILE).is_file()
    )


def model_version(model_dir: Path | str, card: dict[str, Any]) -> str:
    """What a result names as the model that made it: a digest of the serving file, the trust
    layer's file and the card's values that serving reads (`served_settings`). A model
    exported, calibrated or given another magnification or exposure reference is another
    version, even under the same folder name; recording figures or rewording the card is not.
    The files' bytes, as they are: the version of a model a lab keeps serving never changes
    with an upgrade of the app (a batch in progress would be taken for another model's), and
    the same trust arrays saved again are the same bytes (`trust.save_trust_arrays`)."""
    digest = hashlib.sha256()
    for name in (SERVING_FILE, TRUST_FILE):
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(served_settings(card), sort_keys=True).encode())
    return digest.hexdigest()[:VERSION_DIGITS]


def served_settings(card: dict[str, Any]) -> dict[str, Any]:
    """The card's values that decide an answer, as the predictor, its trust layer
    (`Trust.load`) and the magnification check (`Reference.from_card`) read them; the rest of
    the card says how the model was made and measured."""
    def section(value) -> dict:
        return value if isinstance(value, dict) else {}

    trust, reference = section(card.get("trust")), section(card.get("magnification"))
    exposure = Exposure.from_card(card)
    return {"classes": card.get("classes"), "input_size": card.get("input_size"),
            "crop": section(card.get("preprocessing")).get("crop"),
            "views": served_views(card),
            **{key: trust.get(key) for key in ("temperature", "confidence_threshold",
                                               "target_accuracy")},
            "ood_threshold": section(trust.get("ood")).get("threshold"),
            "magnification": {key: reference.get(key) for key in (
                "red_cell_scale", "single_image_range", "batch_range", "max_short_side")},
            # Only where there is one: a model's version stays the same across the upgrade
            # that added the correction until its card records a reference.
            **({"exposure": exposure.entry()} if exposure else {})}


def exported_moment(stamp) -> datetime | None:
    """A card's export time ('2026-12-03T11:37:57+0000') as a moment in UTC; None for anything
    else, a year the clock cannot turn to UTC included."""
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").astimezone(timezone.utc)
    except (TypeError, ValueError, OverflowError):
        return None


class Predictor:
    """One loaded model: its card, ordered classes and a LiteRT interpreter."""

    def __init__(self, model_dir: Path | str, num_threads: int = 2,
                 accuracy_target: float | None = None):
        """`accuracy_target`: abstain at this accuracy target instead of the card's (see
        Trust.load); None serves the card's."""
        self.model_dir = Path(model_dir)
        self.card = read_card(self.model_dir)
        try:
            self.classes: list[str] = list(self.card["classes"])
            self.input_size: int = int(self.card["input_size"][0])
        except (KeyError, TypeError, IndexError, ValueError):
            raise ModelLoadError(
                f"The model card {self.model_dir / CARD_FILE} lacks 'classes' or 'input_size'."
            ) from None
        # At startup, not on the first request: a card edited by hand may hold anything.
        try:
            self.name: str = str(self.card.get("name", self.model_dir.name))
            self.crop: str = self.card.get("preprocessing", {}).get("crop", "none")
            self.crop_fraction: float | None = crop_fraction(self.crop)
            self.images_per_call = max(1, VIEWS_PER_CALL // served_views(self.card))
            # The red-cell scale of its training images, where the card records it (None: no
            # check).
            self.magnification: Reference | None = Reference.from_card(self.card)
            # Its training images' slide backgrounds (None: images are read as they are).
            self.exposure: Exposure | None = Exposure.from_card(self.card)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"The model card {self.model_dir / CARD_FILE}: "
                                 f"{exc}") from None
        self._interpreter = _load_interpreter(self.model_dir / SERVING_FILE, num_threads)
        self._input = self._interpreter.get_input_details()[0]
        self._outputs = _identify_outputs(self._interpreter, len(self.classes),
                                          self.model_dir / SERVING_FILE)
        try:
            self.trust = Trust.load(self.model_dir, self.card, accuracy_target)
        # EOFError: a trust.npz still empty, as a copy creates it before writing it.
        except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(f"The trust layer of {self.model_dir} cannot be used: "
                                 f"{exc}") from None
        self.version = model_version(self.model_dir, self.card)
        # When it was exported, where the card says so in a form that can be printed.
        self.exported: str | None = (self.card["exported"] if exported_moment(
            self.card.get("exported")) else None)
        use_one_blas_thread()  # numpy's BLAS must not compete with LiteRT for the cores
        self._batch = 1
        self._lock = threading.Lock()  # a LiteRT interpreter is not safe across threads

    def forward(self, batch: np.ndarray, feature_maps: bool = False) -> Outputs:
        """(n, size, size, 3) preprocessed float32 -> logits, features (and feature maps)."""
        batch = np.asarray(batch, dtype=np.float32)
        expected = (self.input_size, self.input_size, 3)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"Expected a batch of shape (n, {expected}), got {batch.shape}")
        wanted = ("logits", "features") + (("feature_maps",) if feature_maps else ())
        step = self.images_per_call
        chunks = [self._run(batch[i : i + step], wanted) for i in range(0, len(batch), step)]
        if not chunks:
            empty = {k: np.zeros((0, *self._outputs[k]["shape"][1:]), np.float32) for k in wanted}
            return Outputs(**empty)
        return Outputs(**{k: np.concatenate([c[k] for c in chunks]) for k in wanted})

    def _run(self, chunk: np.ndarray, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        with self._lock:
            if len(chunk) != self._batch:
                self._interpreter.resize_tensor_input(self._input["index"], list(chunk.shape))
                self._interpreter.allocate_tensors()
                self._batch = len(chunk)
            self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(chunk))
            self._interpreter.invoke()
            return {k: self._interpreter.get_tensor(self._outputs[k]["index"]).copy()
                    for k in wanted}

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) preprocessed float32 -> (n, classes) calibrated probabilities."""
        return self.trust.probabilities(self.forward(batch).logits)

    @property
    def short_side(self) -> int | None:
        """The training images' largest short side (from the magnification reference), which
        finer images are brought down to before they are read; None: not recorded."""
        return self.magnification.max_short_side if self.magnification else None

    def as_trained(self, image: Image.Image) -> tuple[Image.Image, dict[str, Any]]:
        """`image` as this model reads it, with what was measured on the way (the result's
        `exposure`, with an exposure reference): no finer than its training images
        (`preprocess.at_resolution`), then, where its slide's background lies outside theirs,
        brought to their exposure and white balance (`Exposure.correct`)."""
        image = at_resolution(image, self.short_side)
        return self.exposure.correct(image) if self.exposure else (image, {})

    def predict_images(self, images: Sequence[Image.Image], scale: float = 1.0
                       ) -> list[Prediction]:
        """Classify decoded RGB images (see `preprocess.load_image`), each read whole, as
        `preprocess.to_input` makes its input (at `scale`), with its white cells counted for a
        model that crops to the nucleus."""
        read = [cell_inputs(self.as_trained(image)[0], self.input_size, self.crop,
                            each_cell=False, scale=scale)
                for image in images]
        return self.predict_images_arrays([inputs[0][0] for inputs, _ in read],
                                          [found for _, found in read])

    def predict_images_arrays(self, arrays: Sequence[np.ndarray],
                              white_cells: Sequence[int | None] | None = None
                              ) -> list[Prediction]:
        """Classify preprocessed (size, size, 3) arrays (see `preprocess.to_input`);
        `white_cells`, one per array, how many were found in its image (None: not counted)."""
        if not len(arrays):
            return []
        return self.predictions(with_white_cells(self.forward(np.stack(arrays)), white_cells))

    def predict_each(self, arrays: Sequence[np.ndarray | None],
                     white_cells: Sequence[int | None] | None = None
                     ) -> list[Prediction | None]:
        """One batched call for the decoded entries; None where decoding failed, order kept."""
        found = None if white_cells is None else [
            c for a, c in zip(arrays, white_cells) if a is not None]
        predictions = iter(self.predict_images_arrays([a for a in arrays if a is not None],
                                                      found))
        return [next(predictions) if a is not None else None for a in arrays]

    def predict(self, source: ImageSource) -> Prediction:
        """Classify one image file, path or bytes; raises `ImageError` for a bad image."""
        return self.predict_images([load_image(source)])[0]

    def explain(self, array: np.ndarray, label: str | None = None
                ) -> tuple[Prediction, np.ndarray | None]:
        """Prediction and class activation map ((h, w) in [0, 1]) of one preprocessed image;
        the map is None when the model folder has no head weights (no trust layer fitted).
        The map shows the evidence for `label` when given (e.g. a result stored earlier, which
        a re-encoded copy of its image might no longer rank first), else for the top class."""
        return self.explain_arrays([array], None if label is None else [label])[0]

    def explain_arrays(self, arrays: Sequence[np.ndarray], labels: Sequence[str] | None = None,
                       white_cells: Sequence[int | None] | None = None
                       ) -> list[tuple[Prediction, np.ndarray | None]]:
        """`explain` for preprocessed arrays, in one batched forward pass; `labels`, one per
        array, name the classes to map (default: each image's top class); `white_cells` as
        for `predict_images_arrays`."""
        if not len(arrays):
            return []
        outputs = with_white_cells(self.forward(np.stack(arrays), feature_maps=True),
                                   white_cells)
        predictions = self.predictions(outputs)
        labels = [p.label for p in predictions] if labels is None else list(labels)
        if len(labels) != len(predictions):
            raise ValueError(f"Got {len(labels)} labels for {len(predictions)} images")
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise ValueError(f"Model {self.name!r} has no class {', '.join(map(repr, unknown))}")
        kernel = self.trust.head_kernel
        return [(p, None if kernel is None else
                 class_activation_map(maps, kernel, self.classes.index(label)))
                for p, label, maps in zip(predictions, labels, outputs.feature_maps)]

    def predictions(self, outputs: Outputs) -> list[Prediction]:
        probabilities = self.trust.probabilities(outputs.logits)
        unfamiliarity = self.trust.ood_scores(outputs.features)
        out = []
        for row, ood, no_cell in zip(probabilities, unfamiliarity, outputs.without_white_cell()):
            best = int(np.argmax(row))
            confidence = float(row[best])
            out.append(Prediction(
                label=self.classes[best],
                confidence=confidence,
                probabilities={c: float(p) for c, p in zip(self.classes, row)},
                status=self.trust.status(confidence, float(ood), bool(no_cell)),
                scores=self.trust.scores(float(ood), confidence),
            ))
        return out


def with_white_cells(outputs: Outputs, white_cells: Sequence[int | None] | None) -> Outputs:
    """`outputs` with the white cells counted in each image (None: not counted)."""
    if white_cells is None:
        return outputs
    if len(white_cells) != len(outputs.logits):
        raise ValueError(f"Got {len(white_cells)} white-cell counts for "
                         f"{len(outputs.logits)} images")
    return replace(outputs, white_cells=list(white_cells))


def _identify_outputs(interpreter, num_classes: int, path: Path) -> dict[str, dict]:
    """The served outputs by role, from the signature's order (training.export.serving_model):
    logits (n, classes), unfamiliarity features (n, p), feature maps (n, h, w, d); the pooled
    last feature maps end the features, so p >= d."""
    try:
        by_name = interpreter.get_signature_runner().get_output_details()
        ordered = [by_name[f"output_{i}"] for i in range(3)]
    except (ValueError, KeyError):
        ordered = []
    shapes = [list(map(int, d["shape"])) for d in ordered]
    if (len(shapes) != 3 or len(shapes[0]) != 2 or shapes[0][-1] != num_classes
            or len(shapes[1]) != 2 or len(shapes[2]) != 4 or shapes[1][-1] < shapes[2][-1]):
        raise ModelLoadError(
            f"{path} has outputs {shapes or 'without a signature'}; expected logits "
            f"(n, {num_classes}), the unfamiliarity features (n, p) and the last feature maps "
            "(n, h, w, d). Re-export it with `python -m training.export`."
        )
    return dict(zip(("logits", "features", "feature_maps"), ordered))


def _load_interpreter(path: Path, num_threads: int):
    from ai_edge_litert.interpreter import Interpreter

    if not path.is_file():
        raise ModelLoadError(
            f"No serving model at {path}. Export one with `python -m training.export` "
            "or restore the folder (the bundled models: saved_model/ from git)."
        )
    try:
        # Read whole, not mapped: a file written over in place while the app runs (a copy, an
        # export into the served folder) would otherwise change under the running interpreter,
        # which dies of it (SIGBUS) at its next call. A few MB per process.
        interpreter = Interpreter(model_content=path.read_bytes(), num_threads=num_threads)
        interpreter.allocate_tensors()
    except OSError as exc:
        raise ModelLoadError(f"The serving model {path} cannot be read ({exc}).") from None
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"The serving model {path} is corrupt or incompatible ({exc}). Re-export it with "
            "`python -m training.export` or restore the folder (the bundled models: "
            "saved_model/ from git)."
        ) from None
    return interpreter

