"""The one image preprocessing contract, shared by training and serving.

Every image the model ever sees, in training, evaluation, the CLI or the web app, goes
through `load_image` then `to_input`, so the two paths cannot drift apart.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

INPUT_SIZE = 224
# Pillow's resampling filter; recorded in every model card as part of the contract.
RESAMPLE = Image.Resampling.BILINEAR
RESAMPLE_NAME = "bilinear"
# Larger images are refused before decoding: a 50-megapixel smear photo is plausible,
# a 20000x20000 "image" is a decompression bomb.
MAX_PIXELS = 50_000_000

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}

ImageSource = Union[str, Path, bytes, BinaryIO]


class ImageError(ValueError):
    """The input is not an image we can classify; the message is safe to show a user."""


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode any image file into an upright RGB image (first frame of an animation)."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("The file is empty.")
        source = io.BytesIO(source)
    try:
        with Image.open(source) as image:
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
    except FileNotFoundError:
        raise
    except UnidentifiedImageError:
        raise ImageError("The file is not an image in a format we can read.") from None
    except Image.DecompressionBombError:
        raise ImageError(f"The image is too large; the limit is {max_pixels:,} pixels.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"The image is damaged or truncated ({exc}).") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB; transparency is flattened onto white, as a viewer shows it."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: stretch to 8 bits instead of clipping to white.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8))
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def to_input(image: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """RGB image -> float32 (size, size, 3) array scaled to [-1, 1] as MobileNetV2 expects."""
    resized = image.resize((size, size), RESAMPLE)
    array = np.asarray(resized, dtype=np.float32)
    return array / 127.5 - 1.0


def preprocess(source: ImageSource, size: int = INPUT_SIZE) -> np.ndarray:
    """Decode and prepare one image for the model: the single shared entry point."""
    return to_input(load_image(source), size)
