"""SQLAlchemy's dialect compliance suite, as SQLAlchemy's README.dialects.rst runs it.

Everything comes from ``sqlalchemy.testing.suite``; the classes redefined below
adjust tests that take a feature for granted without asking the requirements
for it (README.dialects.rst: "a test can also be directly modified").  Each
still runs every part the dialect supports.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import MetaData, event, inspect, testing
from sqlalchemy.testing import config, engines, eq_
from sqlalchemy.testing.suite import *  # noqa: F403
from sqlalchemy.testing.suite import ComponentReflectionTest as _ComponentReflectionTest
from sqlalchemy.testing.suite import (
    ComponentReflectionTestExtra as _ComponentReflectionTestExtra,
)
from sqlalchemy.testing.suite import UnicodeSchemaTest as _UnicodeSchemaTest


class ComponentReflectionTest(_ComponentReflectionTest):
    # test_metadata reflects "test_schema" without requiring ``schemas``; run its
    # schema variant only where the requirements have schemas (a dqlite server
    # refuses the ATTACH that SQLite schemas are made of: Requirements.schemas).
    @testing.combinations((True, testing.requires.schemas), False, argnames="use_schema")
    @testing.combinations((True, testing.requires.views), False, argnames="views")
    def test_metadata(self, connection: Any, use_schema: bool, views: bool) -> None:
        # The body of SQLAlchemy's test (the decorated original cannot be called).
        m = MetaData()
        schema = config.test_schema if use_schema else None
        m.reflect(connection, schema=schema, views=views, resolve_fks=False)

        insp = inspect(connection)
        tables = insp.get_table_names(schema)
        if views:
            tables += insp.get_view_names(schema)
            with contextlib.suppress(NotImplementedError):
                tables += insp.get_materialized_view_names(schema)
        if schema:
            tables = [f"{schema}.{t}" for t in tables]
        eq_(sorted(m.tables), sorted(tables))


class ComponentReflectionTestExtra(_ComponentReflectionTestExtra):
    # The CHECK constraint tests run once in "test_schema" and once in the default
    # schema, without requiring ``schemas``; the same rule as above.
    @testing.fixture(params=[True, False])
    def use_schema_fixture(self, request: Any) -> str | None:
        if request.param:
            if not testing.requires.schemas.enabled:
                config.skip_test("schemas: not supported (see Requirements.schemas)")
            return config.test_schema
        return None


class UnicodeSchemaTest(_UnicodeSchemaTest):
    # For SQLite, the suite declares foreign keys that point at columns with no
    # UNIQUE constraint.  SQLite accepts that DDL but rejects any write to such a
    # child table ("foreign key mismatch") once foreign keys are enforced; they are
    # not by default, and the suite's SQLite runs rely on that.  dqlite enforces
    # them on every connection (as the C server does), so this class runs its
    # connections with SQLite's default, enforcement off.
    @classmethod
    def setup_bind(cls) -> Any:
        engine = engines.testing_engine()

        @event.listens_for(engine, "connect")
        def foreign_keys_off(dbapi_connection: Any, connection_record: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys = OFF")

        return engine
