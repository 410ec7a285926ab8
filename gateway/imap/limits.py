"""Resource limits of the IMAP command parser.

Every client byte is attacker-controlled: these bounds keep the memory and CPU spent on one
connection proportional to what a legitimate client needs, whatever the client sends.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds enforced by `gateway.imap.parser.CommandParser`.

    max_line_length: text of one command (all its lines, literal data and CRLF excluded);
        exceeding it is fatal, since the parser cannot find where the command ends.
    max_literal_size: APPEND's message literal.
    max_command_literal_size: any other literal (mailbox names, search strings, ...).
    max_depth: nesting of parentheses.
    max_pipelined: complete events parsed ahead and not yet taken by `next_event`; beyond,
        input stays unparsed (and counts against the pending-bytes bound).
    max_sequence_ranges: comma-separated elements of one sequence set.
    max_search_keys: nodes of one SEARCH key tree (each key, NOT, OR, parenthesised list).
    max_search_depth: nesting of SEARCH operators (NOT, OR, parentheses), so that recursive
        evaluation of the tree stays far below Python's recursion limit.
    """

    max_line_length: int = 64 * KIB
    max_literal_size: int = 50 * MIB
    max_command_literal_size: int = 64 * KIB
    max_depth: int = 16
    max_pipelined: int = 32
    max_sequence_ranges: int = 1000
    max_search_keys: int = 1000
    max_search_depth: int = 100

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{item.name} must be a positive integer, not {value!r}")

    @property
    def max_pending(self) -> int:
        """Bytes the parser may hold unparsed before it gives up on the connection."""
        return self.max_line_length + self.max_literal_size
