"""Development certificates for the WebTransport server.

Browsers accept a self-signed certificate for WebTransport when the page passes its SHA-256 in
``serverCertificateHashes``, and only if it is ECDSA (P-256) and valid for less than 14 days (Chromium
refuses the hash otherwise). :func:`make_dev_certificate` makes exactly that.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["MAX_VALIDITY", "Certificate", "load_certificate", "make_dev_certificate"]

#: Chromium's limit for a certificate pinned by ``serverCertificateHashes`` (strictly less than 14 days).
MAX_VALIDITY = datetime.timedelta(days=14)


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate and its private key (PEM), where they are on disk, and the certificate's SHA-256."""

    cert_pem: bytes
    key_pem: bytes
    cert_path: Path | None
    key_path: Path | None

    @property
    def der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.cert_pem).public_bytes(serialization.Encoding.DER)

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the DER certificate: a browser's ``serverCertificateHashes`` value."""
        return hashlib.sha256(self.der).digest()

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hex()

    @property
    def self_signed(self) -> bool:
        """Whether the (first) certificate signs itself: its issuer is its subject and its own key verifies its
        signature. A browser accepts such a certificate only by its hash (``serverCertificateHashes``), so
        ``GET /v1/webtransport/certificate`` tells clients to pin it; one a CA issued must not be pinned (a
        pinned hash replaces the browser's CA checks, and Chromium takes a hash only for a certificate valid
        for less than 14 days)."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        if cert.issuer != cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def make_dev_certificate(
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    *,
    valid_for: datetime.timedelta = datetime.timedelta(days=10),
    directory: str | os.PathLike[str] | None = None,
) -> Certificate:
    """A self-signed ECDSA P-256 certificate for ``hosts`` (DNS names or IP addresses).

    ``valid_for`` must be under 14 days. With ``directory`` (an existing folder; ``""`` for a new
    temporary one) the PEM files are written there as ``cert.pem`` and ``key.pem`` (mode 0600).
    """
    if valid_for >= MAX_VALIDITY or valid_for <= datetime.timedelta(0):
        raise ValueError("a pinned WebTransport certificate must be valid for less than 14 days")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "tokenwire")])
    # A minute of slack for clocks that lag; the whole period stays under the limit.
    not_before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + valid_for)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_path = key_path = None
    if directory is not None:
        folder = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="tokenwire-cert-"))
        cert_path, key_path = folder / "cert.pem", folder / "key.pem"
        cert_path.write_bytes(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
    return Certificate(cert_pem, key_pem, cert_path, key_path)


def load_certificate(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Certificate:
    """A production certificate (chain) and key from PEM files."""
    cert, key = Path(cert_path), Path(key_path)
    return Certificate(cert.read_bytes(), key.read_bytes(), cert, key)
