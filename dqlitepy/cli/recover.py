"""``dqlitepy recover -d DIR``: bring a stopped member back as the only voter of its cluster.

For a cluster that lost a majority of its voters for good (go-dqlite's
``.reconfigure``): the member in ``DIR`` is made the only member, a voter, with
every entry of its Raft log kept (:func:`dqlitepy.server.recovery.recover_member`).
Then ``dqlitepy server`` with the same address and key, without ``--join``, leads
alone, and new nodes can ``--join`` it.  ``--dry-run`` changes nothing and shows
what the member's log holds, to choose the survivor with the most recent one.

**Only when the other members are gone for good**: run against a member of a
cluster that still has a quorum somewhere, it makes a second cluster that
diverges from the first (``docs/backup.md``, "Disaster recovery").  A running
member's directory is refused (its lock is held).

Exit codes: 0 done (or shown); 2 refused, nothing changed (the directory is in
use, is no replicated member's, the cluster key is missing or wrong, the
address does not match); 1 failed.
"""

from __future__ import annotations

import argparse
import os
import sys

from dqlitepy.node import StartupRefused
from dqlitepy.server.recovery import MemberRecovery, recover_member

from .config import ConfigError, read_cluster_key

__all__ = ["add_parser", "run"]


def _roles(recovery: MemberRecovery, after: bool) -> str:
    summary = recovery.after if after else recovery.before
    return ", ".join(f"{a} {r.name.lower()}" for a, r in summary.roles.items()) or "none"


def _report(recovery: MemberRecovery, dry_run: bool, data_dir: str) -> None:
    before = recovery.before
    snapshot = "" if before.snapshot_index is None else f", snapshot at {before.snapshot_index}"
    print(
        f"member {recovery.node_id:x} at {recovery.address}: log up to entry "
        f"{before.last_index} (term {before.last_term}){snapshot}, known committed up to "
        f"{before.commit_index}"
    )
    print(f"configuration: {_roles(recovery, after=False)}")
    if recovery.cluster_id is not None:
        print(f"cluster: {recovery.cluster_id} (kept)")
    if dry_run:
        print("dry run: nothing changed")
        return
    if not recovery.changed:
        print(f"{recovery.address} is the only member already: nothing changed")
        return
    after = recovery.after
    print(
        f"recovered: {recovery.address} is the only voter now (entries "
        f"{before.last_index + 1}-{after.last_index} of term {after.last_term} appended; "
        f"{len(recovery.removed)} member(s) removed)"
    )
    print(
        f"start it with the cluster key, without --join: dqlitepy server -a "
        f"{recovery.address} -d {data_dir}"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``dqlitepy recover``; returns the exit status."""
    try:
        key = read_cluster_key(
            args.cluster_key_file or os.environ.get("DQLITEPY_CLUSTER_KEY_FILE") or None,
            os.environ.get("DQLITEPY_CLUSTER_KEY"),
        )
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    try:
        recovery = recover_member(
            args.data_dir, cluster_key=key, address=args.address, apply=not args.dry_run
        )
    except StartupRefused as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"Error: recovery of {args.data_dir!r} failed: {exc}", file=sys.stderr)
        return 1
    _report(recovery, args.dry_run, args.data_dir)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``recover`` and its options to the command's subparsers."""
    parser = sub.add_parser(
        "recover",
        help="make a stopped member the only voter of a cluster that lost its quorum",
        description="Disaster recovery: rewrite the Raft configuration of the stopped member "
        "in DIR so that it is the only voter, keeping its whole log. Only for a cluster whose "
        "other members are gone for good.",
    )
    parser.add_argument("-d", "--data-dir", required=True, metavar="DIR", help="its data directory")
    parser.add_argument(
        "-a",
        "--address",
        help="its address, needed only if the directory does not record it (older versions)",
    )
    parser.add_argument(
        "-k",
        "--cluster-key-file",
        help=(
            "file holding the cluster key (default: DQLITEPY_CLUSTER_KEY_FILE, "
            "else the key in DQLITEPY_CLUSTER_KEY)"
        ),
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="change nothing; show what the member's log holds"
    )
    parser.set_defaults(func=run)
