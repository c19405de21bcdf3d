"""An async WebTransport client for tokenwire streams, on aioquic, decoding with the Rust core.

One client holds one WebTransport session (one QUIC connection) at a time and multiplexes every token stream
over it, one bidirectional stream per request (docs/protocol.md §4.4). It delivers every token exactly once
and in order: each reader keeps the stream id, the epoch and the seq of the last frame it handed out; when
its stream is reset or the connection drops, it attaches again (a new stream, on a new session if need be,
after a jittered backoff) with that position, and drops any replayed seq it already delivered. Resume
failures surface as the typed errors of :mod:`tokenwire.errors`, as with :class:`~tokenwire.client.SseClient`.

Session tickets are kept (:class:`SessionTicketStore`; the native engine keeps its own), so a reconnect resumes
the TLS session and sends its attach requests in 0-RTT early data.

Connection migration: :meth:`WebTransportClient.rebind` moves the live connection to a new UDP socket (a new
local port), as when the client's network changes; the server validates the new path and the session and its
streams go on without a reconnect.

Example (against ``tokenwire serve --webtransport``, trusting its development certificate by hash)::

    async with WebTransportClient(url, server_certificate_hashes=[sha256]) as client:
        reader = await client.generate("Hello", max_tokens=32)
        async for token in reader:
            print(token, end="")
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import random
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from aioquic._buffer import Buffer
from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DatagramReceived, DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import pull_quic_transport_parameters, push_quic_transport_parameters
from aioquic.tls import SessionTicket
from cryptography.hazmat.primitives.serialization import Encoding

from tokenwire import _core
from tokenwire.client._reader import TokenReaderBase
from tokenwire.client.sse import ConnectionFailed, with_backoff
from tokenwire.errors import RemoteProtocolError, TokenwireError, Unauthorized
from tokenwire.protocol.webtransport import (
    WT_PATH,
    AttachRequested,
    CancelConfirmed,
    CancelRequested,
    Reply,
    ReplyReader,
    Request,
    RequestFailed,
    StartRequested,
    StreamAttached,
    WtCode,
    connect_headers,
    encode_request,
    error_from_reply,
    http3_error_code,
    parse_preview,
    wt_error_code,
)

__all__ = [
    "CertificateMismatch",
    "PreviewCallback",
    "SessionTicketStore",
    "StreamInterrupted",
    "WebTransportClient",
    "WebTransportStreamReader",
]

if TYPE_CHECKING:
    from tokenwire.client.native import NativeClientEngine, NativeConnection

log = logging.getLogger("tokenwire.client.webtransport")

_TOKEN = _core.FRAME_TOKEN

#: ``on_preview(seq, token)``: a token seen in a datagram preview before the reliable stream delivered it.
PreviewCallback = Callable[[int, str], None]


class StreamInterrupted(TokenwireError):
    """A request stream was cut (reset, session or connection gone) before it ended; resumable.

    ``code`` is the WebTransport error code of the reset (:class:`~tokenwire.protocol.webtransport.WtCode`),
    ``None`` if the session or connection went away.
    """

    status_hint = 503

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class CertificateMismatch(TokenwireError):
    """The server's certificate is not one of ``server_certificate_hashes``."""

    status_hint = 495


class SessionTicketStore:
    """TLS session tickets by server name, for session resumption and 0-RTT. Each ticket is used once.

    Share one store between clients (a load generator's) so each reconnect finds a ticket.
    """

    def __init__(self, max_per_server: int = 8) -> None:
        self.max_per_server = max_per_server
        self._tickets: dict[str, collections.deque[SessionTicket]] = {}

    def add(self, ticket: SessionTicket) -> None:
        queue = self._tickets.setdefault(ticket.server_name, collections.deque(maxlen=self.max_per_server))
        queue.append(ticket)

    def take(self, server_name: str) -> SessionTicket | None:
        """The newest valid ticket for ``server_name`` (removed from the store), or ``None``."""
        queue = self._tickets.get(server_name)
        while queue:
            ticket = queue.pop()
            if ticket.is_valid:
                return ticket
        return None

    def __len__(self) -> int:
        return sum(len(q) for q in self._tickets.values())


#: ``sink(frames) -> stop``: takes a request stream's frames as they are parsed (instead of its queue);
#: returning True ends :meth:`_RequestStream.wait` (the final frame was seen).
FrameSink = Callable[[list[tuple[int, int, str]]], bool]


