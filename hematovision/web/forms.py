"""What the batch page's forms share: a form as typed, with a message for each refused field,
to show it again with both (a whole number typed in one is read by
`hematovision.spreadsheet.whole_number`, as the command line reads one in a CSV)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TypedForm:
    """A form as typed and the message for each refused field, by its name (a message for the
    whole form under "")."""
    typed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def plain_text(text: str, max_length: int) -> str:
    """Text as typed, made canonical (Unicode NFC, outer spaces dropped); ValueError when it is
    longer than `max_length` or holds anything but letters, marks, digits, punctuation, symbols
    and plain spaces (no control or invisible characters: it is printed on reports and written
    in CSV files)."""
    canonical = unicodedata.normalize("NFC", text).strip()
    if len(canonical) > max_length or any(
            unicodedata.category(c)[0] not in "LMNPS" and c != " " for c in canonical):
        raise ValueError(text)
    return canonical
