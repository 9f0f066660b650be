"""The trust layer applied to every prediction: calibrated probabilities, abstention,
unfamiliar-image detection and class activation maps.

Everything here is numpy on the two outputs the served model gives besides its logits: the
unfamiliarity features (global averages of a few intermediate layers and of the last feature
maps, side by side) and, on request, the last feature maps themselves. The fitted values
(temperature, thresholds, per-layer class means and whitening matrices, head weights) are
written at export by `training.calibrate` into the model card and `trust.npz`, and read back
here; a model folder without them serves uncalibrated, never flags.
"""

from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from hematovision.card import replace_file
from hematovision.counting import share_range

TRUST_FILE = "trust.npz"
PACKED_WHITENING = "whitening_lower_"  # + layer index: the whitening's lower triangle, packed
HELD_OUT_CONFIDENCE = "held_out_confidence"
HELD_OUT_CORRECT = "held_out_correct"
ABSTAIN_ON_ALL = 1.0  # the confidence threshold when no threshold reaches the target
# The threshold that accepts confidences of exactly 1 and nothing below (no float lies between
# it and 1): what the rule chooses where every held-out image it accepts is that sure, which a
# threshold of 1 would read as ABSTAIN_ON_ALL.
BELOW_ONE = math.nextafter(1.0, 0.0)
EXACTLY_ONE = "exactly 1 as computed"  # BELOW_ONE in words: 1.0 or 100.0 % would read as 1
# The bands of calibrated confidence in which a result says how often the held-out images were
# right (`Trust.band`): finer towards 1, where most accepted cells lie and where a threshold
# falls. A band holds its lower edge; the last holds 1 too.
CONFIDENCE_BANDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
BAND = "held_out_band"  # its key among a prediction's scores
# The most held-out images a stored band is believed to count: its range's cost grows with the
# count, and a record damaged outside the app could say 10^12 (a page per hour).
MAX_BAND_IMAGES = 1_000_000


def uncalibrated_note(section: dict[str, Any] | None) -> str | None:
    """Why a card's model serves its own confidences (temperature 1, its fit set aside:
    `training.calibrate.served_temperature`), from its "trust" section; None where its
    temperature was fitted."""
    section = section if isinstance(section, dict) else {}
    note = section.get("temperature_note")
    return note if isinstance(note, str) and section.get("temperature") == 1 else None


def threshold_words(threshold: float) -> str:
    """A confidence threshold for a log line: BELOW_ONE in words, any other as a number."""
    return EXACTLY_ONE if threshold == BELOW_ONE else f"{threshold:g}"

ACCEPTED = "accepted"
UNIDENTIFIED = "unidentified"
NOT_A_CELL = "not_a_cell"
STATUSES = (ACCEPTED, UNIDENTIFIED, NOT_A_CELL)
# For a model that crops to the nucleus: its answer about an image in which no white cell was
# found is about whatever lies where the crop fell (a field of red cells only gives it a
# phantom cell), so it is never accepted. Adopted by a rule set before its figures were
# measured (docs/experiments.md, "No white cell found").
WHITE_CELL_RULE = ("Unidentified, whatever its confidence, where no white cell is found in the "
                   "image (the model's crop centres on the stained nucleus).")
STATUS_TEXT = {
    ACCEPTED: "Accepted",
    UNIDENTIFIED: "Unidentified: needs review",
    NOT_A_CELL: "Not a blood-cell image like the training data",
}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def mahalanobis(embeddings: np.ndarray, means: np.ndarray, whitening: np.ndarray,
                whitened_means: np.ndarray | None = None) -> np.ndarray:
    """Squared Mahalanobis distance of each embedding to its nearest class mean, with the
    shared (tied) covariance whose inverse is whitening @ whitening.T (`whitened_means`:
    means @ whitening, when the caller keeps it)."""
    # In the arrays' own precision: the served model's float32 is plenty for distances.
    z = np.asarray(embeddings) @ whitening
    m = np.asarray(means) @ whitening if whitened_means is None else whitened_means
    d2 = (z * z).sum(1, keepdims=True) - 2.0 * z @ m.T + (m * m).sum(1)[None, :]
    return np.maximum(d2.min(axis=1), 0.0)


