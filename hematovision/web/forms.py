"""What the batch page's forms share: a form as typed, with a message for each refused field,
to show it again with both (a whole number typed in one is read by
`hematovision.spreadsheet.whole_number`, as the command line reads one in a CSV)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TypedForm:
    """A form as typed and the message for each refused field, by its name (a message for the
    whole form under "")."""
    typed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
