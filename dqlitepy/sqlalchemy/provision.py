"""Test provisioning for ``sqlite+dqlitepy``, loaded by SQLAlchemy's test plugin.

SQLAlchemy finds this module through ``Dialect.load_provisioning()`` (the
dialect's package + ``.provision``).  Its hooks are chosen by backend name, and
ours is ``sqlite``, so SQLAlchemy's own SQLite hooks are loaded first and kept
(temporary tables, upsert, pool sharing, ...) except where a network database
needs something else; those hooks delegate to SQLAlchemy's for other SQLite
drivers, so a ``sqlite+pysqlite`` run in the same process behaves as usual:

- no ``ATTACH DATABASE ... AS test_schema`` on connect: a dqlite server refuses
  ATTACH (schemas are closed in :mod:`.requirements`);
- database names are kept as given (they name databases on the server, not
  files here), and there are no local files to create or delete.

The same hooks are registered for the ``dqlite`` backend name that the
``dqlite://`` alias gives its URLs.
"""

from __future__ import annotations

from typing import Any

# Imported for its side effect: SQLAlchemy's SQLite hooks, which ours wrap.
from sqlalchemy.dialects.sqlite import provision as _sqlite_provision  # noqa: F401
from sqlalchemy.engine import url as sa_url
from sqlalchemy.testing import provision

__all__: list[str] = []

#: Our drivers: the blocking one and the asyncio one (``dialect_async``).
_DRIVERS = ("dqlitepy", "dqlitepy_async")


def _is_dqlitepy(url: Any) -> bool:
    url = sa_url.make_url(url)
    return url.drivername in ("sqlite+dqlitepy", "sqlite+dqlitepy_async", "dqlite")


def _override(hook: provision.register, fn: Any) -> None:
    """Register ``fn`` for SQLite URLs, falling back to SQLAlchemy's SQLite hook."""
    sqlite_fn = hook.fns.get("sqlite", hook.fns["*"])
    hook.fns["sqlite"] = fn(sqlite_fn)


def _generate_driver_url(sqlite_fn: Any) -> Any:
    def generate_driver_url(url: Any, driver: str, query_str: str) -> Any:
        if driver not in _DRIVERS:
            return sqlite_fn(url, driver, query_str)
        # The database is a name on the server: keep it as configured.
        url = sa_url.make_url(url)
        return url.set(drivername=f"sqlite+{driver}")

    return generate_driver_url


def _follower_url_from_main(sqlite_fn: Any) -> Any:
    def follower_url_from_main(url: Any, ident: str) -> Any:
        if not _is_dqlitepy(url):
            return sqlite_fn(url, ident)
        # One database per pytest-xdist worker, on the same server.
        url = sa_url.make_url(url)
        return url.set(database=f"{ident}_{url.database}")

    return follower_url_from_main


def _post_configure_engine(sqlite_fn: Any) -> Any:
    def post_configure_engine(url: Any, engine: Any, follower_ident: str | None) -> None:
        if not _is_dqlitepy(url):
            sqlite_fn(url, engine, follower_ident)
        # dqlitepy: SQLAlchemy's SQLite hook ATTACHes a "test_schema" file to every
        # connection and deletes the database file on dispose; neither applies.

    return post_configure_engine


def _drop_db(sqlite_fn: Any) -> Any:
    def drop_db(cfg: Any, eng: Any, ident: str) -> None:
        if not _is_dqlitepy(eng.url):
            sqlite_fn(cfg, eng, ident)
        # dqlitepy: the databases live in the data directory of the node the test
        # session started, which goes away with it.

    return drop_db


def _run_reap_dbs(sqlite_fn: Any) -> Any:
    def run_reap_dbs(url: Any, idents: Any) -> None:
        if not _is_dqlitepy(url):
            sqlite_fn(url, idents)

    return run_reap_dbs


_override(provision.generate_driver_url, _generate_driver_url)
_override(provision.follower_url_from_main, _follower_url_from_main)
_override(provision.post_configure_engine, _post_configure_engine)
_override(provision.drop_db, _drop_db)
_override(provision.run_reap_dbs, _run_reap_dbs)

# ``dqlite://`` URLs have the backend name "dqlite": give them the SQLite hooks too.
for _hook in vars(provision).values():
    if isinstance(_hook, provision.register) and "sqlite" in _hook.fns:
        _hook.fns.setdefault("dqlite", _hook.fns["sqlite"])
