"""Where a connection's servers come from: the arguments, a ``dqlite://`` URL, the environment.

``connect()`` takes, like ``sqlite3.connect``, a database name; with dqlite it
may also be a URL that names the servers (``docs/architecture.md``, "What users see")::

    dqlite://10.0.0.1:9001,10.0.0.2:9001/app.db?tls_ca=ca.pem

The servers are, in order of precedence: ``servers=``, the URL's, then
``DQLITEPY_SERVERS``; none at all means the embedded node (decided by the
caller).  The URL's ``tls*`` query parameters (``docs/driver.md``) give the TLS
context unless ``ssl=`` does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from .address import parse_address
from .errors import ProgrammingError
from .tls import context_from_url

if TYPE_CHECKING:
    import ssl as _ssl

__all__ = ["is_url", "parse_url", "resolve_target", "servers_from_env"]

# A URL scheme (RFC 3986 §3.1) followed by "//".  Two characters at least, so
# that a Windows drive ("c://x") stays a file name.
# Leading blanks are allowed: " dqlite://..." (a padded configuration value) is a URL too.
_URL_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]+)://")
# The dqlite scheme and its colon or slashes: a dqlite URL, however mistyped (blanks
# included: "dqlite ://...").
_DQLITE_SCHEME = re.compile(r"\s*dqlite\s*(?::|//)", re.IGNORECASE)


def is_url(name: str) -> bool:
    """True if the database name ``name`` is meant as a URL, not as a name.

    ``sqlite3`` takes any string as a file name, so only what no one means as
    one counts: a name that starts with the dqlite scheme and its colon or
    slashes (``dqlite:...``, ``dqlite//...``: a dqlite URL, maybe mistyped),
    or with any other scheme of two characters or more and ``://`` (a URL for
    something else, such as SQLAlchemy's ``sqlite+dqlitepy://``).  ``file:``
    names are left to ``sqlite3``'s rules (a URI with ``uri=True``, else a
    name); ``app.db``, ``dir/app.db``, ``app.db:v2`` and ``:memory:`` are names.
    """
    if _DQLITE_SCHEME.match(name):
        return True
    match = _URL_SCHEME.match(name)
    return match is not None and match.group(1).lower() != "file"


def parse_url(url: str) -> tuple[list[str], str]:
    """Split ``dqlite://h1:p1,h2:p2/db`` into the server list and the database name.

    The scheme is case-insensitive (RFC 3986); the database name is
    percent-decoded; the query string is read by the caller (its ``tls*`` parameters).

    Raises:
        ProgrammingError: ``url`` is not a dqlite URL, or has no servers, an
            invalid server address or no database.
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "dqlite" or not sep:
        raise ProgrammingError(
            f"invalid dqlite URL {url!r}: expected dqlite://host:port,.../database"
        )
    hosts, sep, database = rest.partition("/")
    database = unquote(database.partition("?")[0])
    servers = [h for h in hosts.split(",") if h]
    if not sep or not database or not servers:
        raise ProgrammingError(
            f"invalid dqlite URL {url!r}: expected dqlite://host:port,.../database"
        )
    for address in servers:
        try:
            parse_address(address)
        except ValueError as exc:
            raise ProgrammingError(f"invalid dqlite URL {url!r}: {exc}") from None
    return servers, database


def _url_tls(url: str) -> _ssl.SSLContext | None:
    """The TLS context a ``dqlite://`` URL's query string asks for (``docs/driver.md``).

    Raises:
        ProgrammingError: a malformed TLS parameter or TLS files that cannot be loaded.
    """
    query = url.partition("?")[2]
    if not query:
        return None
    try:
        return context_from_url(dict(parse_qsl(query, keep_blank_values=True)))
    except ValueError as exc:
        raise ProgrammingError(f"invalid dqlite URL {url!r}: {exc}") from None


def servers_from_env() -> list[str]:
    """The servers ``DQLITEPY_SERVERS`` lists (comma-separated), or none."""
    raw = os.environ.get("DQLITEPY_SERVERS", "")
    return [s.strip() for s in raw.split(",") if s.strip()]


def resolve_target(
    database: str | bytes | os.PathLike[str],
    *,
    uri: bool,
    servers: Sequence[str] | str | None,
    ssl: _ssl.SSLContext | None,
) -> tuple[str, list[str] | None, _ssl.SSLContext | None]:
    """What ``connect()``'s arguments name: the database, its servers and the TLS context.

    Returns:
        The database name, the servers (None: none configured anywhere) and the
        TLS context (None: plain text).

    Raises:
        ProgrammingError: ``database`` is a URL that is not a valid dqlite URL.
    """
    name = os.fsdecode(database) if isinstance(database, bytes) else os.fspath(database)
    # A path object names a file (and cannot hold "//"): only strings are URLs.
    if isinstance(database, str | bytes) and is_url(name):
        url = name
        url_servers, name = parse_url(url)
        if servers is None:
            servers = url_servers
        if ssl is None:
            ssl = _url_tls(url)
    elif uri and name.startswith("file:"):
        name = unquote(name[len("file:") :].partition("?")[0])
    if isinstance(servers, str):
        servers = [s for s in servers.split(",") if s]
    if servers is None:
        servers = servers_from_env() or None
    return name, None if servers is None else list(servers), ssl
