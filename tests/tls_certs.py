"""Certificates for the TLS tests, made with the ``openssl`` command.

:func:`make_certs` writes, in one directory:

* ``ca`` and ``otherca``: two CAs; ``adminca``: a third, for administrators' certificates;
* ``node`` and ``client``: leaves the first CA signed (``localhost`` and 127.0.0.1);
* ``rogue``: a leaf the other CA signed;
* ``admin``: a leaf the admin CA signed; ``expired``: one it signed, expired yesterday;
* ``selfie``: a self-signed leaf (``localhost``), in no CA's name;
* ``cluster``: one self-signed certificate with a DNS name, the set-up of go-dqlite's
  ``SimpleTLSConfig`` and of the Go ``dqlite`` shell (which trusts only the certificate
  it presents itself and checks the server against its first DNS name).

Every leaf names ``localhost`` first, so the Go shell, which takes the server name from
the certificate it presents, checks a node's ``localhost`` certificate against it.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dqlitepy.client.tls import client_context

__all__ = ["Certs", "make_certs"]


@dataclass(frozen=True)
class Certs:
    root: Path

    def crt(self, name: str) -> str:
        return str(self.root / f"{name}.crt")

    def key(self, name: str) -> str:
        return str(self.root / f"{name}.key")

    def server_options(self, name: str, ca: str | None = None) -> list[str]:
        options = ["--tls-cert", self.crt(name), "--tls-key", self.key(name)]
        return options + (["--tls-ca", self.crt(ca)] if ca else [])

    def client(self, name: str | None = None, ca: str = "ca") -> ssl.SSLContext:
        cert = self.crt(name) if name else None
        key = self.key(name) if name else None
        return client_context(ca=self.crt(ca), cert=cert, key=key)

    def chain(self, name: str, *more: str) -> str:
        """A file holding certificate ``name`` followed by ``more`` (its chain, or CAs)."""
        path = self.root / "+".join((name, *more))
        path = path.with_name(path.name + ".crt")
        path.write_text("".join(Path(self.crt(n)).read_text() for n in (name, *more)))
        return str(path)


_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(root: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=30)


def _self_signed(root: Path, name: str, *extensions: str) -> None:
    ext = [arg for e in extensions for arg in ("-addext", e)]
    _openssl(
        root,
        "req", "-x509", *_EC, "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", *ext,
    )  # fmt: skip


def _leaf(root: Path, name: str, ca: str, days: int = 2) -> None:
    # days=-1: valid from now until yesterday, which every verifier calls expired.
    (root / f"{name}.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        root, "req", *_EC, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr"
    )
    _openssl(
        root,
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", str(days), "-extfile", f"{name}.ext", "-out", f"{name}.crt",
    )  # fmt: skip


def make_certs(root: Path) -> Certs:
    """Write the certificates the module docstring lists into ``root``."""
    for ca in ("ca", "otherca", "adminca"):
        _self_signed(
            root, ca, "basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"
        )
    _leaf(root, "node", "ca")
    _leaf(root, "client", "ca")
    _leaf(root, "rogue", "otherca")
    _leaf(root, "admin", "adminca")
    _leaf(root, "expired", "adminca", days=-1)
    _self_signed(root, "selfie", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    _self_signed(root, "cluster", "subjectAltName=DNS:dqlite,IP:127.0.0.1")
    return Certs(root)
