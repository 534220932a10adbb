"""Fixtures giving tests a real dqlite cluster (``dqlite-demo`` nodes from Debian's go-dqlite).

Nothing is skipped silently: without ``/usr/bin/dqlite-demo`` and ``/usr/bin/dqlite`` a test that
needs a cluster fails, unless ``DQLITEPY_NO_DQLITE=1`` says to skip such tests.

dqlitepy's own pytest plugin (``dqlitepy.testing``: the ``dqlitepy_node`` and
``dqlitepy_cluster`` fixtures users get) is loaded by ``-p dqlitepy.testing`` in
pyproject.toml's ``addopts``, for a checkout whose installed metadata does not declare it yet
(not by ``pytest_plugins`` here: this module imports it before pytest would get to mark it
for assertion rewriting).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from dqlite_cluster import DQLITE_DEMO, DQLITE_SHELL, DqliteDemoCluster
from dqlitepy_server import DqlitepyServer

from dqlitepy.testing import Cluster


def _require_dqlite() -> None:
    if os.environ.get("DQLITEPY_NO_DQLITE") == "1":
        pytest.skip("DQLITEPY_NO_DQLITE=1: tests that need a real dqlite cluster are skipped")
    missing = [path for path in (DQLITE_DEMO, DQLITE_SHELL) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: install Debian's go-dqlite package "
            "(apt-get install go-dqlite), or set DQLITEPY_NO_DQLITE=1 to skip the tests "
            "that need a real dqlite cluster",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def dqlite_cluster() -> Iterator[DqliteDemoCluster]:
    """A 3-node dqlite cluster shared by the whole session. Do not kill, stop or reconfigure
    its nodes; use ``fresh_dqlite_cluster`` for that."""
    _require_dqlite()
    with DqliteDemoCluster() as cluster:
        cluster.start(3)
        yield cluster


@pytest.fixture
def fresh_dqlite_cluster() -> Iterator[DqliteDemoCluster]:
    """A new 3-node dqlite cluster for one test, which may kill, stop or restart its nodes."""
    _require_dqlite()
    with DqliteDemoCluster() as cluster:
        cluster.start(3)
        yield cluster


# -- driver tests: backend-independent fixtures ---------------------------------------------------
# Driver, admin and failover tests ask for ``servers``/``db_name``/``connect`` instead of a
# particular cluster, so the same tests can later run against another server implementation:
# add its name to DRIVER_BACKENDS and a branch to ``servers``.

import contextlib  # noqa: E402
import itertools  # noqa: E402
import re  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import dqlitepy  # noqa: E402

#: The server implementations the driver tests run against: the real C dqlite
#: (3 dqlite-demo nodes), ours as one `dqlitepy server` process, and ours as a
#: replicated cluster of 3 `dqlitepy server` processes.
DRIVER_BACKENDS = ["dqlite", "dqlitepy", "dqlitepy-cluster"]

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def shared_dqlitepy_node() -> Iterator[DqlitepyServer]:
    """A standalone `dqlitepy server` process shared by the session (do not kill it; the
    plugin's ``dqlitepy_node()`` starts one for a test)."""
    with DqlitepyServer() as node:
        yield node


@pytest.fixture(scope="session")
def shared_dqlitepy_cluster() -> Iterator[Cluster]:
    """Three replicating `dqlitepy server` processes shared by the session (do not kill them;
    the plugin's ``dqlitepy_cluster()`` starts a cluster for a test)."""
    with Cluster(3) as cluster:
        yield cluster


@pytest.fixture(params=DRIVER_BACKENDS)
def servers(request: pytest.FixtureRequest) -> list[str]:
    """The node addresses of a shared, running 3-node cluster of one backend.

    The cluster is shared by the session: do not kill, stop or reconfigure its nodes.
    """
    if request.param == "dqlite":
        cluster: DqliteDemoCluster = request.getfixturevalue("dqlite_cluster")
        return list(cluster.addresses)
    if request.param == "dqlitepy":
        node: DqlitepyServer = request.getfixturevalue("shared_dqlitepy_node")
        return [node.address]
    if request.param == "dqlitepy-cluster":
        shared: Cluster = request.getfixturevalue("shared_dqlitepy_cluster")
        return shared.addresses
    raise AssertionError(f"unknown backend {request.param!r}")


@pytest.fixture
def db_name(request: pytest.FixtureRequest) -> str:
    """A database name no other test uses, so tests never see each other's tables."""
    base = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:40]
    return f"{base}_{next(_db_counter)}_{uuid.uuid4().hex[:8]}"


#: The drivers a test marked ``both_drivers`` runs with: the blocking one, and
#: ``dqlitepy.aio`` through the blocking calling convention (``tests/aio_facade.py``).
DRIVERS = ["sync", "async"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker
    if (
        "driver" in metafunc.fixturenames
        and marked("both_drivers") is not None
        and marked("sync_driver_only") is None
    ):
        metafunc.parametrize("driver", DRIVERS, indirect=True)


@pytest.fixture
def driver(request: pytest.FixtureRequest) -> str:
    """``"sync"`` (``dqlitepy.connect``), or ``"async"`` (``dqlitepy.aio.connect`` behind
    the blocking surface) in tests marked ``both_drivers``."""
    return str(getattr(request, "param", "sync"))


@pytest.fixture
def connect(
    servers: list[str], db_name: str, driver: str
) -> Iterator[Callable[..., dqlitepy.Connection]]:
    """``connect(database=db_name, **kwargs)``: a ``dqlitepy.connect`` to ``servers`` whose
    connections are all closed at teardown. ``servers=`` may be overridden.  In a test
    marked ``both_drivers`` it is ``dqlitepy.aio.connect`` too (see ``driver``)."""
    made: list[dqlitepy.Connection] = []

    def factory(database: str | None = None, /, **kwargs: Any) -> dqlitepy.Connection:
        kwargs.setdefault("servers", servers)
        name = db_name if database is None else database
        if driver == "async":
            import aio_facade

            conn: Any = aio_facade.connect(name, **kwargs)
        else:
            conn = dqlitepy.connect(name, **kwargs)
        made.append(conn)
        return conn  # type: ignore[no-any-return]

    yield factory
    for conn in made:
        # A connection made in another thread refuses close() from this one.
        with contextlib.suppress(dqlitepy.ProgrammingError):
            conn.close()


def _outcome(fn: Callable[[Any, Any], Any], conn: Any, module: Any) -> tuple[Any, ...]:
    try:
        return ("returned", fn(conn, module))
    except Exception as exc:  # sqlite3 and dqlitepy have different classes: compare by name
        return ("raised", type(exc).__name__, str(exc))


@pytest.fixture
def compare(
    connect: Callable[..., dqlitepy.Connection], db_name: str
) -> Callable[..., tuple[Any, Any]]:
    """``compare(fn, **connect_kwargs) -> (expected, actual)``.

    Runs ``fn(conn, module)`` once on ``sqlite3.connect(":memory:")`` (module ``sqlite3``) and
    once on a fresh ``dqlitepy`` database (module ``dqlitepy``). Each outcome is
    ``("returned", value)`` or ``("raised", exception class name, message)``.
    """
    import sqlite3

    runs = itertools.count()

    def run(fn: Callable[[Any, Any], Any], **kwargs: Any) -> tuple[Any, Any]:
        reference = sqlite3.connect(":memory:", **kwargs)
        try:
            expected = _outcome(fn, reference, sqlite3)
        finally:
            reference.close()
        actual = _outcome(fn, connect(f"{db_name}_c{next(runs)}", **kwargs), dqlitepy)
        return expected, actual

    return run