def cholesky_whitening(whitening: np.ndarray) -> np.ndarray:
    """The lower-triangular whitening L with L @ L.T = whitening @ whitening.T (the inverse
    covariance): every Mahalanobis distance is the same, and only the lower triangle needs
    storing. Computed in float64."""
    w = np.asarray(whitening, dtype=np.float64)
    precision = w @ w.T
    return np.linalg.cholesky((precision + precision.T) / 2)


def pack_lower(matrix: np.ndarray) -> np.ndarray:
    """The lower triangle of a square matrix, row by row (what `unpack_lower` reads)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"Expected a square matrix, got shape {matrix.shape}")
    return matrix[np.tril_indices(len(matrix))]


def unpack_lower(packed: np.ndarray, dim: int) -> np.ndarray:
    """The (dim, dim) lower-triangular matrix whose lower triangle `packed` holds."""
    packed = np.asarray(packed)
    if packed.shape != (dim * (dim + 1) // 2,):
        raise ValueError(f"A packed lower triangle of a {dim}x{dim} matrix has "
                         f"{dim * (dim + 1) // 2} entries, not {packed.shape}")
    matrix = np.zeros((dim, dim), dtype=packed.dtype)
    matrix[np.tril_indices(dim)] = packed
    return matrix


@dataclass(frozen=True)
class LayerGaussians:
    """Class means and shared covariance of one layer's pooled activations; `scale` (the
    median distance of validation images) puts layers of different widths on one scale."""

    means: np.ndarray  # (classes, dim)
    whitening: np.ndarray  # (dim, dim)
    scale: float = 1.0

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @cached_property
    def whitened_means(self) -> np.ndarray:
        return self.means @ self.whitening

    def distances(self, features: np.ndarray) -> np.ndarray:
        return mahalanobis(features, self.means, self.whitening, self.whitened_means) / self.scale


def layer_distances(layers: tuple[LayerGaussians, ...], features: np.ndarray) -> np.ndarray:
    """(n, layers) scaled distances; `features` holds the layers' activations side by side."""
    bounds = np.cumsum([0, *(g.dim for g in layers)])
    if features.shape[1] != bounds[-1]:
        raise ValueError(f"Expected {bounds[-1]} unfamiliarity features, got {features.shape[1]}")
    return np.stack([g.distances(features[:, a:b])
                     for g, a, b in zip(layers, bounds[:-1], bounds[1:])], axis=1)


