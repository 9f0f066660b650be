"""hematovision.spreadsheet: cells a spreadsheet would run as formulas are written quoted, and
read back as they were given."""

import pytest

from hematovision.spreadsheet import as_written, inert


@pytest.mark.parametrize("given, written", [
    ("=HYPERLINK(1)", "'=HYPERLINK(1)"), ("-7", "'-7"), ("+1", "'+1"), ("@SUM", "'@SUM"),
    ("\tx", "'\tx"), ("H-2026-1", "H-2026-1"), ("'quoted", "'quoted"), ("", "")])
def test_formula_cells_are_quoted_and_read_back_as_given(given, written):
    assert inert(given) == written
    assert as_written(written) == given
