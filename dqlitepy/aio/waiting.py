"""The asyncio waiter: drives the driver's generators on an event loop.

:func:`wait` is :func:`dqlitepy.client.waiting.wait` for asyncio: it runs a
generator of :mod:`dqlitepy.client.needs` to its end, answering each need
without blocking the loop.  :func:`dial` opens an :class:`AsyncTransport`
through the loop (TLS through asyncio's own ``ssl`` support); the transport is
an :class:`asyncio.Protocol` that buffers what arrives, so a read is a future
woken by ``data_received`` and no thread is ever used.

Cancellation (``task.cancel()``, ``asyncio.timeout``, ``wait_for``) reaches the
waiter while it awaits a need; the conversation on the connection must then be
left in step, or the connection closed (``docs/asyncio.md``, "Cancellation"):

* waiting for the response of a query: an INTERRUPT is sent and the rest of
  the conversation is read and discarded, within :data:`DRAIN_TIMEOUT`
  (the connection stays usable, and an open transaction with it); if that
  fails the connection is closed;
* waiting for any other response (a write, a COMMIT …): the connection is
  closed.  The request's outcome is unknown; it is never re-sent (the
  generator is not resumed with anything but the cancellation), and the next
  call on the connection reconnects (an open transaction is reported lost);
* waiting to send, to dial or to sleep: the connection is closed or was not
  open yet.

The cancellation is then thrown into the generator, whose clean-up runs as
for any exception, and out of :func:`wait`.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import ssl
import threading
import time
from typing import Any, TypeVar

from ..client.address import parse_address
from ..client.needs import Conversation, Dial, Gen, Recv, Send, Sleep

__all__ = ["DRAIN_TIMEOUT", "AsyncTransport", "dial", "wait"]

log = logging.getLogger("dqlitepy.client")

T = TypeVar("T")

#: How long a cancelled query's connection may take to become idle again after
#: its INTERRUPT before it is closed instead.
DRAIN_TIMEOUT = 2.0


async def wait(gen: Gen[T]) -> T:
    """Run ``gen`` to its end on the running loop, answering its needs; return its value."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                need = gen.send(answer)
            else:
                need, error = gen.throw(error), None
        except StopIteration as stop:
            value: T = stop.value
            return value
        answer = None
        try:
            answer = await _answer(need)
        except asyncio.CancelledError as exc:
            await _give_up(need)
            error = exc
        except BaseException as exc:  # thrown into the generator, which decides
            error = exc


async def _answer(need: Any) -> Any:
    kind = type(need)
    if kind is Recv:
        transport: AsyncTransport = need.transport
        data = transport.recv_nowait()
        return data if data is not None else await transport.recv(need.deadline)
    if kind is Send:
        transport = need.transport
        transport.write(need.data)
        if transport.paused:
            await transport.drain(need.deadline)
        return None
    if kind is Dial:
        return await dial(need.address, need.timeout, need.ssl_context)
    assert isinstance(need, Sleep)
    await asyncio.sleep(need.seconds)
    return None


async def _give_up(need: Any) -> None:
    """Leave the connection behind a cancelled wait in step, or close it (module docstring)."""
    if isinstance(need, Send):
        need.transport.close()  # part of the request may be out: the stream is out of step
    elif isinstance(need, Recv):
        conversation: Conversation = need.conversation
        if not conversation.interrupt():
            conversation.close()
            return
        try:
            await wait(conversation.drain(DRAIN_TIMEOUT))
        except BaseException as exc:  # a second cancellation too: close, and go on cancelling
            log.debug("draining an interrupted query failed (%r); closing", exc)
            conversation.close()


async def dial(
    address: str, timeout: float, ssl_context: ssl.SSLContext | None = None
) -> AsyncTransport:
    """Open a connection to a node on the running loop within ``timeout`` seconds.

    Raises what a blocking dial raises (``OSError``, ``TimeoutError``,
    ``ssl.SSLError``), so the driver's rules read the failure the same way.
    """
    family, sockaddr = parse_address(address)
    loop = asyncio.get_running_loop()
    stream = _Stream(loop)
    if family == socket.AF_UNIX:
        assert isinstance(sockaddr, str)
        # asyncio insists on a server name with TLS; an @name socket has none to check.
        name = None if ssl_context is None else _unix_server_name(ssl_context)
        opening = loop.create_unix_connection(
            lambda: stream, sockaddr, ssl=ssl_context, server_hostname=name
        )
    else:
        assert isinstance(sockaddr, tuple)
        host, port = sockaddr
        opening = loop.create_connection(lambda: stream, host, port, ssl=ssl_context, family=family)
    # Not asyncio.wait_for: on Python 3.11 it returns the connection, swallowing
    # the cancellation, when the caller is cancelled just as the connection is
    # made; the task would go on connecting although it was cancelled.
    task = loop.create_task(opening)
    timer = loop.call_later(timeout, task.cancel)
    try:
        await asyncio.wait((task,))  # a cancellation of ours leaves the task running
    except BaseException:
        task.cancel()  # asyncio closes what it had not finished
        # A connection made just before the cancellation is ours to close: the
        # task's result is lost with it.
        if stream.transport is not None:
            stream.transport.close()
        raise
    finally:
        timer.cancel()
    if task.cancelled():  # by the timer
        raise TimeoutError(f"timed out connecting to {address}")
    task.result()  # raises what connecting raised
    return AsyncTransport(stream, address, ssl_context is not None)


