"""TLS contexts for the driver, the admin client and the shell.

The driver takes any :class:`ssl.SSLContext` (``connect(..., ssl=context)``) and
wraps each socket it opens with it, with the host of the address it dials as
the server name.  This module builds the usual ones:

* :func:`client_context`: verify the server against a CA file (or the system's
  CAs), optionally present a client certificate (for a node started with
  ``--tls-ca``: mutual TLS), optionally without checking host names (a
  cluster's certificate often names the cluster, not each node's address).
* :func:`context_from_url` reads the same settings from a ``dqlite://`` URL's
  query string (:data:`URL_OPTIONS`, ``docs/driver.md``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import ssl


__all__ = ["URL_OPTIONS", "client_context", "context_from_url", "loaded_ssl"]

#: The query-string parameters of a ``dqlite://`` URL that configure TLS.
URL_OPTIONS: Final = ("tls", "tls_ca", "tls_cert", "tls_key", "tls_check_hostname")

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def client_context(
    *,
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client TLS context that verifies the server.

    Args:
        ca: PEM file of the CA certificates the server's certificate must chain
            to (a self-signed cluster certificate works as its own CA); None:
            the system's trusted CAs.
        cert: a client certificate to present (PEM), needed by nodes started
            with ``--tls-ca``.
        key: its private key; None: it is in ``cert``'s file.
        check_hostname: also check that the certificate names the host dialled
            (False: any certificate the CA signed is accepted, as between nodes).

    Raises:
        ValueError: a file cannot be read or does not hold what it should, or a
            key without a certificate.
    """
    if key is not None and cert is None:
        raise ValueError("a TLS key needs its certificate")
    import ssl  # here, not at import: a client without TLS never loads it (~20 ms)

    try:
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = check_hostname
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(os.fspath(f) for f in (ca, cert, key) if f is not None)
        raise ValueError(f"cannot load the TLS files ({files}): {exc}") from exc
    return context


def loaded_ssl() -> ModuleType | None:
    """The ``ssl`` module if something loaded it, else None.

    The driver imports ``ssl`` only when TLS is asked for.  An object that is an
    ``ssl`` class (a TLS socket, an ``SSLError``) cannot exist before the module
    is loaded, so code that only *recognises* such objects asks this instead of
    importing it.
    """
    return sys.modules.get("ssl")


def _flag(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (1/0, true/false, yes/no, on/off)")


def context_from_url(options: Mapping[str, str]) -> ssl.SSLContext | None:
    """The TLS context a URL's query string asks for, or None for plain TCP.

    ``tls=1`` turns TLS on (with the system's CAs); ``tls_ca``, ``tls_cert``
    and ``tls_key`` name files and imply ``tls=1``; ``tls_check_hostname=0``
    accepts any certificate the CA signed.  Other parameters are not looked at.

    Raises:
        ValueError: a malformed value, ``tls=0`` with TLS files, or files that
            cannot be loaded.
    """
    files = {name: options[name] for name in ("tls_ca", "tls_cert", "tls_key") if name in options}
    enabled = _flag("tls", options["tls"]) if "tls" in options else bool(files)
    check_hostname = (
        _flag("tls_check_hostname", options["tls_check_hostname"])
        if "tls_check_hostname" in options
        else True
    )
    if not enabled:
        if files:
            raise ValueError(f"tls=0 contradicts {', '.join(sorted(files))}")
        return None
    return client_context(
        ca=files.get("tls_ca"),
        cert=files.get("tls_cert"),
        key=files.get("tls_key"),
        check_hostname=check_hostname,
    )
