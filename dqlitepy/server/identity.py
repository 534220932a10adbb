"""What a node remembers about itself across restarts: its id and its first Raft configuration.

Both are written once, on the node's first start, and read on every later one:

- ``node-identity.cbor``: the node's id.  The first node of a cluster takes
  :data:`BOOTSTRAP_ID`, as go-dqlite's app does; a joining node a random odd
  63-bit id.
- ``raft/initial-voters.cbor``: the voters Raft started with, whether this
  node was one of them, and the address it started under (its Raft identity,
  which a restart must keep: ``node.py``; files written before it was recorded
  have none, and are not checked).  A restart must start Raft from the same configuration
  (the log's own configuration entries then take over): the first node of a
  cluster starts alone, as a voter; a joining node with the voters the cluster
  had when it joined, as none (its role comes from the log).

The record of which cluster the directory belongs to is ``datadir.py``'s.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cbor2

from .datadir import StartupRefused

__all__ = ["BOOTSTRAP_ID", "InitialConfiguration", "UnreadableRecord", "load_node_id"]

#: The id go-dqlite's app gives the first node of a cluster; we do the same.
BOOTSTRAP_ID: Final = 0x2DC171858C3155BE

_IDENTITY_FILE: Final = "node-identity.cbor"
_IDENTITY_VERSION: Final = 1
_CONFIGURATION_FILE: Final = Path("raft") / "initial-voters.cbor"
_CONFIGURATION_VERSION: Final = 1


class UnreadableRecord(StartupRefused):
    """A record of the node's identity or first configuration cannot be read."""


def _write(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` so that a crash leaves the old file or the new one, never half."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        cbor2.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_node_id(data_dir: Path, *, bootstrap: bool) -> int:
    """This node's id: the recorded one, or a new one recorded now.

    Args:
        data_dir: the node's data directory.
        bootstrap: the node starts a cluster (it takes :data:`BOOTSTRAP_ID`).

    Raises:
        ValueError: the identity file is not one this version wrote.
    """
    path = data_dir / _IDENTITY_FILE
    if path.exists():
        with path.open("rb") as f:
            record = cbor2.load(f)
        if not isinstance(record, dict) or record.get("version") != _IDENTITY_VERSION:
            raise ValueError(f"unrecognised node identity file {str(path)!r}")
        node_id = record["id"]
        if not isinstance(node_id, int):
            raise ValueError(f"bad node id in {str(path)!r}")
        return node_id
    node_id = BOOTSTRAP_ID if bootstrap else secrets.randbits(63) | 1
    _write(path, {"version": _IDENTITY_VERSION, "id": node_id})
    return node_id


@dataclass(frozen=True, slots=True)
class InitialConfiguration:
    """The voters Raft starts with, whether this node is one of them, and its own address."""

    voters: tuple[str, ...]
    voting: bool
    address: str | None = None  # None: recorded by a version that did not record it

    @classmethod
    def load(cls, data_dir: Path) -> InitialConfiguration | None:
        """The configuration recorded by the node's first start, if it got that far."""
        path = data_dir / _CONFIGURATION_FILE
        if not path.exists():
            return None
        try:
            with path.open("rb") as f:
                record = cbor2.load(f)
            voters = record["voters"] if isinstance(record, dict) else None
            if not isinstance(voters, list):
                raise ValueError("no list of voters")
        except (OSError, ValueError, cbor2.CBORDecodeError) as exc:
            # Guessing the configuration could start Raft as a cluster of its own.
            raise UnreadableRecord(
                f"{str(path)!r} cannot be read ({exc}); nothing was changed: restore it from "
                "a backup, or rebuild this member (remove it, join with an empty directory)"
            ) from exc
        address = record.get("address")
        return cls(
            tuple(str(a) for a in voters),
            bool(record.get("voting", True)),
            address if isinstance(address, str) else None,
        )

    def save(self, data_dir: Path) -> None:
        """Record this configuration for every later start."""
        path = data_dir / _CONFIGURATION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(
            path,
            {
                "version": _CONFIGURATION_VERSION,
                "voters": list(self.voters),
                "voting": self.voting,
                # An optional field, so the version stays: older readers ignore it.
                "address": self.address,
            },
        )
