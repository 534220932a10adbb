"""dqlitepy: highly-available SQLite, a Python re-creation of dqlite."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
