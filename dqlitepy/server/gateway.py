"""The gateway: one per client connection, one ``handle_<request>`` per message type.

Modelled on dqlite's ``gateway.c``: it owns the connection's SQLite session and
prepared statements and turns each decoded request into responses.  Semantics
follow dqlite 1.11 on the success paths and on the failures clients rely on
(codes and messages of ``protocol.md`` §2.2 and §5.1), and the later, stricter
versions where 1.11 silently drops SQL or crashes (statement tails, declared
types holding values of another type, DESCRIBE formats).

Write path: every statement runs inside :meth:`NodeContext.statement`, the one
place where a committed transaction is handed to replication.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..engine import EngineError, QueryResult, Session, SessionClosed, StatementInfo, is_blank
from ..wire import (
    DEFAULT_HEARTBEAT_TIMEOUT_MS,
    NOT_AUTHORIZED,
    OPEN_BUSY_TIMEOUT_SHIFT,
    AddRequest,
    AssignRequest,
    AuthChallengeRequest,
    AuthProofRequest,
    ChallengeResponse,
    ClientRequest,
    ClusterRequest,
    DbResponse,
    DescribeRequest,
    DumpRequest,
    EmptyResponse,
    ErrorCode,
    ExecRequest,
    ExecSqlRequest,
    FailureResponse,
    FilesResponse,
    FinalizeRequest,
    HeartbeatRequest,
    InterruptRequest,
    LeaderRequest,
    MetadataResponse,
    NodeInfo,
    OpenRequest,
    PrepareRequest,
    QueryRequest,
    QuerySqlRequest,
    RemoveRequest,
    Request,
    Response,
    ResultResponse,
    ServerResponse,
    ServersResponse,
    StmtResponse,
    TransferRequest,
    ValueTuple,
    ValueType,
    WeightRequest,
    WelcomeResponse,
)
from ..wire.rows import RowsBatchEncoder
from .auth import AdminSession, NotAuthorized

__all__ = ["BeginRead", "Gateway", "NodeContext", "RowsChunk"]

# The handler's name for each request class, worked out once per class.
_HANDLERS: dict[type, str] = {}

_MAX_BUSY_TIMEOUT_MS = 3_600_000
_DEFAULT_BUSY_TIMEOUT = 5.0
# Result shapes whose encoder a connection keeps (a client repeats a few queries).
_ENCODERS = 16


class GatewayFailure(Exception):
    """A request failed; the code and message go back in a FAILURE response.

    Build the common ones with the constructors (:meth:`not_leader`, :meth:`busy`...);
    others with a code of :class:`~dqlitepy.wire.ErrorCode` (protocol.md §5.1).
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def not_leader(cls) -> GatewayFailure:
        """Refused before anything ran: this node does not lead (the client retries elsewhere)."""
        return cls(ErrorCode.NOT_LEADER, "not leader")

    @classmethod
    def leadership_lost(cls) -> GatewayFailure:
        """The request may or may not have taken effect: leadership changed meanwhile."""
        return cls(ErrorCode.LEADERSHIP_LOST, "leadership lost")

    @classmethod
    def busy(cls, message: str) -> GatewayFailure:
        """``SQLITE_BUSY``: nothing was done, try again later."""
        return cls(ErrorCode.SQLITE_BUSY, message)

    @classmethod
    def error(cls, message: str) -> GatewayFailure:
        """``SQLITE_ERROR``: the generic refusal (dqlite's answer to a bad membership change)."""
        return cls(ErrorCode.SQLITE_ERROR, message)

    @classmethod
    def not_found(cls, message: str) -> GatewayFailure:
        """``SQLITE_NOTFOUND``: no such database or statement on this connection."""
        return cls(ErrorCode.SQLITE_NOTFOUND, message)

    @classmethod
    def parse(cls, message: str) -> GatewayFailure:
        """``DQLITE_PARSE``: a request this node does not understand."""
        return cls(ErrorCode.DQLITE_PARSE, message)

    def response(self) -> FailureResponse:
        """The FAILURE that carries this failure to the client."""
        return FailureResponse(self.code, self.message)


@dataclass(frozen=True, slots=True)
class RowsChunk:
    """An encoded ROWS message; ``done`` tells the last batch of a result."""

    data: bytes
    done: bool


#: ``begin(owner, session, info, timeout)``: see :meth:`NodeContext.read_starter`.
BeginRead = Callable[[object, Session, StatementInfo, float], "Callable[[], None] | None"]


