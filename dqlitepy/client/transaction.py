"""The transaction a connection's server session has open, as far as the driver knows.

``sqlite3`` asks SQLite (``sqlite3_get_autocommit()``) whether a transaction is
open; the dqlite wire carries no such flag, so the driver follows the
statements the server confirmed instead.  :class:`Transaction` is the one place
that knows: its :class:`TxnState`, the stack of savepoint names, and the
transaction control the connection asked for (``autocommit`` and
``isolation_level``, with ``sqlite3``'s rules for implicit ``BEGIN``).

The state changes only through :meth:`Transaction._move`, by the table
:data:`_TRANSITIONS`.  The table is complete, on purpose: the server is the
authority, and a statement it confirmed must always be followed, even one that
this tracking did not expect (a ``RELEASE`` of a savepoint whose name was
quoted differently when it was made, say).  Which states are open, and which
statements may commit or open a transaction, is decided here too, so that the
failover rules (:mod:`dqlitepy.client.failover`) and the cursor ask rather than
guess.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Final

__all__ = [
    "LEGACY_TRANSACTION_CONTROL",
    "Transaction",
    "TxnEvent",
    "TxnState",
    "check_autocommit",
    "check_isolation_level",
]

#: ``autocommit`` value meaning "follow ``isolation_level`` as sqlite3 did before 3.12".
LEGACY_TRANSACTION_CONTROL: Final = -1

_ISOLATION_LEVELS = ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE")
_ROLLBACK_TO = re.compile(r"ROLLBACK\s+(?:TRANSACTION\s+)?TO\b", re.IGNORECASE)
_SAVEPOINT_NAME = re.compile(
    r"(?:SAVEPOINT|RELEASE(?:\s+SAVEPOINT)?)\s+(\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|'(?:[^']|'')*'|\S+)",
    re.IGNORECASE,
)


class TxnState(Enum):
    """Whether, and how, the server session is inside a transaction."""

    #: No transaction: every statement commits by itself.
    IDLE = "idle"
    #: Opened by ``BEGIN`` (the driver's implicit one too); ``COMMIT`` ends it.
    BEGUN = "begun"
    #: Opened by a ``SAVEPOINT`` outside a transaction: releasing the outermost
    #: savepoint commits it (sqlite.org/lang_savepoint.html).
    SAVEPOINT = "savepoint"


class TxnEvent(Enum):
    """What a statement the server confirmed (or a lost session) does to the transaction."""

    BEGIN = "begin"
    COMMIT = "commit"  # COMMIT or END
    ROLLBACK = "rollback"  # the whole transaction (not ROLLBACK TO)
    SAVEPOINT = "savepoint"
    #: A RELEASE that leaves savepoints open.
    RELEASE = "release"
    #: A RELEASE that leaves no savepoint open.
    RELEASE_LAST = "release last"
    #: The server session is gone, or SQLite rolled the transaction back by itself.
    LOST = "lost"


_I, _B, _S = TxnState.IDLE, TxnState.BEGUN, TxnState.SAVEPOINT

#: (state, event) -> next state.  Every pair is present (see the module docstring).
_TRANSITIONS: Final[dict[tuple[TxnState, TxnEvent], TxnState]] = {
    (_I, TxnEvent.BEGIN): _B,
    (_B, TxnEvent.BEGIN): _B,
    (_S, TxnEvent.BEGIN): _S,
    (_I, TxnEvent.SAVEPOINT): _S,
    (_B, TxnEvent.SAVEPOINT): _B,
    (_S, TxnEvent.SAVEPOINT): _S,
    (_I, TxnEvent.RELEASE): _I,
    (_B, TxnEvent.RELEASE): _B,
    (_S, TxnEvent.RELEASE): _S,
    (_I, TxnEvent.RELEASE_LAST): _I,
    (_B, TxnEvent.RELEASE_LAST): _B,
    (_S, TxnEvent.RELEASE_LAST): _I,
    **{(state, TxnEvent.COMMIT): _I for state in TxnState},
    **{(state, TxnEvent.ROLLBACK): _I for state in TxnState},
    **{(state, TxnEvent.LOST): _I for state in TxnState},
}


def check_isolation_level(level: str | None) -> str | None:
    """Validate an ``isolation_level`` as ``sqlite3`` does; return its canonical spelling.

    Raises:
        TypeError: ``level`` is neither a string nor None.
        ValueError: not one of ``""``, ``DEFERRED``, ``IMMEDIATE``, ``EXCLUSIVE``.
    """
    if level is None:
        return None
    if not isinstance(level, str):
        raise TypeError("isolation_level must be str or None")
    if "\x00" in level:
        raise ValueError("embedded null character")
    # Compared as sqlite3 does (sqlite3_stricmp): ASCII letters only, and with
    # str's own methods, whatever a subclass overrides.
    canonical = str.upper(level) if str.isascii(level) else None
    if canonical not in _ISOLATION_LEVELS:
        raise ValueError(
            "isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or 'EXCLUSIVE'"
        )
    return canonical  # sqlite3 reports the canonical spelling


def check_autocommit(value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is True, False or LEGACY_TRANSACTION_CONTROL."""
    if value not in (True, False, LEGACY_TRANSACTION_CONTROL):
        raise ValueError("autocommit must be True, False, or sqlite3.LEGACY_TRANSACTION_CONTROL")


