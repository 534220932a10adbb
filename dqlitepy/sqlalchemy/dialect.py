"""``sqlite+dqlitepy://``: SQLAlchemy's SQLite dialect over the dqlitepy driver.

SQLAlchemy's ``pysqlite`` dialect assumes a file opened in this process; a dqlite
database lives on a cluster and is reached over the network.  What this dialect
does differently, and why:

- **URL**: the host part names the cluster's nodes (any of them: the driver finds
  the leader), the database part is the dqlite database name, an opaque string
  that is never turned into a path.  SQLAlchemy's URL parser takes one
  ``host:port``; more nodes go in a bracketed host list (``[h1:9001,h2:9001]``,
  which is how SQLAlchemy itself renders ``URL.create(host="h1:9001,h2:9001")``),
  share the URL's port (``h1,h2:9001``) or come as repeated ``host=`` query
  arguments.  Without a host, :func:`dqlitepy.connect` picks the servers
  (``DQLITEPY_SERVERS``, else the process's embedded node).
- **Server version** comes from ``select sqlite_version()`` on the leader, not
  from the SQLite library this process links, and the version-dependent features
  (RETURNING, multi-row VALUES ...) follow it.
- **Disconnects** are recognised by exception class and result code, never by
  message text: not leader, leadership lost, no leader, and a lost connection all
  mean the connection's server session is gone, so the pool discards it (and
  every connection checked out before it, which pointed at the same deposed
  leader).
- **No user functions**: SQL runs on the leader, which cannot call back into this
  process, so unlike ``pysqlite`` nothing is registered with ``create_function``.
  ``regexp_match()`` compiles to ``REGEXP`` only when the server has a
  ``regexp`` function, and is otherwise a :class:`~sqlalchemy.exc.CompileError`
  rather than SQL that fails on the server.
- **No schemas**: SQLite's schemas are ATTACHed files, and a dqlite server
  refuses ATTACH (a client stays inside its database).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import exc, pool, util
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.sqlite import DATE, DATETIME
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler, SQLiteDialect

import dqlitepy
from dqlitepy.client import errors
from dqlitepy.client.address import parse_address
from dqlitepy.client.tls import URL_OPTIONS as TLS_URL_OPTIONS
from dqlitepy.client.tls import context_from_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection
    from sqlalchemy.engine.interfaces import (
        ConnectArgsType,
        DBAPIConnection,
        DBAPICursor,
        DBAPIModule,
        IsolationLevel,
    )
    from sqlalchemy.pool import PoolProxiedConnection
    from sqlalchemy.sql.type_api import _BindProcessorType, _ResultProcessorType

__all__ = ["SQLiteDialect_dqlitepy", "dialect"]

#: Connect arguments that may be given in the URL's query string, and their types.
_QUERY_ARGUMENTS: dict[str, type] = {
    "timeout": float,
    "detect_types": int,
    "check_same_thread": bool,
    "leader_timeout": float,
    "attempt_timeout": float,
    "request_timeout": float,
}

#: dqlite's codes for "this node does not lead (any more)": not leader (10250 and the
#: legacy 8202) and leadership lost (10506, legacy 8458), protocol.md §5.1.  The
#: classes carry them too; the codes also catch errors a wrapper re-raised.
_LEADERSHIP_CODES = frozenset(
    {
        errors.SQLITE_IOERR_NOT_LEADER,
        errors.SQLITE_IOERR_NOT_LEADER_LEGACY,
        errors.SQLITE_IOERR_LEADERSHIP_LOST,
        errors.SQLITE_IOERR_LEADERSHIP_LOST_LEGACY,
    }
)

_VERSION_PART = re.compile(r"\d+")


class _DqliteDate(DATE):
    """DATE that leaves values alone when the driver converts them (``native_datetime``)."""

    def bind_processor(  # type: ignore[override]
        self, dialect: SQLiteDialect
    ) -> _BindProcessorType[Any] | None:
        if dialect.native_datetime:
            return None
        return DATE.bind_processor(self, dialect)

    def result_processor(  # type: ignore[override]
        self, dialect: SQLiteDialect, coltype: object
    ) -> _ResultProcessorType[Any] | None:
        if dialect.native_datetime:
            return None
        return DATE.result_processor(self, dialect, coltype)


class _DqliteTimestamp(DATETIME):
    """TIMESTAMP that leaves values alone when the driver converts them."""

    def bind_processor(  # type: ignore[override]
        self, dialect: SQLiteDialect
    ) -> _BindProcessorType[Any] | None:
        if dialect.native_datetime:
            return None
        return DATETIME.bind_processor(self, dialect)

    def result_processor(  # type: ignore[override]
        self, dialect: SQLiteDialect, coltype: object
    ) -> _ResultProcessorType[Any] | None:
        if dialect.native_datetime:
            return None
        return DATETIME.result_processor(self, dialect, coltype)


class _DqliteCompiler(SQLiteCompiler):
    """SQLite's compiler, refusing REGEXP when the server has no ``regexp`` function."""

    def _require_regexp(self) -> None:
        if not getattr(self.dialect, "server_has_regexp", False):
            raise exc.CompileError(
                "regexp_match() is not supported by this dqlite server: SQLite has no "
                "built-in REGEXP function, and a user function defined with "
                "create_function() would have to run on the server, which cannot call "
                "back into this process"
            )

    def visit_regexp_match_op_binary(self, binary: Any, operator: Any, **kw: Any) -> str:
        self._require_regexp()
        result: str = super().visit_regexp_match_op_binary(  # type: ignore[no-untyped-call]
            binary, operator, **kw
        )
        return result

    def visit_not_regexp_match_op_binary(self, binary: Any, operator: Any, **kw: Any) -> str:
        self._require_regexp()
        result: str = super().visit_not_regexp_match_op_binary(  # type: ignore[no-untyped-call]
            binary, operator, **kw
        )
        return result


