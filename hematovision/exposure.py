"""The slide's background against the model's training images': exposure and white balance.

A blood film's background, the bare slide between cells, is the lamp's light as the camera
recorded it: a longer exposure or a brighter lamp scales it, a warmer or cooler lamp tints it,
and the cells with it. The trust layer reads that as unfamiliarity: with every pixel 0.75 times
as bright, the 8-class model still names 98 % of its test cells right, yet flags all of them
"not a blood-cell image" (`python -m training.robustness`), because PBC's images were all taken
with one lamp and camera setting. Dividing by the lamp's colour is the usual correction of
brightfield microscopy (a white reference); the slide's own background serves as one.

`Exposure` holds the training images' backgrounds (`python -m training.exposure --record`
measures them): their median colour and, channel by channel, the lowest and highest. An image
whose background lies within those for every channel is read as it is, so no training image
would have been changed; one outside is scaled, channel by channel, to the training images'
median background before the model reads it. A channel at the camera's white in the image or
in the reference was clipped: it bounds the light, and takes the others' scaling within that
bound. An image white in all three is over-exposed, and one needing more than MAX_GAIN either
way is not a slide under the same kind of light: both are read as they are and said to be.
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


def background(image: Image.Image) -> tuple[float, float, float] | None:
    """The colour of the image's bare slide: the median of its brightest tenth, channel by
    channel, on a working copy of WORK_SIDE pixels' short side; None where too little of the
    image is slide (black fill of a rotated image, a photo of something else in the dark)."""
    if min(image.size) < 1:
        return None
    scale = WORK_SIDE / min(image.size)
    size = (min(8 * WORK_SIDE, max(1, round(image.width * scale))),
            min(8 * WORK_SIDE, max(1, round(image.height * scale))))
    rgb = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR),
                     np.float32).reshape(-1, 3)
    luminance = rgb.mean(axis=1)
    slide = luminance > BLACK_FILL
    if slide.mean() < MIN_SLIDE_SHARE:
        return None
    brightest = luminance[slide] >= np.percentile(luminance[slide], 100 * (1 - BRIGHTEST_SHARE))
    return tuple(round(float(v), 1) for v in np.median(rgb[slide][brightest], axis=0))


@dataclass(frozen=True)
class Exposure:
    """A model's training images' slide backgrounds (the card's "exposure" entry)."""

    background: tuple[float, float, float]  # their median, channel by channel
    low: tuple[float, float, float]  # their lowest, channel by channel
    high: tuple[float, float, float]  # their highest

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> "Exposure | None":
        """The card's reference, or None where it has none (or an unusable one): images are
        then read as they are, never corrected on a guess."""
        entry = card.get(CARD_KEY)
        try:
            reference = cls(*(_colour(entry[key]) for key in ("background", "low", "high")))
        except (KeyError, TypeError, ValueError):
            return None
        inside = all(lo <= mid <= hi for lo, mid, hi in
                     zip(reference.low, reference.background, reference.high))
        return reference if inside and min(reference.background) > 0 else None

    def check(self, image: Image.Image) -> dict[str, Any] | None:
        """The image's exposure check: its `background`, whether it lies `outside` the
        training images' range, and the `gains` (red, green, blue) that bring it to their
        median, None where it is within or cannot be brought (`over_exposed`: white in every
        channel; else more than MAX_GAIN away). None: no background to measure."""
        measured = background(image)
        if measured is None:
            return None
        outside = not all(lo <= v <= hi for v, lo, hi in zip(measured, self.low, self.high))
        entry = {"background": list(measured), "outside": outside, "gains": None}
        if outside:
            gains = self.gains(measured)
            entry["gains"] = None if gains is None else list(gains)
            entry["over_exposed"] = min(measured) >= SATURATED
        return entry

    def gains(self, measured: tuple[float, ...]) -> tuple[float, float, float] | None:
        """The scaling of each channel that brings a background of `measured` to the
        reference's. A channel clipped in either says only how far at least: it takes the
        unclipped channels' scaling (their geometric mean) within that bound. None: no channel
        unclipped in both, or a scaling beyond MAX_GAIN."""
        def clipped(value: float) -> bool:
            return value >= SATURATED

        pairs = list(zip(measured, self.background))
        known = [ref / max(value, 1.0) for value, ref in pairs
                 if not clipped(value) and not clipped(ref)]
        if not known:
            return None
        shared = float(np.exp(np.mean(np.log(known))))

        def gain(value: float, ref: float) -> float:
            ratio = ref / max(value, 1.0)
            if clipped(value) == clipped(ref):  # both measured, or neither: nothing to bound
                return shared if clipped(value) else ratio
            # The image's channel at white was at least that bright (at most this gain); the
            # reference's, at least as bright as the image's needs (at least this gain).
            return min(shared, ratio) if clipped(value) else max(shared, ratio)

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
                "high": list(self.high)}


def scaled(image: Image.Image, gains) -> Image.Image:
    """Each channel of `image` times its gain, rounded and clipped to 8 bits."""
    pixels = np.asarray(image.convert("RGB"), np.float32) * np.asarray(gains, np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


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
    except (TypeError, ValueError):
        return None
    return Stored(measured, value["outside"], gains, value.get("over_exposed") is True)
