"""Alias of :mod:`dqlitepy`, as ``sqlite3.dbapi2`` is of ``sqlite3``."""

from __future__ import annotations

from . import *  # noqa: F403
from . import __all__  # noqa: F401
