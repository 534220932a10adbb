"""Pure functions over SQL text: statement boundaries, parameters, statement kind.

The driver sends SQL to the server untouched, yet it must know a few things about
it before the round trip, just as CPython's ``sqlite3`` learns them from
``sqlite3_prepare``:

- how many parameters the first statement takes and what their names are, to
  build the positional list that the wire protocol binds (``paramstyle`` is
  qmark, but ``:name``, ``@name``, ``$name`` and ``?NNN`` are accepted too);
- where the first statement ends, to refuse several statements in ``execute()``
  and to split scripts for ``executescript()``;
- whether the statement is an INSERT/UPDATE/DELETE/REPLACE, which drives the
  implicit transactions of ``sqlite3``, and whether it may return rows.

Theory of operation: one compiled regular expression recognises SQLite's tokens
(tokenize.c) closely enough for these questions: comments, string and blob
literals, the four kinds of quoted identifier, words, parameters and ``;``.  Like
SQLite, an unterminated literal or comment runs to the end of the text.  The scan
loops over tokens, not characters, and :func:`parse` results are cached the way
``sqlite3`` caches prepared statements.

Statement boundaries follow SQLite's parser: a ``;`` ends a statement, except in
``CREATE [TEMP] TRIGGER``, whose body holds ``;``-terminated statements and ends
with ``END``.  As in ``sqlite3_complete()``, the trigger ends at a ``;`` that
follows an ``END`` that directly follows a ``;``; an ``END`` closing a ``CASE``
never directly follows a ``;``, so ``CASE`` needs no tracking.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import NamedTuple

from ..wire.record import record
from .errors import OperationalError, ProgrammingError, make_error

__all__ = [
    "ParsedSQL",
    "bind_values",
    "iter_values",
    "has_more_statements",
    "is_complete",
    "parse",
    "split_statements",
]

# SQLite's own character classes (tokenize.c): whitespace includes \v, and every
# non-ASCII character may appear in an identifier, as may "$" after the first.
_SPACE = r"\t\n\v\f\r\x20"
_ID_START = r"A-Za-z_\x80-\U0010ffff"
_ID_CHAR = r"A-Za-z0-9_$\x80-\U0010ffff"

# Compiled on first use, not at import: SQLite's non-ASCII identifier ranges make
# this the costliest pattern to compile in the driver (tens of ms), and a program
# that imports dqlitepy without running SQL should not pay for it.
_TOKEN_PATTERN = "|".join(
    [
        # "/*" only opens a comment if a character follows it (tokenize.c);
        # the body stops at the first "*/" or at the end of the text.
        r"(?P<comment>--[^\n]*|/\*(?=.)(?:[^*]|\*(?!/))*(?:\*/|\Z))",
        r"(?P<literal>"
        + "|".join(
            [
                r"[xX]'[^']*'?",  # blob: ends at the next quote, no escapes
                r"'[^']*(?:''[^']*)*'?",
                r'"[^"]*(?:""[^"]*)*"?',
                r"`[^`]*(?:``[^`]*)*`?",
                r"\[[^\]]*\]?",  # no escape: the first "]" ends it
            ]
        )
        + ")",
        rf"(?P<word>[{_ID_START}][{_ID_CHAR}]*)",
        # "?NNN", or a prefix and at least one identifier character, with
        # the Tcl-style "::" separators and "(...)" suffix SQLite accepts.
        rf"(?P<param>\?[0-9]*|[:@$#](?:::)*[{_ID_CHAR}](?:[{_ID_CHAR}]|::)*"
        rf"(?:\([^{_SPACE})]*\))?)",
        r"(?P<semi>;)",
        # Anything else (numbers, operators, a lone ":" or "-"), which
        # matters only as "the statement is not empty".
        rf"(?P<other>[^{_SPACE}'\"`\[;?:@$#/\-{_ID_START}]+|[^{_SPACE}])",
    ]
)


@lru_cache(maxsize=1)
def _token_re() -> re.Pattern[str]:
    return re.compile(_TOKEN_PATTERN, re.DOTALL)


# SQLite's default SQLITE_MAX_VARIABLE_NUMBER since 3.32.0, the limit of both
# the Debian-built dqlite and our own engine.  Checking it here also keeps a
# stray "?999999999" from allocating a huge parameter table.
_MAX_VARIABLE_NUMBER = 250_000

_DML_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
_ROW_KEYWORDS = frozenset({"SELECT", "VALUES", "PRAGMA", "EXPLAIN", "WITH"})

# States of the scan over a statement's leading words, which spot
# "[EXPLAIN [QUERY PLAN]] CREATE [TEMP|TEMPORARY] TRIGGER".
_LEAD_START = 0
_LEAD_EXPLAIN = 1
_LEAD_CREATE = 2
_LEAD_CREATE_TEMP = 3
_LEAD_DONE = 4

# States inside a trigger: how much of the closing "; END ;" has been seen.
_TRIGGER_BODY = 0
_TRIGGER_SEMI = 1
_TRIGGER_SEMI_END = 2


@record
class ParsedSQL:
    """What the driver needs to know about an SQL text before sending it.

    Attributes:
        first: the text up to and including the ``;`` that ends the first
            statement, or the whole text if no ``;`` ends it.  Leading
            whitespace, comments and empty statements (lone ``;``) are part of
            it, so ``len(first)`` is the offset of ``tail``, as in
            ``sqlite3_prepare``'s ``pzTail``.
        tail: the text after the first statement.
        param_count: the number of parameters of the first statement, i.e. the
            highest parameter index (``sqlite3_bind_parameter_count``).
        param_names: the name of parameter ``i`` at index ``i - 1``, prefix
            included (``":x"``, ``"@y"``, ``"$z"``, ``"?3"``), or ``None`` for
            an anonymous ``?`` or an index no placeholder uses.
        keyword: the first statement's first keyword in upper case, or ``""``
            if it does not start with a word.
        is_dml: the statement is an INSERT, UPDATE, DELETE or REPLACE (by its
            first keyword, as ``sqlite3`` decides it).
        returns_rows_hint: the statement probably returns rows: it starts with
            SELECT, VALUES, PRAGMA, EXPLAIN or WITH, or is DML with RETURNING.
        is_empty: the text holds only whitespace, comments and semicolons.
    """

    first: str
    tail: str
    param_count: int
    param_names: tuple[str | None, ...]
    keyword: str
    is_dml: bool
    returns_rows_hint: bool
    is_empty: bool


class _Statement(NamedTuple):
    start: int  # offset of the first token, or -1 if there is none
    text_end: int  # end of the terminating ";", else of the last token
    end: int  # where the next statement's text begins
    terminated: bool  # a ";" ended it, rather than the end of the text
    keyword: str
    has_returning: bool
    params: list[str]


class _Words:
    """What the words of one statement have shown so far (the state of :func:`_scan`).

    Its first keyword; whether it begins ``[EXPLAIN [QUERY PLAN]] CREATE
    [TEMP|TEMPORARY] TRIGGER`` (then ``;`` ends it only after ``; END``); and
    whether ``RETURNING`` appears.
    """

    __slots__ = ("has_returning", "in_trigger", "keyword", "lead", "trigger_state")

    def __init__(self) -> None:
        self.keyword = ""
        self.lead = _LEAD_START
        self.in_trigger = False
        self.trigger_state = _TRIGGER_BODY
        self.has_returning = False

    def word(self, token: str, first: bool) -> None:
        """Take a word token (``first``: the statement's first token)."""
        if self.lead != _LEAD_DONE:
            upper = token.upper()
            if first:
                self.keyword = upper
            if upper == "TRIGGER" and self.lead in (_LEAD_CREATE, _LEAD_CREATE_TEMP):
                self.in_trigger = True
            self.lead = _next_lead(self.lead, upper)
        elif self.in_trigger:
            is_end = len(token) == 3 and token.upper() == "END"
            if is_end and self.trigger_state == _TRIGGER_SEMI:
                self.trigger_state = _TRIGGER_SEMI_END
            else:
                self.trigger_state = _TRIGGER_BODY
        elif len(token) == 9 and token.upper() == "RETURNING":
            self.has_returning = True

    def other(self) -> None:
        """Take a token that is neither a word, a comment nor a ``;``."""
        self.lead = _LEAD_DONE
        self.trigger_state = _TRIGGER_BODY

    def semicolon_ends(self) -> bool:
        """Take a ``;``: True if it ends the statement (not inside a trigger's body)."""
        if self.in_trigger and self.trigger_state != _TRIGGER_SEMI_END:
            self.trigger_state = _TRIGGER_SEMI
            return False
        return True


def _scan(sql: str, pos: int, want_params: bool) -> _Statement:
    """Scan one statement of ``sql`` from ``pos``, skipping leading empty statements."""
    start = -1
    last_end = pos
    words = _Words()
    params: list[str] = []
    for match in _token_re().finditer(sql, pos):
        kind = match.lastgroup
        if kind == "comment":
            continue
        if kind == "semi":
            # SQLite's parser skips an empty statement and goes on.
            if start >= 0 and words.semicolon_ends():
                end = match.end()
                return _Statement(start, end, end, True, words.keyword, words.has_returning, params)
            continue
        if start < 0:
            start = match.start()
        last_end = match.end()
        if kind == "word":
            words.word(match.group(), start == match.start())
            continue
        words.other()
        if kind == "param" and want_params:
            params.append(match.group())
    return _Statement(start, last_end, len(sql), False, words.keyword, words.has_returning, params)


def _next_lead(lead: int, word: str) -> int:
    """Advance the leading-words state by one upper-case word."""
    if lead == _LEAD_START:
        if word == "EXPLAIN":
            return _LEAD_EXPLAIN
        return _LEAD_CREATE if word == "CREATE" else _LEAD_DONE
    if lead == _LEAD_EXPLAIN:
        if word in ("QUERY", "PLAN"):
            return _LEAD_EXPLAIN
        return _LEAD_CREATE if word == "CREATE" else _LEAD_DONE
    if lead == _LEAD_CREATE and word in ("TEMP", "TEMPORARY"):
        return _LEAD_CREATE_TEMP
    return _LEAD_DONE


def _variable_number_error() -> OperationalError:
    return make_error(
        OperationalError,
        f"variable number must be between ?1 and ?{_MAX_VARIABLE_NUMBER}",
        code=1,
    )


def _number_params(tokens: list[str]) -> tuple[int, tuple[str | None, ...]]:
    """Number parameters as ``sqlite3ExprAssignVarNumber`` does.

    ``?`` takes the highest index so far plus one; ``?NNN`` takes NNN and may
    raise the highest; a named parameter reuses the index of an earlier one of
    the same name (prefix included), else takes the highest plus one.  An index
    is named after the first placeholder that claimed it.
    """
    highest = 0
    by_name: dict[str, int] = {}
    names: dict[int, str] = {}
    for token in tokens:
        if token == "?":
            highest += 1
        elif token[0] == "?":
            digits = token[1:].lstrip("0")
            # Bounding the length first avoids int()'s limit on huge literals.
            if not digits or len(digits) > 9:
                raise _variable_number_error()
            index = int(digits)
            if index > _MAX_VARIABLE_NUMBER:
                raise _variable_number_error()
            highest = max(highest, index)
            names.setdefault(index, token)
        else:
            index = by_name.get(token, 0)
            if not index:
                highest += 1
                by_name[token] = highest
                names[highest] = token
        if highest > _MAX_VARIABLE_NUMBER:
            raise make_error(OperationalError, "too many SQL variables", code=1)
    return highest, tuple(names.get(i) for i in range(1, highest + 1))


def _parse(sql: str) -> ParsedSQL:
    statement = _scan(sql, 0, True)
    count, names = _number_params(statement.params)
    keyword = statement.keyword
    is_dml = keyword in _DML_KEYWORDS
    return ParsedSQL(
        first=sql[: statement.end],
        tail=sql[statement.end :],
        param_count=count,
        param_names=names,
        keyword=keyword,
        is_dml=is_dml,
        returns_rows_hint=keyword in _ROW_KEYWORDS or (is_dml and statement.has_returning),
        is_empty=statement.start < 0,
    )


# The same size as sqlite3's default statement cache; ParsedSQL is immutable,
# so one instance can be shared by every cursor.
_parse_cached = lru_cache(maxsize=128)(_parse)


def parse(sql: str) -> ParsedSQL:
    """Analyse the first statement of ``sql``.

    Args:
        sql: one or more SQL statements.

    Returns:
        The first statement's text, parameters and kind, and the remaining text.

    Raises:
        OperationalError: a ``?NNN`` parameter is outside ``?1`` to ``?250000``,
            or there are more parameters than that, as SQLite would report.
    """
    return _parse_cached(sql)


def has_more_statements(tail: str) -> bool:
    """Tell whether ``tail`` holds a statement.

    Args:
        tail: text after a statement, usually :attr:`ParsedSQL.tail`.

    Returns:
        True if ``tail`` contains anything besides whitespace, comments and
        semicolons.  (CPython's ``sqlite3`` also counts a stray ``;`` as a second
        statement; being lenient there breaks no program that works with it.)
    """
    for match in _token_re().finditer(tail):
        kind = match.lastgroup
        if kind != "comment" and kind != "semi":
            # A "/*" that ends the text is an empty unterminated comment to
            # sqlite3 (which strips comments itself before calling this an
            # error), though SQLite's tokenizer reads it as "/" and "*".
            return not (match.group() == "/" and tail.endswith("/*", match.start()))
    return False


def split_statements(sql: str) -> list[str]:
    """Split a script into its statements.

    A ``CREATE TRIGGER`` with a ``BEGIN ... END`` body is one statement.  Empty
    statements (only whitespace, comments or ``;``) are dropped.

    Args:
        sql: a script of zero or more statements.

    Returns:
        Each statement's text, from its first token to its terminating ``;``
        (to its last token when the script ends without one).
    """
    statements: list[str] = []
    pos = 0
    size = len(sql)
    while pos < size:
        statement = _scan(sql, pos, False)
        if statement.start >= 0:
            statements.append(sql[statement.start : statement.text_end])
        pos = statement.end
    return statements


def is_complete(sql: str) -> bool:
    """Tell whether ``sql`` ends with a complete statement, like ``sqlite3.complete_statement``.

    Args:
        sql: a script of zero or more statements.

    Returns:
        True if the text ends, but for whitespace and comments, with a ``;``
        that ends a statement (an unfinished ``CREATE TRIGGER`` body does not
        count) and no literal or comment is left open.
    """
    pos = 0
    size = len(sql)
    after_last = 0
    saw_semi = False
    while pos < size:
        statement = _scan(sql, pos, False)
        if statement.start >= 0:
            if not statement.terminated:
                return False
            after_last = statement.end
            saw_semi = True
        pos = statement.end
    # What follows the last statement is whitespace, comments and empty
    # statements; an empty statement's ";" completes the text too.
    for match in _token_re().finditer(sql, after_last):
        token = match.group()
        if match.lastgroup == "semi":
            saw_semi = True
        elif token.startswith("/*") and (len(token) < 4 or not token.endswith("*/")):
            return False
    return saw_semi


def bind_values(
    parsed: ParsedSQL, parameters: Sequence[object] | Mapping[str, object]
) -> list[object]:
    """Turn ``execute()`` parameters into the positional values of the first statement.

    Follows ``sqlite3``: a sequence (any object with ``__getitem__`` and
    ``__len__`` that is not a mapping, including ``str``) must hold exactly
    :attr:`ParsedSQL.param_count` values; a mapping supplies each parameter by
    its name without the prefix character (``:x`` and ``@x`` both read ``"x"``,
    ``?3`` reads ``"3"``), so every parameter must have a name.  Any
    :class:`~collections.abc.Mapping` counts as a mapping, and lookups use
    ``parameters[name]`` so that ``__missing__`` works.

    Args:
        parsed: the result of :func:`parse`.
        parameters: the values, by position or by name.

    Returns:
        A list of ``param_count`` values, the value of parameter ``i`` at index ``i - 1``.

    Raises:
        ProgrammingError: the number of values is wrong, a mapping was given
            for an unnamed parameter or lacks a name, or ``parameters`` is of
            an unsupported type.
    """
    return list(iter_values(parsed, parameters))


def iter_values(
    parsed: ParsedSQL, parameters: Sequence[object] | Mapping[str, object]
) -> Iterator[object]:
    """Like :func:`bind_values`, but read each value only when the iterator gets to it.

    ``sqlite3`` reads a parameter, adapts and binds it, then reads the next, so
    an adapter that changes the parameter list is seen by the reads after it.
    The number of values and the type of ``parameters`` are checked at once.

    Raises:
        ProgrammingError: as :func:`bind_values`; for a mapping, a missing or
            unnamed parameter is reported when the iterator reaches it.
    """
    count = parsed.param_count
    if isinstance(parameters, Mapping):
        return _mapping_values(parsed, parameters)
    kind = type(parameters)
    if kind is not tuple and kind is not list and not hasattr(kind, "__getitem__"):
        raise ProgrammingError("parameters are of unsupported type")
    supplied = len(parameters)
    if supplied != count:
        raise ProgrammingError(
            f"Incorrect number of bindings supplied. The current statement uses {count}, "
            f"and there are {supplied} supplied."
        )
    if kind is tuple:
        return iter(parameters)
    return (parameters[i] for i in range(count))


def _mapping_values(parsed: ParsedSQL, parameters: Mapping[str, object]) -> Iterator[object]:
    for index, name in enumerate(parsed.param_names, 1):
        if name is None:
            raise ProgrammingError(
                f"Binding {index} has no name, but you supplied a dictionary "
                "(which has only names)."
            )
        key = name[1:]
        try:
            value = parameters[key]
        except LookupError as exc:
            raise ProgrammingError(
                f"You did not supply a value for binding parameter :{key}."
            ) from exc
        yield value
