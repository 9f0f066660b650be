"""How large the red cells of an image are as the model sees them: a check of magnification.

A model learns cells at the size its training images show them. Images from an objective or a
camera that shows them larger are read worse, and the trust layer hardly notices: with the
centre enlarged 1.5 times, the 4-class model's accepted answers on Kaggle test are right 0.70 of
the time instead of 0.99 (`python -m training.robustness`). Red cells are a ruler every blood
film carries: about 7.5 um across, whichever white cell the image shows. `red_cell_scale`
measures their typical width as a share of the image's short side, the frame the model's crop
and resize are taken from, so a ratio to the same figure over a model's training images says how
much larger or smaller than in training the model sees the cells.

The width is a granulometry (Matheron; Serra, Image Analysis and Mathematical Morphology, 1982):
cells are the pixels clearly darker than the slide's background, their pale centres filled; an
opening by a square removes every part of them narrower than the square, and the side at which
half their area is gone is their typical width. Touching cells and the white cell widen the
spread between images more than the typical value: one image's figure is rough, a batch's
median is not (`python -m training.magnification` measures both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

WORK_SIDE = 160  # short side of the working copy, in pixels (Kaggle's red cells: about 30)
SIDES = tuple(range(3, 81, 2))  # square sides tried, in working pixels; odd, so centred
DARKER_THAN_BACKGROUND = 18  # luminance below the background's that counts as a cell
BLACK_FILL = 20  # luminance below this is the black fill of a rotated image, not slide
MIN_SLIDE_SHARE = 0.5  # less visible slide than this: nothing to measure
MIN_CELL_SHARE = 0.02  # fewer cell pixels than this: no red cells to measure
MIN_BATCH_IMAGES = 5  # measured images a batch needs before its median is judged
CARD_KEY = "magnification"  # the model card's entry (`python -m training.magnification`)


@dataclass(frozen=True)
class Reference:
    """A model's training images' red-cell scale and the ranges of ratios to it that it was
    trained for (the card's "magnification" entry)."""

    red_cell_scale: float  # median over the training images
    single_range: tuple[float, float]  # one image: the training images' 1st-99th percentiles
    batch_range: tuple[float, float]  # a batch's median: the training augmentation's zoom span
    # The training images' largest short side, in pixels (`preprocess.at_resolution`); None on
    # a card recorded before it was measured.
    max_short_side: int | None = None

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> "Reference | None":
        """The card's reference, or None where it has none (or an unusable one): the check is
        then left out, never guessed."""
        entry = card.get(CARD_KEY)
        try:
            reference = cls(float(entry["red_cell_scale"]),
                            _range(entry["single_image_range"]), _range(entry["batch_range"]),
                            _pixels(entry.get("max_short_side")))
        except (KeyError, TypeError, ValueError):
            return None
        return reference if reference.red_cell_scale > 0 else None

    def ratio(self, image: Image.Image) -> float | None:
        """How many times the training images' size the image's red cells are (None: not
        measurable)."""
        scale = red_cell_scale(image)
        return None if scale is None else round(scale / self.red_cell_scale, 3)

    def single_outside(self, ratio: float | None) -> bool:
        return ratio is not None and not self.single_range[0] <= ratio <= self.single_range[1]


def _pixels(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"not a number of pixels: {value!r}")
    return value


def _range(pair) -> tuple[float, float]:
    low, high = (float(x) for x in pair)
    if not 0 < low <= high:
        raise ValueError(f"not a range of ratios: {pair!r}")
    return low, high


@dataclass(frozen=True)
class BatchCheck:
    median_ratio: float
    measured: int  # images whose red cells could be measured
    outside: bool  # the median lies outside the reference's batch range


def batch_check(ratios: Sequence[float | None], reference: Reference) -> BatchCheck | None:
    """The median ratio of a batch's measurable images, judged against the range the model was
    trained for; None with fewer than MIN_BATCH_IMAGES measured."""
    measured = [r for r in ratios if r is not None]
    if len(measured) < MIN_BATCH_IMAGES:
        return None
    median = round(float(np.median(measured)), 3)
    low, high = reference.batch_range
    return BatchCheck(median, len(measured), not low <= median <= high)


def red_cell_scale(image: Image.Image) -> float | None:
    """The typical width of the image's red cells as a share of its short side, or None where
    it cannot be measured (too little slide or too few cells, an image too small, or cells that
    are one blob or only specks at every square tried)."""
    if min(image.size) < 32:
        return None
    scale = WORK_SIDE / min(image.size)
    # At most WORK_SIDE x 8 * WORK_SIDE pixels, whatever the image's shape.
    size = (min(8 * WORK_SIDE, max(1, round(image.width * scale))),
            min(8 * WORK_SIDE, max(1, round(image.height * scale))))
    rgb = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32)
    luminance = rgb.mean(axis=2)
    slide = luminance > BLACK_FILL
    if slide.mean() < MIN_SLIDE_SHARE:
        return None
    background = np.percentile(luminance[slide], 90)
    cells = _fill_holes((luminance < background - DARKER_THAN_BACKGROUND) & slide)
    area = cells.sum()
    if area < MIN_CELL_SHARE * cells.size:
        return None

    def remaining(i: int) -> float:
        return _opened(cells, SIDES[i]).sum() / area

    low, high = 0, len(SIDES) - 1
    at_low, at_high = remaining(low), remaining(high)
    if at_low < 0.5 or at_high >= 0.5:
        return None
    # The area left falls as the square grows: bisect for the first side leaving under half.
    while high - low > 1:
        middle = (low + high) // 2
        at_middle = remaining(middle)
        if at_middle < 0.5:
            high, at_high = middle, at_middle
        else:
            low, at_low = middle, at_middle
    side = SIDES[low] + (at_low - 0.5) / (at_low - at_high) * (SIDES[high] - SIDES[low])
    return float(side / WORK_SIDE)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every region it encloses added: red cells' pale centres, which would
    otherwise make each cell a ring as narrow as its rim. What stays out is the background
    reachable from the image's edge through 4-connected pixels, grown a whole run of a row or a
    column at a time until nothing changes (a few passes, in numpy)."""
    free = ~mask
    outside = np.zeros_like(mask)
    for edge in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
        outside[edge] = free[edge]
    while True:
        grown = _spread(_spread(outside, free, axis=1), free, axis=0)
        if (grown == outside).all():
            return ~outside
        outside = grown


def _spread(seeds: np.ndarray, free: np.ndarray, axis: int) -> np.ndarray:
    """Every pixel of a run of `free` pixels along `axis` that holds a seed."""
    f, s = np.moveaxis(free, axis, -1), np.moveaxis(seeds, axis, -1)
    starts = f.copy()
    starts[:, 1:] &= ~f[:, :-1]  # a run starts where the pixel before is not free
    runs = np.cumsum(starts.ravel()).reshape(f.shape) * f  # 0: not free
    seeded = np.zeros(runs.max() + 1, dtype=bool)
    seeded[runs[s & f]] = True
    seeded[0] = False
    return np.moveaxis(seeded[runs], -1, axis)


def _opened(mask: np.ndarray, side: int) -> np.ndarray:
    """Morphological opening by a square of `side` pixels (an erosion, then a dilation; each
    a row pass and a column pass), the image's edges continued outwards."""
    out = mask
    for erode in (True, False):
        for axis in (0, 1):
            out = _slide(out, side, axis, erode)
    return out


def _slide(mask: np.ndarray, side: int, axis: int, erode: bool) -> np.ndarray:
    """A 1-D erosion (every pixel of the window set) or dilation (any set) along `axis`, by
    running sums: the same cost for any window length."""
    half = side // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half + 1, half)  # one more in front: the sum before the first window
    sums = np.cumsum(np.pad(mask, pad, mode="edge"), axis=axis, dtype=np.int32)
    length = sums.shape[axis]
    window = (np.take(sums, range(side, length), axis=axis)
              - np.take(sums, range(0, length - side), axis=axis))
    return window == side if erode else window > 0
