"""The slide's background against the model's training images': exposure and white balance.

A blood film's background, the bare slide between cells, is the lamp's light as the camera
recorded it: a longer exposure or a brighter lamp scales it, a warmer or cooler lamp tints it,
and the cells with it. The trust layer reads that as unfamiliarity: read as they are with every
pixel 0.75 times as bright, the 8-class model still names nearly all of its test cells right,
yet flags all of them "not a blood-cell image" (`python -m training.exposure`, "as read"),
because PBC's images were all taken with one lamp and camera setting. Dividing by the lamp's
colour is the usual correction of brightfield microscopy (a white reference); the slide's own
background serves as one.

`Exposure` holds the training images' backgrounds (`python -m training.exposure --record`
measures them): their median colour and, channel by channel, the lowest and highest. An image
whose background lies within those for every channel is read as it is, so no training image
would have been changed; one outside is scaled, channel by channel, to the training images'
median background before the model reads it. A channel at the camera's white in the reference
was clipped: it bounds the light, and takes the others' scaling within that bound (white in the
image too, only a darkening). An image at white in a channel where the reference is not is
over-exposed (what lay above white is lost: scaled, a PBC platelet read as a Kaggle field's
neutrophil), and one needing more than MAX_GAIN either way is not a slide under the same kind
of light: both are read as they are and said to be. The background is the brightest tenth of the image; where
that tenth is more spread than any training image's, it is no plateau of bare slide (a crop the
cell fills) and nothing is measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from hematovision.magnification import BLACK_FILL, MIN_SLIDE_SHARE, WORK_SIDE

BRIGHTEST_SHARE = 0.1  # the brightest tenth of the slide is its bare background
SATURATED = 250  # a background channel this bright was clipped at the camera's white
MAX_GAIN = 2.0  # a scaling beyond this, up or down, is not a change of exposure
CARD_KEY = "exposure"  # the model card's entry (`python -m training.exposure`)
TINT = 1.03  # gains further apart than this: the lamp's colour differed, not only its light
COLOURS = ("red", "green", "blue")


def background(image: Image.Image) -> tuple[float, float, float] | None:
    """The colour of the image's bare slide: the median of its brightest tenth, channel by
    channel, on a working copy of WORK_SIDE pixels' short side; None where too little of the
    image is slide (black fill of a rotated image, a photo of something else in the dark)."""
    measured = slide_background(image)
    return None if measured is None else measured[0]


def slide_background(image: Image.Image) -> tuple[tuple[float, float, float], float] | None:
    """`background`, with how spread the brightest tenth's brightness is: 1 - its lowest over
    its 99th percentile. Bare slide is one bright plateau; a tenth that reaches from the slide
    into a cell (a crop the cell fills, showing slide only in its corners) is spread wider
    (`training.exposure` records the widest of the training images')."""
    if min(image.size) < 1:
        return None
    rgb = np.asarray(image.convert("RGB").resize(working_size(image.size),
                                                 Image.Resampling.BILINEAR), np.float32)
    return slide_colour(rgb.reshape(-1, 3))


def working_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size of the working copy `slide_background` measures an image of `size` on: its
    short side WORK_SIDE, at most 8 * WORK_SIDE a side, whatever the image's shape."""
    scale = WORK_SIDE / min(size)
    return (min(8 * WORK_SIDE, max(1, round(size[0] * scale))),
            min(8 * WORK_SIDE, max(1, round(size[1] * scale))))


def slide_colour(rgb: np.ndarray) -> tuple[tuple[float, float, float], float] | None:
    """`slide_background` of a working copy's pixels (an N x 3 float array): the one
    measurement, which `hematovision.preprocess` also makes on an image's opaque pixels alone
    (the colour it flattens transparency onto)."""
    if len(rgb) == 0:
        return None
    luminance = rgb.mean(axis=1)
    slide = luminance > BLACK_FILL
    if slide.mean() < MIN_SLIDE_SHARE:
        return None
    lowest, top = np.percentile(luminance[slide], (100 * (1 - BRIGHTEST_SHARE), 99))
    colour = np.median(rgb[slide][luminance[slide] >= lowest], axis=0)
    return (tuple(round(float(v), 1) for v in colour),
            round(1 - float(lowest) / max(float(top), 1.0), 4))


# The mark `preprocess` leaves in an image's `info` (which Pillow's resizing, cropping and
# conversion keep) where it flattened transparent pixels onto a colour of its choosing.
FLATTENED = "hematovision.flattened"


@dataclass(frozen=True)
class Exposure:
    """A model's training images' slide backgrounds (the card's "exposure" entry)."""

    background: tuple[float, float, float]  # their median, channel by channel
    low: tuple[float, float, float]  # their lowest, channel by channel
    high: tuple[float, float, float]  # their highest
    # The widest spread of their brightest tenths (`slide_background`): an image's spread
    # wider than every one of theirs is no plateau of bare slide, and is not measured. None:
    # a card recorded before it was (no image left unmeasured for it).
    max_spread: float | None = None

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> "Exposure | None":
        """The card's reference, or None where it has none (or an unusable one): images are
        then read as they are, never corrected on a guess."""
        entry = card.get(CARD_KEY)
        try:
            reference = cls(*(_colour(entry[key]) for key in ("background", "low", "high")),
                            _spread(entry.get("max_spread")))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            return None
        inside = all(lo <= mid <= hi for lo, mid, hi in
                     zip(reference.low, reference.background, reference.high))
        return reference if inside and min(reference.background) > 0 else None

    def check(self, image: Image.Image) -> dict[str, Any] | None:
        """The image's exposure check: its `background`, whether it lies `outside` the
        training images' range, and the `gains` (red, green, blue) that bring it to their
        median, None where it is within or cannot be brought (`over_exposed`: at white in a
        channel where the reference is not; else more than MAX_GAIN away, or no channel
        unclipped in both). None: no background to measure, or a
        brightest tenth more spread than any training image's (not bare slide), or an image
        whose transparency was flattened (FLATTENED), whose margins are no slide either."""
        if image.info.get(FLATTENED):
            # Its margins are filled with a colour taken from the image itself: a cut-out
            # cell holds no bare slide, and its palest cytoplasm, spread in the margins as a
            # plateau, would be "corrected" to the slide's colour.
            return None
        found = slide_background(image)
        if found is None or (self.max_spread is not None and found[1] > self.max_spread):
            return None
        measured = found[0]
        outside = not self.within(measured)
        gains = self.gains(measured) if outside else None
        clipped = any(v >= SATURATED > ref for v, ref in zip(measured, self.background))
        return {"background": list(measured), "outside": outside,
                "gains": None if gains is None else list(gains),
                "over_exposed": outside and clipped}

    def within(self, measured: tuple[float, ...]) -> bool:
        """Whether a background of `measured` lies within the training images' range."""
        return all(lo <= v <= hi for v, lo, hi in zip(measured, self.low, self.high))

    def gains(self, measured: tuple[float, ...]) -> tuple[float, float, float] | None:
        """The scaling of each channel that brings a background of `measured` to the
        reference's. A channel clipped in the reference only (PBC's red) says how far at
        least: it takes the unclipped channels' scaling (their geometric mean) within that
        bound; clipped in both, it takes it only where that darkens. None: a channel clipped
        in the image but not in the reference (over-exposed: what lay above white is lost, and
        scaling the rest makes another image, not this one under the training light), no
        channel unclipped in both, or a scaling beyond MAX_GAIN."""
        pairs = list(zip(measured, self.background))
        if any(value >= SATURATED > ref for value, ref in pairs):
            return None
        known = [ref / max(value, 1.0) for value, ref in pairs if value < SATURATED > ref]
        if not known:
            return None
        shared = float(np.exp(np.mean(np.log(known))))

        def gain(value: float, ref: float) -> float:
            ratio = ref / max(value, 1.0)
            if ref < SATURATED:
                return ratio
            if value >= SATURATED:
                # White in both: darkened with the others, never brightened. A warmer lamp
                # leaves PBC's red at white while green and blue dim, and red brightened with
                # them read worse than uncorrected (docs/experiments.md, "Exposure").
                return min(shared, 1.0)
            return max(shared, ratio)  # white in the reference: at least as bright as that

        gains = tuple(round(gain(value, ref), 3) for value, ref in pairs)
        if not all(1 / MAX_GAIN <= g <= MAX_GAIN for g in gains):
            return None
        return gains

    def correct(self, image: Image.Image) -> tuple[Image.Image, dict[str, Any]]:
        """The image as the model reads it, with its check as the result's `exposure`: scaled
        by the check's gains where there are any, else the image itself."""
        entry = self.check(image)
        if entry is None or entry["gains"] is None:
            return image, {"exposure": entry}
        return scaled(image, entry["gains"]), {"exposure": entry}

    def entry(self) -> dict[str, Any]:
        """What `from_card` reads, as served settings name the reference."""
        return {"background": list(self.background), "low": list(self.low),
                "high": list(self.high), "max_spread": self.max_spread}


def as_read(image: Image.Image, check: Stored | None) -> Image.Image:
    """A stored upload as the model read it: scaled by its stored check's gains where it was
    corrected (never measured again: the stored copy is a re-encoded JPEG, whose background
    may fall on the other side of a range's edge)."""
    return scaled(image, check.gains) if check is not None and check.corrected else image


def scaled(image: Image.Image, gains) -> Image.Image:
    """Each channel of `image` times its gain, rounded and clipped to 8 bits."""
    pixels = np.asarray(image.convert("RGB"), np.float32) * np.asarray(gains, np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def _spread(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"not a spread: {value!r}")
    return float(value)


def _colour(value) -> tuple[float, float, float]:
    if isinstance(value, (str, bytes)) or len(value) != 3:
        raise ValueError(f"not a colour: {value!r}")
    colour = tuple(float(v) for v in value)
    if not all(0 <= v <= 255 for v in colour):
        raise ValueError(f"not a colour: {value!r}")
    return colour


@dataclass(frozen=True)
class Stored:
    """A result's stored exposure check, as pages read it (`stored`)."""

    background: tuple[float, float, float]
    outside: bool
    gains: tuple[float, float, float] | None
    over_exposed: bool

    @property
    def corrected(self) -> bool:
        return self.gains is not None

    @property
    def tinted(self) -> bool:
        """Corrected in colour as well as brightness: its gains differ by more than TINT."""
        return self.gains is not None and max(self.gains) > min(self.gains) * TINT

    def clipped(self, reference: "Exposure | None") -> list[str]:
        """The colours at the camera's white in this background but not in the reference's:
        what they held above white is lost (`Exposure.gains`: over-exposed)."""
        if reference is None:
            return []
        return [name for name, v, ref in zip(COLOURS, self.background, reference.background)
                if v >= SATURATED > ref]

    def ratios(self, reference: "Exposure | None") -> tuple[float, float, float] | None:
        """Each colour of this background over the reference's (None without one)."""
        if reference is None:
            return None
        return tuple(round(v / max(ref, 1.0), 2)
                     for v, ref in zip(self.background, reference.background))

    def uneven(self, reference: "Exposure | None") -> bool:
        """Uncorrected, and its colours differ from the reference's by more than TINT: of
        another colour, which one brightness would hide."""
        ratios = self.ratios(reference)
        return (self.gains is None and ratios is not None and min(ratios) > 0
                and max(ratios) > min(ratios) * TINT)

    def brightness(self, reference: "Exposure | None" = None) -> float | None:
        """How many times the training images' background brightness this one's is: the
        inverse of the mean gain where it was corrected, else (with the reference) the ratio
        of the means of the channels unclipped in both."""
        if self.gains is not None:
            return round(1 / float(np.exp(np.mean(np.log(self.gains)))), 2)
        if reference is None:
            return None
        ratios = [v / ref for v, ref in zip(self.background, reference.background)
                  if v < SATURATED and ref < SATURATED]
        return round(float(np.mean(ratios)), 2) if ratios else None


def stored(value: Any) -> Stored | None:
    """A result's `exposure` entry read back, or None where it has none or a damaged one (a
    page then leaves the check out rather than failing)."""
    if not isinstance(value, dict) or not isinstance(value.get("outside"), bool):
        return None
    try:
        measured = _colour(value.get("background"))
        gains = value.get("gains")
        gains = None if gains is None else tuple(float(g) for g in gains)
        if gains is not None and (len(gains) != 3 or not all(
                1 / MAX_GAIN <= g <= MAX_GAIN for g in gains)):
            return None
    except (TypeError, ValueError, OverflowError):  # JSON integers are unbounded
        return None
    return Stored(measured, value["outside"], gains, value.get("over_exposed") is True)