class _RequestStream:
    """One request stream: its reply, then the frames it carries (parsed as they arrive), queued in
    ``frames`` or handed to ``sink`` (a load generator's accounting: no wake-up per arrival)."""

    __slots__ = (
        "_waiter",
        "conn",
        "ended",
        "error",
        "frames",
        "on_preview",
        "parser",
        "preview_tag",
        "qid",
        "reply",
        "sink",
        "stop",
    )

    def __init__(self, conn: _Connection | NativeConnection, qid: int) -> None:
        self.conn = conn
        self.qid = qid
        self.parser = ReplyReader()
        self.reply: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.frames: collections.deque[tuple[int, int, str]] = collections.deque()
        self.ended = False  # FIN received
        self.error: BaseException | None = None  # cut or malformed: the stream is over
        self.on_preview: Callable[[list[tuple[int, int, str]]], None] | None = None  # the reader's, if it asked
        self.preview_tag = 0  # the tag of its previews (the reply's), once a reader takes them
        self.sink: FrameSink | None = None
        self.stop = False  # the sink saw the final frame
        self._waiter: asyncio.Future[None] | None = None

    def take_frames(self, sink: FrameSink) -> None:
        """Hand the frames queued so far, and every later one, to ``sink``."""
        self.sink = sink
        if self.frames:
            frames = list(self.frames)
            self.frames.clear()
            self.stop = sink(frames) or self.stop

    @property
    def over(self) -> bool:
        return self.ended or self.error is not None

    def on_data(self, data: bytes, end: bool) -> None:
        if self.over:
            return
        try:
            frames = self.parser.feed(data)
            if self.sink is None:
                self.frames.extend(frames)
            elif frames and self.sink(frames):
                self.stop = True
            if end:
                self.parser.close()
        except TokenwireError as exc:
            self._resolve_reply()
            self.abort(WtCode.BAD_REQUEST, StreamInterrupted(f"malformed bytes from the server: {exc}"))
            return
        self._resolve_reply()
        if end:
            self.ended = True
            self.conn.forget(self)
        if self.sink is None or self.over or self.stop:
            self._wake()

    def _resolve_reply(self) -> None:
        reply = self.parser.reply
        if reply is not None and not self.reply.done():
            self.reply.set_result(reply)

    def on_reset(self, h3_code: int) -> None:
        code = wt_error_code(h3_code)
        name = WtCode(code).name if code is not None and code in WtCode._value2member_map_ else hex(h3_code)
        self.fail(StreamInterrupted(f"the server reset the stream ({name})", code))
        self.conn.forget(self)

    def fail(self, exc: BaseException) -> None:
        if self.over:
            return
        self.error = exc
        if not self.reply.done():
            self.reply.set_exception(exc)
            self.reply.exception()  # retrieved: nobody may be waiting for it
        self._wake()

    def abort(self, code: int = WtCode.NO_ERROR, exc: BaseException | None = None) -> None:
        """Stop reading this stream (the server detaches; the generation goes on)."""
        if not self.over:
            conn = self.conn
            conn.cut_stream(self.qid, http3_error_code(code))
            conn.transmit_soon()
            self.fail(exc or StreamInterrupted("stream closed by the client", code))
        self.conn.forget(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until frames are available, the stream is over or its sink saw the final frame."""
        while not self.frames and not self.over and not self.stop:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class _DelayedAckQuic(QuicConnection):
    """A QUIC connection that acknowledges at most every ``ack_delay`` seconds (aioquic: 1 ms) and tells the
    peer so in its ``max_ack_delay`` transport parameter (aioquic: 25 ms), so the peer's loss detection waits
    for the delayed ACKs instead of probing."""

    def __init__(self, *, ack_delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not hasattr(self, "_ack_delay"):  # aioquic's own (private) delay, used when ACKs are scheduled
            raise RuntimeError("this aioquic has no QuicConnection._ack_delay: ack_delay cannot be applied")
        self._ack_delay = ack_delay

    def _serialize_transport_parameters(self) -> bytes:
        params = pull_quic_transport_parameters(Buffer(data=super()._serialize_transport_parameters()))
        params.max_ack_delay = max(1, round(self._ack_delay * 1000))
        buf = Buffer(capacity=3 * self._max_datagram_size)
        push_quic_transport_parameters(buf, params)
        return buf.data


class _Connection(QuicConnectionProtocol):
    """One QUIC connection carrying one WebTransport session."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: QuicStreamHandler | None = None,
        *,
        pins: frozenset[bytes] = frozenset(),
        keepalive: float | None = None,
        batch_transmit: bool = True,
    ) -> None:
        super().__init__(quic, stream_handler)
        loop = asyncio.get_running_loop()
        self.h3 = H3Connection(quic, enable_webtransport=True)
        self.pins = pins
        self.session_id = -1
        self.status: asyncio.Future[int] = loop.create_future()
        self.handshake: asyncio.Future[HandshakeCompleted] = loop.create_future()
        self.streams: dict[int, _RequestStream] = {}
        self.preview_streams: dict[int, _RequestStream] = {}  # by preview tag
        self.lost: BaseException | None = None
        self.remote: tuple[str, int] = ("", 0)  # the server's address (set by the client once connected)
        self.family = socket.AF_INET
        self._transmit_handle: asyncio.Handle | None = None
        self._pings = 0
        self.keepalive = keepalive
        self.batch_transmit = batch_transmit
        self._heard = True  # a datagram arrived since the last keepalive tick
        self._keepalive_handle: asyncio.TimerHandle | None = None
        #: UDP datagrams (and their payload bytes) received and sent on this connection's sockets.
        self.datagrams_received = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.bytes_sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_CountingTransport(transport, self))  # type: ignore[arg-type]

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self._heard = True
        self.datagrams_received += 1
        self.bytes_received += len(data)
        if not self.batch_transmit:
            super().datagram_received(data, addr)  # aioquic: a transmit after every datagram
            return
        # One transmit for every datagram read in this loop iteration: their ACKs leave together.
        self._quic.receive_datagram(data, addr, now=self._loop.time())  # type: ignore[arg-type]
        self._process_events()
        self.transmit_soon()

    def _keepalive_tick(self) -> None:
        """A PING when a stream is open and nothing came for a whole interval: after a NAT rebinding only a
        packet from the client tells the server where it is now, and a client that only receives would
        otherwise stay silent (and unreachable) until its idle timeout."""
        self._keepalive_handle = None
        if self.lost is not None or not self.keepalive:
            return
        if not self._heard and self.streams:
            self.queue_ping()
            self.transmit_soon()
        self._heard = False
        self._keepalive_handle = self._loop.call_later(self.keepalive, self._keepalive_tick)

    def queue_ping(self) -> None:
        """Queue a PING (retransmitted until acknowledged) for the next transmit."""
        self._pings += 1
        self._quic.send_ping(self._pings)

    @property
    def local_address(self) -> tuple[str, int] | None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return None
        host, port = transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    async def rebind(self) -> tuple[str, int]:
        """Move to a new UDP socket (a new local port); returns its address. See ``WebTransportClient.rebind``."""
        await self.handshake  # RFC 9000 §9: no migration before the handshake (raises if the connection is lost)
        local = ("::", 0) if self.family == socket.AF_INET6 else ("0.0.0.0", 0)  # noqa: S104 - an ephemeral port
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Socket(self), local_addr=local, remote_addr=self.remote, family=self.family
        )
        if self.lost is not None:  # lost while the socket was being made
            transport.close()
            raise StreamInterrupted(f"the connection is gone: {self.lost}")
        old, self._transport = self._transport, _CountingTransport(transport, self)
        if old is not None:
            old.close()  # what the server still sends to the old port is lost, and recovered by QUIC
        # RFC 9000 §9.5: a new local address uses a new connection ID (when the server has issued a spare one).
        self._quic.change_connection_id()
        # Something ack-eliciting at once, so the server sees the new address and validates it now.
        self.queue_ping()
        self.transmit()
        host, port = transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def open_session(self, authority: str, path: str, headers: Mapping[str, str]) -> None:
        self.session_id = self._quic.get_next_available_stream_id()
        self.h3.send_headers(self.session_id, connect_headers(authority, path, extra=headers.items()))
        if self.keepalive:
            self._keepalive_handle = self._loop.call_later(self.keepalive, self._keepalive_tick)

    def open_stream(self, request: bytes) -> _RequestStream:
        """A new bidirectional stream of the session carrying ``request`` (sent with FIN)."""
        if self.lost is not None:
            raise StreamInterrupted(f"the connection is gone: {self.lost}")
        qid = self.h3.create_webtransport_stream(self.session_id)
        stream = _RequestStream(self, qid)
        self.streams[qid] = stream
        self._quic.send_stream_data(qid, request, end_stream=True)
        self.transmit_soon()
        return stream

    def cut_stream(self, qid: int, h3_code: int) -> None:
        """Stop reading and writing stream ``qid`` (STOP_SENDING + RESET_STREAM with ``h3_code``)."""
        with contextlib.suppress(ValueError, RuntimeError):
            self._quic.stop_stream(qid, h3_code)
            self._quic.reset_stream(qid, h3_code)

    def forget(self, stream: _RequestStream) -> None:
        self.streams.pop(stream.qid, None)
        if stream.preview_tag:
            self.preview_streams.pop(stream.preview_tag, None)

    def transmit_soon(self) -> None:
        """One transmit for everything queued in this loop iteration (many requests, one packet)."""
        if self._transmit_handle is None and self.lost is None:
            self._transmit_handle = self._loop.call_soon(self._transmit_now)

    def _transmit_now(self) -> None:
        self._transmit_handle = None
        if self.lost is None:
            self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived | StreamReset | StopSendingReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                # aioquic's H3 layer would read the answer on a stream we opened as HTTP/3 frames: bypass it.
                if isinstance(event, StreamDataReceived):
                    stream.on_data(event.data, event.end_stream)
                elif isinstance(event, StreamReset):
                    stream.on_reset(event.error_code)
                return  # a STOP_SENDING: our request was sent whole, nothing to stop
            if isinstance(event, StreamReset) and event.stream_id == self.session_id:
                self._lose(StreamInterrupted("the server closed the session"))
        elif isinstance(event, HandshakeCompleted):
            self._handshake_completed(event)
        elif isinstance(event, ConnectionTerminated):
            reason = event.reason_phrase or f"error 0x{event.error_code:x}"
            self._lose(StreamInterrupted(f"connection closed: {reason}"))
            return
        self._h3_events(event)

    def _h3_events(self, event: QuicEvent) -> None:
        """What the H3 layer makes of ``event``: the session's answer and end, and its datagrams."""
        for h3_event in self.h3.handle_event(event):
            if h3_event.__class__ is HeadersReceived or h3_event.__class__ is DataReceived:
                self._session_event(h3_event)
            elif isinstance(h3_event, DatagramReceived) and h3_event.stream_id == self.session_id:
                dispatch_preview(self.preview_streams, h3_event.data)

    def _session_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived) and event.stream_id == self.session_id:
            raw = dict(event.headers).get(b":status", b"0")
            status = int(raw) if raw.isdigit() else 0
            if not self.status.done():
                self.status.set_result(status)
            if status != 200:
                self._lose(_refused(status))
        elif isinstance(event, DataReceived) and event.stream_id == self.session_id and event.stream_ended:
            self._lose(StreamInterrupted("the server closed the session"))

    def error_received(self, exc: Exception) -> None:
        """An ICMP error on the (connected) socket: the server is not there (any more)."""
        self._lose(StreamInterrupted(f"the server cannot be reached: {exc!r}"))

    def _handshake_completed(self, event: HandshakeCompleted) -> None:
        if self.pins and not event.session_resumed:
            cert = self._quic.tls._peer_certificate
            digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest() if cert is not None else b""
            if digest not in self.pins:
                exc = CertificateMismatch(f"server certificate sha-256 {digest.hex()} is not pinned")
                self.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="certificate mismatch")
                self._lose(exc)
                if not self.handshake.done():
                    self.handshake.set_exception(exc)
                    self.handshake.exception()
                return
        if not self.handshake.done():
            self.handshake.set_result(event)

    def _lose(self, exc: BaseException) -> None:
        """The session is over: every stream fails with ``exc`` (readers resume on a new session)."""
        if self.lost is not None:
            return
        self.lost = exc
        fail_all(exc, (self.status, self.handshake), self.streams.values())
        self.streams.clear()
        self.preview_streams.clear()
        self._loop.call_soon(self._release)

    def _release(self) -> None:
        """Close the socket once the close frame is out; no timers stay behind."""
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()

    def abort(self, reason: str, graceful: bool = False) -> None:
        """Close the connection now (CONNECTION_CLOSE); streams fail and readers resume on a new one."""
        if self.lost is not None:
            return
        if graceful:
            with contextlib.suppress(Exception):
                self._quic.send_stream_data(self.session_id, b"", end_stream=True)
        self.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase=reason)
        self._lose(StreamInterrupted(f"connection closed by the client: {reason}"))