@dataclass(frozen=True)
class Trust:
    """The fitted trust parameters of one model (identity values when none were fitted)."""

    temperature: float = 1.0
    confidence_threshold: float = 0.0
    ood_threshold: float = float("inf")
    layers: tuple[LayerGaussians, ...] = ()  # unfamiliarity: one Gaussian model per layer
    head_kernel: np.ndarray | None = None  # (embedding, classes): the dense head, for CAMs
    head_bias: np.ndarray | None = None
    target_accuracy: float | None = None  # what confidence_threshold was chosen for
    # The calibrated confidence of each held-out image the threshold was chosen on, and whether
    # its answer was right (None where trust.npz keeps none).
    held_out: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def fitted(self) -> bool:
        return bool(self.layers)

    @property
    def abstains_on_all(self) -> bool:
        """No threshold reached the target on the held-out images (see `unsure`)."""
        return self.confidence_threshold >= ABSTAIN_ON_ALL

    def threshold_text(self) -> str:
        """The abstention threshold in words, for a log or `app.py --check`."""
        target = self.target_accuracy
        return (threshold_words(self.confidence_threshold)
                + (f" (accuracy target {target:g})" if target is not None else "")
                + (": no threshold reached its target on the held-out images, so every cell "
                   "is sent to review" if self.abstains_on_all else ""))

    @classmethod
    def load(cls, model_dir: Path, card: dict[str, Any],
             accuracy_target: float | None = None) -> "Trust":
        """The folder's fitted trust layer. `accuracy_target` replaces the card's abstention
        target (a lab's own trade-off between review work and errors): the threshold is then
        chosen by the same rule on the same held-out predictions, kept in trust.npz."""
        section = card.get("trust")
        path = Path(model_dir) / TRUST_FILE
        if not section or not path.is_file():
            if accuracy_target is not None:
                raise ValueError(f"{model_dir} has no fitted trust layer (model card 'trust' "
                                 f"and {TRUST_FILE}), so it cannot abstain at an accuracy "
                                 "target.")
            return cls()
        with np.load(path) as arrays:
            scales = arrays["layer_scales"].astype(np.float64)
            layers = tuple(_stored_layer(arrays, i, float(scale)) for i, scale in enumerate(scales))
            threshold = float(section["confidence_threshold"])
            target = section.get("target_accuracy")
            held_out = [arrays[k] for k in (HELD_OUT_CONFIDENCE, HELD_OUT_CORRECT)
                        if k in arrays.files]
            kept = len(held_out) == 2 and len(held_out[0]) == len(held_out[1]) > 0
            if accuracy_target is not None and accuracy_target != target:
                check_accuracy_target(accuracy_target)
                if not kept:
                    raise ValueError(
                        f"{path} keeps no held-out predictions to choose a threshold for an "
                        "accuracy target from; refit it with `python -m training.calibrate "
                        f"--model-dir {model_dir}`.")
                threshold = threshold_for_target(*held_out, accuracy_target)
                target = accuracy_target
            return cls(
                temperature=float(section["temperature"]),
                confidence_threshold=threshold,
                ood_threshold=float(section["ood"]["threshold"]),
                layers=layers,
                head_kernel=arrays["head_kernel"].astype(np.float64),
                head_bias=arrays["head_bias"].astype(np.float64),
                target_accuracy=None if target is None else float(target),
                held_out=(held_out[0].astype(np.float64), held_out[1].astype(bool))
                if kept else None,
            )

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperature)

    def ood_scores(self, features: np.ndarray) -> np.ndarray:
        """Unfamiliarity: the largest scaled distance over the layers (an image needs to be
        unusual in one layer only, e.g. a blank field in the low-level ones)."""
        if not self.fitted:
            return np.zeros(len(features))
        return layer_distances(self.layers, np.asarray(features)).max(axis=1)

    def status(self, confidence: float, ood_score: float, no_white_cell: bool = False) -> str:
        return str(statuses(np.array([confidence]), np.array([ood_score > self.ood_threshold]),
                            self.confidence_threshold, np.array([no_white_cell]))[0])

    def band(self, confidence: float) -> dict[str, Any] | None:
        """How often the held-out images were right whose confidence lies in the same band
        (CONFIDENCE_BANDS) as `confidence`: {"low", "high", "images", "right", "target",
        "below_target"}, the target being the accuracy accepted cells reach as a group, and
        whether the band fails to show it (`short_of_target`). None where no held-out images
        are kept."""
        if self.held_out is None:
            return None
        i = int(np.searchsorted(CONFIDENCE_BANDS, confidence, side="right")) - 1
        return self._band_at(min(max(i, 0), len(CONFIDENCE_BANDS) - 2))

    def bands(self) -> list[dict[str, Any]]:
        """Every band of CONFIDENCE_BANDS as `band` gives it, least sure first ([]: none kept)."""
        if self.held_out is None:
            return []
        return [self._band_at(i) for i in range(len(CONFIDENCE_BANDS) - 1)]

    def _band_at(self, i: int) -> dict[str, Any]:
        held_confidence, held_correct = self.held_out
        low, high = CONFIDENCE_BANDS[i], CONFIDENCE_BANDS[i + 1]
        last = i == len(CONFIDENCE_BANDS) - 2
        inside = (held_confidence >= low) & (
            held_confidence <= high if last else held_confidence < high)
        band = {"low": low, "high": high, "images": int(inside.sum()),
                "right": int(held_correct[inside].sum()), "target": self.target_accuracy}
        # For a script reading the API: what the pages mark an accepted cell by.
        return {**band, "below_target": short_of_target(band)}

    def scores(self, ood_score: float, confidence: float | None = None) -> dict[str, Any]:
        finite = np.isfinite(self.ood_threshold)
        band = None if confidence is None else self.band(confidence)
        return {
            "unfamiliarity": round(float(ood_score), 3) if self.fitted else None,
            "unfamiliarity_threshold": round(self.ood_threshold, 3) if finite else None,
            # As stored and applied (short where it can be): a rounded threshold could say an
            # accepted image's confidence was below it.
            "confidence_threshold": self.confidence_threshold,
            "temperature": round(self.temperature, 4),
            **({BAND: band} if band else {}),
        }


