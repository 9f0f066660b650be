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


# Characters of the letter and symbol classes that show nothing (Hangul fillers, the braille
# blank): a name or ID of them alone would print as blank.
BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def plain_text(text: str, max_length: int) -> str:
    """Text as typed, made canonical (Unicode NFC, outer spaces dropped); ValueError when it is
    longer than `max_length`, holds anything but letters, marks, digits, punctuation, symbols
    and plain spaces (no control or invisible characters: it is printed on reports and written
    in CSV files), or, not empty, has no letter or digit to show."""
    canonical = unicodedata.normalize("NFC", text).strip()
    if len(canonical) > max_length or any(
            (unicodedata.category(c)[0] not in "LMNPS" and c != " ") or c in BLANKS
            for c in canonical):
        raise ValueError(text)
    if canonical and not any(unicodedata.category(c)[0] in "LN" for c in canonical):
        raise ValueError(text)
    return canonical
