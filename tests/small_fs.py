"""Small real file systems for disk-full tests: a tmpfs mounted for the test, filled on demand.

Mounting needs root (CI runs as root); :data:`needs_root` skips a test with the reason
otherwise.  Every mount is unmounted and its directory removed when the context exits, also
when the test fails; processes using the mount must be stopped before that.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["FILLER", "fill", "needs_root", "small_filesystem", "unfill"]

#: The name of the file that fills a small file system.
FILLER = "filler"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a small tmpfs to fill needs root (CI runs the disk-full tests as root)",
)


@contextmanager
def small_filesystem(size_mib: int, *, parent: Path | None = None) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted on a new directory, unmounted and removed on exit."""
    mount_point = Path(tempfile.mkdtemp(prefix="dqlitepy-smallfs-", dir=parent))
    try:
        subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={size_mib}m,mode=0755",
                "tmpfs",
                str(mount_point),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except BaseException:
        mount_point.rmdir()
        raise
    try:
        yield mount_point
    finally:
        _unmount(mount_point)


def _unmount(mount_point: Path) -> None:
    # A process that was just killed may still hold a file for a moment.
    for _ in range(50):
        done = subprocess.run(
            ["umount", str(mount_point)], capture_output=True, timeout=30, check=False
        )
        if done.returncode == 0:
            break
        time.sleep(0.1)
    else:
        # Detach it at least, so nothing is left mounted; the memory is freed when unused.
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)
    shutil.rmtree(mount_point, ignore_errors=True)


def fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` up to the last byte; returns the filler."""
    filler = directory / FILLER
    chunk = bytes(1 << 20)
    with filler.open("ab", buffering=0) as out:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            while True:
                try:
                    out.write(chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def unfill(directory: Path) -> None:
    """Delete the filler written by :func:`fill` (frees the space at once)."""
    (directory / FILLER).unlink(missing_ok=True)