def stored_band(scores: Any) -> dict[str, Any] | None:
    """A result's held-out band (`Trust.band`) as stored, where it is whole (None: a result
    from before bands were stored, or one damaged outside the app)."""
    band = scores.get(BAND) if isinstance(scores, dict) else None
    if not isinstance(band, dict):
        return None
    counts = [band.get(k) for k in ("images", "right")]
    edges = [band.get(k) for k in ("low", "high")]
    if not all(type(c) is int for c in counts) or not 0 <= counts[1] <= counts[0] <= (
            MAX_BAND_IMAGES):
        return None
    if not all(isinstance(e, (int, float)) and not isinstance(e, bool) and 0 <= e <= 1
               for e in edges) or edges[0] >= edges[1]:
        return None
    target = band.get("target")
    return {**band, "target": target if is_accuracy_target(target) else None}


def is_accuracy_target(value: Any) -> bool:
    """A share of accepted images that are right, greater than 0 and at most 1, as stored or
    recorded (not a flag, text or 10^400 a damaged file might hold instead)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


def short_of_target(band: dict[str, Any] | None) -> bool:
    """Whether the held-out images of a result's band (`stored_band`) fail to show that such
    cells are right as often as the accuracy target that accepted cells reach as a group: the
    lower end of the exact 95 % range of their share right is below it (none held out, too
    few to tell, or too many wrong). A rule for which accepted cells to look at, not a status."""
    if band is None or band["target"] is None:
        return False
    return band["images"] == 0 or share_range(band["right"], band["images"])[0] < band["target"]


def _stored_layer(arrays, i: int, scale: float) -> LayerGaussians:
    """Layer `i` of a trust.npz: its whitening as a packed lower triangle, or (folders saved
    before that storage) whole."""
    means = arrays[f"class_means_{i}"]
    if f"{PACKED_WHITENING}{i}" in arrays.files:
        whitening = unpack_lower(arrays[f"{PACKED_WHITENING}{i}"], means.shape[1])
    else:
        whitening = arrays[f"whitening_{i}"]
    return LayerGaussians(means, whitening, scale)


def statuses(confidence: np.ndarray, unfamiliar: np.ndarray, threshold: float,
             no_white_cell: np.ndarray | None = None) -> np.ndarray:
    """The status of each answer, the one rule the server applies and the evaluations measure:
    unfamiliar first (a confident answer about a photo of a cat is still about a cat), then
    too unsure to accept at the confidence `threshold`, or, for a model that crops to the
    nucleus, about an image in which no white cell was found (`no_white_cell`, True where so:
    WHITE_CELL_RULE)."""
    held = unsure(confidence, threshold)
    if no_white_cell is not None:
        held = held | np.asarray(no_white_cell, dtype=bool)
    return np.where(unfamiliar, NOT_A_CELL, np.where(held, UNIDENTIFIED, ACCEPTED))


def no_white_cell(white_cells) -> np.ndarray | None:
    """True for each image in which no white cell was found, from the counts
    (`hematovision.fields.cell_inputs`: None for an image no one looked in); None when no count
    is known, as for a model that reads images whole."""
    if white_cells is None or all(c is None for c in white_cells):
        return None
    return np.array([c == 0 for c in white_cells], dtype=bool)


def unsure(confidence, threshold: float):
    """Whether a confidence (or each of an array) is too low to accept at `threshold`. A
    threshold of ABSTAIN_ON_ALL sends every cell to review, even one whose confidence rounds
    to exactly 1."""
    return (confidence < threshold) | (threshold >= ABSTAIN_ON_ALL)


def confidence_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The smallest threshold whose accepted images (confidence >= it) are >= `target` correct,
    i.e. the largest such accepted share; 1.0 (abstain on all) when no share reaches it."""
    order = np.argsort(-confidence, kind="stable")
    ranked, hits = confidence[order], correct[order].astype(float)
    accuracy = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    # A cut may only fall between distinct confidences: tied images are accepted together.
    boundary = np.append(ranked[1:] < ranked[:-1], True)
    ok = np.nonzero((accuracy >= target) & boundary)[0]
    return min(float(ranked[ok[-1]]), BELOW_ONE) if len(ok) else ABSTAIN_ON_ALL


