"""The one image preprocessing contract, shared by training and serving.

Every image the model ever sees, in training, evaluation, the CLI or the web app, goes
through `load_image` then `to_input`, so the two paths cannot drift apart.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
import pi_heif
from PIL import Image, ImageOps, UnidentifiedImageError

# exposure imports only magnification (numpy and Pillow), never this module.
from hematovision.exposure import FLATTENED, slide_colour, working_size

log = logging.getLogger(__name__)

INPUT_SIZE = 224
# Pillow's resampling filter; recorded in every model card as part of the contract.
RESAMPLE = Image.Resampling.BILINEAR
RESAMPLE_NAME = "bilinear"
# Larger images are refused before decoding: a 50-megapixel smear photo is plausible,
# a 20000x20000 "image" is a decompression bomb.
MAX_PIXELS = 50_000_000

# HEIC is what an iPhone saves a photo as, one taken through the eyepiece included: Pillow
# reads it through pi-heif (libheif, decoding only); AVIF Pillow reads itself.
pi_heif.register_heif_opener()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".heic",
                  ".heif", ".avif"}

ImageSource = Union[str, Path, bytes, BinaryIO]


class ImageError(ValueError):
    """The input is not an image we can classify; the message is safe to show a user."""


def allow_pixels(limit: int) -> None:
    """Let Pillow open images of up to `limit` pixels, which `load_image` checks itself
    before decoding: Pillow's own decompression-bomb check (at twice its MAX_IMAGE_PIXELS,
    about 179 million) would refuse a larger limit's images first, in the limit's name. Only
    ever raised, for the whole process."""
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode any image file into an upright RGB image (first frame of an animation).

    Anything wrong with the content raises `ImageError`, whatever the decoder raised: this is
    the one place that turns decoder failures into a message, for the CLI, evaluation and the
    web app alike. Only opening a path can raise OSError (a missing or unreadable file)."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("The file is empty.")
        source = io.BytesIO(source)
    if isinstance(source, (str, Path)):
        # Opening a named pipe waits for a writer, for ever: only a regular file is read.
        if not stat.S_ISREG(os.stat(source).st_mode):
            raise ImageError("Not a regular file (a pipe, socket or device): there is no "
                             "image to read.")
        with open(source, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:  # the same message as an empty upload
                raise ImageError("The file is empty.")
            return _decode(file, max_pixels)
    return _decode(source, max_pixels)


def _decode(file: BinaryIO, max_pixels: int) -> Image.Image:
    try:
        with Image.open(file) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"The image is too large ({width}x{height} pixels); the limit is "
                    f"{max_pixels:,} pixels."
                )
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("The file is not an image in a format we can read.") from None
    except Image.DecompressionBombError:
        raise ImageError(f"The image is too large; the limit is {max_pixels:,} pixels.") from None
    except MemoryError:
        raise ImageError("The image is too large to decode in the memory available.") from None
    except NotImplementedError as exc:  # Pillow knows the format, not this variant of it
        raise ImageError(f"The image is stored in a variant of its format that we cannot read "
                         f"({exc}).") from None
    except Exception as exc:  # noqa: BLE001 - see below
        # Pillow's decoders fail on malformed files not only with OSError but with
        # struct.error, IndexError, ValueError, SyntaxError, EOFError, and the AVIF and HEIF
        # decoders with RuntimeError...: all are a bad file, never a crash of the batch or a
        # 500. Unusual types are logged: they may be our bug.
        if not isinstance(exc, (OSError, EOFError, SyntaxError, ValueError, RuntimeError)):
            log.warning("unexpected %s decoding an image", type(exc).__name__, exc_info=True)
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():  # Pillow's words for a file ending before its image
            raise ImageError("The image is damaged or truncated: the file ends before the "
                             "image does (a copy or download that did not finish?). Send the "
                             "original file again.") from None
        raise ImageError(f"The image is damaged or truncated ({reason}).") from None


# Modes of more than 8 bits per pixel that are stretched to 8 bits rather than clipped.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Pixels per float64 block of that stretch: bounds its working memory (8 MB) at any image size.
STRETCH_BLOCK_PIXELS = 1 << 20


WHITE = (255, 255, 255)
# Less of the image fully opaque than this (a twentieth; on a 4:3 working copy of 34,000
# pixels, some 1,700, so the brightest tenth whose median is taken holds 170 or more) is a
# fragment, such as a cell cut out with little slide round it: its palest pixels say little of
# the slide's colour, and white, as a viewer shows transparency, is left as before.
MIN_OPAQUE_SHARE = 0.05
# The share of fully opaque pixels within the box round an image's content above which it is a
# rectangle pasted on a transparent canvas, cropped to: a round cut-out cell leaves about a
# fifth of its box transparent, a rotated crop's corners more.
PASTED_OPAQUE_SHARE = 0.99


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB. A picture pasted on a larger transparent canvas is cropped to
    (its positions, as the API gives a field's cells, are then shares of the picture);
    transparency left (RGBA, LA, a palette's transparent entry: a rotated crop's corners, the
    margins round a cut-out cell) is flattened onto the slide's own background,
    as `hematovision.exposure` measures it, over the fully opaque pixels only
    (`_opaque_background`); onto white, as a viewer shows it, where too little is opaque to
    measure it, and where nothing is transparent (then the pixels are the colour channels
    themselves). Flattened onto white, such margins were measured as a background at the
    camera's white: called over-exposed, and shown to the model as margins unlike any it
    learned from. An image so flattened is marked (`exposure.FLATTENED` in its `info`), and
    the exposure check leaves it unmeasured: a cut-out cell holds no bare slide, and the
    colour its margins took, its palest cytoplasm, would be "corrected" to the slide's. The
    training images have no transparency (Kaggle's, BCCD's and PBC's are all RGB), so training
    reads them as before."""
    if image.mode in HIGH_BIT_MODES:
        image = _stretch_to_8_bits(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        box = rgba.getchannel("A").getbbox()
        if box is not None and box != (0, 0, *rgba.size):
            content = rgba.crop(box)
            if np.mean(np.asarray(content.getchannel("A")) == 255) >= PASTED_OPAQUE_SHARE:
                # A picture pasted on a larger transparent canvas: the canvas is no part of
                # it (kept, a field's red cells measured 0.55 times their size and its white
                # cell was not found). A cut-out cell keeps its frame, and so its share of it.
                rgba = content
        opaque_everywhere = rgba.getchannel("A").getextrema()[0] == 255
        colour = WHITE if opaque_everywhere else _opaque_background(rgba) or WHITE
        background = Image.new("RGBA", rgba.size, (*colour, 255))
        flattened = Image.alpha_composite(background, rgba).convert("RGB")
        if not opaque_everywhere:
            flattened.info[FLATTENED] = True
        return flattened
    return image.convert("RGB")


def _opaque_background(rgba: Image.Image) -> tuple[int, int, int] | None:
    """The slide's background colour measured on the fully opaque pixels of `rgba`'s working
    copy (`exposure.slide_colour`, the exposure check's own measurement), or None where less
    than MIN_OPAQUE_SHARE of it is opaque or too little of that is slide.

    The working copy is the exposure check's, so margins take the colour the check then
    finds in the opaque part: measured on all the pixels, a noisy camera's brightest tenth
    lies above the plateau the smoothed copy shows. Pillow resizes RGBA premultiplied, so
    the colours transparent pixels hide never reach the estimate, and a pixel of the copy is
    fully opaque only where (to within rounding) all it averages is."""
    if min(rgba.size) < 1:
        return None
    small = np.asarray(rgba.resize(working_size(rgba.size), Image.Resampling.BILINEAR))
    opaque = small[..., 3] == 255
    if opaque.mean() < MIN_OPAQUE_SHARE:
        return None
    found = slide_colour(small[opaque][:, :3].astype(np.float32))
    return None if found is None else tuple(int(round(v)) for v in found[0])


def _stretch_to_8_bits(image: Image.Image) -> Image.Image:
    """16/32-bit or float greyscale -> 8-bit "L", its value range stretched onto 0..255
    (clipping would turn most 16-bit images white; NaN reads as 0).

    Computed in float64 row blocks, two passes (range, then values), so a large image costs its
    8-bit result plus one block instead of several full-size float64 copies (8 bytes a pixel
    each); the pixels are the same as one full-size float64 computation gives."""
    extrema = [(float(block.min()), float(block.max())) for _, block in _float_rows(image)]
    low, high = min(lo for lo, _ in extrema), max(hi for _, hi in extrema)
    out = np.zeros((image.height, image.width), dtype=np.uint8)
    if high > low:
        scale = 255.0 / (high - low)
        for top, block in _float_rows(image):
            out[top : top + len(block)] = ((block - low) * scale).astype(np.uint8)
    return Image.fromarray(out)


def _float_rows(image: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float64 pixels with NaN as 0) of a few rows at a time, top to bottom."""
    rows = max(1, STRETCH_BLOCK_PIXELS // max(image.width, 1))
    for top in range(0, image.height, rows):
        block = image.crop((0, top, image.width, min(top + rows, image.height)))
        yield top, np.nan_to_num(np.asarray(block, dtype=np.float64))


def at_resolution(image: Image.Image, short_side: int | None) -> Image.Image:
    """The image brought down to the resolution of the model's training images where it is
    finer: its short side scaled to `short_side` (the largest of theirs, recorded with the
    model's magnification reference), the aspect kept, as Kaggle's fields were made from
    BCCD's 640x480 smears. A model reads the share of the frame its crop takes whatever the
    image's size, but it learned cells at its training images' sharpness: read at full
    resolution, nearly all of BCCD's own smears came out "not a cell"; scaled as Kaggle's,
    few. A coarser image is left as it is (enlarging adds no detail); None: no reference."""
    if short_side is None or min(image.size) <= short_side:
        return image
    factor = short_side / min(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, RESAMPLE)


# A white cell in a Kaggle/BCCD field (320x240) spans about half the short side.
NUCLEUS_CROP_FRACTION = 0.55
# Below this a square round the nucleus cuts off the cytoplasm of most white cells.
MIN_CROP_FRACTION = 0.2
# Wright/Giemsa-stained nuclei are blue-violet: clearly more blue than red, and dark in green.
# Red cells (pink) and background (pale) fail this test.
NUCLEUS_BLUE_MINUS_RED = 25
NUCLEUS_MAX_GREEN = 160
NUCLEUS_MIN_SHARE = 0.002  # fewer nucleus-coloured pixels than this: no cell found, keep centre


def nucleus_mask(image: Image.Image) -> tuple[np.ndarray, float, float]:
    """The nucleus-coloured pixels of `image` at the working scale (at most 320 px a side),
    with the factors that take a column and a row of that scale back to the image's pixels."""
    small = image.copy()
    small.thumbnail((320, 320))
    a = np.asarray(small, dtype=np.int16)
    mask = (a[..., 2] - a[..., 0] > NUCLEUS_BLUE_MINUS_RED) & (a[..., 1] < NUCLEUS_MAX_GREEN)
    # Each axis has its own scale: thumbnail rounds the short side, which for a long, thin image
    # changes its ratio a lot (a 40000x1 strip becomes 320x1).
    return mask, image.width / small.width, image.height / small.height


def nucleus_centre(image: Image.Image, scale: float = 1.0) -> tuple[float, float] | None:
    """(x, y) of the median nucleus-coloured pixel, or None if there are too few (for an image
    whose cells are `scale` times their training size, the share scales as their area)."""
    mask, sx, sy = nucleus_mask(image)
    if mask.mean() < NUCLEUS_MIN_SHARE * scale**2:
        return None
    ys, xs = np.nonzero(mask)
    return float(np.median(xs) + 0.5) * sx, float(np.median(ys) + 0.5) * sy


def nucleus_square(image: Image.Image, fraction: float = NUCLEUS_CROP_FRACTION,
                   centre: tuple[float, float] | None = None,
                   scale: float = 1.0) -> tuple[int, int, int]:
    """(left, top, side) of the square `crop_to_nucleus` cuts: centred on `centre` where given
    (one white cell of a field holding several: `hematovision.fields`), else on the stained
    nucleus (the image centre where none is found), its side `fraction` of the short side,
    times `scale` for an image whose cells are `scale` times their size in the training images,
    so the cell fills the square as in training (served: 1; `training.robustness
    --correct-batches` tried a batch's measured ratio). It may reach past the image's edges."""
    side = max(1, round(min(image.size) * fraction * scale))
    centre = centre or nucleus_centre(image, scale) or (image.width / 2, image.height / 2)
    return round(centre[0] - side / 2), round(centre[1] - side / 2), side


def crop_to_nucleus(image: Image.Image, fraction: float = NUCLEUS_CROP_FRACTION,
                    centre: tuple[float, float] | None = None,
                    scale: float = 1.0) -> Image.Image:
    """A square around the stained nucleus (`nucleus_square`), so the white cell fills the
    model input as in single-cell datasets."""
    left, top, side = nucleus_square(image, fraction, centre, scale)
    # Beyond the image edge Pillow's crop fills black; a pale fill looks like slide background.
    canvas = Image.new("RGB", (side, side), (235, 225, 230))
    visible = image.crop((max(left, 0), max(top, 0), min(left + side, image.width),
                          min(top + side, image.height)))
    canvas.paste(visible, (max(-left, 0), max(-top, 0)))
    return canvas


def crop_fraction(crop: str) -> float | None:
    """The side of the nucleus crop as a share of the image's short side (None: no crop).

    `crop` is "none", "nucleus" (NUCLEUS_CROP_FRACTION) or "nucleus:F", F from
    MIN_CROP_FRACTION to 1; anything else raises ValueError."""
    if crop == "none":
        return None
    name, colon, share = crop.partition(":")
    if name == "nucleus" and not colon:
        return NUCLEUS_CROP_FRACTION
    if name == "nucleus":
        try:
            fraction = float(share)
        except ValueError:
            fraction = float("nan")
        if MIN_CROP_FRACTION <= fraction <= 1:
            return fraction
    raise ValueError(f"unknown crop {crop!r}: expected none, nucleus (a square of "
                     f"{NUCLEUS_CROP_FRACTION} of the short side round the nucleus) or "
                     f"nucleus:F with F from {MIN_CROP_FRACTION} to 1")


def to_input(image: Image.Image, size: int = INPUT_SIZE, crop: str = "none",
             centre: tuple[float, float] | None = None, scale: float = 1.0) -> np.ndarray:
    """RGB image -> float32 (size, size, 3) array scaled to [-1, 1] as MobileNetV2 expects.

    `centre` (image pixels) places a nucleus crop on one white cell of a field that holds
    several; `scale` widens or narrows it for cells shown `scale` times their training size
    (`nucleus_square`); without a nucleus crop neither has an effect."""
    fraction = crop_fraction(crop)
    if fraction is not None:
        image = crop_to_nucleus(image, fraction, centre, scale)
    resized = image.resize((size, size), RESAMPLE)
    array = np.asarray(resized, dtype=np.float32)
    return array / 127.5 - 1.0


def preprocess(source: ImageSource, size: int = INPUT_SIZE, crop: str = "none") -> np.ndarray:
    """Decode and prepare one image for the model: the single shared entry point."""
    return to_input(load_image(source), size, crop)
