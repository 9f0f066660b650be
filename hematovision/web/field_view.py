"""What a stored result shows: a field holding several white cells drawn with the square the
model read for one of them, and the model's own view of one result.

The result page of such a cell shows the whole stored field (so the technologist sees which
cell the answer is about, and its neighbours), not the crop alone; the review page shows each
cell as the model read it, large and centred.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import ImageDraw, ImageFont

from hematovision.exposure import Stored, as_read
from hematovision.fields import centre_in
from hematovision.preprocess import crop_to_nucleus, load_image

THIS_CELL = (255, 196, 0)  # amber: stands out on pink red cells and violet nuclei
OTHER_CELLS = (255, 255, 255)


def outlined(image_path: Path, place: dict, others: list[dict]) -> bytes:
    """The stored field as a JPEG: `place`'s square drawn thick and numbered, the squares of
    the field's `others` thin. May raise `ImageError` or FileNotFoundError (a copy purged or
    damaged meanwhile)."""
    image = load_image(image_path)
    draw = ImageDraw.Draw(image)
    width = max(3, round(min(image.size) / 80))
    for other in others:
        _square(draw, other, image.size, OTHER_CELLS, max(2, width // 2))
    _square(draw, place, image.size, THIS_CELL, width)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def model_view(image_path: Path, crop_fraction: float | None, place: dict | None,
               exposure: Stored | None = None, side: int = 320) -> bytes:
    """The stored image as the model read it, as a JPEG at most `side` pixels a side: its
    exposure corrected where the result's `exposure` check says it was, then for a model that
    crops to the nucleus (`crop_fraction`), the square round the nucleus, or round the cell at
    `place` of a field holding several; otherwise the whole image. May raise `ImageError` or
    FileNotFoundError."""
    image = as_read(load_image(image_path), exposure)
    if crop_fraction is not None:
        image = crop_to_nucleus(image, crop_fraction, centre_in(place, image.size))
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _square(draw: ImageDraw.ImageDraw, place: dict, size: tuple[int, int], colour, width: int
            ) -> None:
    left, top, right, bottom = place["square"]
    box = (left * size[0], top * size[1], right * size[0], bottom * size[1])
    draw.rectangle(box, outline=colour, width=width)
    label = str(place["number"])
    text_size = max(10, round(min(size) / 16))
    x, y = max(box[0], 0) + width + 2, max(box[1], 0) + width
    # load_default(size) is Pillow's bundled scalable font where FreeType is built in, else a
    # fixed bitmap font: either way no font file is needed.
    draw.text((x, y), label, fill=colour, font=ImageFont.load_default(text_size),
              stroke_width=max(1, width // 2), stroke_fill=(0, 0, 0))
