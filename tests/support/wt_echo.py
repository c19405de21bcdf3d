"""A minimal WebTransport server on aioquic, independent of tokenwire's, for proving the browser path.

It accepts an extended CONNECT with ``:protocol webtransport`` on any path; on every bidirectional stream
the client opens it reads the whole request (until the client closes its side), then answers
``respond(request)`` in chunks of ``chunk`` bytes, one stream write and one transmit per chunk, with
``interval`` seconds between them, and ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import H3Event, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class PinnedCertificate:
    """A self-signed certificate a page can pin with ``serverCertificateHashes``."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).digest()


def make_pinned_certificate(valid_for: datetime.timedelta = datetime.timedelta(days=10)) -> PinnedCertificate:
    """ECDSA P-256, self-signed, for 127.0.0.1 and localhost. Chromium refuses a pinned hash unless the
    certificate is ECDSA and valid for at most 14 days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now - datetime.timedelta(minutes=1) + valid_for)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return PinnedCertificate(cert, key)


def _pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


@dataclass
class EchoStats:
    sessions: list[dict[str, str]] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)


class _Protocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, app: EchoServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app = app
        self._http: H3Connection | None = None
        self._sessions: set[int] = set()
        self._requests: dict[int, bytearray] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._http = H3Connection(self._quic, enable_webtransport=True)
        if self._http is not None:
            for h3_event in self._http.handle_event(event):
                self._h3_event_received(h3_event)

    def _h3_event_received(self, event: H3Event) -> None:
        assert self._http is not None
        if isinstance(event, HeadersReceived):
            headers = {k.decode(): v.decode() for k, v in event.headers}
            self._app.stats.sessions.append(headers)
            if headers.get(":method") == "CONNECT" and headers.get(":protocol") == "webtransport":
                self._sessions.add(event.stream_id)
                self._http.send_headers(event.stream_id, [(b":status", b"200"), *self._app.response_headers])
            else:
                self._http.send_headers(event.stream_id, [(b":status", b"404")], end_stream=True)
            self.transmit()
        elif isinstance(event, WebTransportStreamDataReceived) and event.session_id in self._sessions:
            buf = self._requests.setdefault(event.stream_id, bytearray())
            buf += event.data
            if event.stream_ended:
                request = bytes(self._requests.pop(event.stream_id))
                self._app.stats.requests.append(request)
                task = asyncio.get_running_loop().create_task(self._answer(event.stream_id, request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _answer(self, stream_id: int, request: bytes) -> None:
        body = self._app.respond(request)
        step = self._app.chunk
        for i in range(0, len(body), step):
            self._quic.send_stream_data(stream_id, body[i : i + step])
            self.transmit()
            if self._app.interval:
                await asyncio.sleep(self._app.interval)
        self._quic.send_stream_data(stream_id, b"", end_stream=True)
        self.transmit()


class EchoServer:
    def __init__(
        self,
        certificate: PinnedCertificate,
        respond: Callable[[bytes], bytes],
        *,
        chunk: int = 1000,
        interval: float = 0.0,
        response_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.certificate = certificate
        self.respond = respond
        self.chunk = chunk
        self.interval = interval
        self.response_headers = response_headers if response_headers is not None else []
        self.stats = EchoStats()
        self._server: QuicServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server._transport is not None
        return int(self._server._transport.get_extra_info("sockname")[1])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536)
        config.certificate = self.certificate.cert
        config.private_key = self.certificate.key
        self._server = await serve(
            host, port, configuration=config, create_protocol=lambda *a, **kw: _Protocol(*a, app=self, **kw)
        )

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@contextlib.asynccontextmanager
async def echo_server(
    respond: Callable[[bytes], bytes], *, certificate: PinnedCertificate | None = None, **options: Any
) -> AsyncIterator[EchoServer]:
    """An :class:`EchoServer` on 127.0.0.1 (UDP, a free port), by default with a new pinnable certificate."""
    server = EchoServer(certificate or make_pinned_certificate(), respond, **options)
    await server.start()
    try:
        yield server
    finally:
        server.close()
