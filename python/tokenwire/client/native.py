"""The client side of tokenwire's native QUIC engine (``tokenwire._core.QuicEngine(server=False)``) on asyncio.

One :class:`NativeClientEngine` is one UDP socket and every QUIC connection made from it: a load generator
shares one between all its sessions, a :class:`~tokenwire.client.WebTransportClient` made with
``engine="native"`` makes its own (or uses one passed in). The event loop drives it as the native server is
driven: a reader on the socket and one timer at the engine's next deadline; each wake-up is ONE
``poll_io()`` call (every datagram read, every timer due, HTTP/3 advanced), whose events go to their
connection (:class:`NativeConnection`), and the packets the handlers queued leave in one ``transmit()``.

A :class:`NativeConnection` is the native twin of the aioquic client's connection: one WebTransport session
(extended CONNECT), its request streams (:class:`~tokenwire.client.webtransport._RequestStream`, the same
objects, fed the same bytes) and its datagram previews. The certificate is checked in Rust, by the SHA-256 of
its DER (``server_certificate_hashes``) or a CA bundle.

Resumption and 0-RTT: the engine keeps the session tickets servers send (in Rust, per server name; every
connection of the engine shares them) and a new connection resumes with one. When the ticket allows early
data, the session's CONNECT and the requests made before the handshake leave at once in 0-RTT (as the aioquic
client sends them; a tokenwire server holds them until its handshake completes). If the server refuses the
early data, they are sent again once the handshake is done. Not here: per-connection byte counters
(:meth:`NativeClientEngine.stats` counts the socket's).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from tokenwire import _core
from tokenwire.client.webtransport import (
    CertificateMismatch,
    StreamInterrupted,
    _refused,
    _RequestStream,
    dispatch_preview,
    fail_all,
)
from tokenwire.errors import StreamClosed, TokenwireError
from tokenwire.protocol.webtransport import SETTINGS_ENABLE_WEBTRANSPORT, connect_headers

__all__ = ["CLIENT_SETTINGS", "NativeClientEngine", "NativeConnection"]

#: The client's HTTP/3 SETTINGS: no QPACK dynamic table (0x01 = 0, 0x07 = 0), HTTP/3 datagrams (0x33) and
#: WebTransport (drafts 02-06 say so with SETTINGS_ENABLE_WEBTRANSPORT, which every tokenwire server reads).
CLIENT_SETTINGS: dict[int, int] = {0x01: 0, 0x07: 0, 0x33: 1, SETTINGS_ENABLE_WEBTRANSPORT: 1}

#: The event loop's timer resolution (libuv's: 1 ms).
_TIMER_RESOLUTION = 0.001

#: HTTP/3 error codes the client closes with.
_H3_NO_ERROR = 0x100


class NativeClientEngine:
    """One client ``QuicEngine`` on the running loop, and the connections made from it.

    ``server_certificate_hashes``: SHA-256 hashes of the server certificate's DER to trust (as a browser's
    ``serverCertificateHashes``); ``ca_pem``: trusted roots instead (the server name is then checked).
    ``keepalive``: seconds between PINGs while a connection is idle (``None``: none). ``host``: the local
    address to bind (``"::"`` for IPv6 servers). ``early_data``: a resumed connection sends its session and
    requests in 0-RTT when its ticket allows (``False``: they wait for the handshake; tickets still resume).
    """

    def __init__(
        self,
        *,
        server_certificate_hashes: Iterable[bytes] = (),
        ca_pem: bytes | None = None,
        idle_timeout: float = 60.0,
        keepalive: float | None = 1.0,
        host: str = "0.0.0.0",  # noqa: S104 - a client's ephemeral port
        early_data: bool = True,
    ) -> None:
        hashes = list(server_certificate_hashes)
        self.engine = _core.QuicEngine(
            server=False,
            host=host,
            port=0,
            h3_settings=CLIENT_SETTINGS,
            server_cert_hashes=hashes or None,
            ca_pem=ca_pem,
            idle_timeout=idle_timeout,
            keepalive=keepalive,
            early_data=early_data,
        )
        self.loop = asyncio.get_running_loop()
        self.conns: dict[int, NativeConnection] = {}
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._flush_handle: asyncio.Handle | None = None
        self._fd = self.engine.fileno()
        self.loop.add_reader(self._fd, self._wake)

    # -- the loop's side -------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Readability or the deadline: one ``poll_io``, its events to their connections, one transmit."""
        if self.closed:
            return
        engine = self.engine
        conns = self.conns
        for event in engine.poll_io():
            conn = conns.get(event[1])
            if conn is not None:
                conn.on_event(event)
        engine.transmit()
        self._arm()

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _arm(self) -> None:
        """The one timer at the engine's next deadline. A timer already set no later than it stays: a wake-up
        before the deadline only costs an idle ``poll_io``, while moving the timer at every packet (the
        deadlines move with every ACK) would cost a timer per wake-up. The loop's timers count whole
        milliseconds: a deadline less than one ahead waits one (else the timer fires at once, before the
        deadline, and the loop spins until it has passed)."""
        delay = self.engine.next_timeout()
        if delay is None:
            return  # a timer still set fires once for nothing
        at = self.loop.time() + max(delay, _TIMER_RESOLUTION)
        timer = self._timer
        if timer is not None:
            if self._timer_at <= at + 0.0005:
                return
            timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._on_timer)

    def transmit_soon(self) -> None:
        """One transmit (and the timer re-armed) for everything queued in this loop iteration."""
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self.closed:
            self.engine.transmit()
            self._arm()

    # -- connections -----------------------------------------------------------------------------------

    def connect(self, host: str, port: int, server_name: str) -> NativeConnection:
        """A new QUIC connection to ``host:port`` (an IP address), checked against ``server_name``."""
        if self.closed:
            raise StreamClosed("the native client engine is closed")
        conn = NativeConnection(self, self.engine.connect(host, port, server_name))
        self.conns[conn.id] = conn
        self.transmit_soon()
        return conn

    @property
    def local_address(self) -> tuple[str, int]:
        return self.engine.local_address

    def rebind(self) -> tuple[str, int]:
        """Move every connection to a new UDP socket (a new local port); returns its address."""
        self.loop.remove_reader(self._fd)
        self.engine.rebind(self.engine.local_address[0], 0)
        self._fd = self.engine.fileno()
        self.loop.add_reader(self._fd, self._wake)
        self._arm()
        return self.engine.local_address

    def stats(self) -> dict[str, int]:
        """The engine's counters (``bytes_in``/``bytes_out``: UDP payload bytes of every connection)."""
        return self.engine.stats()

    def close(self) -> None:
        """Close every connection (their streams fail) and the socket's watch; idempotent."""
        if self.closed:
            return
        for conn in list(self.conns.values()):
            conn.abort("client closed")
        self.engine.transmit()
        self.closed = True
        self.loop.remove_reader(self._fd)
        for handle in (self._timer, self._flush_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._flush_handle = None


class NativeConnection:
    """One QUIC connection of a :class:`NativeClientEngine` carrying one WebTransport session.

    The same surface as the aioquic client's connection (``status``, ``handshake``, ``lost``, ``streams``,
    ``open_stream``, ``abort`` ...), so :class:`~tokenwire.client.WebTransportClient` and the load generator
    drive either. Requests made before the handshake wait for it: the session's CONNECT goes out first, then
    every waiting request on its own WebTransport stream (the server holds them until it accepts the session).
    On a connection that resumed with a ticket allowing 0-RTT (``early``) nothing waits: the CONNECT and the
    requests go out in early data, and their bytes are kept until the handshake says whether the server took
    them; if not, they are sent again.
    """

    def __init__(self, engine: NativeClientEngine, conn_id: int) -> None:
        self.native = engine
        self.engine = engine.engine
        self.id = conn_id
        loop = engine.loop
        self.session_id = -1
        self.status: asyncio.Future[int] = loop.create_future()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.streams: dict[int, _RequestStream] = {}
        self.preview_streams: dict[int, _RequestStream] = {}
        self.lost: BaseException | None = None
        self.connected = False
        self._session: tuple[str, str, Mapping[str, str]] | None = None
        self._waiting: list[tuple[_RequestStream, bytes]] = []  # requests made before the handshake
        #: The connection sends in 0-RTT until its handshake completes (a resumed session whose ticket allows it).
        self.early = self.engine.early_data(conn_id)[0]
        #: The server took this connection's 0-RTT data (known at the handshake).
        self.early_data_accepted = False
        self._early_sent: list[tuple[_RequestStream, bytes]] = []  # requests sent in 0-RTT, until the handshake
        self._unsent: dict[int, bytes] = {}  # request bytes QUIC flow control held back, by stream
        #: Not counted per connection here (the engine's ``stats()`` counts the socket's); kept for the API.
        self.bytes_received = 0
        self.bytes_sent = 0

    def open_session(self, authority: str, path: str, headers: Mapping[str, str]) -> None:
        """The session's extended CONNECT: sent once the handshake is done, or now in 0-RTT (``early``)."""
        self._session = (authority, path, headers)
        if self.early:
            self._send_connect(self._session)

    def on_event(self, event: tuple[Any, ...]) -> None:  # noqa: C901 - one dispatch over the engine's event tags
        tag = event[0]
        if tag == "wt_stream":
            stream = self.streams.get(event[2])
            if stream is not None:
                stream.on_data(event[4], event[5])
        elif tag == "reset":
            stream = self.streams.get(event[2])
            if stream is not None:
                stream.on_reset(event[3])
            elif event[2] == self.session_id:
                self._lose(_interrupted("the server closed the session"))
        elif tag == "datagram":
            if event[2] == self.session_id:
                self._preview(event[3])
        elif tag == "headers":
            if event[2] == self.session_id:
                self._session_status(event[3])
        elif tag == "data":
            if event[2] == self.session_id and event[4]:
                self._lose(_interrupted("the server closed the session"))
        elif tag == "writable":
            self._send_rest(event[2])
        elif tag == "connected":
            self._connected()
        elif tag == "closed":
            self.native.conns.pop(self.id, None)
            reason = event[3] or f"error 0x{event[2]:x}"
            if not self.connected and "certificate" in reason.lower():
                self._lose(CertificateMismatch(f"the server certificate was refused: {reason}"))
            else:
                self._lose(_interrupted(f"connection closed: {reason}"))

    def _connected(self) -> None:
        self.connected = True
        if self.early:
            self._early_settled()
        if not self.handshake.done():
            self.handshake.set_result(None)
        if self._session is None:
            return
        if self.session_id < 0 and not self._send_connect(self._session):
            return
        waiting, self._waiting = self._waiting, []
        for stream, request in waiting:
            if not stream.over:
                self._open(stream, request)

    def _early_settled(self) -> None:
        """The handshake says whether the server took the 0-RTT data. If not, the engine dropped the CONNECT
        and every stream sent in it (their ids are given again): the requests wait to be sent again, first."""
        self.early = False
        self.early_data_accepted = self.engine.early_data(self.id)[1]
        sent, self._early_sent = self._early_sent, []
        if self.early_data_accepted:
            return
        self.session_id = -1
        for stream, _ in sent:
            if self.streams.get(stream.qid) is stream:
                del self.streams[stream.qid]
            self._unsent.pop(stream.qid, None)
            stream.qid = -1
        self._waiting[:0] = sent

    def _send_connect(self, session: tuple[str, str, Mapping[str, str]]) -> bool:
        """Open the session's CONNECT stream and send its HEADERS; False if the session is lost."""
        authority, path, headers = session
        try:
            self.session_id = self.engine.open_bidi(self.id)
            self.engine.send_headers(
                self.id, self.session_id, connect_headers(authority, path, extra=headers.items()), False
            )
        except (TokenwireError, OSError) as exc:
            self._lose(_interrupted(f"the session could not be opened: {exc}"))
            return False
        self._sent()
        return True

    def _sent(self) -> None:
        """Bytes were queued. In 0-RTT they leave at once, right behind the Initial (``connect`` sent it), so
        the server reads them before the handshake can complete; else with the iteration's one transmit."""
        if self.early:
            self.engine.transmit()
        self.native.transmit_soon()

    def _session_status(self, headers: list[tuple[bytes, bytes]]) -> None:
        raw = dict(headers).get(b":status", b"0")
        status = int(raw) if raw.isdigit() else 0
        if not self.status.done():
            self.status.set_result(status)
        if status != 200:
            self._lose(_refused(status))

    def _preview(self, data: bytes) -> None:
        dispatch_preview(self.preview_streams, data)

    # -- request streams -------------------------------------------------------------------------------

    def open_stream(self, request: bytes) -> _RequestStream:
        """A new WebTransport stream of the session carrying ``request`` (sent with FIN)."""
        if self.lost is not None:
            raise StreamInterrupted(f"the connection is gone: {self.lost}")
        stream = _RequestStream(self, -1)
        if self.connected:
            self._open(stream, request)
        elif self.early and self.session_id >= 0:
            self._early_sent.append((stream, request))
            self._open(stream, request)
        else:
            self._waiting.append((stream, request))
        return stream

    def _open(self, stream: _RequestStream, request: bytes) -> None:
        try:
            qid = self.engine.open_wt_stream(self.id, self.session_id)
        except BlockingIOError:
            stream.fail(_interrupted("the server's stream limit is reached"))
            return
        except (TokenwireError, OSError) as exc:
            stream.fail(_interrupted(f"no stream: {exc}"))
            return
        stream.qid = qid
        self.streams[qid] = stream
        self._unsent[qid] = request
        self._send_rest(qid)

    def _send_rest(self, qid: int) -> None:
        data = self._unsent.pop(qid, None)
        if data is None:
            return
        try:
            sent = self.engine.send_data(self.id, qid, data, True)
        except (TokenwireError, OSError):
            return  # the stream or connection went away: its reset or close event says so
        if sent < len(data):
            self._unsent[qid] = data[sent:]
        self._sent()

    def cut_stream(self, qid: int, h3_code: int) -> None:
        """Stop reading and writing stream ``qid`` (STOP_SENDING + RESET_STREAM with ``h3_code``)."""
        self._unsent.pop(qid, None)
        if qid < 0 or self.lost is not None:
            return
        with contextlib.suppress(TokenwireError, OSError):
            self.engine.stop_sending(self.id, qid, h3_code)
        with contextlib.suppress(TokenwireError, OSError):
            self.engine.reset_stream(self.id, qid, h3_code)

    def forget(self, stream: _RequestStream) -> None:
        self.streams.pop(stream.qid, None)
        self._unsent.pop(stream.qid, None)
        if stream.preview_tag:
            self.preview_streams.pop(stream.preview_tag, None)

    def transmit_soon(self) -> None:
        self.native.transmit_soon()

    # -- the end ---------------------------------------------------------------------------------------

    def _lose(self, exc: BaseException) -> None:
        """The session is over: every stream (and request still waiting) fails with ``exc``."""
        if self.lost is not None:
            return
        self.lost = exc
        fail_all(exc, (self.status, self.handshake), [*self.streams.values(), *(s for s, _ in self._waiting)])
        self.streams.clear()
        self.preview_streams.clear()
        self._waiting.clear()
        self._early_sent.clear()
        self._unsent.clear()

    def abort(self, reason: str, graceful: bool = False) -> None:
        """Close the connection now (CONNECTION_CLOSE); streams fail and readers resume on a new one."""
        if self.lost is not None:
            return
        if graceful and self.session_id >= 0:
            with contextlib.suppress(TokenwireError, OSError):
                self.engine.send_data(self.id, self.session_id, b"", True)
            self.engine.transmit()
        with contextlib.suppress(TokenwireError, OSError):
            self.engine.close(self.id, _H3_NO_ERROR, reason.encode())
        self.native.conns.pop(self.id, None)
        self.native.transmit_soon()
        self._lose(_interrupted(f"connection closed by the client: {reason}"))

    @property
    def local_address(self) -> tuple[str, int] | None:
        return None if self.lost is not None else self.native.local_address

    async def rebind(self) -> tuple[str, int]:
        """Move to a new UDP socket, after the handshake (every connection of the engine moves with it)."""
        await self.handshake
        if self.lost is not None:
            raise StreamInterrupted(f"the connection is gone: {self.lost}")
        return self.native.rebind()


def _interrupted(message: str) -> TokenwireError:
    return StreamInterrupted(message)
