"""What a benchmark figure was measured on, recorded with it: a timing means little without the
code, the model and how busy the machine was."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from hematovision.card import CARD_FILE

ROOT = Path(__file__).resolve().parent.parent


def commit() -> str | None:
    """The checked-out commit, with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout (e.g. an unpacked archive)
    return head + ("+dirty" if dirty.strip() else "")


def provenance(model_dir: Path) -> dict:
    card_path = Path(model_dir) / CARD_FILE
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return {
        "commit": commit(),
        "model_exported": card.get("exported"),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        # Another job on the machine slows every path; a high figure here discounts the run.
        "load_average_1min_before": round(os.getloadavg()[0], 2),
    }
