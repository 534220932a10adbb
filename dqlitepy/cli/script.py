"""The shell's input cut into statements and dot commands: :class:`ScriptReader`.

Pure text handling, no I/O: the shell feeds it lines and runs what it returns.
Where a statement ends is SQLite's rule (``sqlite3_complete()``), which the
driver's SQL scanner (:mod:`dqlitepy.client.sqltext`) implements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dqlitepy.client.sqltext import has_more_statements, is_complete, split_statements

__all__ = ["Command", "DotCommand", "ScriptReader", "Statement"]


@dataclass(frozen=True, slots=True)
class Statement:
    """A SQL statement of the shell's input, ``;`` included."""

    text: str


@dataclass(frozen=True, slots=True)
class DotCommand:
    """A dot command of the shell's input (``.leader``, ``.remove ADDR`` ...)."""

    text: str


Command = Statement | DotCommand

#: A dot command's line: a "." then a letter (".5" begins a number).
_DOT_LINE = re.compile(r"[ \t]*\.[A-Za-z]")


class ScriptReader:
    """Cuts the shell's input, line by line, into statements and dot commands.

    * A statement ends at a ``;`` outside string literals (``'...'``), quoted
      identifiers (``"..."``, ```...```, ``[...]``) and comments (``-- ...``,
      ``/* ... */``), and may span lines; a ``CREATE TRIGGER`` ends at the ``;``
      after its ``END`` (the rules of ``sqlite3_complete()``).
    * A line whose first non-blank character is a ``.`` followed by a letter is
      a dot command, unless it continues a literal, a comment or a trigger body;
      SQL typed before it and not ended by a ``;`` runs first, as if it had one.
    * At the end of the input, SQL not ended by a ``;`` runs as it is.

    The Go shell runs each line on its own instead (a statement cannot span
    lines, and ``;`` inside a line is SQLite's business); on input written for
    it, one statement or dot command a line, both do the same.
    """

    def __init__(self) -> None:
        self._buffer = ""

    @property
    def pending(self) -> bool:
        """True while an unfinished statement (or literal or comment) is buffered."""
        return has_more_statements(self._buffer) or not self._closed()

    def is_dot_command(self, line: str) -> bool:
        """True if ``line`` would be taken as a dot command (and end a pending statement)."""
        return bool(_DOT_LINE.match(line)) and self._closed()

    def feed(self, line: str) -> list[Command]:
        """Take one line of input (without its line break); return what it completes."""
        if self.is_dot_command(line):
            return [*self.finish(), DotCommand(line.strip())]
        self._buffer += line + "\n"
        # Only a line holding a ";" can complete a statement: no rescans of a long one.
        if ";" not in line:
            return []
        statements = split_statements(self._buffer)
        if not statements:
            return []
        last = statements[-1]
        end = self._buffer.rfind(last)
        if is_complete(last):
            end += len(last)  # all done: keep only what follows (comments, blanks)
        else:
            statements.pop()  # the last one goes on past this line
        self._buffer = self._buffer[end:]
        return [Statement(s) for s in statements]

    def finish(self) -> list[Command]:
        """Everything still buffered, as statements (at the end of the input)."""
        statements: list[Command] = [Statement(s) for s in split_statements(self._buffer)]
        self._buffer = ""
        return statements

    def _closed(self) -> bool:
        # No literal, comment or trigger body left open: a ";" here would end it all.
        return is_complete(self._buffer + ";")
