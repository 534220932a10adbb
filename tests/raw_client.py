"""A blocking client that speaks raw wire messages, for protocol-level tests of a node."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from dqlitepy.wire import (
    NEED_DATA,
    ClientConnection,
    DbResponse,
    FailureResponse,
    OpenRequest,
    Request,
    Response,
    RowsResponse,
)

__all__ = ["Raw", "open_sockets"]


class Raw:
    """One connection to a node: handshake sent, then request/response by hand."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.conn = ClientConnection()
        self.sock.sendall(self.conn.handshake())

    def close(self) -> None:
        self.sock.close()

    def read(self) -> Response:
        """The next whole response."""
        while (event := self.conn.next_event()) is NEED_DATA:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.conn.receive_data(data)
        assert not isinstance(event, type(NEED_DATA))
        return event

    def call(self, request: Request) -> Response:
        self.sock.sendall(self.conn.send(request))
        return self.read()

    def batches(self, request: Request) -> list[RowsResponse | FailureResponse]:
        """Send a query and read its ROWS batches, up to DONE or a FAILURE."""
        self.sock.sendall(self.conn.send(request))
        batches: list[RowsResponse | FailureResponse] = []
        while True:
            response = self.read()
            assert isinstance(response, (RowsResponse, FailureResponse)), response
            batches.append(response)
            if isinstance(response, FailureResponse) or response.done:
                return batches

    def rows(self, request: Request) -> list[tuple[object, ...]]:
        """Send a query and return all its rows (a FAILURE fails the assertion)."""
        rows: list[tuple[object, ...]] = []
        for batch in self.batches(request):
            assert isinstance(batch, RowsResponse), batch
            rows.extend(batch.rows)
        return rows

    def open(self, name: str) -> None:
        assert isinstance(self.call(OpenRequest(name)), DbResponse)


@contextlib.contextmanager
def open_sockets() -> Iterator[list[socket.socket]]:
    """A list to put sockets in; every one of them is closed at the end of the block."""
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()