def _savepoint_name(sql: str) -> str:
    match = _SAVEPOINT_NAME.search(sql)
    return match.group(1).casefold() if match else ""


class Transaction:
    """The transaction state of one server session, and the transaction control asked for.

    Args:
        autocommit: True, False or :data:`LEGACY_TRANSACTION_CONTROL` (Python 3.12's).
        isolation_level: the canonical level (see :func:`check_isolation_level`).
    """

    __slots__ = ("_savepoints", "_state", "autocommit", "isolation_level")

    def __init__(self, autocommit: bool | int, isolation_level: str | None) -> None:
        self._state = TxnState.IDLE
        # The names of the open savepoints, outermost first (casefolded).
        self._savepoints: list[str] = []
        self.autocommit = autocommit
        self.isolation_level = isolation_level

    @property
    def state(self) -> TxnState:
        """The current state."""
        return self._state

    @property
    def active(self) -> bool:
        """True while a transaction is open."""
        return self._state is not TxnState.IDLE

    @property
    def legacy(self) -> bool:
        """True under ``sqlite3``'s pre-3.12 control (``isolation_level`` decides)."""
        return self.autocommit == LEGACY_TRANSACTION_CONTROL

    def _move(self, event: TxnEvent) -> None:
        self._state = _TRANSITIONS[self._state, event]
        if self._state is TxnState.IDLE:
            self._savepoints.clear()

    def begun(self) -> None:
        """The driver's own ``BEGIN`` succeeded."""
        self._move(TxnEvent.BEGIN)

    def lose(self) -> bool:
        """Forget the open transaction (the server rolled it back); True if there was one."""
        had = self.active
        self._move(TxnEvent.LOST)
        return had

    def note(self, keyword: str | None, sql: str) -> None:
        """Follow a statement the server ran successfully.

        Args:
            keyword: its first keyword, upper case (``ParsedSQL.keyword``).
            sql: its text.
        """
        if keyword == "BEGIN":
            self._move(TxnEvent.BEGIN)
        elif keyword in ("COMMIT", "END"):
            self._move(TxnEvent.COMMIT)
        elif keyword == "ROLLBACK":
            if not _ROLLBACK_TO.match(sql.lstrip()):
                self._move(TxnEvent.ROLLBACK)
        elif keyword == "SAVEPOINT":
            self._move(TxnEvent.SAVEPOINT)
            self._savepoints.append(_savepoint_name(sql))
        elif keyword == "RELEASE":
            name = _savepoint_name(sql)
            if name in self._savepoints:
                del self._savepoints[self._savepoints.index(name) :]
            self._move(TxnEvent.RELEASE if self._savepoints else TxnEvent.RELEASE_LAST)

    def opens(self, keyword: str | None) -> bool:
        """True if a statement starting with ``keyword`` would open a transaction.

        Such a statement's lost reply is harmless: what it opened died with its session.
        """
        return keyword in ("BEGIN", "SAVEPOINT") and not self.active

    def may_commit(self, keyword: str | None) -> bool:
        """True if a statement starting with ``keyword`` may commit the open transaction.

        ``COMMIT``, ``END``, or a ``RELEASE`` in a transaction a savepoint opened:
        losing such a statement's reply leaves the commit's outcome unknown.
        """
        return keyword in ("COMMIT", "END") or (
            keyword == "RELEASE" and self._state is TxnState.SAVEPOINT
        )

    def needs_implicit_begin(self, is_dml: bool) -> bool:
        """True if ``sqlite3`` would send ``BEGIN`` before this statement.

        Under the legacy control with an ``isolation_level``, outside a
        transaction, before INSERT/UPDATE/DELETE/REPLACE.  With
        ``autocommit=False``, sqlite3 (3.12) opens transactions only in
        ``connect()``, ``commit()`` and ``rollback()``, never before a statement.
        """
        return not self.active and self.legacy and self.isolation_level is not None and is_dml
