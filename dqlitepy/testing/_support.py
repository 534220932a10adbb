"""Small helpers of the test harness: free ports, probes, process states, log tails."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["HarnessError", "accepts", "free_port", "process_state", "tail", "wait_for"]

_T = TypeVar("_T")

# Ports handed out by this process, never handed out twice: a node that has not bound its
# port yet would otherwise share it with the next one.
_given: set[int] = set()
_given_lock = threading.Lock()
# Linux's default ephemeral range, when /proc does not say.
_EPHEMERAL_DEFAULT = (32768, 60999)
_LOWEST = 10000


class HarnessError(RuntimeError):
    """A node or cluster of the harness could not be started, reached or stopped in time.

    The message says what was awaited and, where there is one, ends with the tail of each
    node's log.
    """


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago and that this process has not
    handed out before.

    The port is drawn below the kernel's ephemeral range: the kernel picks the source port of
    every outgoing connection (and every ``bind(("", 0))``) from that range, so a port drawn
    there could be taken by any client on the machine before the node binds it.  Where the
    range leaves no room below it, the kernel picks (``bind`` to port 0).

    Raises:
        HarnessError: no free port was found.
    """
    low, _ = _ephemeral_range()
    with _given_lock:
        if low - _LOWEST >= 1000:
            for _ in range(200):
                port = random.randrange(_LOWEST, low)
                if port not in _given and _bindable(host, port):
                    _given.add(port)
                    return port
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _given:
                _given.add(port)
                return port
    raise HarnessError(f"no free TCP port found on {host}")


def accepts(address: str, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def process_state(pid: int) -> str | None:
    """The one-letter state of a process from ``/proc/PID/stat`` ("T": stopped), or None
    where /proc does not say (not Linux, or no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; the state follows it.
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


def tail(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def wait_for(
    condition: Callable[[], _T | None],
    what: Callable[[], str],
    timeout: float,
    interval: float = 0.05,
) -> _T:
    """Poll ``condition`` until it returns something other than None or False.

    Raises:
        HarnessError: ``timeout`` seconds passed; the message is ``what()``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:g} s waiting for {what()}")
        time.sleep(interval)
