"""What the command lines write for a person: a value quoted in a message, and standard output
that ends cleanly when it cannot be written.
"""

from __future__ import annotations

import errno
import os
import sys

# Errors of a write that the disk or the reader refused; an error reading an image meanwhile
# (missing, forbidden) is not one of them.
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def quoted(value: object, limit: int = 60) -> str:
    """A value as a message quotes it: its repr, cut short, as it may be a whole line of a file
    or a setting nested a thousand deep."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Stdout:
    """`with Stdout("the report") as out:` around a command's printing. A reader that stops
    early (`... | head`) ends it quietly, as Unix tools do; a full disk ends it with one line on
    stderr, not a traceback; either way `out.lost` is then true and the command should exit
    1."""

    def __init__(self, what: str = "the output") -> None:
        self.what = what  # as the message names it: "the report"
        self.lost = False

    def __enter__(self) -> "Stdout":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is None:
            try:
                sys.stdout.flush()
                return False
            except OSError as flushing:
                error = flushing
        if not isinstance(error, BrokenPipeError) and not (
                isinstance(error, OSError) and error.errno in _WRITE_ERRORS):
            if kind is None:  # the final flush failed otherwise (EIO): say so, as raised
                raise error
            return False
        # Python flushes stdout again at exit, and would fail there with a second error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if not isinstance(error, BrokenPipeError):
            print(f"error: cannot write {self.what} ({error.strerror or error})", file=sys.stderr)
        self.lost = True
        return True


def require_stdout(parser) -> None:
    """Stop with a usage error when the command was started with no standard output at all
    (`>&-`): Python then has no sys.stdout and would print the results nowhere, without a
    word."""
    if sys.stdout is None:
        parser.error("standard output is closed: nothing to write the results to")
