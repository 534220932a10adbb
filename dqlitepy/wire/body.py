"""The base of every message class: a type code, a schema byte and a body codec.

A message body is a whole number of 8-byte words (``docs/protocol.md`` §1.3); each
subclass in :mod:`.requests` (§2) and :mod:`.responses` (§3) writes and reads its
own layout through :class:`~.codec.Writer` and :class:`~.codec.Reader`.
"""

from __future__ import annotations

from typing import ClassVar

from .auth import NONCE_SIZE
from .codec import Reader, Writer
from .errors import LocalProtocolError

__all__ = ["Message", "check_nonce"]


class Message:
    """Base of every message: a type code, a schema, and a body codec."""

    __slots__ = ()
    TYPE: ClassVar[int]

    @property
    def schema(self) -> int:
        """The schema byte this message is sent with; 0 for most messages."""
        return 0

    def encode_body(self, *, legacy: bool = False) -> bytes:
        """Return the body bytes (a whole number of words).

        Args:
            legacy: the connection used the legacy handshake (changes SERVER only).
        """
        w = Writer()
        self._encode(w, legacy)
        if not w.buf:
            # A 0-word body aborts a 1.11.1 server (§1.3): every message has a word.
            raise LocalProtocolError(f"{type(self).__name__} would have an empty body")
        return w.getvalue()

    def _encode(self, w: Writer, legacy: bool) -> None:
        raise NotImplementedError

    @classmethod
    def decode_body(cls, body: bytes, schema: int = 0, *, legacy: bool = False) -> Message:
        """Decode a body of this message type.

        Raises:
            RemoteProtocolError: the body does not hold a valid message.
        """
        return cls._decode(Reader(body), schema, legacy)

    @classmethod
    def _decode(cls, r: Reader, schema: int, legacy: bool) -> Message:
        raise NotImplementedError


def check_nonce(what: str, value: bytes) -> None:
    """Refuse to encode a nonce or MAC (``what``) that is not ``NONCE_SIZE`` bytes."""
    if len(value) != NONCE_SIZE:
        raise LocalProtocolError(f"{what} must have {NONCE_SIZE} bytes, not {len(value)}")
