"""The white cells of a stained smear field: where each one is, so that a field holding several
is classified cell by cell.

A model that crops to the nucleus (`wbc4`) reads one white cell per image. Given a field with
two, it would centre its crop between them (the median of all nucleus-coloured pixels) and name
neither. Here the nucleus-coloured pixels of `preprocess.nucleus_mask` are grouped into cells:
marked on a coarse grid, joined into connected pieces, and pieces closer than a share of the
short side taken as lobes of one nucleus (a neutrophil's three to five lobes are apart in the
mask); a group with too few such pixels is a platelet or stain debris, not a white cell.

The constants were chosen on BCCD's smears with hand-drawn white-cell boxes
(`python -m training.fields_check` measures the finder against them): two boxed white cells of
one field lie at least 0.29 of the short side apart there, and joining pieces within 0.25 left
no cell found outside a box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from hematovision.preprocess import crop_fraction, nucleus_mask, to_input

GRID = 4  # working-scale pixels per side of a coarse cell
GRID_SHARE = 0.25  # a coarse cell counts when this share of its pixels is nucleus-coloured
LOBE_DISTANCE = 0.25  # pieces whose centres are nearer (share of the short side): one nucleus
MIN_CELL_SHARE = 0.015  # a white cell's nucleus pixels, share of the short side squared
# More white cells than this in one field: not a field at the training images' magnification
# (a low-power view, or a photo that is no smear), so it is read whole, and its unfamiliarity
# says so; this also bounds the model inputs one upload can make.
MAX_CELLS = 16
# What a result of a model that crops to the nucleus says where no white cell was found in its
# image: its answer is about whatever lies where the crop fell (a field of red cells only, a
# white cell too pale or off-colour for the colour test), so it is set aside for review
# (trust.WHITE_CELL_RULE); this says why to the person reading the result.
NO_WHITE_CELL = ("No white cell was found in this image (no nucleus-coloured region the size "
                 "of a white cell's nucleus), so the answer is about whatever lies at the "
                 "centre of the crop, and it is left for you to review. Check the image: if "
                 "it shows no white cell, exclude it.")


@dataclass(frozen=True)
class WhiteCell:
    centre: tuple[float, float]  # median nucleus pixel, in the image's pixels (x, y)
    box: tuple[int, int, int, int]  # the nucleus's bounding box: left, top, right, bottom


def white_cells(image: Image.Image, scale: float = 1.0) -> list[WhiteCell]:
    """The white cells found in a smear field, left to right then top to bottom; empty when
    no nucleus-coloured region is large enough. For a field whose cells are `scale` times
    their size in the training images, the distances scale by it and the areas by its square."""
    mask, sx, sy = nucleus_mask(image)
    short = min(mask.shape) * scale
    pieces = _pieces(mask)
    if not pieces:
        return []
    groups = _join_lobes(pieces, LOBE_DISTANCE * short)
    cells = []
    for group in groups:
        ys = np.concatenate([pieces[i][0] for i in group])
        xs = np.concatenate([pieces[i][1] for i in group])
        if len(xs) < MIN_CELL_SHARE * short * short:
            continue
        centre = (float(np.median(xs) + 0.5) * sx, float(np.median(ys) + 0.5) * sy)
        box = (int(xs.min() * sx), int(ys.min() * sy),
               int(np.ceil((xs.max() + 1) * sx)), int(np.ceil((ys.max() + 1) * sy)))
        cells.append(WhiteCell(centre, box))
    return sorted(cells, key=lambda c: (c.centre[0], c.centre[1]))


def cell_inputs(image: Image.Image, size: int, crop: str, each_cell: bool = True,
                scale: float = 1.0) -> tuple[list[tuple[np.ndarray, dict | None]], int | None]:
    """The model inputs of one image with what each one is, and how many white cells were
    found in it (None for a model that reads images whole, which looks for none).

    For a model that crops to the nucleus and a field holding several white cells (at most
    MAX_CELLS), with `each_cell`, one input per cell with its place (`cell_place`); otherwise
    the image's one input, as `to_input` makes it, with None. A field with one white cell, or none found,
    keeps the crop of `to_input` (the median of all nucleus-coloured pixels), so what every
    model was trained and evaluated on is unchanged; where none was found, the answer is not
    accepted (`trust.WHITE_CELL_RULE`) and the reader is told why (`NO_WHITE_CELL`).
    `scale`: the image's cells are that many times their training size (`to_input`)."""
    fraction = crop_fraction(crop)
    if fraction is None:
        return [(to_input(image, size, crop), None)], None
    cells = white_cells(image, scale)
    if each_cell and 1 < len(cells) <= MAX_CELLS:
        return [(to_input(image, size, crop, cell.centre, scale),
                 cell_place(cell, number, len(cells), image.size, fraction * scale))
                for number, cell in enumerate(cells, start=1)], len(cells)
    return [(to_input(image, size, crop, scale=scale), None)], len(cells)


