"""Alembic's compliance suite for third-party dialects."""

from alembic.testing.suite import *  # noqa: F403
