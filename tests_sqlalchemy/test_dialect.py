"""The dqlitepy dialect's own behaviour, beyond SQLAlchemy's compliance suite.

URL forms and pool choice need no server; the rest runs against the session's
servers (``DQLITEPY_SERVERS``), and the failover tests against 3-node clusters
of the real C dqlite (``dqlite-demo``), the only way to change leaders today.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
import signal
import ssl
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest
import sqlalchemy as sa
from dqlite_cluster import DQLITE_DEMO, DQLITE_SHELL, DqliteDemoCluster
from dqlitepy_server import DqlitepyCluster
from sqlalchemy import exc, pool
from sqlalchemy.engine import URL, make_url
from sqlalchemy.testing import fixtures

import dqlitepy
from dqlitepy.sqlalchemy import SQLiteDialect_dqlitepy

# --------------------------------------------------------------------------- URLs


def _connect_args(url: str | URL) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = SQLiteDialect_dqlitepy().create_connect_args(make_url(url))
    return list(args), dict(kwargs)


class URLTest(fixtures.TestBase):
    """URL forms and pool choice: no server needed."""

    @pytest.mark.parametrize(
        ("url", "servers", "database"),
        [
            ("sqlite+dqlitepy://h1:9001/app.db", ["h1:9001"], "app.db"),
            ("dqlite://h1:9001/app.db", ["h1:9001"], "app.db"),
            # Several nodes: a bracketed list (how SQLAlchemy renders such a host) ...
            ("sqlite+dqlitepy://[h1:9001,h2:9002]/app.db", ["h1:9001", "h2:9002"], "app.db"),
            # ... hosts sharing the URL's port ...
            (
                "sqlite+dqlitepy://h1,h2,h3:9001/app.db",
                ["h1:9001", "h2:9001", "h3:9001"],
                "app.db",
            ),
            # ... or host= query arguments, which also take abstract Unix sockets.
            (
                "sqlite+dqlitepy:///app.db?host=h1:9001&host=h2:9002",
                ["h1:9001", "h2:9002"],
                "app.db",
            ),
            ("sqlite+dqlitepy:///app.db?host=@dqlite-node", ["@dqlite-node"], "app.db"),
            ("sqlite+dqlitepy://[::1]:9001/app.db", ["[::1]:9001"], "app.db"),
            # The database is a name on the server, never made into a local path.
            ("sqlite+dqlitepy://h1:9001/dir/app.db", ["h1:9001"], "dir/app.db"),
            ("sqlite+dqlitepy://h1:9001//abs.db", ["h1:9001"], "/abs.db"),
        ],
    )
    def test_url_servers_and_database(self, url: str, servers: list[str], database: str) -> None:
        args, kwargs = _connect_args(url)
        assert args == [database]
        assert kwargs == {"servers": servers, "check_same_thread": False}

    def test_url_create_with_a_host_list_round_trips(self) -> None:
        url = URL.create("sqlite+dqlitepy", host="h1:9001,h2:9002", database="app.db")
        assert _connect_args(url)[1]["servers"] == ["h1:9001", "h2:9002"]
        assert _connect_args(url.render_as_string())[1]["servers"] == ["h1:9001", "h2:9002"]

    def test_url_without_host_lets_the_driver_choose(self) -> None:
        # DQLITEPY_SERVERS, else the embedded node: dqlitepy.connect() decides.
        assert _connect_args("sqlite+dqlitepy:///app.db") == (
            ["app.db"],
            {"check_same_thread": False},
        )
        assert _connect_args("sqlite+dqlitepy://") == ([":memory:"], {"check_same_thread": True})
        assert _connect_args("sqlite+dqlitepy:///:memory:")[0] == [":memory:"]

    def test_url_query_arguments_are_typed(self) -> None:
        _, kwargs = _connect_args(
            "sqlite+dqlitepy://h1:9001/app.db?timeout=2.5&leader_timeout=10"
            "&attempt_timeout=1&request_timeout=30&detect_types=1&check_same_thread=true"
        )
        assert kwargs == {
            "servers": ["h1:9001"],
            "timeout": 2.5,
            "leader_timeout": 10.0,
            "attempt_timeout": 1.0,
            "request_timeout": 30.0,
            "detect_types": 1,
            "check_same_thread": True,
        }

    def test_url_tls_arguments_become_an_ssl_context(self) -> None:
        _, kwargs = _connect_args("sqlite+dqlitepy://h1:9001/app.db?tls=1&tls_check_hostname=0")
        context = kwargs.pop("ssl")
        assert isinstance(context, ssl.SSLContext) and not context.check_hostname
        assert kwargs == {"servers": ["h1:9001"], "check_same_thread": False}
        assert "ssl" not in _connect_args("sqlite+dqlitepy://h1:9001/app.db?tls=0")[1]

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("sqlite+dqlitepy://h1:9001/app.db?tls=maybe", "not a boolean"),
            ("sqlite+dqlitepy://h1:9001/app.db?tls_ca=/nonexistent.pem", "cannot load"),
            ("sqlite+dqlitepy://h1:9001/app.db?tls=1&tls=0", "given twice"),
            ("sqlite+dqlitepy://user:pw@h1:9001/app.db", "no user names"),
            ("sqlite+dqlitepy://h1:9001/", "name the database"),
            ("sqlite+dqlitepy://h1:9001/:memory:", "name the database"),
            ("sqlite+dqlitepy://h1:9001/app.db?uri=true", "unknown query argument"),
            ("sqlite+dqlitepy://[h1:9001,h2]/app.db", "has no port"),
            ("sqlite+dqlitepy:///app.db?host=h1", "has no port"),
        ],
    )
    def test_bad_urls_are_refused(self, url: str, message: str) -> None:
        with pytest.raises(exc.ArgumentError, match=message):
            _connect_args(url)

    def test_entry_points_and_pools(self) -> None:
        for url in ("sqlite+dqlitepy://h1:9001/app.db", "dqlite://h1:9001/app.db"):
            engine = sa.create_engine(url)  # does not connect
            assert type(engine.dialect) is SQLiteDialect_dqlitepy
            assert (engine.dialect.name, engine.dialect.driver) == ("sqlite", "dqlitepy")
            assert type(engine.pool) is pool.QueuePool
        # A named database on the embedded node is shared by every connection too.
        assert type(sa.create_engine("sqlite+dqlitepy:///app.db").pool) is pool.QueuePool
        # ":memory:" is private to one connection: one per thread, as with pysqlite.
        assert type(sa.create_engine("sqlite+dqlitepy://").pool) is pool.SingletonThreadPool


# ------------------------------------------------------- against the session's servers


@pytest.fixture
def engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite+dqlitepy:///dialect_test.db")
    yield engine
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS t")
    engine.dispose()


class _RecordingConnection(dqlitepy.Connection):
    functions: ClassVar[list[str]] = []

    def create_function(self, name: str, narg: int, func: Any, **kwargs: Any) -> None:
        self.functions.append(name)
        super().create_function(name, narg, func, **kwargs)


class ServerTest(fixtures.TestBase):
    """Against the session's servers (DQLITEPY_SERVERS)."""

    def test_server_version_comes_from_the_server(
        self,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The driver module's sqlite_version_info is a constant; pretend it is too old
        # for RETURNING: the dialect must go by what the server runs.
        monkeypatch.setattr(dqlitepy, "sqlite_version_info", (3, 30, 0))
        engine = sa.create_engine("sqlite+dqlitepy:///dialect_test.db")
        assert not engine.dialect.insert_returning
        with engine.connect() as conn:
            version = conn.exec_driver_sql("select sqlite_version()").scalar()
        engine.dispose()
        assert engine.dialect.server_version_info == tuple(int(p) for p in str(version).split("."))
        assert engine.dialect.server_version_info >= (3, 35)
        assert engine.dialect.insert_returning and engine.dialect.delete_returning
        assert engine.dialect.insertmanyvalues_max_parameters > 999

    def test_regexp_is_refused_unless_the_server_has_it(self, engine: sa.Engine) -> None:
        query = sa.select(sa.literal("abc").regexp_match("^a"))
        with engine.connect() as conn:
            assert engine.dialect.server_has_regexp is False  # type: ignore[attr-defined]
            with pytest.raises(exc.CompileError, match="regexp_match"):
                conn.execute(query)
            with pytest.raises(exc.CompileError, match="regexp_match"):
                conn.execute(sa.select(~sa.literal("abc").regexp_match("^a")))
        # A server that has a regexp function gets REGEXP.
        engine.dialect.server_has_regexp = True  # type: ignore[attr-defined]
        assert "REGEXP" in str(query.compile(engine))

    def test_no_user_functions_are_registered(self) -> None:
        # pysqlite registers regexp() and floor() in Python; they could not run on a server.
        engine = sa.create_engine(
            "sqlite+dqlitepy:///dialect_test.db", connect_args={"factory": _RecordingConnection}
        )
        with engine.connect() as conn:
            assert isinstance(conn.connection.dbapi_connection, _RecordingConnection)
            # floor() is SQLite's own (math functions), used for // on numerics.
            assert conn.execute(sa.select(sa.literal(7.5) // sa.literal(2.0))).scalar() == 3
        engine.dispose()
        assert _RecordingConnection.functions == []

    def test_autocommit_in_legacy_transaction_control(self, engine: sa.Engine) -> None:
        with engine.connect() as conn:
            raw: Any = conn.connection.dbapi_connection
            assert raw.isolation_level == ""
            conn.execution_options(isolation_level="AUTOCOMMIT")
            assert raw.isolation_level is None
            assert engine.dialect.detect_autocommit_setting(raw)
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            assert not raw.in_transaction  # committed at once
        with engine.connect() as conn:
            # Back in the pool, the connection got its default level back.
            assert conn.connection.dbapi_connection.isolation_level == ""  # type: ignore[union-attr]
            assert conn.exec_driver_sql("SELECT x FROM t").scalars().all() == [1]

    def test_autocommit_in_pep249_transaction_control(self) -> None:
        # connect_args={"autocommit": False}: Python 3.12's transaction control, which the
        # driver offers on every Python; AUTOCOMMIT then means autocommit=True.
        engine = sa.create_engine(
            "sqlite+dqlitepy:///dialect_test.db", connect_args={"autocommit": False}
        )
        with engine.connect() as conn:
            raw: Any = conn.connection.dbapi_connection
            assert raw.autocommit is False
            assert not engine.dialect.detect_autocommit_setting(raw)
            conn.exec_driver_sql("DROP TABLE IF EXISTS t")
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.commit()
            conn.execution_options(isolation_level="AUTOCOMMIT")
            assert raw.autocommit is True
            assert engine.dialect.detect_autocommit_setting(raw)
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            assert not raw.in_transaction
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw.autocommit is False
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
            conn.rollback()
            assert conn.exec_driver_sql("SELECT x FROM t").scalars().all() == [1]
            conn.exec_driver_sql("DROP TABLE t")
            conn.commit()
        engine.dispose()

    def test_native_datetime(self) -> None:
        # As with pysqlite: the driver's "date" and "timestamp" converters make the
        # objects, SQLAlchemy leaves them alone.
        engine = sa.create_engine(
            "sqlite+dqlitepy:///dialect_test.db",
            native_datetime=True,
            connect_args={"detect_types": dqlitepy.PARSE_DECLTYPES},
        )
        metadata = sa.MetaData()
        table = sa.Table("nd", metadata, sa.Column("d", sa.Date), sa.Column("ts", sa.TIMESTAMP))
        row = {"d": datetime.date(2020, 1, 2), "ts": datetime.datetime(2020, 1, 2, 3, 4, 5, 6)}
        try:
            metadata.create_all(engine)
            with engine.begin() as conn:
                conn.execute(table.insert(), row)
                try:
                    result = conn.execute(sa.select(table)).one()
                except exc.NotSupportedError:
                    pytest.skip("PARSE_DECLTYPES needs a dqlitepy server, not C dqlite")
            assert result._asdict() == row
        finally:
            metadata.drop_all(engine)
            engine.dispose()

    def test_read_uncommitted_is_accepted(self, engine: sa.Engine) -> None:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="READ UNCOMMITTED")
            assert conn.get_isolation_level() == "READ UNCOMMITTED"
        with engine.connect() as conn:
            assert conn.get_isolation_level() == "SERIALIZABLE"

    def test_is_disconnect_goes_by_class_and_code(self, engine: sa.Engine) -> None:
        dialect = engine.dialect
        lost = dqlitepy.ConnectionLostError("connection to 127.0.0.1:9001 lost", request_sent=True)
        for error in (
            dqlitepy.NotLeaderError("not leader"),
            dqlitepy.LeadershipLostError("leadership lost"),
            dqlitepy.NoLeaderError("no leader found within 30s"),
            lost,
        ):
            assert dialect.is_disconnect(error, None, None), error
        # The codes count where a class does not carry them (10250/8202 not leader,
        # 10506/8458 leadership lost) ...
        for code in (10250, 8202, 10506, 8458):
            error = dqlitepy.OperationalError("disk I/O error")
            error.sqlite_errorcode = code
            assert dialect.is_disconnect(error, None, None), code
        # ... and message text never does.
        for error in (
            dqlitepy.OperationalError("not leader"),
            dqlitepy.OperationalError("database is locked"),
            dqlitepy.IntegrityError("UNIQUE constraint failed: t.x"),
        ):
            assert not dialect.is_disconnect(error, None, None), error
        # A ProgrammingError on a connection that was closed.
        raw = dqlitepy.connect("dialect_test.db")  # DQLITEPY_SERVERS
        closed = dqlitepy.ProgrammingError("Cannot operate on a closed database.")
        assert not dialect.is_disconnect(closed, raw, None)
        raw.close()
        assert dialect.is_disconnect(closed, raw, None)

    def test_do_ping(self, engine: sa.Engine) -> None:
        raw = engine.raw_connection()
        assert engine.dialect.do_ping(raw.dbapi_connection)  # type: ignore[arg-type]
        raw.close()

    def test_embedded_default(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # No host and no DQLITEPY_SERVERS: the process's embedded node serves the database.
        monkeypatch.delenv("DQLITEPY_SERVERS")
        monkeypatch.setenv("DQLITEPY_DATA_DIR", str(tmp_path))
        named = sa.create_engine("sqlite+dqlitepy:///embedded.db")
        with named.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS e (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO e VALUES (1)")
        with named.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM e").scalar() >= 1
        named.dispose()
        memory = sa.create_engine("sqlite+dqlitepy://")
        with memory.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE m (x INTEGER)")
        with memory.connect() as conn:  # the same thread gets the same private database
            assert conn.exec_driver_sql("SELECT count(*) FROM m").scalar() == 0
        memory.dispose()

    def test_alembic_batch_migration(self, tmp_path: Path) -> None:
        # The example of docs/sqlalchemy.md: SQLite's ALTER TABLE is limited, so
        # Alembic's migrations run in batch mode (render_as_batch=True).
        from alembic import command
        from alembic.config import Config

        url = "sqlite+dqlitepy:///alembic_docs.db"
        ini = str(tmp_path / "alembic.ini")
        command.init(Config(ini), str(tmp_path / "migrations"))  # `alembic init migrations`
        cfg = Config(ini)
        cfg.set_main_option("sqlalchemy.url", url)
        env = tmp_path / "migrations" / "env.py"
        env.write_text(
            env.read_text().replace(
                "target_metadata=target_metadata",
                "target_metadata=target_metadata, render_as_batch=True",
            )
        )
        script = command.revision(cfg, "accounts")
        assert script is not None and not isinstance(script, list)
        Path(script.path).write_text(
            textwrap.dedent(
                f'''
                import sqlalchemy as sa
                from alembic import op

                revision = "{script.revision}"
                down_revision = None

                def upgrade():
                    op.create_table(
                        "account",
                        sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("name", sa.String(50), nullable=False),
                    )
                    with op.batch_alter_table("account") as batch:
                        batch.add_column(sa.Column("email", sa.String(200)))
                        batch.alter_column("name", type_=sa.String(100))

                def downgrade():
                    op.drop_table("account")
                '''
            )
        )
        command.upgrade(cfg, "head")
        engine = sa.create_engine(url)
        columns = {c["name"]: c for c in sa.inspect(engine).get_columns("account")}
        assert set(columns) == {"id", "name", "email"}
        assert columns["name"]["type"].length == 100
        command.downgrade(cfg, "base")
        assert not sa.inspect(engine).has_table("account")
        engine.dispose()


# ----------------------------------------------------- failover on a C dqlite cluster


class _Cluster(Protocol):
    """What the failover tests need of a cluster: its nodes, and a way to kill one."""

    @property
    def addresses(self) -> list[str]: ...

    def kill(self, address: str) -> None: ...


class _DqlitepyCluster:
    """Three replicating ``dqlitepy server`` processes (tests/dqlitepy_server.py)."""

    def __init__(self) -> None:
        self._cluster = DqlitepyCluster()
        self._cluster.wait_voters(3)

    @property
    def addresses(self) -> list[str]:
        return self._cluster.addresses

    def kill(self, address: str) -> None:
        self._cluster.node(address).stop(signal.SIGKILL)

    def close(self) -> None:
        self._cluster.close()


@pytest.fixture(params=["dqlite", "dqlitepy"])
def cluster(request: pytest.FixtureRequest) -> Iterator[_Cluster]:
    """A fresh 3-node cluster: C dqlite (dqlite-demo), or replicating dqlitepy nodes."""
    if request.param == "dqlitepy":
        dqlitepy_cluster = _DqlitepyCluster()
        try:
            yield dqlitepy_cluster
        finally:
            dqlitepy_cluster.close()
        return
    if os.environ.get("DQLITEPY_NO_DQLITE") == "1":
        pytest.skip("DQLITEPY_NO_DQLITE=1: tests that need a real dqlite cluster are skipped")
    missing = [p for p in (DQLITE_DEMO, DQLITE_SHELL) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: apt-get install go-dqlite", pytrace=False)
    with DqliteDemoCluster() as dqlite_cluster:
        dqlite_cluster.start(3)
        yield dqlite_cluster


@pytest.fixture(params=["sync", "async"])
def dialect_api(request: pytest.FixtureRequest) -> str:
    """``sync``: ``create_engine("sqlite+dqlitepy://...")``; ``async``:
    ``create_async_engine("sqlite+dqlitepy_async://...")`` driven through its ``sync_engine``
    in SQLAlchemy's greenlet, as SQLAlchemy's own suite runs asyncio dialects: the same test
    body checks both dialects' disconnect handling."""
    return str(request.param)


def _in_api(api: str, body: Callable[[], None]) -> None:
    """Run ``body`` as it is (sync), or in a greenlet on a fresh event loop (async)."""
    if api == "sync":
        body()
        return
    from sqlalchemy.util.concurrency import greenlet_spawn

    async def main() -> None:
        await greenlet_spawn(body)

    asyncio.run(asyncio.wait_for(main(), 180))


def _cluster_engine(cluster: _Cluster, api: str = "sync", **kwargs: Any) -> sa.Engine:
    hosts = "&".join(f"host={address}" for address in cluster.addresses)
    if api == "async":
        from sqlalchemy.ext.asyncio import create_async_engine

        url = f"sqlite+dqlitepy_async:///failover.db?{hosts}"
        engine = create_async_engine(url, **kwargs).sync_engine
        assert engine.dialect.is_async
    else:
        engine = sa.create_engine(f"sqlite+dqlitepy:///failover.db?{hosts}", **kwargs)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    return engine


def _leader(engine: sa.Engine) -> dqlitepy.NodeInfo:
    servers = engine.url.query["host"]
    with dqlitepy.Client(list(servers)) as admin:
        leader = admin.leader()
    assert leader is not None
    return leader


class FailoverTest(fixtures.TestBase):
    """Leader changes on a 3-node cluster: the pool must let go of the old leader.

    Each test runs with both dialects (``dialect_api``).
    """

    def test_pool_drops_connections_to_a_killed_leader(
        self, cluster: _Cluster, dialect_api: str
    ) -> None:
        _in_api(dialect_api, lambda: self._killed_leader(cluster, dialect_api))

    def _killed_leader(self, cluster: _Cluster, api: str) -> None:
        engine = _cluster_engine(cluster, api)
        conn = engine.connect()
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")  # a transaction is open
        idle = engine.connect()
        idle.exec_driver_sql("SELECT 1")
        idle.close()  # back in the pool, connected to the leader

        cluster.kill(_leader(engine).address)
        with pytest.raises(exc.OperationalError) as info:
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        # The transaction is gone with the leader: SQLAlchemy is told the connection
        # is invalid (and every pooled connection of that time with it).
        assert info.value.connection_invalidated
        assert isinstance(info.value.orig, dqlitepy.ConnectionLostError)
        conn.close()

        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (3)")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalars().all() == [3]
        engine.dispose()

    def test_pool_drops_connections_to_a_deposed_leader(
        self, cluster: _Cluster, dialect_api: str
    ) -> None:
        _in_api(dialect_api, lambda: self._deposed_leader(cluster, dialect_api))

    def _deposed_leader(self, cluster: _Cluster, api: str) -> None:
        # Leadership moves while the old leader stays up: its sockets still work, it
        # only answers "not leader".
        engine = _cluster_engine(cluster, api)
        conn = engine.connect()
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        old = _leader(engine)
        with dqlitepy.Client(cluster.addresses) as admin:
            other = next(n for n in admin.cluster() if n.id != old.id)
            admin.transfer(other.id)
        deadline = time.monotonic() + 30
        while _leader(engine).id != other.id:  # a dqlitepy node answers before it moved
            assert time.monotonic() < deadline, "leadership did not move"
            time.sleep(0.05)
        with pytest.raises(exc.OperationalError) as info:
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
        assert info.value.connection_invalidated
        assert engine.dialect.is_disconnect(info.value.orig, None, None)  # type: ignore[arg-type]
        conn.close()

        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (3)")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalars().all() == [3]
        assert _leader(engine).id == other.id
        engine.dispose()

    def test_pre_ping_moves_pooled_connections_to_the_new_leader(
        self, cluster: _Cluster, dialect_api: str
    ) -> None:
        _in_api(dialect_api, lambda: self._pre_ping(cluster, dialect_api))

    def _pre_ping(self, cluster: _Cluster, api: str) -> None:
        engine = _cluster_engine(cluster, api, pool_pre_ping=True)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        cluster.kill(_leader(engine).address)
        with engine.begin() as conn:  # the pooled connection pings, and finds the new leader
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
        engine.dispose()


# ------------------------------------------------- the asyncio dialect through a leader kill


class AsyncFailoverTest(fixtures.TestBase):
    """``create_async_engine("sqlite+dqlitepy_async://...")`` through a leader SIGKILL: tasks
    writing through the kill lose no acknowledged write, see only errors of unknown outcome,
    and the pool invalidates the connections those came from (the blocking dialect's
    ``is_disconnect``)."""

    def test_async_engine_writes_through_a_leader_kill(self, cluster: _Cluster) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        hosts = "&".join(f"host={address}" for address in cluster.addresses)
        url = f"sqlite+dqlitepy_async:///async_failover.db?{hosts}"
        leader = _leader(sa.create_engine(url.replace("_async", "", 1)))
        acked: list[int] = []
        unknown: list[int] = []

        async def main() -> None:
            engine = create_async_engine(url, pool_size=8)
            async with engine.begin() as conn:
                await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            killed = asyncio.Event()

            async def writer(task: int) -> None:
                after = 0
                for seq in itertools.count():
                    value = task * 100_000 + seq
                    try:
                        async with engine.begin() as conn:
                            await conn.exec_driver_sql("INSERT INTO t VALUES (?)", (value,))
                    except exc.OperationalError as error:
                        # Only the leader's loss may fail a write (the error says what
                        # became of it), and the pool knows the connection is gone.
                        assert error.connection_invalidated, error
                        outcome = getattr(error.orig, "outcome", None)
                        assert outcome in ("unknown", "rolled back", "not run"), error
                        if outcome == "unknown":
                            unknown.append(value)
                        continue
                    acked.append(value)
                    after += killed.is_set()
                    if after >= 3:
                        return

            writers = [asyncio.create_task(writer(i)) for i in range(8)]
            while len(acked) < 16:
                await asyncio.sleep(0.05)
            cluster.kill(leader.address)
            killed.set()
            await asyncio.gather(*writers)
            async with engine.connect() as conn:
                result = await conn.exec_driver_sql("SELECT x FROM t")
                rows = Counter(result.scalars().all())
            await engine.dispose()
            assert all(n == 1 for n in rows.values()), "a write was applied twice"
            assert not set(acked) - set(rows), "an acknowledged write was lost"
            assert set(rows) <= set(acked) | set(unknown), "a write nobody sent"

        asyncio.run(asyncio.wait_for(main(), 120))
