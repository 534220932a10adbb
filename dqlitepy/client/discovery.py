"""Leader discovery: which node of the cluster leads, and a registered connection to it.

:func:`find_leader` follows go-dqlite's connector (``protocol.md`` §5.2): ask
any node for the leader, dial the leader, check it names itself, register with
CLIENT.  Each attempt has its own timeout so one dead node cannot eat the
budget, and a search in which every node refuses the connection ends early
(``refused_timeout``): nothing is listening, so no election is about to end.

A TLS failure that retrying cannot cure (a certificate the client or the
server rejects, or a TLS node refusing a plain-text client with
``SQLITE_AUTH``, :attr:`~dqlitepy.wire.ErrorCode.SQLITE_AUTH`) ends the search
once every node has been tried, instead of retrying until the deadline.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..wire import (
    PROTOCOL_VERSION_LEGACY,
    ClientRequest,
    ErrorCode,
    LeaderRequest,
    ProtocolError,
    ServerResponse,
    WelcomeResponse,
)
from .errors import (
    ConnectionLostError,
    DatabaseError,
    NoLeaderError,
    OperationalError,
    make_error,
)
from .needs import Gen, Sleep
from .protocol import Protocol, is_tls_failure

if TYPE_CHECKING:
    import ssl


__all__ = ["find_leader"]

log = logging.getLogger("dqlitepy.client")

#: The longest pause between two rounds of leader discovery.
_MAX_DISCOVERY_DELAY = 0.25


def _ask_leader(
    address: str, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> Gen[tuple[Protocol, ServerResponse]]:
    """Dial a node and ask it for the leader, falling back to the legacy handshake."""
    try:
        proto = yield from Protocol.open(address, timeout, ssl_context=ssl_context)
        return (yield from _call_leader(proto, timeout))
    except ConnectionLostError as exc:
        if (
            not exc.request_sent
            or isinstance(exc.__cause__, TimeoutError | socket.timeout)
            or is_tls_failure(exc)
        ):
            raise
    # go-dqlite retries with the legacy version when v1 got EOF or a reset.
    proto = yield from Protocol.open(address, timeout, PROTOCOL_VERSION_LEGACY, ssl_context)
    return (yield from _call_leader(proto, timeout))


def _call_leader(proto: Protocol, timeout: float) -> Gen[tuple[Protocol, ServerResponse]]:
    try:
        return proto, (yield from proto.call(LeaderRequest(), ServerResponse, timeout))
    except BaseException:
        proto.close()
        raise


class _Refused(ConnectionLostError):
    """The node asked first refused the connection (nothing listens there)."""


def _refused(exc: ConnectionLostError) -> bool:
    # A dial that failed at once (ECONNREFUSED, an unknown host, a missing
    # socket) rather than timing out, which a frozen or far-away node does.
    cause = exc.__cause__
    return (
        not exc.request_sent and isinstance(cause, OSError) and not isinstance(cause, TimeoutError)
    )


def _try_node(
    address: str, attempt_timeout: float, ssl_context: ssl.SSLContext | None = None
) -> Gen[Protocol | None]:
    """One attempt through one node: a Protocol to the leader, or None.

    Raises:
        _Refused: ``address`` refused the connection.
    """
    deadline = time.monotonic() + attempt_timeout
    try:
        proto, leader = yield from _ask_leader(address, attempt_timeout, ssl_context)
    except ConnectionLostError as exc:
        if _refused(exc) and not is_tls_failure(exc):
            raise _Refused(str(exc), request_sent=False) from exc
        raise
    if leader.address != address:
        proto.close()
        if not leader.address:
            return None
        proto, leader = yield from _ask_leader(
            leader.address, max(0.05, deadline - time.monotonic()), ssl_context
        )
        if leader.address != proto.address:
            # The node it named does not think it leads: an election is under way.
            proto.close()
            return None
    try:
        yield from proto.call(
            ClientRequest(0), WelcomeResponse, max(0.05, deadline - time.monotonic())
        )
    except BaseException:
        proto.close()
        raise
    return proto


def _mismatched(exc: BaseException) -> bool:
    """True if ``exc`` says this node's TLS set-up does not match ours.

    A TLS failure retrying cannot cure, or a TLS node refusing a plain-text
    client's first request: asking the node again changes nothing.
    """
    return is_tls_failure(exc) or getattr(exc, "sqlite_errorcode", 0) == ErrorCode.SQLITE_AUTH


class _Search:
    """The bookkeeping of one leader search: what each node said, and when to give up.

    Args:
        order: the addresses, in the order they are tried each round.
        total_timeout: the overall budget.
        refused_timeout: give up sooner once every node has refused the
            connection for this long (None: never sooner).
    """

    def __init__(
        self, order: list[str], total_timeout: float, refused_timeout: float | None
    ) -> None:
        self.order = order
        self.total_timeout = total_timeout
        self.refused_timeout = refused_timeout
        started = time.monotonic()
        self.deadline = started + total_timeout
        # When a node last accepted a connection; the search began as if one had.
        self.last_accepted = started
        self.delay = 0.1
        self.errors: dict[str, str] = {}
        # Nodes whose TLS set-up does not match ours: asking them again changes nothing.
        self.mismatched: set[str] = set()

    def _detail(self, addresses: Iterable[str]) -> str:
        return "; ".join(f"{a}: {self.errors[a]}" for a in addresses)

    def failed(self, address: str, exc: BaseException, *, accepted: bool) -> None:
        """Record a failed attempt through ``address`` (``accepted``: it took the connection)."""
        if accepted:
            self.last_accepted = time.monotonic()
        self.errors[address] = str(exc)
        log.debug("leader discovery through %s failed: %s", address, exc)

    def mismatch(self, address: str, exc: BaseException) -> None:
        """Leave ``address`` out of later rounds; give up once every node is left out.

        Raises:
            OperationalError: every node's TLS set-up differs from ours.
        """
        self.mismatched.add(address)
        if self.mismatched.issuperset(self.order):
            raise make_error(
                OperationalError,
                f"cannot connect to any dqlite server ({self._detail(self.order)})",
            ) from exc

    def pause(self) -> float:
        """How long to wait before the next round (backing off), or give up.

        Raises:
            NoLeaderError: the budget is spent, or every node refused the
                connection for ``refused_timeout``.
        """
        now = time.monotonic()
        left = self.deadline - now
        detail = self._detail(self.errors)
        if left <= 0:
            raise NoLeaderError(f"no leader found within {self.total_timeout:g}s ({detail})")
        pause = min(self.delay, left)
        if self.refused_timeout is not None:
            refused_left = self.last_accepted + self.refused_timeout - now
            if refused_left <= 0:
                raise NoLeaderError(
                    f"no dqlite server accepted a connection within {self.refused_timeout:g}s; "
                    f"every one refused it ({detail})"
                )
            pause = min(pause, refused_left)
        self.delay = min(self.delay * 2, _MAX_DISCOVERY_DELAY)
        return pause


def _round(
    search: _Search, attempt_timeout: float, ssl_context: ssl.SSLContext | None
) -> Gen[Protocol | None]:
    """Try every node once: a connection to the leader, or None."""
    for address in search.order:
        left = search.deadline - time.monotonic()
        if left <= 0:
            break
        if address in search.mismatched:
            continue
        try:
            proto = yield from _try_node(address, min(attempt_timeout, left), ssl_context)
        except _Refused as exc:
            search.failed(address, exc, accepted=False)
            continue
        except (DatabaseError, ProtocolError, OSError) as exc:
            search.failed(address, exc, accepted=True)
            if _mismatched(exc):
                search.mismatch(address, exc)
            elif not isinstance(exc, OperationalError | ProtocolError | OSError):
                raise
            continue
        search.last_accepted = time.monotonic()
        if proto is not None:
            return proto
        search.errors[address] = "no leader known"
    return None


def find_leader(
    servers: Sequence[str],
    *,
    attempt_timeout: float,
    total_timeout: float,
    preferred: Iterable[str] = (),
    refused_timeout: float | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Gen[Protocol]:
    """Return a connection to the current leader, registered with CLIENT.

    Args:
        servers: known node addresses.
        attempt_timeout: the budget of one attempt through one node.
        total_timeout: the overall budget; rounds are retried with exponential
            backoff (100 ms, doubling, capped at 250 ms: an election takes about
            a second, and a lower cap finds its winner sooner) until it runs out.
        preferred: addresses tried first (e.g. the last known leader).
        refused_timeout: give up sooner when every node has refused the
            connection for this long (None: never sooner).  A node that accepts
            it, even one that knows no leader yet, lets the search go on until
            ``total_timeout``: an election ends, a cluster that is down does not.
        ssl_context: connect with TLS.

    Raises:
        NoLeaderError: no leader could be found within ``total_timeout``, or
            every node refused the connection for ``refused_timeout``.
        OperationalError: TLS failed with every node in a way retrying cannot
            cure (a rejected certificate, TLS on one side only); raised as soon
            as every node has been tried.
    """
    order = list(dict.fromkeys([*preferred, *servers]))
    if not order:
        raise NoLeaderError("no dqlite servers to connect to")
    search = _Search(order, total_timeout, refused_timeout)
    while True:
        proto = yield from _round(search, attempt_timeout, ssl_context)
        if proto is not None:
            return proto
        yield Sleep(search.pause())
