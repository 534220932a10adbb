"""What the driver's logic asks of the world: the I/O needs its generators yield.

Theory of operation.  Everything the driver decides (which node leads, what may
be re-sent after a failure, when a transaction is lost, which error a FAILURE
becomes) is written once, as generators that never touch a socket or a clock's
sleep.  Where a decision needs the outside world the generator *yields a need*
and is resumed with the answer:

* :class:`Dial` — open a connection to a node (and run TLS): answered with a
  :class:`Transport`;
* :class:`Send` — write bytes to a transport before a deadline: answered with None;
* :class:`Recv` — read some bytes from a transport before a deadline: answered
  with them (``b""`` at end of file);
* :class:`Sleep` — let time pass: answered with None.

A need that fails is answered by throwing its exception into the generator
(``OSError`` and ``TimeoutError`` as a blocking socket raises them), so the
generator's ``try``/``except`` reads as blocking code does.

Two *waiters* drive these generators: :func:`dqlitepy.client.waiting.wait`
answers each need with blocking calls (the ``sqlite3``-shaped driver), and
:func:`dqlitepy.aio.waiting.wait` with asyncio (``dqlitepy.aio``).  The sync and
async APIs share every rule because they run the same generators; only the
waiters differ (psycopg 3 splits its driver the same way: ``generators.py``
and ``waiting.py``).

A :class:`Transport` also offers what never blocks: whether the peer hung up
while the connection was idle, closing, and sending an INTERRUPT on behalf of
another thread or task.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

if TYPE_CHECKING:
    import ssl


__all__ = ["Conversation", "Dial", "Gen", "Need", "Recv", "Send", "Sleep", "Transport"]

T = TypeVar("T")


class Transport(Protocol):
    """One open byte stream to one node, as a waiter made it (see :class:`Dial`)."""

    @property
    def tls(self) -> bool:
        """True if the stream runs TLS."""

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or the waiter saw the stream fail)."""

    def close(self) -> None:
        """Close the stream; idempotent, never blocks."""

    def is_alive(self) -> bool:
        """Without blocking: False if the peer closed the stream or sent anything unasked.

        Called only while no request is in flight, when nothing may arrive: a
        node that died while the connection was idle left an EOF (or a reset)
        behind.  A stream found dead is closed.
        """

    def send_urgent(self, data: bytes) -> bool:
        """Send ``data`` (an INTERRUPT) while the owner may be waiting for a response.

        Safe from another thread (sync) or another task (async).  Returns
        False if the stream is gone.
        """


class Conversation(Protocol):
    """The request in flight on a transport, as a waiter that gives up on it sees it.

    :class:`~dqlitepy.client.protocol.Protocol` is one.  A waiter whose wait
    is cancelled (an asyncio task) must leave the stream in step or closed:
    it interrupts a query and reads what remains (:meth:`drain`), and closes
    the stream in every other case.
    """

    def interrupt(self) -> bool:
        """Send INTERRUPT if a query is in flight; True if one was sent."""

    def drain(self, timeout: float | None) -> Gen[None]:
        """Read what remains of the interrupted conversation, until idle."""

    def close(self) -> None:
        """Close the stream (the conversation is out of step)."""


class Dial:
    """Open a stream to ``address`` within ``timeout`` seconds, with TLS if ``ssl_context``."""

    __slots__ = ("address", "ssl_context", "timeout")

    def __init__(self, address: str, timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        self.address = address
        self.timeout = timeout
        self.ssl_context = ssl_context


class Send:
    """Write all of ``data`` to ``transport`` before ``deadline`` (``time.monotonic()``)."""

    __slots__ = ("data", "deadline", "transport")

    def __init__(self, transport: Transport, data: bytes, deadline: float | None) -> None:
        self.transport = transport
        self.data = data
        self.deadline = deadline


class Recv:
    """Read what ``transport`` has (at least one byte, or ``b""`` at EOF) before ``deadline``.

    ``conversation`` is the request awaiting these bytes, for a waiter that
    gives up on the wait (see :class:`Conversation`).
    """

    __slots__ = ("conversation", "deadline", "transport")

    def __init__(
        self, transport: Transport, deadline: float | None, conversation: Conversation
    ) -> None:
        self.transport = transport
        self.deadline = deadline
        self.conversation = conversation


class Sleep:
    """Let ``seconds`` pass (a backoff between two attempts)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


Need: TypeAlias = Dial | Send | Recv | Sleep

#: A piece of the driver's logic: yields needs, is resumed with their answers, returns a T.
Gen: TypeAlias = Generator[Need, Any, T]