def cell_place(cell: WhiteCell, number: int, count: int, size: tuple[int, int],
               fraction: float) -> dict:
    """A cell's entry in a result: its number among the field's `count` white cells, its
    centre, its nucleus's box and the square the model read (side `fraction` of the short
    side), each as shares of the image's width and height, which hold for any resized copy
    (the stored viewing copy is at most 1024 px)."""
    width, height = size
    side = min(size) * fraction
    x, y = cell.centre
    square = (x - side / 2, y - side / 2, x + side / 2, y + side / 2)

    def shares(box) -> list[float]:
        return [round(box[0] / width, 4), round(box[1] / height, 4),
                round(box[2] / width, 4), round(box[3] / height, 4)]

    return {"number": number, "of": count,
            "centre": [round(x / width, 4), round(y / height, 4)],
            "nucleus": shares(cell.box), "square": shares(square)}


def centre_in(place: dict | None, size: tuple[int, int]) -> tuple[float, float] | None:
    """A stored cell place's centre in the pixels of an image of `size` (None: no place)."""
    if not place:
        return None
    return place["centre"][0] * size[0], place["centre"][1] * size[1]


def _pieces(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The nucleus pixels (rows, columns) of each connected piece of the coarse grid, its
    marked cells grown by one so that a lobe's ragged edge does not split it."""
    h, w = mask.shape[0] // GRID, mask.shape[1] // GRID
    if h == 0 or w == 0:
        return []
    coarse = mask[:h * GRID, :w * GRID].reshape(h, GRID, w, GRID).mean(axis=(1, 3)) > GRID_SHARE
    labels = _label(_grow(coarse))
    fine = np.zeros(mask.shape, dtype=labels.dtype)
    fine[:h * GRID, :w * GRID] = np.repeat(np.repeat(labels, GRID, axis=0), GRID, axis=1)
    fine[~mask] = 0
    # One sort instead of a pass over the image per label: noise can hold hundreds of pieces.
    flat = np.flatnonzero(fine)
    if flat.size == 0:
        return []
    order = flat[np.argsort(fine.ravel()[flat], kind="stable")]
    starts = np.flatnonzero(np.diff(fine.ravel()[order], prepend=0))
    return [np.unravel_index(run, mask.shape) for run in np.split(order, starts[1:])]


def _grow(grid: np.ndarray) -> np.ndarray:
    out = grid.copy()
    out[1:] |= grid[:-1]
    out[:-1] |= grid[1:]
    out[:, 1:] |= grid[:, :-1]
    out[:, :-1] |= grid[:, 1:]
    return out


def _label(grid: np.ndarray) -> np.ndarray:
    """4-connected component labels of a boolean grid (0: background): each marked cell takes
    the largest label among itself and its neighbours until nothing changes. The grid is at
    most 80 x 80, so this needs no labelling library."""
    labels = np.where(grid, np.arange(1, grid.size + 1).reshape(grid.shape), 0)
    while True:
        spread = labels.copy()
        np.maximum(spread[1:], labels[:-1], out=spread[1:])
        np.maximum(spread[:-1], labels[1:], out=spread[:-1])
        np.maximum(spread[:, 1:], labels[:, :-1], out=spread[:, 1:])
        np.maximum(spread[:, :-1], labels[:, 1:], out=spread[:, :-1])
        spread[~grid] = 0
        if np.array_equal(spread, labels):
            return labels
        labels = spread


def _join_lobes(pieces: list[tuple[np.ndarray, np.ndarray]], distance: float) -> list[list[int]]:
    """Pieces whose centres lie within `distance` of each other, joined transitively."""
    centres = np.array([(rows.mean(), cols.mean()) for rows, cols in pieces])
    parent = list(range(len(pieces)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    for i, j in zip(*np.nonzero(np.triu(gaps < distance, k=1)), strict=True):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())
