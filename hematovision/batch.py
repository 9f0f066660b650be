"""Classify many image files: decode in a thread pool, run the model in batches.

Shared by the predict command line and the evaluation script, so reported figures come from
exactly the path users run.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from hematovision.predictor import BATCH_SIZE, Prediction, Predictor
from hematovision.preprocess import IMAGE_SUFFIXES, ImageError, load_image, to_input


@dataclass(frozen=True)
class FileResult:
    path: Path
    prediction: Prediction | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        if self.prediction is None:
            return {"file": str(self.path), "error": self.error}
        return {"file": str(self.path), **self.prediction.to_dict()}


def expand_paths(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given; folders searched recursively for image files, in sorted order."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            out.append(path)
    return out


def _decode(path: Path, size: int, crop: str):
    try:
        return to_input(load_image(path), size, crop), None
    except ImageError as exc:
        return None, str(exc)
    except OSError as exc:  # missing or unreadable file
        return None, f"Cannot read the file ({exc.strerror or exc})."


def classify_files(
    predictor: Predictor, paths: list[Path], progress: bool = False
) -> Iterator[FileResult]:
    """Yield one result per path, in order; unreadable files give an error result."""
    start = time.time()
    chunks = [paths[i : i + BATCH_SIZE] for i in range(0, len(paths), BATCH_SIZE)]

    def decode(path: Path):
        return _decode(path, predictor.input_size, predictor.crop)

    with ThreadPoolExecutor(max_workers=2) as pool:
        decoded_next = pool.map(decode, chunks[0]) if chunks else None
        done = 0
        for k, chunk in enumerate(chunks):
            decoded = list(decoded_next)
            if k + 1 < len(chunks):
                decoded_next = pool.map(decode, chunks[k + 1])
            predictions = predictor.predict_each([array for array, _ in decoded])
            for path, (_, error), prediction in zip(chunk, decoded, predictions):
                yield FileResult(path, prediction, None if prediction else error)
            done += len(chunk)
            if progress:
                rate = done / max(time.time() - start, 1e-9)
                print(f"\r{done}/{len(paths)} images ({rate:.0f}/s)", end="", file=sys.stderr,
                      flush=True)
    if progress and paths:
        print(file=sys.stderr)
