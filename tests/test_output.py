"""hematovision.output: what a command line writes ends cleanly when the disk or the reader
refuses it, and fails loudly for anything else."""

from __future__ import annotations

import errno
import sys

import pytest

from hematovision.output import Stdout, quoted


class Refusing:
    """A standard output whose flush fails with `code`, over a real file (for dup2)."""

    def __init__(self, path, code: int) -> None:
        self.file, self.code = open(path, "wb"), code

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        raise OSError(self.code, "refused")

    def fileno(self) -> int:
        return self.file.fileno()


def test_a_full_disk_ends_the_output_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", Refusing(tmp_path / "out", errno.ENOSPC))
    with Stdout("the report") as out:
        print("a line")
    assert out.lost
    assert capsys.readouterr().err == "error: cannot write the report (refused)\n"


def test_another_failure_of_the_last_flush_is_raised_not_lost(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdout", Refusing(tmp_path / "out", errno.EIO))
    with pytest.raises(OSError) as raised:
        with Stdout("the report") as out:
            print("a line")
    assert raised.value.errno == errno.EIO and not out.lost


def test_a_quoted_value_is_cut_short():
    assert quoted("x" * 100, limit=10) == "'xxxxxx..."  # ten characters in all
    assert quoted("short") == "'short'"
