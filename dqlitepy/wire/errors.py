"""Errors of the wire layer.

As in h11, a :class:`LocalProtocolError` means *we* tried to do something the
protocol does not allow (a bug in the caller), and a :class:`RemoteProtocolError`
means the peer sent bytes that break the protocol.  Both derive from
:class:`ProtocolError`, the only exception type the wire layer raises.
"""

from __future__ import annotations

__all__ = [
    "LocalProtocolError",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteProtocolError",
]


class ProtocolError(Exception):
    """Base class of every error raised by :mod:`dqlitepy.wire`."""


class LocalProtocolError(ProtocolError):
    """This side asked for something the protocol cannot express or allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that do not follow the protocol.

    Attributes:
        recoverable: True when the offending message was consumed whole, so the
            stream is still in step and the peer can be answered with a FAILURE.
    """

    def __init__(self, message: str, *, recoverable: bool = False) -> None:
        super().__init__(message)
        self.recoverable = recoverable


class MessageTooLarge(RemoteProtocolError):
    """An incoming message announced a body larger than the configured limit."""