class NodeContext(Protocol):
    """What a gateway needs from its node."""

    @property
    def id(self) -> int: ...

    @property
    def address(self) -> str: ...

    def leader(self) -> tuple[int, str]:
        """The leader's id and address, or ``(0, "")`` if none is known."""

    def cluster(self) -> Sequence[NodeInfo]:
        """The members, in configuration order."""

    @property
    def weight(self) -> int: ...

    @weight.setter
    def weight(self, value: int) -> None: ...

    @property
    def failure_domain(self) -> int: ...

    def open_session(self, name: str) -> Session:
        """Open a SQLite session on database ``name``."""

    def dump(self, name: str) -> list[tuple[str, bytes]]:
        """The database file and WAL of ``name``."""

    def require_leader(self) -> None:
        """Raise :meth:`GatewayFailure.not_leader` unless this node leads."""

    def execution(
        self, owner: object, database: str, session: Session, info: StatementInfo, timeout: float
    ) -> AbstractContextManager[Callable[[], None]]:
        """Run one statement of ``owner``'s session under the node's write path.

        The one place where a committed transaction is handed to replication:
        on exit, a statement that left its database outside a transaction after
        writing has committed.  ``timeout`` bounds a wait for another writer.
        The context gives ``begun``, to call once the statement's first step
        ran (a read transaction has begun: a writer may commit after that).
        """

    def read_starter(self, database: str) -> BeginRead:
        """The read fast path's admission on ``database``, kept for a session's life.

        ``starter(owner, session, info, timeout)`` admits a plain read that
        returns rows as :meth:`execution` would (same checks, same failures)
        and returns ``begun``, to call exactly once after the first step ran (or
        once it will not); None, having run nothing, if ``info`` is no such read.
        """

    def close_session(self, database: str, session: Session) -> None:
        """Close a session the gateway no longer needs."""

    def change_membership(self, request: Request) -> None:
        """Apply ADD/ASSIGN/REMOVE/TRANSFER, raising ``GatewayFailure`` on error."""

    def storage_failed(self) -> None:
        """SQLite reported a full disk or an I/O error here (never raises, never waits)."""


_BOOLEAN = int(ValueType.BOOLEAN)


def _bind_values(params: ValueTuple) -> Sequence[Any]:
    """Turn a parameter tuple into SQLite bindings (§4.1)."""
    if _BOOLEAN not in params.types:
        return params.values  # already what SQLite takes (the common case: no loop)
    values: list[Any] = []
    for type_, value in zip(params.types, params.values, strict=True):
        if type_ == ValueType.BOOLEAN:
            values.append(1 if value else 0)
        else:
            values.append(value)
    return values


