"""The model card (`model_card.json`): how it is read and written, and what it records.

A model folder under saved_model/ describes itself through its card: classes, input contract,
training, trust layer and every recorded evaluation. The app, the command lines and the
training scripts all go through these functions, so a card means one thing everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CARD_FILE = "model_card.json"
# Recorded under the card's "metrics" beside the test evaluations, but not one: flag rates on
# sets of unfamiliar images (training.unfamiliar), the test images' figures under changes of
# magnification, focus or stain (training.robustness), and on films drawn from the test images,
# the differential's error (training.differential), its reference-interval flags
# (training.flags) and where the wrongly accepted cells lie in the review order
# (training.review_order).
UNFAMILIAR = "unfamiliar"
ROBUSTNESS = "robustness"
DIFFERENTIAL = "differential"
FLAGS = "flags"
REVIEW_ORDER = "review_order"
NOT_EVALUATIONS = (UNFAMILIAR, ROBUSTNESS, DIFFERENTIAL, FLAGS, REVIEW_ORDER)


class ModelLoadError(RuntimeError):
    """The model folder is missing or unusable; the message says where and how to fix it."""


def read_card(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text())
        if not isinstance(card, dict):
            raise ValueError(f"not a JSON object but {type(card).__name__}")
        return card
    except FileNotFoundError:
        raise ModelLoadError(
            f"No model card at {path}. Export a trained model there with "
            "`python -m training.train --data DIR --export NAME` (README, 'Training on your own "
            "data') or restore the folder (the bundled models: saved_model/ from git)."
        ) from None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON, or not an object
        raise ModelLoadError(f"The model card {path} is unreadable ({exc}).") from None


def write_card(model_dir: Path, card: dict) -> None:
    replace_file(Path(model_dir) / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())


def replace_file(path: Path, content: bytes) -> None:
    """Write `content` as `path` whole: into a file beside it, then renamed over it, so that a
    process loading the model folder meanwhile (a worker starting, a reload's check) reads the
    old file or the new one, never a part of one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        temporary.write_bytes(content)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def view_count(recorded) -> int:
    """A recorded test-time setting as a number of views: a count, or on/off as recorded
    before eight views existed (on was the four flips). bool first: True == 1 in Python."""
    if isinstance(recorded, bool):
        return 4 if recorded else 1
    return int(recorded) if isinstance(recorded, int) and recorded > 0 else 1


def served_views(card: dict) -> int:
    """How many orientations of each image the exported model averages (1: no test-time
    augmentation)."""
    tta = card.get("test_time_augmentation")
    views = tta.get("views") if isinstance(tta, dict) else None
    return len(views) if isinstance(views, list) and views else 1


def record_metrics(model_dir: Path, name: str, figures: dict) -> None:
    """Store `figures` in the model card as metrics.<name>, replacing what was there."""
    card = read_card(model_dir)
    card.setdefault("metrics", {})[name] = figures
    write_card(model_dir, card)


def recorded_evaluations(card: dict) -> dict[str, dict]:
    """The card's recorded test evaluations by name (`training.evaluate --record NAME`), in
    the order recorded; the unfamiliar-image flag rates, robustness and differential figures
    are not."""
    metrics = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    return {k: v for k, v in metrics.items() if isinstance(v, dict) and k not in NOT_EVALUATIONS}
