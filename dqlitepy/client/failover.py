"""Keeping a connection's server session on the cluster's leader, and the retry rules.

Theory of operation (``docs/architecture.md``, "What users see"; ``docs/driver.md``):

* Before each request the :class:`Link` checks that its socket is still open.
  A leader that died while the connection was idle left an EOF behind: the
  request was provably not sent, so the link finds the new leader
  (:func:`~dqlitepy.client.discovery.find_leader`), OPENs the database there
  and sends it, until ``leader_timeout``.
* ``not leader`` comes before execution, to a statement or to the OPEN of a
  new session: the request did not run, so it is sent again to the new leader.
* A request whose fate is unknown (the connection failed after it was sent,
  or ``leadership lost``) is never re-sent, unless the caller says it has no
  lasting effect (``retry_unknown``: a read, or a BEGIN whose session dies with
  the connection).  It raises :class:`~dqlitepy.client.errors.OperationalError`
  and the next call reconnects.
* An open transaction does not survive a change of leader: the server rolls it
  back.  The error then says what became of the request, in its message and in
  ``outcome``: a ``COMMIT`` whose reply was lost has an unknown outcome, not a
  rolled-back transaction.

Every failure is learnt by the :class:`~dqlitepy.client.transaction.Transaction`
the link shares with its session (:meth:`Transaction.lose`).
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from ..wire import OPEN_BUSY_TIMEOUT_SHIFT, DbResponse, OpenRequest
from ..wire.record import record
from .address import parse_address
from .discovery import find_leader
from .errors import (
    OUTCOME_NOT_RUN,
    OUTCOME_ROLLED_BACK,
    OUTCOME_UNKNOWN,
    ConnectionLostError,
    Error,
    LeadershipLostError,
    NoLeaderError,
    NotLeaderError,
    NotSupportedError,
    OperationalError,
    Outcome,
    ProgrammingError,
    make_error,
)
from .needs import Gen, Sleep
from .protocol import Protocol
from .transaction import Transaction

if TYPE_CHECKING:
    import ssl as _ssl


__all__ = ["Link", "Settings"]

log = logging.getLogger("dqlitepy.client")

T = TypeVar("T")

#: The longest pause between two attempts to open the database on a new leader.
_MAX_OPEN_DELAY = 0.25


@record
class Settings:
    """What a connection reaches, and how patiently (``connect()``'s arguments).

    Attributes:
        servers: the known node addresses.
        database: the database name opened on the leader.
        timeout: how long a statement waits for a locked database; also how
            long to keep trying while every server refuses the connection.
        leader_timeout: how long to look for a leader before a call fails.
        attempt_timeout: the budget of one attempt through one node.
        request_timeout: the longest one request may wait for its response.
        max_message_size: the largest request body sent.
        ssl: the TLS context, or None for plain text.
    """

    servers: tuple[str, ...]
    database: str
    timeout: float
    leader_timeout: float
    attempt_timeout: float
    request_timeout: float | None
    max_message_size: int
    ssl: _ssl.SSLContext | None

    @classmethod
    def checked(
        cls,
        database: str,
        servers: Sequence[str],
        *,
        timeout: float,
        leader_timeout: float,
        attempt_timeout: float,
        request_timeout: float | None,
        max_message_size: int,
        ssl: _ssl.SSLContext | None,
    ) -> Settings:
        """Validate ``connect()``'s arguments before anything is dialed.

        Raises:
            OperationalError: no servers.
            ProgrammingError: a server address is invalid.
            NotSupportedError: ``database`` is private to a process (``:memory:``).
        """
        if not servers:
            raise OperationalError(
                "no dqlite servers configured: pass servers=[...], use a "
                "dqlite://host:port/db URL or set DQLITEPY_SERVERS"
            )
        for address in servers:
            try:
                parse_address(address)
            except ValueError as exc:
                # Fail now rather than retrying an unusable address for leader_timeout.
                raise ProgrammingError(str(exc)) from None
        if database == ":memory:" or not database:
            raise NotSupportedError(
                f"database name {database!r} is private to a process: connect without servers "
                "to get it from the embedded node"
            )
        return cls(
            tuple(servers),
            database,
            float(timeout),
            float(leader_timeout),
            float(attempt_timeout),
            request_timeout,
            operator.index(max_message_size),
            ssl,
        )


class Link:
    """A connection's way to the leader: one :class:`Protocol` at a time, replaced on failover.

    Args:
        settings: what to reach.
        txn: the session's transaction state, lost with the session.
        on_open: called with each new session's protocol once OPEN succeeded
            (to apply the connection's settings there): a generator, which may
            raise as OPEN may.
    """

    def __init__(
        self, settings: Settings, txn: Transaction, on_open: Callable[[Protocol], Gen[None]]
    ) -> None:
        self._settings = settings
        self._txn = txn
        self._on_open = on_open
        self._proto: Protocol | None = None

    @property
    def proto(self) -> Protocol | None:
        """The protocol of the current session, or None before the next request finds one."""
        return self._proto

    def drop(self) -> None:
        """Close the current session's socket, if any.

        dqlite has no goodbye message: closing the socket ends the session, and
        the server rolls back a transaction left open.
        """
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.close()

    def interrupt(self) -> None:
        """From another thread (or task): interrupt the query in flight, if any."""
        proto = self._proto
        if proto is not None:
            proto.interrupt()

    def connected(self, deadline: float | None = None) -> Gen[Protocol]:
        """Return a live protocol to the leader with the database open.

        Opening a session on a new leader is retried until ``deadline``
        (default: ``leader_timeout`` from now): OPEN changes nothing in the
        database, so it is sent again whether a node that stopped leading
        refused it or the connection failed.

        Raises:
            ConnectionLostError: the connection died while a transaction was
                open; the server rolled it back.
            NoLeaderError: no leader could open the database in time.
        """
        proto = self._proto
        if proto is not None and proto.is_alive():
            return proto
        self.drop()
        if self._txn.lose():
            # Noticed before anything was sent: nothing can have committed.
            where = proto.address if proto is not None else "the leader"
            raise ConnectionLostError(
                f"lost the connection to {where} while idle; the open transaction was rolled back",
                request_sent=False,
                outcome=OUTCOME_ROLLED_BACK,
            )
        if deadline is None:
            deadline = time.monotonic() + self._settings.leader_timeout
        preferred = [proto.address] if proto is not None else []
        self._proto = yield from self._reconnect(preferred, deadline)
        return self._proto

    def _reconnect(self, preferred: list[str], deadline: float) -> Gen[Protocol]:
        settings = self._settings
        delay = 0.01
        while True:
            proto = yield from find_leader(
                settings.servers,
                attempt_timeout=settings.attempt_timeout,
                total_timeout=max(0.0, deadline - time.monotonic()),
                preferred=preferred,
                # With every node refusing connections nothing will lead soon:
                # give up after `timeout`, as sqlite3.connect gives up on a
                # database it cannot open instead of waiting for leader_timeout.
                refused_timeout=settings.timeout,
                ssl_context=settings.ssl,
            )
            try:
                yield from self._open(proto)
            except (NotLeaderError, ConnectionLostError) as exc:
                # The node found was deposed (or died) between naming itself
                # leader and the OPEN: look again.
                proto.close()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoLeaderError(
                        f"no leader could open database {settings.database!r} within "
                        f"{settings.leader_timeout:g}s (last: {proto.address}: {exc})"
                    ) from exc
                log.debug("opening %r on %s failed: %s", settings.database, proto.address, exc)
                preferred = []
                yield Sleep(min(delay, left))
                delay = min(delay * 2, _MAX_OPEN_DELAY)
                continue
            except BaseException:
                proto.close()
                raise
            return proto

    def _open(self, proto: Protocol) -> Gen[None]:
        """Open the database in a new server session, then let the owner set it up."""
        settings = self._settings
        proto.max_request_size = settings.max_message_size
        # A dqlitepy server waits this long for a locked database (wire.OPEN_BUSY_TIMEOUT_SHIFT).
        flags = (int(settings.timeout * 1000) + 1) << OPEN_BUSY_TIMEOUT_SHIFT
        request = OpenRequest(settings.database, flags)
        yield from proto.call(request, DbResponse, settings.request_timeout)
        yield from self._on_open(proto)

    def run(
        self,
        send: Callable[[Protocol], Gen[T]],
        *,
        retry_unknown: bool = False,
        may_commit: bool = False,
    ) -> Gen[T]:
        """Run one request against the leader, failing over where it is provably safe.

        Args:
            send: performs the request on a protocol (a generator) and returns its result.
            retry_unknown: the request has no lasting effect (a read, or a BEGIN
                whose session dies with the connection), so it may be re-sent
                even if the connection died after sending it.
            may_commit: the request may commit the open transaction (COMMIT,
                END, RELEASE of the savepoint that opened it), so losing its
                reply leaves the transaction's outcome unknown, not rolled back.

        Raises:
            ConnectionLostError, LeadershipLostError: the request or the open
                transaction cannot be retried; ``outcome`` says what became of it.
            NoLeaderError: no leader could serve the request within ``leader_timeout``.
        """
        deadline = time.monotonic() + self._settings.leader_timeout
        while True:
            proto = yield from self.connected(deadline)
            try:
                return (yield from send(proto))
            except NotLeaderError as exc:
                # Refused before execution: safe to send again to the new leader.
                self.drop()
                if self._txn.lose():
                    raise ConnectionLostError(
                        f"{proto.address} is no longer the leader and refused the statement "
                        "before running it; the open transaction was rolled back",
                        request_sent=False,
                        outcome=OUTCOME_ROLLED_BACK,
                    ) from exc
                last: Error = exc
            except LeadershipLostError as exc:
                self.drop()
                raise self._lost(exc, sent=True, may_commit=may_commit) from exc
            except ConnectionLostError as exc:
                self.drop()
                if self._txn.active or (exc.request_sent and not retry_unknown):
                    raise self._lost(exc, sent=exc.request_sent, may_commit=may_commit) from exc
                last = exc
            if time.monotonic() >= deadline:
                raise NoLeaderError(
                    f"no leader could serve the request within "
                    f"{self._settings.leader_timeout:g}s (last: {last})"
                ) from last

    def _lost(self, exc: OperationalError, *, sent: bool, may_commit: bool) -> OperationalError:
        """The error for a request cut off from its leader, saying what became of it.

        The server session is gone, and any open transaction with it: unless the
        request could have committed it (a COMMIT whose reply was lost may have
        run), nothing of it committed.  Outside a transaction, a request that
        was sent may have run.
        """
        had_txn = self._txn.lose()
        outcome: Outcome
        if had_txn and sent and may_commit:
            outcome, what = OUTCOME_UNKNOWN, "the outcome of the commit is unknown"
        elif had_txn:
            outcome, what = OUTCOME_ROLLED_BACK, "the open transaction was rolled back"
        elif sent:
            outcome, what = OUTCOME_UNKNOWN, "the outcome of the statement is unknown"
        else:
            outcome, what = OUTCOME_NOT_RUN, "the statement was not run"
        message = f"{exc}; {what}"
        if isinstance(exc, ConnectionLostError):
            return ConnectionLostError(message, request_sent=sent, outcome=outcome)
        error = make_error(type(exc), message, code=exc.sqlite_errorcode, name=exc.sqlite_errorname)
        error.outcome = outcome
        return error
