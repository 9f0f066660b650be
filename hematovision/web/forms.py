"""What the batch page's forms share: a form as typed, with a message for each refused field,
to show it again with both; and how a whole number typed in a field or an address is read."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TypedForm:
    """A form as typed and the message for each refused field, by its name (a message for the
    whole form under "")."""
    typed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def whole_number(text: str) -> int | None:
    """A non-negative whole number written in ASCII digits (at most 9 of them), else None:
    `str.isdigit` also passes "²", which `int` refuses, and `int` refuses 4,301 digits."""
    return int(text) if re.fullmatch(r"[0-9]{1,9}", text) else None
