"""What a benchmark figure was measured on, recorded with it: a timing means little without the
code, the model and how busy the machine was."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from hematovision.card import CARD_FILE
from hematovision.release import commit


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