def fail_all(exc: BaseException, futures: Iterable[asyncio.Future[Any]], streams: Iterable[_RequestStream]) -> None:
    """A session's end: its pending futures and every stream fail with ``exc``."""
    for future in futures:
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved: nobody may be waiting for it
    for stream in list(streams):
        stream.fail(exc)


def dispatch_preview(streams: Mapping[int, _RequestStream], data: bytes) -> None:
    """A datagram preview (docs/protocol.md §4.5) to the stream its tag names: a hint only, so a malformed
    one is dropped."""
    try:
        tag, frames = parse_preview(data)
    except TokenwireError as exc:
        log.debug("malformed preview datagram dropped: %s", exc)
        return
    stream = streams.get(tag)
    if stream is not None and stream.on_preview is not None and not stream.over:
        stream.on_preview(frames)


class _CountingTransport(asyncio.DatagramTransport):
    """A connection's UDP transport, counting what it sends (``_Connection.datagrams_sent``/``bytes_sent``)."""

    def __init__(self, transport: asyncio.DatagramTransport, conn: _Connection) -> None:
        super().__init__()
        self._inner = transport
        self._conn = conn

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        self._conn.datagrams_sent += 1
        self._conn.bytes_sent += len(data)
        self._inner.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()


class _Socket(asyncio.DatagramProtocol):
    """The protocol of a socket a connection moved to (``rebind``): hands everything to the connection."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.conn.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.conn.error_received(exc)


def _refused(status: int) -> TokenwireError:
    if status == 401:
        return Unauthorized("the server refused the WebTransport session: HTTP 401 (credentials missing or refused)")
    exc = RemoteProtocolError(f"the server refused the WebTransport session: HTTP {status}")
    exc.status_hint = status or 502
    return exc


class WebTransportStreamReader(TokenReaderBase):
    """Async iterator of one stream's tokens, exactly once and in order, across reconnects.

    ``position`` is the seq of the last token handed out (of the final frame once the iteration has ended);
    with ``stream_id`` and ``epoch`` it is the resume point of what the caller consumed, so a caller that
    stops iterating can resume elsewhere (``last_event_id`` gives it in SSE form, to resume over SSE) and
    miss nothing. ``received`` is the seq of the last frame received (tokens up to it may still be queued
    here). After the iteration ends, ``done`` holds the ``done`` frame's JSON body (``None`` if the stream
    had ended before this reader attached).

    Datagram previews (docs/protocol.md §4.5): with ``on_preview``, the reader asks for them (on every attach)
    and calls ``on_preview(seq, token)`` at most once per seq, for a token not yet received on the stream:
    a hint that may arrive before the reliable copy (under loss) or never. The iteration is unchanged: it
    alone delivers every token exactly once. ``previews`` says whether the server granted them.
    """

    def __init__(
        self,
        client: WebTransportClient,
        stream: _RequestStream | None,
        reply: StreamAttached,
        on_preview: PreviewCallback | None = None,
    ) -> None:
        super().__init__(reply.stream_id, reply.epoch, reply.after)
        self._client = client
        self._stream = stream
        self.on_preview = on_preview
        self.previews = reply.previews
        #: Preview datagrams received, and the tokens of them handed to ``on_preview``.
        self.previews_received = 0
        self.previewed_tokens = 0
        self._previewed = reply.after
        if stream is not None:
            self._use(stream, reply)

    def _use(self, stream: _RequestStream, reply: StreamAttached) -> None:
        self.previews = reply.previews
        if reply.preview and self.on_preview is not None and not stream.over:
            stream.on_preview = self._preview
            stream.preview_tag = reply.preview
            stream.conn.preview_streams[reply.preview] = stream

    def _preview(self, frames: list[tuple[int, int, str]]) -> None:
        self.previews_received += 1
        callback = self.on_preview
        if callback is None or self._finished:
            return
        stream = self._stream
        # Tokens already here, parsed or still queued on the stream, are not news.
        queued = next((f[1] for f in reversed(stream.frames) if f[1]), 0) if stream is not None else 0  # heartbeats: 0
        seen = max(self.received, self._previewed, queued)
        for kind, seq, payload in frames:
            if kind == _TOKEN and seq > seen:
                seen = self._previewed = seq
                self.previewed_tokens += 1
                try:
                    callback(seq, payload)
                except Exception:
                    log.exception("on_preview callback failed (stream %s, seq %d)", self.stream_id, seq)

    @property
    def last_event_id(self) -> str:
        return f"{self.stream_id}:{self.epoch}:{self.position}"

    @property
    def finished(self) -> bool:
        return self._finished

    async def aclose(self) -> None:
        """Stop reading (the generation goes on on the server)."""
        self._finished = True
        self._close_stream()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.abort()

    async def _fill(self) -> None:
        stream = self._stream
        if stream is None:
            self._stream = stream = await self._client._attach(self)
            self.reconnects += 1
        await stream.wait()
        frames = stream.frames
        while frames:
            kind, seq, payload = frames.popleft()
            self._handle(kind, seq, payload)
            if self._finished:
                self._close_stream()
                return
        if stream.ended:
            self._finished = True  # FIN without a final frame: the stream had ended, nothing was left
            self._stream = None
        elif stream.error is not None:
            log.debug("stream %s interrupted at seq %d (%s); resuming", self.stream_id, self.received, stream.error)
            self._close_stream()

    def _handle(self, kind: int, seq: int, payload: str) -> None:
        if seq == 0:
            return  # heartbeat
        try:
            self._accept(kind, seq, payload)
        except RemoteProtocolError:
            self._finished = True  # a gap: this reader cannot go on
            raise


class WebTransportClient:
    """Client of one tokenwire WebTransport server (``url`` like ``https://127.0.0.1:8000/v1/webtransport``).

    Certificates: ``server_certificate_hashes`` pins SHA-256 hashes of the server's certificate (as a
    browser's ``serverCertificateHashes``; the development certificate of ``tokenwire serve``); ``cadata``/
    ``cafile`` add trusted roots; ``verify=False`` trusts anything (tests only).

    ``keepalive``: while a stream is open and nothing has arrived from the server for this many seconds, the
    client sends a PING (``None`` turns it off). After a NAT rebinding the server can only learn the client's
    new address from a packet the client sends; a client that only receives, with nothing left to
    acknowledge, would otherwise go unheard until ``idle_timeout`` ends the connection and it reconnects.

    ``batch_transmit``: one transmit per loop iteration for everything the datagrams read in it call for
    (their acknowledgements leave in one packet), instead of aioquic's transmit after every datagram; fewer
    packets each way, measured in BENCHMARKS.md ("WebTransport levers"). ``False`` restores aioquic's way.

    ``ack_delay``: acknowledge received packets at most this many seconds late (announced to the server as
    ``max_ack_delay``) instead of aioquic's 1 ms: fewer ACK packets for the server to process when tokens
    arrive in many small packets, at the price of slower loss recovery and slower congestion-window growth
    (a large replay arrives more slowly). ``None`` keeps aioquic's behaviour. At most 1 s.

    ``access_token``: the API key of a server with auth on, sent as ``Authorization: Bearer`` on the session's
    CONNECT (every request of the session then runs as its principal). ``headers``: more CONNECT headers
    (``origin``, say). A query in ``url`` (``?access_token=``, the form browsers use) is sent as is. A session
    the server refuses raises from the request that opened it: ``Unauthorized`` for 401, a
    ``RemoteProtocolError`` whose ``status_hint`` is the status otherwise (403: an ``Origin`` not allowed).

    ``engine``: ``"aioquic"`` (the default: QUIC in Python) or ``"native"``: tokenwire's QUIC engine in Rust
    (:mod:`tokenwire.client.native`), its own UDP socket per client, or a
    :class:`~tokenwire.client.native.NativeClientEngine` shared by many clients (a load generator's). The same
    API, with these differences: the server is trusted by ``server_certificate_hashes`` or a CA
    (``cadata``/``cafile``), not ``verify=False``; session tickets are kept by the engine (in Rust, shared by
    every client of a shared engine; ``tickets`` unused), and a reconnect resumes with one and sends its
    CONNECT and requests in 0-RTT as the aioquic client does (``early_data_accepted`` counts the connections
    whose early data the server took; ``sessions_resumed`` counts only those); :meth:`wait_connected` returns
    ``None``; ``batch_transmit`` and ``ack_delay`` do not apply (the engine always transmits once per
    wake-up); :meth:`rebind` moves the engine's socket, so every connection of a shared engine.
    """

    def __init__(
        self,
        url: str,
        *,
        server_certificate_hashes: Iterable[bytes] = (),
        cadata: bytes | None = None,
        cafile: str | None = None,
        verify: bool = True,
        server_name: str | None = None,
        tickets: SessionTicketStore | None = None,
        max_retries: int = 8,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        connect_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        keepalive: float | None = 1.0,
        batch_transmit: bool = True,
        ack_delay: float | None = None,
        access_token: str | None = None,
        headers: Mapping[str, str] | None = None,
        engine: str | NativeClientEngine = "aioquic",
    ) -> None:
        parts = urlsplit(url)
        if isinstance(engine, str) and engine not in ("aioquic", "native"):
            raise ValueError(f"engine must be 'aioquic', 'native' or a NativeClientEngine, got {engine!r}")
        if engine != "aioquic" and not server_certificate_hashes and cadata is None and cafile is None:
            raise ValueError("the native engine trusts a server by server_certificate_hashes or cadata/cafile")
        if ack_delay is not None and not 0 < ack_delay <= 1.0:
            raise ValueError(f"ack_delay must be in (0, 1] seconds, got {ack_delay!r}")
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"url must be https://host[:port][/path], got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.path = (parts.path or WT_PATH) + (f"?{parts.query}" if parts.query else "")
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        if access_token is not None:
            self.headers["authorization"] = f"Bearer {access_token}"
        self.authority = parts.netloc
        self.server_name = server_name or self.host
        self.pins = frozenset(server_certificate_hashes)
        self.cadata = cadata
        self.cafile = cafile
        self.verify = verify
        self.tickets = tickets if tickets is not None else SessionTicketStore()
        self.max_retries = max_retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.keepalive = keepalive
        self.batch_transmit = batch_transmit
        self.ack_delay = ack_delay
        #: Connections opened, and how many of them resumed a TLS session / had early data accepted.
        self.connections = 0
        self.sessions_resumed = 0
        self.early_data_accepted = 0
        self.engine = engine
        #: The native engine this client made (closed with it); a shared one passed in is its owner's.
        self._own_engine: NativeClientEngine | None = None
        self._conn: _Connection | NativeConnection | None = None
        self._lock = asyncio.Lock()
        self._readers: set[WebTransportStreamReader] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for reader in list(self._readers):
            await reader.aclose()
        self._readers.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort("client closed", graceful=True)
        own, self._own_engine = self._own_engine, None
        if own is not None:
            own.close()
        await asyncio.sleep(0)  # let the socket close

    # -- connections -----------------------------------------------------------------------------------

    def _configuration(self) -> QuicConfiguration:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            max_datagram_frame_size=65536,
            server_name=self.server_name,
            idle_timeout=self.idle_timeout,
        )
        if self.pins or not self.verify:
            configuration.verify_mode = ssl.CERT_NONE  # checked against the pins after the handshake
        elif self.cadata is not None or self.cafile is not None:
            configuration.load_verify_locations(cafile=self.cafile, cadata=self.cadata)
        configuration.session_ticket = self.tickets.take(self.server_name)
        return configuration

    async def _connect(self) -> _Connection | NativeConnection:
        if self.engine != "aioquic":
            return await self._connect_native()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        configuration = self._configuration()
        quic = (
            QuicConnection(configuration=configuration, session_ticket_handler=self.tickets.add)
            if self.ack_delay is None
            else _DelayedAckQuic(
                configuration=configuration, session_ticket_handler=self.tickets.add, ack_delay=self.ack_delay
            )
        )
        local = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)  # noqa: S104 - a client's ephemeral port
        # A connected socket: ICMP errors (nobody listening) reach error_received and fail fast.
        _, conn = await loop.create_datagram_endpoint(
            lambda: _Connection(quic, pins=self.pins, keepalive=self.keepalive, batch_transmit=self.batch_transmit),
            local_addr=local,
            remote_addr=(str(addr[0]), int(addr[1])),
            family=family,
        )
        conn.remote = (str(addr[0]), int(addr[1]))
        conn.family = family
        conn.connect(addr, transmit=False)
        conn.open_session(self.authority, self.path, self.headers)
        conn.transmit()  # Initial (+ the CONNECT in 0-RTT when a ticket allows it)
        conn.handshake.add_done_callback(self._count_handshake)
        self.connections += 1
        return conn

    async def _connect_native(self) -> NativeConnection:
        from tokenwire.client.native import NativeClientEngine

        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        native = self.engine if isinstance(self.engine, NativeClientEngine) else self._own_engine
        if native is None or native.closed:
            native = self._own_engine = NativeClientEngine(
                server_certificate_hashes=self.pins,
                ca_pem=None if self.pins else self._ca_pem(),
                idle_timeout=self.idle_timeout,
                keepalive=self.keepalive,
                host="::" if family == socket.AF_INET6 else "0.0.0.0",  # noqa: S104 - an ephemeral port
            )
        conn = native.connect(str(addr[0]), int(addr[1]), self.server_name)
        conn.open_session(self.authority, self.path, self.headers)  # in 0-RTT when a ticket allows it
        conn.handshake.add_done_callback(partial(self._count_native_handshake, conn))
        self.connections += 1
        return conn

    def _ca_pem(self) -> bytes | None:
        if self.cadata is not None or self.cafile is None:
            return self.cadata
        with open(self.cafile, "rb") as f:
            return f.read()

    def _count_handshake(self, future: asyncio.Future[HandshakeCompleted]) -> None:
        if not future.cancelled() and future.exception() is None:
            event = future.result()
            self.sessions_resumed += event.session_resumed
            self.early_data_accepted += event.early_data_accepted

    def _count_native_handshake(self, conn: NativeConnection, future: asyncio.Future[None]) -> None:
        # quinn tells whether the server took the 0-RTT data, not whether a session resumed without it: a
        # resumption counts here when its early data was accepted.
        if not future.cancelled() and future.exception() is None and conn.early_data_accepted:
            self.sessions_resumed += 1
            self.early_data_accepted += 1

    async def _session(self) -> _Connection | NativeConnection:
        """The live connection, or a new one (requests are pipelined: nothing waits for the handshake)."""
        async with self._lock:
            conn = self._conn
            if conn is None or conn.lost is not None:
                conn = self._conn = await self._connect()
            return conn

    def drop(self) -> None:
        """Close the QUIC connection now, as a network failure would; readers resume on a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort("dropped")

    async def rebind(self) -> tuple[str, int]:
        """Connection migration: move the live connection to a new UDP socket on a new local port, as a client
        whose network changed (Wi-Fi to cellular, a new NAT mapping) would; returns the new local address.

        The old socket is closed. The new path uses a new connection ID when the server has issued a spare
        one, and a PING goes out on it at once so the server sees the new address and validates it. The
        session and every stream go on without a reconnect (``reconnects`` stays as it was). Waits for the
        handshake first; raises ``StreamInterrupted`` when there is no live connection.
        """
        conn = self._conn
        if conn is None or conn.lost is not None:
            raise StreamInterrupted("no live connection to move")
        return await conn.rebind()

    @property
    def local_address(self) -> tuple[str, int] | None:
        """The local address of the live connection's UDP socket (``None`` without one)."""
        conn = self._conn
        return None if conn is None or conn.lost is not None else conn.local_address

    async def wait_connected(self) -> HandshakeCompleted | None:
        """Open the session if needed and wait for its handshake (session resumption, early data flags;
        ``None`` on the native engine)."""
        conn = await self._session()
        async with asyncio.timeout(self.connect_timeout):
            return await conn.handshake

    # -- requests --------------------------------------------------------------------------------------

    async def _request(self, request: Request | bytes) -> tuple[_RequestStream, Reply]:
        conn = await self._session()
        stream = conn.open_stream(request if isinstance(request, bytes) else encode_request(request))
        try:
            async with asyncio.timeout(self.connect_timeout):
                reply = await stream.reply
        except TimeoutError:
            stream.abort()
            raise
        if isinstance(reply, RequestFailed):
            raise error_from_reply(reply)
        return stream, reply

    async def request_raw(self, data: bytes) -> Reply:
        """Send ``data`` as a request stream's bytes and return the reply (typed errors raise). For tests
        and tools: the server answers malformed bytes with an error reply."""
        stream, reply = await self._request(data)
        stream.abort()
        return reply

    async def generate(
        self, prompt: str, *, max_tokens: int = 64, on_preview: PreviewCallback | None = None, **params: Any
    ) -> WebTransportStreamReader:
        """Start a generation and return its token reader once the server has named the stream.

        A start is never retried (the prompt could run twice); a stream cut before its reply raises
        ``ConnectionFailed``. ``params``: ``stream_id``, ``ttft``, ``tokens_per_s``, ``stamp``, ``idempotency_key``
        (a repeat with the same key gets the same stream, docs/protocol.md §7.2).
        ``on_preview``: ask for datagram previews (see :class:`WebTransportStreamReader`).
        """
        params.pop("previews", None)  # asked for by passing on_preview, which receives them
        if on_preview is not None:
            params["previews"] = True
        try:
            stream, reply = await self._request(StartRequested(prompt, max_tokens, params))
        except (StreamInterrupted, OSError) as exc:
            raise ConnectionFailed(f"the generation request was cut before its answer: {exc}") from exc
        return self._reader(stream, reply, on_preview)

    async def attach(
        self,
        stream_id: str,
        *,
        epoch: str = "",
        after: int = 0,
        last_event_id: str | None = None,
        on_preview: PreviewCallback | None = None,
    ) -> WebTransportStreamReader:
        """Attach to a running or finished stream, from the start or from a resume point (``epoch`` and
        ``after``, or an SSE ``last_event_id`` ``{stream_id}:{epoch}:{seq}``). ``on_preview`` as in
        :meth:`generate`."""
        if last_event_id:
            sid, epoch, seq = last_event_id.split(":")
            if sid != stream_id:
                raise ValueError(f"last_event_id names stream {sid!r}, not {stream_id!r}")
            after = int(seq)
        reader = WebTransportStreamReader(self, None, StreamAttached(stream_id, epoch, after), on_preview)
        reader._stream = await self._attach(reader)
        self._readers.add(reader)
        return reader

    async def cancel(self, stream_id: str) -> None:
        """Stop a stream's generation (``StreamNotFound`` if the server does not hold it)."""
        stream, reply = await self._request(CancelRequested(stream_id))
        stream.abort()
        if not isinstance(reply, CancelConfirmed):
            raise RemoteProtocolError(f"unexpected reply to a cancel: {reply!r}")

    def _reader(
        self, stream: _RequestStream, reply: Reply, on_preview: PreviewCallback | None = None
    ) -> WebTransportStreamReader:
        if not isinstance(reply, StreamAttached):
            stream.abort()
            raise RemoteProtocolError(f"unexpected reply: {reply!r}")
        reader = WebTransportStreamReader(self, stream, reply, on_preview)
        self._readers.add(reader)
        return reader

    async def _attach(self, reader: WebTransportStreamReader) -> _RequestStream:
        """Attach ``reader`` after the last frame it received (see :meth:`_attach_after`)."""
        stream, reply = await self._attach_after(
            reader.stream_id, reader.epoch, reader.received, previews=reader.on_preview is not None
        )
        reader.epoch = reply.epoch
        reader._use(stream, reply)
        return stream

    async def _attach_after(
        self,
        stream_id: str,
        epoch: str,
        after: int,
        *,
        previews: bool = False,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> tuple[_RequestStream, StreamAttached]:
        """A new request stream attached to ``stream_id`` after seq ``after`` (a new session if the old one is
        gone), retried ``max_retries`` times with jittered exponential backoff (``uniform`` draws the jitter);
        typed errors are final, and a reply for another stream, epoch or position is refused."""
        stream, reply = await with_backoff(
            lambda: self._request(AttachRequested(stream_id, epoch, after, previews)),
            what=f"resume stream {stream_id}",
            tries=self.max_retries + 1,
            initial=self.backoff_initial,
            cap=self.backoff_max,
            transient=(OSError, TimeoutError, StreamInterrupted),
            transient_status=(429, 502, 503, 504),
            uniform=uniform,
        )
        if not isinstance(reply, StreamAttached) or reply.stream_id != stream_id or reply.after != after:
            stream.abort()
            raise RemoteProtocolError(f"unexpected reply to an attach after {after}: {reply!r}")
        if epoch and reply.epoch != epoch:
            stream.abort()
            raise RemoteProtocolError(f"attach answered from epoch {reply.epoch!r}, not {epoch!r}")
        return stream, reply
