"""Which code this is: the release number and, in a git checkout, the commit, so that a record
made by the app (a batch's `made_by`, a benchmark's provenance) names the code that made it. The
release number alone has stayed 0.1.0 through every change of preprocessing and trust rules."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from hematovision import __version__

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def commit() -> str | None:
    """The checked-out commit, with "+dirty" when tracked files differ from it; None outside a
    git checkout (an unpacked archive) or without git. Read once per process."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def app_version() -> str:
    """'0.1.0+be3ff57' in a git checkout ('0.1.0+be3ff57+dirty' with local changes), else
    '0.1.0'."""
    built = commit()
    return f"{__version__}+{built}" if built else __version__