def _split_servers(hosts: str, port: int | None) -> list[str]:
    """Turn the host part of a URL (one host, or a comma-separated list) into addresses."""
    servers = []
    for raw in hosts.split(","):
        host = raw.strip()
        if not host:
            continue
        if port is not None:
            # Every host listed before the URL's one port shares it; a bare IPv6
            # address (SQLAlchemy strips the brackets) needs them back.
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            host = f"{host}:{port}"
        servers.append(host)
    return servers


def _check_server(address: str) -> None:
    try:
        parse_address(address)
    except ValueError as error:
        raise exc.ArgumentError(
            f"dqlite server {address!r} has no port or is no node address: "
            "give every node as host:port (or @name)"
        ) from error


class SQLiteDialect_dqlitepy(SQLiteDialect):
    """SQLAlchemy's SQLite dialect with dqlitepy as its DBAPI."""

    driver = "dqlitepy"
    supports_statement_cache = True
    default_paramstyle = "qmark"
    # The driver returns BLOBs as bytes, as sqlite3 does.
    returns_native_bytes = True
    description_encoding = None
    statement_compiler = _DqliteCompiler
    # As pysqlite: with native_datetime=True and detect_types, the driver's "date" and
    # "timestamp" converters (sqlite3's) produce the objects (PARSE_DECLTYPES needs a
    # dqlitepy server; PARSE_COLNAMES works with any).
    colspecs = util.update_copy(
        SQLiteDialect.colspecs,
        {sqltypes.Date: _DqliteDate, sqltypes.TIMESTAMP: _DqliteTimestamp},
    )

    _isolation_lookup = SQLiteDialect._isolation_lookup.union({"AUTOCOMMIT": None})

    #: Whether the server offers a ``regexp`` SQL function; learnt on first connect.
    server_has_regexp = False

    @classmethod
    def import_dbapi(cls) -> DBAPIModule:
        return cast("DBAPIModule", dqlitepy)

    # ------------------------------------------------------------------ URLs

    @classmethod
    def _servers(cls, url: URL) -> list[str]:
        """The node addresses a URL names (empty: let the driver choose)."""
        servers = _split_servers(url.host, url.port) if url.host else []
        extra = url.query.get("host", ())
        for item in (extra,) if isinstance(extra, str) else extra:
            servers.extend(_split_servers(item, None))
        for address in servers:
            _check_server(address)
        return servers

    @classmethod
    def _is_memory(cls, url: URL) -> bool:
        return not url.database or url.database == ":memory:"

    @classmethod
    def _is_url_file_db(cls, url: URL) -> bool:
        # The name SQLAlchemy's SQLite provisioning and requirements ask for: a
        # named database behaves as a file database does (shared by every
        # connection), a ":memory:" one is private to its connection.
        return not cls._is_memory(url)

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        # A named database is shared by all connections, on the embedded node as on a
        # cluster: a queue pool.  ":memory:" is a fresh database per connection (as
        # in sqlite3), so each thread keeps its own connection, as with pysqlite.
        if cls._is_memory(url):
            return pool.SingletonThreadPool
        return pool.QueuePool

    def create_connect_args(self, url: URL) -> ConnectArgsType:
        if url.username or url.password:
            raise exc.ArgumentError(
                f"invalid dqlite URL {url!r}: dqlite has no user names or passwords"
            )
        servers = self._servers(url)
        memory = self._is_memory(url)
        if servers and memory:
            raise exc.ArgumentError(
                f"invalid dqlite URL {url!r}: name the database "
                "(sqlite+dqlitepy://host:port/name); ':memory:' exists only without "
                "servers, on the embedded node"
            )
        unknown = sorted(set(url.query) - set(_QUERY_ARGUMENTS) - set(TLS_URL_OPTIONS) - {"host"})
        if unknown:
            raise exc.ArgumentError(
                f"invalid dqlite URL {url!r}: unknown query argument(s) "
                f"{', '.join(unknown)}; accepted: host, {', '.join(_QUERY_ARGUMENTS)}, "
                f"{', '.join(TLS_URL_OPTIONS)}"
            )
        opts: dict[str, Any] = {}
        for key, type_ in _QUERY_ARGUMENTS.items():
            util.coerce_kw_type(url.query, key, type_, dest=opts)
        tls_options = {}
        for key in TLS_URL_OPTIONS:
            value = url.query.get(key)
            if value is not None:
                if not isinstance(value, str):
                    raise exc.ArgumentError(f"invalid dqlite URL {url!r}: {key} given twice")
                tls_options[key] = value
        try:
            # The same parameters as the driver's dqlite:// URL; connect_args={"ssl": ...} wins.
            context = context_from_url(tls_options)
        except ValueError as error:
            raise exc.ArgumentError(f"invalid dqlite URL {url!r}: {error}") from None
        if context is not None:
            opts["ssl"] = context
        # The pool hands a connection to whichever thread checks it out; the driver
        # serialises use of a connection with a lock.
        opts.setdefault("check_same_thread", memory)
        if servers:
            opts["servers"] = servers
        return ([url.database or ":memory:"], opts)

    # ------------------------------------------------------- server features

    def _get_server_version_info(self, connection: Connection) -> tuple[int, ...]:
        version = connection.exec_driver_sql("select sqlite_version()").scalar()
        return tuple(int(p) for p in _VERSION_PART.findall(str(version))[:3])

    def initialize(self, connection: Connection) -> None:
        super().initialize(connection)
        self._follow_server_version(cast("tuple[int, ...]", self.server_version_info))
        try:
            names = connection.exec_driver_sql(
                "SELECT name FROM pragma_function_list WHERE name = 'regexp'"
            ).scalars()
            self.server_has_regexp = bool(names.all())
        except exc.DBAPIError:
            # No function list (SQLite before 3.30): no way to tell, so no REGEXP.
            self.server_has_regexp = False

    def _follow_server_version(self, version: tuple[int, ...]) -> None:
        """Set what ``SQLiteDialect.__init__`` set from the local library's version."""
        self._broken_dotted_colnames = version < (3, 10, 0)
        self.supports_default_values = version >= (3, 3, 8)
        self.supports_cast = version >= (3, 2, 3)
        self.supports_multivalues_insert = version >= (3, 7, 11)
        self._broken_fk_pragma_quotes = version < (3, 6, 14)
        returning = version >= (3, 35)
        self.insert_returning = self.update_returning = self.delete_returning = returning
        # SQLite's default SQLITE_MAX_VARIABLE_NUMBER was 999 before 3.32.
        self.insertmanyvalues_max_parameters = (
            999 if version < (3, 32, 0) else SQLiteDialect.insertmanyvalues_max_parameters
        )

    # ------------------------------------------------------------ isolation

    def set_isolation_level(self, dbapi_connection: DBAPIConnection, level: IsolationLevel) -> None:
        conn: Any = dbapi_connection
        if conn.autocommit != dqlitepy.LEGACY_TRANSACTION_CONTROL:
            # PEP 249 transaction control (connect_args={"autocommit": False}).
            conn.autocommit = level == "AUTOCOMMIT"
        else:
            # sqlite3's legacy control, as pysqlite: no implicit BEGIN is AUTOCOMMIT.
            conn.isolation_level = None if level == "AUTOCOMMIT" else ""
        if level != "AUTOCOMMIT":
            super().set_isolation_level(dbapi_connection, level)

    def detect_autocommit_setting(self, dbapi_conn: DBAPIConnection) -> bool:
        conn: Any = dbapi_conn
        if conn.autocommit != dqlitepy.LEGACY_TRANSACTION_CONTROL:
            return bool(conn.autocommit)
        return conn.isolation_level is None

    # ------------------------------------------------------------ disconnects

    def is_disconnect(
        self,
        e: DBAPIModule.Error,
        connection: PoolProxiedConnection | DBAPIConnection | None,
        cursor: DBAPICursor | None,
    ) -> bool:
        """True when the error means the connection's server session is gone.

        Decided by class and result code: the node stopped leading
        (:class:`dqlitepy.NotLeaderError`, :class:`dqlitepy.LeadershipLostError`),
        no leader can be found (:class:`dqlitepy.NoLeaderError`), or the
        connection to the leader was lost (:class:`dqlitepy.ConnectionLostError`;
        an open transaction is rolled back by the server in every case).  A
        :class:`dqlitepy.ProgrammingError` on a connection that was closed counts
        too, as in the ``pysqlite`` dialect.
        """
        if isinstance(
            e,
            dqlitepy.NotLeaderError
            | dqlitepy.LeadershipLostError
            | dqlitepy.NoLeaderError
            | dqlitepy.ConnectionLostError,
        ):
            return True
        if getattr(e, "sqlite_errorcode", None) in _LEADERSHIP_CODES:
            return True
        if isinstance(e, dqlitepy.ProgrammingError) and connection is not None:
            return _is_closed(connection)
        return False

    def do_ping(self, dbapi_connection: DBAPIConnection) -> bool:
        # One round trip to the leader.  A connection whose node stopped leading,
        # outside a transaction, finds the new leader here (the driver retries
        # what provably did not run), so a successful ping means usable.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        finally:
            cursor.close()
        return True


def _is_closed(connection: Any) -> bool:
    """True if a dqlitepy connection was closed (checked without a round trip)."""
    try:
        connection.in_transaction  # noqa: B018 - raises on a closed connection
    except dqlitepy.ProgrammingError:
        return True
    except AttributeError:
        return False  # a pool proxy whose connection is already gone
    return False


dialect = SQLiteDialect_dqlitepy