class Gateway:
    """Serves the requests of one client connection.

    Args:
        node: the node this connection belongs to.
        admin: whether this connection may change the cluster (``server/auth.py``);
            by default it may not.
    """

    def __init__(self, node: NodeContext, admin: AdminSession | None = None) -> None:
        self._node = node
        self._admin = AdminSession.refusing() if admin is None else admin
        self._database: str | None = None
        self._session: Session | None = None
        self._begin_read: BeginRead | None = None  # NodeContext.read_starter's, from OPEN
        self._statements: dict[int, StatementInfo] = {}
        self._running: QueryResult | None = None
        # The read fast path's ROWS encoders, by result columns and declared types.
        self._encoders: dict[tuple[tuple[str, ...], tuple[str | None, ...]], RowsBatchEncoder] = {}
        self._interrupt_check: Callable[[], bool] | None = None
        # How long a write waits for another writer (the client's timeout).
        self._busy_timeout = _DEFAULT_BUSY_TIMEOUT

    def close(self) -> None:
        """Release the session; an open transaction is rolled back."""
        if self._running is not None:
            self._running.close()
            self._running = None
        if self._session is not None:
            assert self._database is not None
            self._node.close_session(self._database, self._session)
            self._session = None

    def set_interrupt_check(self, check: Callable[[], bool]) -> None:
        """Have long statements poll ``check`` and stop when it says so."""
        self._interrupt_check = check
        if self._session is not None:
            self._session.set_interrupt_check(check)

    def interrupt(self) -> None:
        """Stop the running statement (it fails with SQLITE_INTERRUPT)."""
        if self._session is not None:
            self._session.interrupt()

    def release_memory(self) -> None:
        """Free the session's cache pages that nothing holds (the listener calls it
        between two batches of a result its client is slow to take in, and every
        256 KiB of a result)."""
        if self._session is not None:
            self._session.release_memory()

    @property
    def in_transaction(self) -> bool:
        """True if the connection's session has a transaction open.

        Read it on the connection's own thread, between requests.
        """
        return self._session is not None and bool(self._session.in_transaction)

    def handle(self, request: Request) -> Generator[Response | RowsChunk, None, None]:
        """Serve one request, yielding its response(s).

        Every failure becomes a FAILURE response; nothing escapes but bugs.
        """
        name = _HANDLERS.get(type(request))
        if name is None:
            name = _HANDLERS[type(request)] = (
                "handle_" + type(request).__name__.removesuffix("Request").lower()
            )
        handler = getattr(self, name, None)
        if handler is None:
            yield GatewayFailure.parse("unrecognized request type").response()
            return
        try:
            yield from handler(request)
        except SessionClosed:
            # The node closed the session under it (leadership moved, or the
            # files were rebuilt after a failed commit): the client reconnects.
            yield GatewayFailure.not_leader().response()
        except GatewayFailure as exc:
            yield exc.response()
        except NotAuthorized as exc:
            yield FailureResponse(NOT_AUTHORIZED, str(exc))
        except EngineError as exc:
            yield self._engine_failure(exc)

    def read_fast(
        self, request: QueryRequest | QuerySqlRequest
    ) -> bytes | Iterator[Response | RowsChunk] | None:
        """The read fast path: QUERY or QUERY_SQL of a plain read, in as few calls as it takes.

        Returns the whole ROWS response when the result fits one batch; the
        responses still to send (as :meth:`handle` yields them) for a longer result
        or a failure; None, having run nothing, for anything else, which the
        caller then serves through :meth:`handle` (``docs/server.md``, "The read
        fast path").  Call it between requests, outside a transaction.
        """
        session = self._session
        # A session closed by a rebuild is refused on the way, as the general path does.
        if session is None or request.db_id != 0:
            return None
        if type(request) is QuerySqlRequest:
            info = session.cached(request.sql)
            if info is None or (info.tail and not is_blank(info.tail)):
                return None
        else:
            info = self._statements.get(request.stmt_id)  # type: ignore[union-attr]
            if info is None:
                return None
        params = request.params
        if (
            len(params.values) != info.param_count
            or _BOOLEAN in params.types
            or not (info.column_count and info.readonly)
        ):
            return None
        try:
            return self._read(session, info, params.values)
        except GatewayFailure as exc:
            return iter((exc.response(),))
        except SessionClosed:
            return iter((GatewayFailure.not_leader().response(),))
        except EngineError as exc:
            return iter((self._engine_failure(exc),))

    def _read(
        self, session: Session, info: StatementInfo, values: Sequence[Any]
    ) -> bytes | Iterator[Response | RowsChunk] | None:
        assert self._begin_read is not None
        begun = self._begin_read(self, session, info, self._busy_timeout)
        if begun is None:
            return None
        try:
            # The first batch is filled before begun(): it holds off a writer at the
            # gate for one batch more, and spares the read a second hold of the session.
            result, encoder, done = session.query_first(info, values, self._encoder_for)
        except BaseException:
            self._encoders.clear()  # an encoder may be left mid-batch
            raise
        finally:
            begun()
        if done:
            return encoder.finish(done=True)
        # The rest streams through this encoder: no other read may use it, nor a failure's.
        self._encoders.pop((result.columns, result.decltypes), None)
        self._running = result
        return self._more_rows(result, encoder, encoder.finish(done=False))

    def _encoder_for(
        self, columns: tuple[str, ...], decltypes: tuple[str | None, ...]
    ) -> RowsBatchEncoder:
        """The encoder of this result shape, kept between reads (finish() starts anew)."""
        shape = (columns, decltypes)
        encoder = self._encoders.get(shape)
        if encoder is None:
            if len(self._encoders) >= _ENCODERS:
                self._encoders.clear()
            encoder = self._encoders[shape] = RowsBatchEncoder(columns, decltypes=decltypes)
        return encoder

    def _batches(
        self,
        result: QueryResult,
        encoder: RowsBatchEncoder | None = None,
        first: bytes | None = None,
    ) -> Generator[RowsChunk, None, bytes]:
        """The PART batches of the running ``result`` (after ``first``, a batch already
        encoded), returning the final batch's bytes; the result is closed however this ends.
        """
        try:
            if encoder is None:
                encoder = RowsBatchEncoder(result.columns, decltypes=result.decltypes)
            if first is not None:
                yield RowsChunk(first, False)
            # The session is held for one batch of steps, not for each row.
            while not result.feed(encoder.fill):
                yield RowsChunk(encoder.finish(done=False), False)
            return encoder.finish(done=True)
        finally:
            self._running = None
            result.close()

    def _more_rows(
        self, result: QueryResult, encoder: RowsBatchEncoder, first: bytes
    ) -> Iterator[Response | RowsChunk]:
        """The rest of a result the fast path began, as :meth:`_rows` streams it."""
        try:
            final = yield from self._batches(result, encoder, first)
        except SessionClosed:
            yield GatewayFailure.not_leader().response()
            return
        except EngineError as exc:
            yield self._engine_failure(exc)
            return
        yield RowsChunk(final, True)

    def _engine_failure(self, exc: EngineError) -> FailureResponse:
        if exc.code & 0xFF in (ErrorCode.SQLITE_IOERR, ErrorCode.SQLITE_FULL):
            # Opening, preparing or reading fails too when the disk is full (the
            # WAL index cannot grow): the node must find out, not only the client.
            self._node.storage_failed()
        return FailureResponse(exc.code, exc.message)

    # -------------------------------------------------------------- helpers

    def _session_for(self, db_id: int) -> Session:
        if self._session is None or db_id != 0:
            raise GatewayFailure.not_found("no database opened")
        return self._session

    def _statement(self, db_id: int, stmt_id: int) -> tuple[Session, StatementInfo]:
        session = self._session_for(db_id)
        info = self._statements.get(stmt_id)
        if info is None:
            raise GatewayFailure.not_found("no statement with the given id")
        return session, info

    def _exec(self, session: Session, info: StatementInfo, params: Sequence[Any]) -> ResultResponse:
        with self._run(session, info) as begun:
            result = session.execute(info, params)
            begun()
        return ResultResponse(result.last_insert_id, result.rows_affected)

    def _run(
        self, session: Session, info: StatementInfo
    ) -> AbstractContextManager[Callable[[], None]]:
        assert self._database is not None
        return self._node.execution(self, self._database, session, info, self._busy_timeout)

    def _rows(
        self, session: Session, info: StatementInfo, params: Sequence[Any]
    ) -> Iterator[RowsChunk]:
        if info.column_count == 0:
            # dqlite 1.11 refuses to QUERY a statement without result columns,
            # before running it; clients rely on that to fall back to EXEC.
            raise GatewayFailure.error("not an error")
        with self._run(session, info) as begun:
            result = session.query(info, params)
            begun()
            self._running = result
            final = yield from self._batches(result)
        yield RowsChunk(final, True)

    def _check_tail(self, info: StatementInfo) -> None:
        if info.tail and not is_blank(info.tail):
            raise GatewayFailure.error("nonempty statement tail")

    # ------------------------------------------------------------- handlers

    def handle_leader(self, request: LeaderRequest) -> Iterator[Response]:
        node_id, address = self._node.leader()
        yield ServerResponse(node_id, address)

    def handle_client(self, request: ClientRequest) -> Iterator[Response]:
        yield WelcomeResponse(DEFAULT_HEARTBEAT_TIMEOUT_MS)

    def handle_heartbeat(self, request: HeartbeatRequest) -> Iterator[Response]:
        # Pre-1.0 dqlite answered a heartbeat with the member list; 1.11 hangs.
        yield ServersResponse(tuple(self._node.cluster()), 1)

    def handle_open(self, request: OpenRequest) -> Iterator[Response]:
        if self._session is not None:
            raise GatewayFailure.busy("a database for this connection is already open")
        self._session = self._node.open_session(request.name)
        self._begin_read = self._node.read_starter(request.name)
        if self._interrupt_check is not None:
            self._session.set_interrupt_check(self._interrupt_check)
        requested = request.flags >> OPEN_BUSY_TIMEOUT_SHIFT
        if requested:
            # The client's own lock timeout (sqlite3's `timeout`), in ms + 1.
            milliseconds = min(requested - 1, _MAX_BUSY_TIMEOUT_MS)
            self._session.set_busy_timeout(milliseconds)
            self._busy_timeout = milliseconds / 1000
        self._database = request.name
        yield DbResponse(0)

    def handle_prepare(self, request: PrepareRequest) -> Iterator[Response]:
        session = self._session_for(request.db_id)
        info = session.statement(request.sql)
        if info.empty:
            raise GatewayFailure(ErrorCode.EMPTY_STATEMENT, "empty statement")
        if not request.with_offset:
            self._check_tail(info)
        stmt_id = 0
        while stmt_id in self._statements:
            stmt_id += 1
        self._statements[stmt_id] = info
        offset = info.tail_offset if request.with_offset else None
        yield StmtResponse(0, stmt_id, info.param_count, offset)

    def handle_exec(self, request: ExecRequest) -> Iterator[Response]:
        session, info = self._statement(request.db_id, request.stmt_id)
        yield self._exec(session, info, _bind_values(request.params))

    def handle_query(self, request: QueryRequest) -> Iterator[RowsChunk]:
        # Not a generator itself (nor is handle_querysql): one generator fewer per
        # query; what fails before the rows is raised inside handle() all the same.
        session, info = self._statement(request.db_id, request.stmt_id)
        return self._rows(session, info, _bind_values(request.params))

    def handle_finalize(self, request: FinalizeRequest) -> Iterator[Response]:
        self._statement(request.db_id, request.stmt_id)
        del self._statements[request.stmt_id]
        yield EmptyResponse()

    def handle_execsql(self, request: ExecSqlRequest) -> Iterator[Response]:
        session = self._session_for(request.db_id)
        remaining = _bind_values(request.params)
        sql = request.sql
        result = ResultResponse(0, 0)
        while not is_blank(sql):
            info = session.statement(sql)
            if info.empty:
                break
            last = is_blank(info.tail)
            # Each statement takes as many values as it has placeholders, in order
            # (dqlite >= 1.18.2); the last one must use up the rest.
            if last:
                taken, remaining = remaining, []
            else:
                taken, remaining = remaining[: info.param_count], remaining[info.param_count :]
            result = self._exec(session, info, taken)
            if last:
                break  # (without matching the blank tail once more)
            sql = info.tail
        yield result

    def handle_querysql(self, request: QuerySqlRequest) -> Iterator[RowsChunk]:
        session = self._session_for(request.db_id)
        info = session.statement(request.sql)
        if info.empty:
            raise GatewayFailure(ErrorCode.EMPTY_STATEMENT, "empty statement")
        self._check_tail(info)
        return self._rows(session, info, _bind_values(request.params))

    def handle_interrupt(self, request: InterruptRequest) -> Iterator[Response]:
        # Results are streamed whole before the next request is read, so there
        # is never a pending result to drop here (protocol.md §5.4).
        yield EmptyResponse()

    def handle_dump(self, request: DumpRequest) -> Iterator[Response]:
        yield FilesResponse(tuple(self._node.dump(request.name)))

    def handle_cluster(self, request: ClusterRequest) -> Iterator[Response]:
        if request.format not in (0, 1):
            raise GatewayFailure.parse("unrecognized cluster format")
        yield ServersResponse(tuple(self._node.cluster()), request.format)

    def handle_describe(self, request: DescribeRequest) -> Iterator[Response]:
        if request.format != 0:
            raise GatewayFailure(ErrorCode.SQLITE_PROTOCOL, "bad format version")
        yield MetadataResponse(self._node.failure_domain, self._node.weight)

    def handle_weight(self, request: WeightRequest) -> Iterator[Response]:
        self._node.weight = request.weight
        yield EmptyResponse()

    def handle_authchallenge(self, request: AuthChallengeRequest) -> Iterator[Response]:
        nonce = self._admin.challenge(request.mechanism)
        yield ChallengeResponse(nonce, request.mechanism)

    def handle_authproof(self, request: AuthProofRequest) -> Iterator[Response]:
        self._admin.prove(request.mechanism, request.client_nonce, request.mac)
        yield EmptyResponse()

    def _membership(self, request: Request) -> Iterator[Response]:
        # Authorization first: a stranger gets the same answer from every node.
        self._admin.require(request.TYPE.name)
        self._node.require_leader()
        self._node.change_membership(request)
        yield EmptyResponse()

    def handle_add(self, request: AddRequest) -> Iterator[Response]:
        return self._membership(request)

    def handle_assign(self, request: AssignRequest) -> Iterator[Response]:
        return self._membership(request)

    def handle_remove(self, request: RemoveRequest) -> Iterator[Response]:
        return self._membership(request)

    def handle_transfer(self, request: TransferRequest) -> Iterator[Response]:
        return self._membership(request)
