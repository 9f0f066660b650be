"""The time of a job that may be stopped and started again (a training run with `--resume`, a
crossfit that resumes at its first unfinished fold).

Each session adds its time, from its start to its last saved step, to a small JSON file beside
the job's other state, so the total counts the sessions before. Work after the last save is
redone by the next session and counted once. A job resumed from before its time was kept has no
total (None): a figure for its last session alone would pass for the whole."""

from __future__ import annotations

import json
import time
from pathlib import Path

ELAPSED_FILE = "elapsed.json"  # beside the job's other saved state


class Stopwatch:
    def __init__(self, path: Path, started: float, earlier_known: bool = True):
        """`started`: when this session began (`time.time()`). `earlier_known`: False where the
        job has saved steps from a session that kept no time, so the total is unknown."""
        self.path, self.started = Path(path), started
        if self.path.is_file():
            self.before = json.loads(self.path.read_text())["seconds"]
        else:
            self.before = 0.0 if earlier_known else None

    def seconds(self) -> float | None:
        """The job's time so far, every session included; None where an earlier one is unknown."""
        if self.before is None:
            return None
        return round(self.before + time.time() - self.started, 1)

    def save(self) -> None:
        """Keep the time up to now: call it as each step's state is saved."""
        if self.before is not None:
            self.path.write_text(json.dumps({"seconds": self.seconds()}) + "\n")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