def threshold_for_target(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """confidence_threshold as the card stores it: shortened to 4 decimals where that accepts
    exactly the same held-out images (it nearly always does), else unrounded. Rounding up
    would drop the image at the cut, and with it the accuracy the rule guarantees."""
    confidence = np.asarray(confidence, dtype=np.float64)
    cut = confidence_threshold(confidence, np.asarray(correct, dtype=bool), target)
    if cut >= ABSTAIN_ON_ALL:
        return ABSTAIN_ON_ALL
    below = confidence[confidence < cut]
    short = math.floor(cut * 10**4) / 10**4
    return short if (below.size == 0 or short > below.max()) and short <= cut else cut


def measured_at(figures: dict, point: dict) -> bool:
    """Whether recorded figures belong to an operating point: the same accuracy target at the
    same threshold (after a refit, a target's old figures were measured at another one)."""
    return (figures.get("target_accuracy") == point.get("target_accuracy")
            and figures.get("confidence_threshold") == point.get("confidence_threshold"))


def check_accuracy_target(target: float) -> None:
    if not 0.0 < target <= 1.0:
        raise ValueError(f"An accuracy target is a share of accepted images that are right, "
                         f"greater than 0 and at most 1 (e.g. 0.95), not {target!r}.")


def parse_accuracy_target(text: str) -> float:
    """A command-line accuracy target (argparse `type=`): a number in (0, 1]."""
    try:
        target = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        check_accuracy_target(target)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return target


def use_one_blas_thread() -> None:
    """Run numpy's BLAS on one thread in this process from now on. The trust layer's products
    are small, and OpenBLAS's worker threads keep spinning after a threaded call, taking the
    cores from the next LiteRT inference (`benchmarks/bench_inference.py` measures both). Set
    once per process, not around each call: the setting is global, and a server's threads
    toggling it under one another would cost more than they save."""
    threadpool_limits(limits=1, user_api="blas")  # every BLAS library loaded by now


def save_trust_arrays(model_dir: Path, layers: list[LayerGaussians], head_kernel: np.ndarray,
                      head_bias: np.ndarray, held_out_confidence: np.ndarray,
                      held_out_correct: np.ndarray) -> Path:
    """`held_out_*`: the calibrated confidence of each held-out image the confidence threshold
    was chosen on, and whether its top class was right (what Trust.load needs to choose a
    threshold for another accuracy target)."""
    path = Path(model_dir) / TRUST_FILE
    arrays = {"layer_scales": np.array([g.scale for g in layers], dtype=np.float64),
              "head_kernel": head_kernel.astype(np.float32),
              "head_bias": head_bias.astype(np.float32),
              HELD_OUT_CONFIDENCE: np.asarray(held_out_confidence, dtype=np.float64),
              HELD_OUT_CORRECT: np.asarray(held_out_correct, dtype=bool)}
    for i, g in enumerate(layers):
        arrays[f"class_means_{i}"] = g.means.astype(np.float32)
        arrays[f"{PACKED_WHITENING}{i}"] = packed_whitening(g.whitening)
    save_arrays(path, arrays)
    return path


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`arrays` as the .npz file `path`, replaced whole (`replace_file`)."""
    content = io.BytesIO()
    np.savez(content, **arrays)
    replace_file(path, content.getvalue())


def packed_whitening(whitening: np.ndarray) -> np.ndarray:
    """A whitening as stored: the packed lower triangle (float32) of the matrix itself where it
    is lower-triangular (fit_class_gaussians returns that form), else of its Cholesky form,
    which gives the same distances."""
    lower = whitening if not np.triu(whitening, 1).any() else cholesky_whitening(whitening)
    return pack_lower(lower).astype(np.float32)


def repack(model_dir: Path) -> Path:
    """Rewrite a folder's trust.npz in the current storage (each whitening as its Cholesky
    form's packed lower triangle) without refitting: every other array stays as it was, the
    distances change by rounding only, and the card's thresholds still apply."""
    path = Path(model_dir) / TRUST_FILE
    with np.load(path) as arrays:
        stored = {k: arrays[k] for k in arrays.files}
    for i in range(len(stored["layer_scales"])):
        whole = stored.pop(f"whitening_{i}", None)
        if whole is not None:
            stored[f"{PACKED_WHITENING}{i}"] = packed_whitening(whole)
    save_arrays(path, stored)
    return path


def class_activation_map(feature_maps: np.ndarray, kernel: np.ndarray, label: int) -> np.ndarray:
    """CAM of class `label`: the head-weighted sum of the last feature maps, (h, w) in [0, 1].

    For global average pooling + a dense head, the class logit is the spatial mean of this map
    plus the bias, so the map shows exactly where the evidence for the class came from (the
    Grad-CAM of this architecture, without a backward pass). Negative evidence is cut at 0.
    """
    cam = np.maximum(np.asarray(feature_maps, dtype=np.float64) @ kernel[:, label], 0.0)
    peak = cam.max()
    return cam / peak if peak > 0 else cam

