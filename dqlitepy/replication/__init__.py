"""Replication of dqlitepy's databases over Raft (PySyncObj, hardened).

This package is the only one allowed to import ``pysyncobj``.
"""
