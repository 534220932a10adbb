"""The SQLAlchemy dialect: ``create_engine("sqlite+dqlitepy://host:9001/app.db")``.

The dialect is SQLAlchemy's SQLite dialect (``name = "sqlite"``: SQLite's SQL,
reflection and Alembic's SQLite support apply unchanged) driven by
:func:`dqlitepy.connect` instead of the standard library's ``sqlite3``.  It is
registered under the ``sqlalchemy.dialects`` entry points ``sqlite.dqlitepy``
and ``dqlite``; see ``docs/sqlalchemy.md`` for the URL forms.

Importing this package imports SQLAlchemy (the ``sqlalchemy`` extra) but never
``sqlalchemy.testing``; the test-suite wiring lives in :mod:`.provision` and
:mod:`.requirements`.
"""

from __future__ import annotations

from .dialect import SQLiteDialect_dqlitepy, dialect

__all__ = ["SQLiteDialect_dqlitepy", "dialect"]