def _unix_server_name(context: ssl.SSLContext) -> str:
    if context.check_hostname:
        raise ValueError("check_hostname requires server_hostname: an @name socket has no host")
    return "localhost"


class _Stream(asyncio.Protocol):
    """What asyncio tells us about one connection: bytes, EOF, loss, flow control."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.paused = False
        # The future a reader (or a writer waiting for the buffer to drain) sleeps on.
        self.reader: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close our side too: dqlite has no half-closed conversations

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)

    def _wake_writer(self) -> None:
        if self.writer is not None and not self.writer.done():
            self.writer.set_result(None)


class AsyncTransport:
    """A connection on the event loop as a :class:`~dqlitepy.client.needs.Transport`.

    Args:
        stream: the protocol asyncio feeds (connected).
        address: the address dialled (reported in the log).
        tls: whether the connection runs TLS.
    """

    def __init__(self, stream: _Stream, address: str, tls: bool) -> None:
        self.address = address
        self._stream = stream
        self._tls = tls
        self._closed = False
        self._thread = threading.get_ident()

    @property
    def tls(self) -> bool:
        """True if the connection runs TLS."""
        return self._tls

    @property
    def closed(self) -> bool:
        """True once closed (by :meth:`close`)."""
        return self._closed

    @property
    def paused(self) -> bool:
        """True while asyncio asks writers to wait (its write buffer is full)."""
        return self._stream.paused

    def close(self) -> None:
        """Close the connection; idempotent, never blocks."""
        if self._closed:
            return
        self._closed = True
        transport = self._stream.transport
        if transport is None:
            return
        loop = self._stream.loop
        if loop.is_closed():
            # Too late to ask the loop (a finalizer after asyncio.run ended): the
            # transport closes its socket when it is collected.
            return
        # A TLS transport's close() sends close_notify and keeps the socket until the
        # peer answers, which outlives an asyncio.run() that ends right after us (the
        # socket then leaks).  Nothing is owed to the peer at this point (dqlite has no
        # goodbye, and no request of ours is waiting to go out), so a TLS connection is
        # aborted: its socket closes on the loop's next turn.
        end = transport.abort if self._tls else transport.close
        if threading.get_ident() == self._thread:
            end()
        else:  # a finalizer on another thread: asyncio transports belong to their loop
            loop.call_soon_threadsafe(end)

    def _transport(self) -> asyncio.Transport:
        transport = self._stream.transport
        if self._closed or transport is None or transport.is_closing():
            raise ConnectionResetError(f"the connection to {self.address} is closed")
        return transport

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending (asyncio sends it as the socket allows)."""
        self._transport().write(data)

    async def drain(self, deadline: float | None) -> None:
        """Wait until asyncio's write buffer is below its limit again."""
        stream = self._stream
        while stream.paused:
            self._transport()
            stream.writer = stream.loop.create_future()
            await _until(stream.writer, deadline, stream.loop)

    def recv_nowait(self) -> bytes | None:
        """What has arrived already (``b""`` at EOF), or None if a read must wait."""
        stream = self._stream
        if stream.buffer:
            data = bytes(stream.buffer)
            stream.buffer.clear()
            return data
        if stream.eof:
            if stream.error is not None:
                raise stream.error
            return b""
        if self._closed:
            raise ConnectionResetError(f"the connection to {self.address} is closed")
        return None

    async def recv(self, deadline: float | None) -> bytes:
        """Read what arrives before ``deadline`` (``TimeoutError`` past it): ``b""`` at EOF."""
        stream = self._stream
        while True:
            data = self.recv_nowait()
            if data is not None:
                return data
            stream.reader = stream.loop.create_future()
            await _until(stream.reader, deadline, stream.loop)

    def send_urgent(self, data: bytes) -> bool:
        """Send ``data`` (an INTERRUPT) now, from the loop's thread or any other."""
        if self._closed or self._stream.transport is None:
            return False
        if threading.get_ident() == self._thread:
            self._stream.transport.write(data)
        else:
            self._stream.loop.call_soon_threadsafe(self.write, data)
        return True

    def is_alive(self) -> bool:
        """Check without waiting that the peer has not closed the connection.

        What the loop has delivered already is in the stream; a plain socket
        is polled too, for an EOF the loop has not read yet (anything readable
        while idle is fatal).  TLS records that carry no data (session tickets)
        are the loop's business, so a TLS socket is not polled.
        """
        if self._closed:
            return False
        stream = self._stream
        dead = stream.eof or bool(stream.buffer) or stream.transport is None
        if not dead and not self._tls:
            dead = _readable(stream.transport)
        if dead:
            if stream.buffer:
                log.warning("unsolicited data from %s; dropping the connection", self.address)
            self.close()
        return not dead


def _readable(transport: asyncio.Transport | None) -> bool:
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


async def _until(
    future: asyncio.Future[None], deadline: float | None, loop: asyncio.AbstractEventLoop
) -> None:
    """Wait for ``future`` until ``deadline`` (``time.monotonic()``): TimeoutError past it.

    A timer on the future rather than ``asyncio.timeout``: cheaper, and it
    leaves the task's cancellation count alone while a cancelled wait drains.
    """
    if deadline is None:
        await future
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    timer = loop.call_later(left, _expire, future)
    try:
        await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("timed out"))
