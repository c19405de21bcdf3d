"""The WebTransport server: aioquic QUIC + HTTP/3 on the running loop (uvloop in production), sharing a Hub.

A client opens a WebTransport session (extended CONNECT to ``/v1/webtransport``), then one bidirectional
stream per request: start, attach (resume) or cancel (docs/protocol.md §4.4). Many token streams share one
session and one QUIC connection.

Data path of a token stream: ``TokenStream.send`` -> ring append (Rust) -> the stream's listener marks it
dirty in its connection -> the connection queues itself once in the :class:`~tokenwire.server.flusher.Flusher`
-> next loop iteration: one cursor poll (one ``Storage.poll``) per dirty stream renders its new binary frames
(Rust) into one
``send_stream_data``, then ONE ``transmit()`` for the whole connection, so packets carry frames of many
streams and the loop pays for one packetisation per connection per iteration, not per token.

A stream whose bytes pile up in QUIC's send buffer (a slow or gone reader) stops pulling from the ring;
after ``stall_timeout`` it is reset with :attr:`WtCode.RESUME` and the client resumes from its position.
Closing a stream, a session or a connection never stops a generation; a cancel request does.

Datagram previews (off by default, docs/protocol.md §4.5): a stream whose request asks for them also gets
each batch of new frames as an HTTP/3 datagram, queued for the same transmit; bounded, never instead of the
stream.

0-RTT: a session is never established from early data (draft-ietf-webtrans-http3 §3.2: the CONNECT is not
safe). A CONNECT that arrives before the handshake has completed is held, with the request streams of its
session, and answered once it has (RFC 8470 §3: defer rather than refuse, so the client loses no round trip);
a replayed first flight never completes a handshake, so it never gets a session, and no request of it is
served. A CONNECT also waits for the client's SETTINGS (its draft and its flow control).

WebTransport flow control (drafts 12 on): the server's SETTINGS give every client limits it never reaches
(2**60 streams and bytes per session). When the client turns flow control on as well (Safari, webtransport-go
with a Config), the server keeps to the client's WT_MAX_DATA: bytes its credit does not cover wait in the
stream (which stops pulling frames from the ring) until a WT_MAX_DATA capsule raises it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

from aioquic._buffer import Buffer
from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, ErrorCode, FrameType, H3Connection, Setting
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionError, stream_is_unidirectional
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import SessionTicket, load_pem_private_key, load_pem_x509_certificates

from tokenwire import _core
from tokenwire.errors import ResumeExpired, StreamNotFound, TokenwireError
from tokenwire.hub import Cursor, Hub, TokenStream
from tokenwire.metrics import ServerMetrics, WriteMeter
from tokenwire.protocol.http1 import HttpError
from tokenwire.protocol.webtransport import (
    CAPSULE_CLOSE_SESSION,
    CAPSULE_WT_MAX_DATA,
    MAX_PREVIEW_BYTES,
    SESSION_GONE,
    SETTINGS_WT_INITIAL_MAX_DATA,
    WT_FLOW_CONTROL_ERROR,
    WT_PATH,
    AttachRequested,
    CancelConfirmed,
    CancelRequested,
    CapsuleReader,
    Request,
    RequestReader,
    SendCredit,
    StartRequested,
    StreamAttached,
    WtCode,
    connect_fields,
    encode_preview,
    encode_reply,
    error_reply,
    flow_control_enabled,
    http3_error_code,
    is_webtransport_connect,
    max_data_of,
    server_settings,
    speaks_draft13_on,
)
from tokenwire.server.base import ServerBase
from tokenwire.server.certs import Certificate, make_dev_certificate
from tokenwire.server.config import ServerConfig, ServerOptions
from tokenwire.server.endpoints import Endpoints, count_resume, left_early

__all__ = ["WebTransportConnection", "WebTransportMetrics", "WebTransportServer"]

log = logging.getLogger("tokenwire.server.webtransport")

_HEARTBEAT = _core.encode_frame(_core.FRAME_HEARTBEAT, 0, "")
#: Ids of ended sessions remembered per connection (their late streams are refused, not held).
_MAX_CLOSED_SESSIONS = 256
#: A preview's bytes besides its frames, at most: the tag and the session's quarter stream id (varints).
_PREVIEW_OVERHEAD = 16
#: Bytes of capsules kept for a CONNECT that is held (0-RTT, SETTINGS not in yet), applied once it is answered;
#: a client that sends more before its session exists has its CONNECT reset with H3_EXCESSIVE_LOAD.
_MAX_HELD_CAPSULE_BYTES = 16 * 1024


class WebTransportMetrics(ServerMetrics):
    """The server metrics (label ``protocol="webtransport"``) plus WebTransport's own counters."""

    COUNTERS = (
        *ServerMetrics.COUNTERS,
        ("sessions_total", "WebTransport sessions accepted"),
        ("sessions_refused_total", "WebTransport sessions refused (limits, bad CONNECT, shutting down)"),
        ("early_sessions_total", "Session CONNECTs that came in 0-RTT early data, answered after the handshake"),
        (
            "early_requests_total",
            "Attach and cancel requests that came in 0-RTT early data, served after the handshake",
        ),
        ("deferred_starts_total", "Start requests that came in 0-RTT early data, started after the handshake"),
        ("credit_waits_total", "Times a session used up the client's flow control credit (sent WT_DATA_BLOCKED)"),
        ("streams_reset_total", "Token streams reset by the server (slow reader, session gone, shutdown)"),
        ("previews_sent_total", "Datagram previews queued for sending"),
        ("previews_dropped_total", "Datagram previews dropped (too large for a packet or the peer, or stale)"),
    )

    sessions_total: int
    sessions_refused_total: int
    early_sessions_total: int
    early_requests_total: int
    deferred_starts_total: int
    credit_waits_total: int
    streams_reset_total: int
    previews_sent_total: int
    previews_dropped_total: int

    def __init__(self) -> None:
        super().__init__("webtransport")


def _send_buffered(quic: QuicConnection, stream_id: int) -> int:
    """Bytes of a stream still in QUIC's send buffer: not yet sent, or sent and not yet acknowledged.

    aioquic has no public accessor for this; it reads the sender's buffer offsets.
    """
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return sender._buffer_stop - sender._buffer_start


def _webtransport_session_of(h3: H3Connection, stream_id: int) -> int | None:
    """The session of a bidirectional stream whose WebTransport header (signal 0x41 + session id) the H3 layer
    has read, else ``None``.

    aioquic emits no event for a stream that carried the header and nothing else (it has no data to report),
    so the server would never see such a stream open; it reads the H3 layer's stream state instead.
    """
    stream = h3._stream.get(stream_id)
    if stream is None or stream.frame_type != FrameType.WEBTRANSPORT_STREAM:
        return None
    session_id: int | None = stream.session_id
    return session_id


def _grant_bidi_streams(quic: QuicConnection, count: int) -> None:
    """Let the peer open ``count`` bidirectional streams at once (QUIC ``initial_max_streams_bidi``, then one
    more for each that closes). aioquic fixes it at 128 with no option: this sets its private limit before the
    handshake sends the transport parameters."""
    limit = quic._local_max_streams_bidi
    if limit.used == 0 and limit.value == limit.sent:
        limit.value = limit.sent = count


#: draft-ietf-quic-reliable-stream-reset: the ``reset_stream_at`` transport parameter (empty) and its frame,
#: RESET_STREAM_AT (stream id, error code, final size, reliable size). webtransport-go v0.12 on refuses a
#: server that does not announce it.
_RESET_STREAM_AT_PARAMETER = 0x17F7586D2CB571
_RESET_STREAM_AT_FRAME = 0x24
_RESET_STREAM_FRAME = 0x04
_STREAM_FRAMES = range(0x08, 0x10)


class _ResetStreamAt:
    """Announces ``reset_stream_at`` on one QUIC connection and handles RESET_STREAM_AT frames (aioquic knows
    neither).

    A peer resets a WebTransport stream with RESET_STREAM_AT so that the stream's first ``reliable_size``
    bytes (its header: 0x41 and the session id) are still delivered: the receiver must learn which session
    the stream belonged to. A RESET_STREAM_AT whose reliable bytes have all been delivered is a RESET_STREAM
    (aioquic's own handler: flow control, final size, the ``StreamReset`` event); otherwise it waits until
    STREAM frames have delivered them. Without this, such a frame would close the whole connection
    ("Unknown frame type").

    aioquic has no extension point for either, so this reads private members of the connection: the frame
    handler table (RESET_STREAM_AT added, STREAM wrapped) and the method that encodes the transport
    parameters (called during the handshake, after the protocol's constructor has made this).
    """

    __slots__ = ("handle_reset", "handle_stream", "pending", "quic")

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic
        handlers: dict[int, tuple[Callable[..., None], Any]]
        handlers = quic._QuicConnection__frame_handlers  # type: ignore[attr-defined]
        self.handle_reset, reset_epochs = handlers[_RESET_STREAM_FRAME]
        self.handle_stream, stream_epochs = handlers[_STREAM_FRAMES[0]]
        #: Resets waiting for their reliable bytes: stream id -> (error code, final size, reliable size).
        self.pending: dict[int, tuple[int, int, int]] = {}
        handlers[_RESET_STREAM_AT_FRAME] = (self.on_reset_stream_at, reset_epochs)
        for frame_type in _STREAM_FRAMES:
            handlers[frame_type] = (self.on_stream, stream_epochs)
        serialize = quic._serialize_transport_parameters
        announce = _core.encode_varint(_RESET_STREAM_AT_PARAMETER) + _core.encode_varint(0)
        quic._serialize_transport_parameters = lambda: serialize() + announce  # type: ignore[method-assign]

    def _reset(self, context: Any, frame_type: int, stream_id: int, error_code: int, final_size: int) -> None:
        frame = Buffer(capacity=24)
        for value in (stream_id, error_code, final_size):
            frame.push_uint_var(value)
        self.handle_reset(context, frame_type, Buffer(data=frame.data))

    def _delivered(self, stream_id: int) -> int:
        stream = self.quic._streams.get(stream_id)
        return 0 if stream is None else stream.receiver.starting_offset()

    def on_reset_stream_at(self, context: Any, frame_type: int, buf: Buffer) -> None:
        stream_id, error_code, final_size, reliable_size = (buf.pull_uint_var() for _ in range(4))
        if reliable_size > final_size:
            raise QuicConnectionError(
                error_code=QuicErrorCode.FRAME_ENCODING_ERROR,
                frame_type=frame_type,
                reason_phrase="RESET_STREAM_AT reliable size beyond its final size",
            )
        earlier = self.pending.pop(stream_id, None)
        if earlier is not None:  # a repeated frame may only lower the reliable size
            reliable_size = min(reliable_size, earlier[2])
        if reliable_size <= self._delivered(stream_id):
            self._reset(context, frame_type, stream_id, error_code, final_size)
        else:
            self.pending[stream_id] = (error_code, final_size, reliable_size)

    def on_stream(self, context: Any, frame_type: int, buf: Buffer) -> None:
        if not self.pending:
            self.handle_stream(context, frame_type, buf)
            return
        start = buf.tell()
        stream_id = buf.pull_uint_var()
        buf.seek(start)
        self.handle_stream(context, frame_type, buf)
        waiting = self.pending.get(stream_id)
        if waiting is not None and waiting[2] <= self._delivered(stream_id):
            del self.pending[stream_id]
            self._reset(context, frame_type, stream_id, waiting[0], waiting[1])


class _ServerH3(H3Connection):
    """aioquic's HTTP/3 with WebTransport on, announcing the SETTINGS of every WebTransport draft (aioquic
    sends only draft 02's SETTINGS_ENABLE_WEBTRANSPORT): a client of a newer draft finds its own."""

    def __init__(self, quic: QuicConnection, max_sessions: int) -> None:
        self._wt_settings = server_settings(max_sessions)
        super().__init__(quic, enable_webtransport=True)

    def _get_local_settings(self) -> dict[int, int]:
        return {**super()._get_local_settings(), **self._wt_settings}


class _Session:
    """One WebTransport session: its CONNECT stream id, its active request streams, and, when the client turned
    WebTransport flow control on, the credit it gives the server (docs/protocol.md §3.1)."""

    __slots__ = ("blocked", "capsules", "credit", "headers", "id", "streams")

    def __init__(self, session_id: int, credit: SendCredit | None, headers: dict[str, str] | None = None) -> None:
        self.id = session_id
        #: The CONNECT's regular headers (lower-case names): what a generator sees of the session's requests.
        self.headers = headers or {}
        self.streams: set[int] = set()
        #: ``None``: flow control is off (QUIC's alone applies).
        self.credit = credit
        self.capsules = CapsuleReader()
        #: Streams whose bytes wait for credit (a WT_MAX_DATA capsule), in the order they blocked.
        self.blocked: dict[int, _WtStream] = {}


class _HeldConnect:
    """A CONNECT held until the handshake has completed and the client's SETTINGS are in, and what its stream
    carried meanwhile: capsules (``data``) and its end, applied once it is answered (a session the client closed
    before that serves nothing)."""

    __slots__ = ("data", "early", "ended", "event")

    def __init__(self, event: HeadersReceived, early: bool) -> None:
        self.event = event
        #: It came in 0-RTT early data.
        self.early = early
        self.data = bytearray()
        self.ended = False


class _HeldStream:
    """A request stream of a session not established yet: its bytes so far (at most the request limit plus a
    message head and one byte: whatever follows cannot change the answer, a 413 or "bytes after the request"),
    whether it ended, and whether it came in 0-RTT early data."""

    __slots__ = ("data", "early", "ended")

    def __init__(self, early: bool) -> None:
        self.data = bytearray()
        self.ended = False
        self.early = early


class _WtStream:
    """One request stream: its request, then (attached) the token stream it carries."""

    __slots__ = (
        "conn",
        "cursor",
        "dirty",
        "early",
        "held",
        "held_end",
        "meter",
        "opened_at",
        "paused_at",
        "preview_tag",
        "qid",
        "reader",
        "recv_ended",
        "send_ended",
        "session",
        "stream",
    )

    def __init__(
        self, conn: WebTransportConnection, qid: int, session: _Session, now: float, early: bool = False
    ) -> None:
        self.conn = conn
        self.qid = qid
        self.session = session
        #: Its first bytes came in 0-RTT early data (it waited for the handshake with its session).
        self.early = early
        #: Bytes written while the session had no flow control credit, and whether FIN follows them: they go
        #: out as WT_MAX_DATA capsules raise the limit; meanwhile the stream takes no more frames (the ring holds
        #: them).
        self.held = bytearray()
        self.held_end = False
        self.reader: RequestReader | None = RequestReader(conn.server.config.webtransport.max_request_bytes)
        self.stream: TokenStream | None = None
        #: Where this stream reads its token stream (set with ``stream``): the reader backpressure sees.
        self.cursor: Cursor | None = None
        self.dirty = False
        self.preview_tag = 0  # > 0: previews are sent, with this tag (docs/protocol.md §4.5)
        self.recv_ended = False
        self.send_ended = False
        self.opened_at = now
        self.paused_at = 0.0
        #: Write accounting (its ``observe`` is the cursor's hook) and the heartbeat clock (``last_write``).
        self.meter = WriteMeter(conn.server.metrics, conn.server.loop.time, now)

    def on_frames(self) -> None:
        """The token stream's listener: new frames or its end. Queue this stream for the next flush."""
        if not self.dirty:
            self.dirty = True
            self.conn.mark_dirty(self)

    @property
    def position(self) -> int:
        """Seq of the last frame taken from the token stream (0 before one is attached)."""
        return 0 if self.cursor is None else self.cursor.position

    def detach(self) -> None:
        stream = self.stream
        if stream is not None:
            stream.detach(self.on_frames)
            if self.cursor is not None:
                stream.reader_resumed(self.cursor)
            self.stream = None
            self.conn.paused.discard(self)

    def hold_reader(self) -> None:
        """Stop taking frames (a full QUIC send buffer, or no flow control credit): the ring holds them, a
        producer the hub drives waits if this reader falls far behind, and the tick cuts it after
        ``stall_timeout``."""
        if not self.paused_at:
            self.paused_at = self.conn.server.loop.time()
            if self.stream is not None and self.cursor is not None:
                self.stream.reader_paused(self.cursor)

    def release_reader(self) -> None:
        """Take frames again (see :meth:`hold_reader`): the next flush writes what the ring has."""
        if self.paused_at:
            self.paused_at = 0.0
            if self.stream is not None and self.cursor is not None:
                self.stream.reader_resumed(self.cursor)
        self.on_frames()

    @property
    def waiting_for_credit(self) -> bool:
        return bool(self.held) or self.held_end

    def _pause(self, prefix: bytes) -> None:
        """A slow reader: the ring holds its frames. ACKs (``datagram_received``) wake it; the tick cuts it."""
        conn = self.conn
        if not self.paused_at:
            conn.paused.add(self)
            self.hold_reader()
        if prefix:
            conn.send(self, prefix, False)

    def write(self, prefix: bytes = b"") -> None:
        """Send everything new since ``position`` (after ``prefix``) in one ``send_stream_data``; FIN at the end.

        No transmit: the caller transmits once for every stream of the connection.
        """
        self.dirty = False
        cursor = self.cursor
        if self.send_ended or self.stream is None or cursor is None:
            return
        if self.held:  # waiting for flow control credit: the ring holds the rest
            self.hold_reader()
            return
        conn = self.conn
        server = conn.server
        quic = conn._quic
        if _send_buffered(quic, self.qid) > server.config.webtransport.stream_buffer_high:
            self._pause(prefix)
            return
        try:
            data, _, ended = cursor.poll()  # its hook (the meter) accounts the frames it took
        except ResumeExpired:
            # The reader fell behind what the ring holds: cut; its attach gets the 410 error reply.
            server.metrics.backpressure_closes_total += 1
            conn.reset(self, WtCode.RESUME)
            return
        except StreamNotFound:
            conn.reset(self, WtCode.RESUME)
            return
        if data and self.preview_tag:
            conn.preview(self, data)
        if prefix:
            data = prefix + data
        if data or ended:  # ended: every frame up to the final one is in data now
            conn.send(self, data, ended)
        if ended:
            self.detach()
            conn.finished_sending(self)


class WebTransportConnection(QuicConnectionProtocol):
    """One QUIC connection: HTTP/3, its WebTransport sessions, and their request streams."""

    def __init__(
        self, quic: QuicConnection, stream_handler: QuicStreamHandler | None = None, *, server: WebTransportServer
    ) -> None:
        super().__init__(quic, stream_handler)
        self.server = server
        _grant_bidi_streams(quic, server.config.webtransport.quic_bidi_streams)
        _ResetStreamAt(quic)
        self.h3: H3Connection | None = None
        self.sessions: dict[int, _Session] = {}
        self.sessions_opened = 0
        self.closed_sessions: set[int] = set()
        self.streams: dict[int, _WtStream] = {}
        #: Streams of sessions not established yet (CONNECT not arrived, or held): session id -> stream id -> its
        #: bytes so far (at most ``max_early_streams`` streams a session, however many packets carry them).
        self.early: dict[int, dict[int, _HeldStream]] = {}
        #: Requests (CONNECTs) held until the handshake has completed and the client's SETTINGS have arrived:
        #: a session is never established from 0-RTT early data (draft-ietf-webtrans-http3 §3.2, RFC 8470 §3),
        #: nor before the server knows the client's draft and flow control (draft 14 §3.1).
        self.held_connects: list[_HeldConnect] = []
        self.handshake_done = False
        self.paused: set[_WtStream] = set()
        self._dirty: list[_WtStream] = []
        self._queued = False
        self.closed = False

    # -- asyncio / aioquic ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        self.server.metrics.connections_total += 1

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if self.paused:
            self._wake_paused()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):  # the common case first
            h3 = self.h3
            if h3 is not None:
                h3_events = h3.handle_event(event)
                for h3_event in h3_events:
                    self._h3_event_received(h3_event)
                if not h3_events and event.stream_id not in self.streams:
                    self._maybe_header_only(h3, event.stream_id)
                if self.held_connects and self._connects_ready():  # the client's SETTINGS came in this data
                    self._release_connects()
            return
        handler = _QUIC_HANDLERS.get(type(event))
        if handler is not None and handler(self, event):
            return  # consumed: the H3 layer does not see it
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self._h3_event_received(h3_event)

    def _maybe_header_only(self, h3: H3Connection, qid: int) -> None:
        """A stream that so far carried only its WebTransport header opens now: its header timeout and its
        place in the session's stream limit start here, not when its first request byte arrives."""
        session_id = _webtransport_session_of(h3, qid)
        if session_id is not None:
            self._stream_data(session_id, qid, b"", False)

    def _on_protocol_negotiated(self, event: ProtocolNegotiated) -> bool:
        if event.alpn_protocol in H3_ALPN:
            self.h3 = _ServerH3(self._quic, self.server.config.webtransport.max_sessions_per_connection)
        return False

    def _on_handshake_completed(self, event: HandshakeCompleted) -> bool:
        self.handshake_done = True
        if self.held_connects and self._connects_ready():
            self._release_connects()
        return False

    def _on_stop_sending(self, event: StopSendingReceived) -> bool:
        st = self.streams.get(event.stream_id)
        if st is None:
            return False
        # The client stopped reading this stream (QUIC has reset our side). Generation goes on.
        self._lost(st)
        self._drop_held(st)
        st.send_ended = True
        self.finished_sending(st)
        return True

    def _on_stream_reset(self, event: StreamReset) -> bool:
        st = self.streams.get(event.stream_id)
        if st is not None:
            self._recv_reset(st)
            return True
        session = self.sessions.get(event.stream_id)
        if session is not None:
            self._close_session(session)
        elif (held := self._held(event.stream_id)) is not None:  # cancelled before it was answered
            self._drop_held_connect(held, ErrorCode.H3_REQUEST_CANCELLED)
        return False

    def _on_terminated(self, event: ConnectionTerminated) -> bool:
        self._terminated()
        return True

    def _h3_event_received(self, event: H3Event) -> None:
        if isinstance(event, WebTransportStreamDataReceived):
            self._stream_data(event.session_id, event.stream_id, event.data, event.stream_ended)
        elif isinstance(event, HeadersReceived):
            if self._connects_ready():
                self._headers(event)
            else:
                self._hold_connect(event)
        elif isinstance(event, DataReceived):
            session = self.sessions.get(event.stream_id)
            if session is not None:
                if event.data:
                    self._capsules(session, event.data)
                if event.stream_ended and session.id in self.sessions:  # its end closes the session
                    self._close_session(session, fin=True)
            elif (held := self._held(event.stream_id)) is not None:  # kept until the CONNECT is answered
                held.data += event.data
                held.ended = held.ended or event.stream_ended
                if len(held.data) > _MAX_HELD_CAPSULE_BYTES:
                    self._drop_held_connect(held, ErrorCode.H3_EXCESSIVE_LOAD)

    # -- 0-RTT and the client's SETTINGS: when a CONNECT may be answered --------------------------------

    def _connects_ready(self) -> bool:
        return self.handshake_done and self.h3 is not None and self.h3.received_settings is not None

    def _hold_connect(self, event: HeadersReceived) -> None:
        limits = self.server.config.webtransport
        if len(self.held_connects) >= limits.max_sessions_per_connection:
            self._refuse(event.stream_id, 429)
            return
        self.held_connects.append(_HeldConnect(event, not self.handshake_done))

    def _held(self, sid: int) -> _HeldConnect | None:
        return next((h for h in self.held_connects if h.event.stream_id == sid), None)

    def _drop_held_connect(self, held: _HeldConnect, h3_code: int) -> None:
        """Give up a held CONNECT (reset by the client, or too much sent before its answer): its stream is reset
        with ``h3_code``, the streams held for its session with WEBTRANSPORT_SESSION_GONE."""
        self.held_connects.remove(held)
        self._refuse(held.event.stream_id, reset=h3_code)

    def _release_connects(self) -> None:
        held, self.held_connects = self.held_connects, []
        for connect in held:
            if connect.early:
                self.server.metrics.early_sessions_total += 1
            self._headers(connect.event, connect)
        self.transmit()

    # -- sessions ------------------------------------------------------------------------------------

    def _headers(self, event: HeadersReceived, held: _HeldConnect | None = None) -> None:
        """A request: a WebTransport CONNECT accepted as a session, or refused (the handshake has completed and
        the client's SETTINGS are known by now). ``held``: what its stream carried while it was held."""
        h3 = self.h3
        if h3 is None:
            return
        server = self.server
        limits = server.config.webtransport
        sid = event.stream_id
        settings = h3.received_settings or {}
        flow_control = flow_control_enabled(settings)
        ok, path = is_webtransport_connect(event.headers)
        status = 200
        if not ok:
            status = 400 if dict(event.headers).get(b":method") == b"CONNECT" else 404
        elif path.partition("?")[0] != WT_PATH:
            status = 404
        elif server.draining:
            status = 503
        elif server.session_count >= limits.max_sessions or self.sessions_opened >= limits.max_sessions_per_connection:
            status = 429
        elif self.sessions and speaks_draft13_on(settings) and not flow_control:
            # A client of draft 13 on without flow control may hold one session at a time (draft 14 §5.1).
            self._refuse(sid, reset=ErrorCode.H3_REQUEST_REJECTED)
            return
        if status != 200:
            self._refuse(sid, status)
            return
        h3.send_headers(sid, [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")])
        credit = SendCredit(settings.get(SETTINGS_WT_INITIAL_MAX_DATA, 0)) if flow_control else None
        session = _Session(sid, credit, connect_fields(event.headers))
        self.sessions[sid] = session
        self.sessions_opened += 1
        server.session_count += 1
        server.metrics.sessions_total += 1
        self._established(session, held)

    def _established(self, session: _Session, held: _HeldConnect | None) -> None:
        """A session just answered 200: what its CONNECT stream carried while held (capsules, its end), then the
        request streams held for it, unless the client closed it meanwhile (then they are reset)."""
        sid = session.id
        if held is not None:
            if held.data:
                self._capsules(session, bytes(held.data))
            if held.ended and sid in self.sessions:
                self._close_session(session, fin=True)
        if sid not in self.sessions:  # the client closed it before it was answered: nothing of it is served
            for qid in self.early.pop(sid, {}):
                self._abandon(qid, SESSION_GONE)
            return
        for qid, waiting in self.early.pop(sid, {}).items():
            self._stream_data(sid, qid, bytes(waiting.data), waiting.ended, waiting.early)

    def _refuse(self, sid: int, status: int = 0, reset: int = 0) -> None:
        """Refuse the session of CONNECT stream ``sid``: answer an HTTP ``status``, or reset the stream with the
        HTTP/3 error code ``reset``; streams held for it are abandoned."""
        self.server.metrics.sessions_refused_total += 1
        if reset:
            self._abandon(sid, reset)
        elif self.h3 is not None:
            self.h3.send_headers(sid, [(b":status", str(status).encode())], end_stream=True)
        if len(self.closed_sessions) < _MAX_CLOSED_SESSIONS:
            self.closed_sessions.add(sid)
        for qid in self.early.pop(sid, {}):
            self._abandon(qid, SESSION_GONE)

    def _capsules(self, session: _Session, data: bytes) -> None:
        """Capsules on the session's CONNECT stream: WT_MAX_DATA raises the credit (ignored when flow control is
        off, draft 14 §5.1), CLOSE_WEBTRANSPORT_SESSION ends the session; others are skipped."""
        for capsule_type, value in session.capsules.feed(data):
            if capsule_type == CAPSULE_CLOSE_SESSION:
                self._close_session(session, fin=True)
                return
            credit = session.credit
            if capsule_type == CAPSULE_WT_MAX_DATA and credit is not None:
                try:
                    credit.raise_limit(max_data_of(value))
                except TokenwireError:
                    self._abandon(session.id, WT_FLOW_CONTROL_ERROR)
                    self._close_session(session)
                    return
                self._credit_arrived(session)

    def _close_session(self, session: _Session, fin: bool = False) -> None:
        """The session is gone: its streams are reset (their generations go on)."""
        if self.sessions.pop(session.id, None) is None:
            return
        if len(self.closed_sessions) < _MAX_CLOSED_SESSIONS:
            self.closed_sessions.add(session.id)
        self.server.session_count -= 1
        for qid in [*session.streams, *session.blocked]:
            st = self.streams.get(qid)
            if st is not None:
                self.reset(st, SESSION_GONE, raw=True)
        if fin:
            with contextlib.suppress(Exception):
                self._quic.send_stream_data(session.id, b"", end_stream=True)

    # -- request streams -----------------------------------------------------------------------------

    def _stream_data(self, session_id: int, qid: int, data: bytes, ended: bool, early: bool = False) -> None:
        """Bytes of request stream ``qid`` (``early``: its first bytes came in 0-RTT, held with its session)."""
        st = self.streams.get(qid)
        if st is None:
            st = self._open(session_id, qid, data, ended, early)
            if st is None:
                return
        if ended:
            st.recv_ended = True
        reader = st.reader
        if reader is None:
            if data and not st.send_ended:
                self.reset(st, WtCode.BAD_REQUEST)  # bytes after the request
            self._maybe_forget(st)
            return
        try:
            request = reader.feed(data, ended)
        except TokenwireError as exc:
            st.reader = None
            self._reply_error(st, exc, request_read=reader.whole)  # read whole, malformed: no STOP_SENDING
            return
        if request is None:
            return
        st.reader = None
        metrics = self.server.metrics
        metrics.requests_total += 1
        st.meter.requested_at = self.server.loop.time()
        if st.early:  # served now that the handshake has completed: a replayed flight never gets here
            if isinstance(request, StartRequested):
                metrics.deferred_starts_total += 1
            else:
                metrics.early_requests_total += 1
        self._handle(st, request)

    def _open(self, session_id: int, qid: int, data: bytes, ended: bool, early: bool) -> _WtStream | None:
        """A new request stream of a session; ``None`` if it is refused or held until its session is
        established."""
        if stream_is_unidirectional(qid):
            return None  # tokenwire uses no unidirectional streams: ignore them
        limits = self.server.config.webtransport
        session = self.sessions.get(session_id)
        if session is None:
            self._hold_stream(session_id, qid, data, ended)
            return None
        st = _WtStream(self, qid, session, self.server.loop.time(), early)
        self.streams[qid] = st
        session.streams.add(qid)
        if len(session.streams) > limits.max_streams_per_session:
            st.recv_ended = ended
            st.reader = None
            self._reply_error(st, HttpError(503, "too many streams on this session"))
            return None
        return st

    def _hold_stream(self, session_id: int, qid: int, data: bytes, ended: bool) -> None:
        """Bytes of a stream whose session is not established yet: kept (``max_early_streams`` streams a
        session), or the stream is refused (too many, or its session is gone)."""
        limits = self.server.config.webtransport
        held = self.early.get(session_id)
        if session_id in self.closed_sessions or (
            held is None and len(self.early) >= limits.max_sessions_per_connection
        ):
            self._abandon(qid, SESSION_GONE)
            return
        if held is None:
            held = self.early[session_id] = {}
        waiting = held.get(qid)
        if waiting is None:
            if len(held) >= limits.max_early_streams:
                self._abandon(qid, SESSION_GONE)
                return
            waiting = held[qid] = _HeldStream(not self.handshake_done)
        room = limits.max_request_bytes + 16 - len(waiting.data)  # kind, length (8 at most), body, one more
        waiting.data += data[: max(0, room)]
        waiting.ended = waiting.ended or ended

    def _handle(self, st: _WtStream, request: Request) -> None:
        server = self.server
        hub = server.hub
        after = request.after if isinstance(request, AttachRequested) else 0
        if isinstance(request, AttachRequested | CancelRequested) and hub.needs_restore(request.stream_id, after):
            server.spawn(self._restore_then_handle(st, request))  # another node's stream, maybe: copy it first
            return
        try:
            if isinstance(request, AttachRequested):
                if request.epoch:
                    hub.check_epoch(request.epoch)
                stream = hub.check_resume(request.stream_id, request.after)
                if request.after:
                    count_resume(hub, server.metrics, stream, request.after)
                self._serve(st, stream, request.after, request.previews)
            elif isinstance(request, StartRequested):
                server.spawn(self._start(st, request))  # its generator may wait on an upstream first
            else:
                self._cancel(st, request)
        except TokenwireError as exc:
            self._reply_error(st, exc, request_read=True)
        except Exception as exc:
            log.exception("WebTransport request %r failed", request)
            self._reply_error(st, exc, request_read=True)

    async def _start(self, st: _WtStream, request: StartRequested) -> None:
        try:
            body = request.body()
            stream = await self.server.endpoints.start_keyed(body, request.prompt, st.session.headers)
        except Exception as exc:
            if not isinstance(exc, TokenwireError):
                log.exception("WebTransport request %r failed", request)
            if self.streams.get(st.qid) is st:
                self._reply_error(st, exc, request_read=True)
                self.transmit()
            return
        if self.streams.get(st.qid) is st:  # still open (a stream reset meanwhile leaves its generation to resume)
            self._serve(st, stream, 0, body.get("previews") is True)
            self.transmit()

    async def _restore_then_handle(self, st: _WtStream, request: AttachRequested | CancelRequested) -> None:
        try:
            if isinstance(request, AttachRequested):
                await self.server.hub.find(request.stream_id, request.after, request.epoch)
            else:
                await self.server.hub.find(request.stream_id)
        except TokenwireError as exc:  # 404 on no node, 503 storage unreachable
            if self.streams.get(st.qid) is st:
                self._reply_error(st, exc, request_read=True)
            return
        if self.streams.get(st.qid) is st:  # still open
            self._handle(st, request)
            self.transmit()

    def _cancel(self, st: _WtStream, request: CancelRequested) -> None:
        self.server.hub.cancel(request.stream_id)
        self.send(st, encode_reply(CancelConfirmed(request.stream_id)), True)
        self.finished_sending(st)

    def _serve(self, st: _WtStream, stream: TokenStream, after: int, previews: bool) -> None:
        """Attach ``st`` to ``stream`` after seq ``after``: the reply, the replay and live frames.

        ``previews`` (asked for): granted when the server enables them and the peer takes QUIC datagrams."""
        st.stream = stream
        st.cursor = stream.cursor(after, "binary")
        st.cursor.on_read = st.meter.observe
        # The tag: unique on this connection, and known to a browser page (which never sees QUIC stream ids).
        st.preview_tag = st.qid // 4 + 1 if previews and self.previews_allowed() else 0
        stream.attach(st.on_frames)
        st.write(encode_reply(StreamAttached(stream.id, self.server.hub.epoch, after, st.preview_tag)))

    def previews_allowed(self) -> bool:
        """Enabled here, and the peer takes DATAGRAM frames (RFC 9221: a size > 0) and HTTP/3 datagrams
        (RFC 9297: its SETTINGS_H3_DATAGRAM is 1; SETTINGS not seen yet: not granted)."""
        if not self.server.config.webtransport.datagram_previews or self.h3 is None:
            return False
        settings = self.h3.received_settings
        return bool(self._quic._remote_max_datagram_frame_size) and (settings or {}).get(Setting.H3_DATAGRAM) == 1

    def _reply_error(self, st: _WtStream, exc: BaseException, *, request_read: bool = False) -> None:
        """A typed error reply, then FIN; STOP_SENDING with its code if the request side is still open and the
        request was not read whole (``request_read``: only its FIN can follow, and Firefox 153 drops a reply
        that a STOP_SENDING overtakes: its readable fails with "Error in input stream")."""
        reply = error_reply(exc)
        self.server.metrics.bad_requests_total += 1
        if not st.send_ended:
            self.send(st, encode_reply(reply), True)
        if not st.recv_ended and not request_read:
            with contextlib.suppress(ValueError):
                self._quic.stop_stream(st.qid, http3_error_code(reply.code))
        self.finished_sending(st)

    # -- sending -------------------------------------------------------------------------------------

    def send(self, st: _WtStream, data: bytes, end: bool) -> None:
        """Write ``data`` (then FIN if ``end``) on ``st``; with flow control on, what the session's credit does not
        cover waits in ``st.held`` for a WT_MAX_DATA capsule (the client's limit is never exceeded)."""
        credit = st.session.credit
        if credit is not None and (st.waiting_for_credit or len(data) > credit.available):
            st.held += data
            st.held_end = st.held_end or end
            if end:
                st.send_ended = True
            self._send_held(st)
            if st.waiting_for_credit:
                self._wait_for_credit(st, credit)
            return
        if credit is not None:
            credit.take(len(data))
        self._write(st, data, end)

    def _write(self, st: _WtStream, data: bytes, end: bool) -> None:
        try:
            self._quic.send_stream_data(st.qid, data, end)
        except RuntimeError:  # reset by the peer's STOP_SENDING before we saw the event
            self._lost(st)
        if end:
            st.send_ended = True

    def _send_held(self, st: _WtStream) -> None:
        """Send as much of ``st.held`` as the session's credit covers (and FIN after the last byte)."""
        credit = st.session.credit
        if credit is None:
            return
        granted = credit.take(len(st.held))
        data = bytes(st.held[:granted])
        del st.held[:granted]
        end = st.held_end and not st.held
        if data or end:
            st.held_end = st.held_end and not end
            self._write(st, data, end)

    def _wait_for_credit(self, st: _WtStream, credit: SendCredit) -> None:
        """``st`` has bytes the credit does not cover: it takes no frames until a WT_MAX_DATA capsule comes (the
        tick cuts it after ``stall_timeout``); the client hears once per limit that the server is blocked."""
        st.session.blocked.setdefault(st.qid, st)
        st.hold_reader()
        capsule = credit.blocked()
        if capsule:
            self.server.metrics.credit_waits_total += 1
            if self.h3 is not None:
                with contextlib.suppress(Exception):  # the CONNECT stream may be closing: the capsule is advice
                    self.h3.send_data(st.session.id, capsule, end_stream=False)

    def _credit_arrived(self, session: _Session) -> None:
        """A WT_MAX_DATA capsule raised the limit: the held bytes go out, in the order their streams blocked;
        a stream with nothing left held takes frames again."""
        credit = session.credit
        for st in list(session.blocked.values()):
            self._send_held(st)
            if st.waiting_for_credit and credit is not None:
                self._wait_for_credit(st, credit)  # blocked again, at the new limit
                break
            del session.blocked[st.qid]
            st.release_reader()
            self._maybe_forget(st)
        self.transmit()

    def _drop_held(self, st: _WtStream) -> None:
        """The stream is reset or stopped: its held bytes will never be sent."""
        st.held.clear()
        st.held_end = False
        st.session.blocked.pop(st.qid, None)

    def preview(self, st: _WtStream, frames: bytes) -> None:
        """Queue an unreliable copy of ``frames`` (just written to ``st``) as an HTTP/3 datagram of its session,
        for the same transmit; dropped when it cannot fit one packet, or the peer's DATAGRAM frame limit (§4.5).
        """
        metrics = self.server.metrics
        h3 = self.h3
        size = _PREVIEW_OVERHEAD + len(frames)  # tag and the session's quarter stream id: 8 bytes at most each
        # The DATAGRAM frame (type, length, then the payload) must stay under the peer's limit (aioquic: <).
        if h3 is None or size > MAX_PREVIEW_BYTES or size + 3 >= (self._quic._remote_max_datagram_frame_size or 0):
            metrics.previews_dropped_total += 1
            return
        h3.send_datagram(st.session.id, encode_preview(st.preview_tag, frames))
        metrics.previews_sent_total += 1

    def _trim_previews(self) -> None:
        """Previews a congested connection could not send wait in QUIC's queue, ahead of stream data in every
        packet: keep the newest ``max_pending_previews`` and drop the older ones (they are stale)."""
        pending = self._quic._datagrams_pending
        excess = len(pending) - self.server.config.webtransport.max_pending_previews
        if excess > 0:
            for _ in range(excess):
                pending.popleft()
            self.server.metrics.previews_dropped_total += excess

    def reset(self, st: _WtStream, code: int, raw: bool = False) -> None:
        """Reset a request stream with a WebTransport error code (``raw``: an HTTP/3 code as is)."""
        h3_code = code if raw else http3_error_code(code)
        self._lost(st)
        unsent = st.waiting_for_credit  # FIN queued, not sent: the stream is still open
        self._drop_held(st)
        if not st.send_ended or unsent:
            self._quic.reset_stream(st.qid, h3_code)
            st.send_ended = True
            self.server.metrics.streams_reset_total += 1
        if not st.recv_ended:
            with contextlib.suppress(ValueError):
                self._quic.stop_stream(st.qid, h3_code)
        self.finished_sending(st)

    def _abandon(self, qid: int, h3_code: int) -> None:
        """Refuse a stream that never became a request stream."""
        with contextlib.suppress(ValueError, RuntimeError):
            self._quic.reset_stream(qid, h3_code)
            self._quic.stop_stream(qid, h3_code)

    def finished_sending(self, st: _WtStream) -> None:
        st.session.streams.discard(st.qid)
        self._maybe_forget(st)

    def _maybe_forget(self, st: _WtStream) -> None:
        if st.send_ended and st.recv_ended and not st.waiting_for_credit:
            self.streams.pop(st.qid, None)
            st.session.streams.discard(st.qid)
            if self.h3 is not None:
                # aioquic's H3 layer never ends the send half of a WebTransport stream, so it would keep
                # the stream's state for the whole connection: drop it once both halves are done.
                self.h3._stream.pop(st.qid, None)

    def _recv_reset(self, st: _WtStream) -> None:
        st.recv_ended = True
        if st.reader is not None:
            # Reset before its request was complete: nothing to serve.
            st.reader = None
            if not st.send_ended:
                self._quic.reset_stream(st.qid, http3_error_code(WtCode.NO_ERROR))
                st.send_ended = True
            self.finished_sending(st)
        else:
            self._maybe_forget(st)

    def _lost(self, st: _WtStream) -> None:
        if st.stream is not None and left_early(st.stream, st.position):
            self.server.metrics.disconnects_total += 1
        st.detach()

    # -- flushing ------------------------------------------------------------------------------------

    def mark_dirty(self, st: _WtStream) -> None:
        self._dirty.append(st)
        if not self._queued:
            self._queued = True
            self.server.flusher.add(self)

    def flush(self) -> None:
        """Every dirty stream's new frames into its QUIC stream, then one transmit for the connection."""
        self._queued = False
        dirty, self._dirty = self._dirty, []
        if self._quic._datagrams_pending:
            self._trim_previews()
        for st in dirty:
            try:
                st.write()
            except Exception:  # one stream's failure is its own: the others of this connection go on
                log.exception("write of WebTransport stream %d failed; resetting that stream only", st.qid)
                with contextlib.suppress(Exception):
                    self.reset(st, WtCode.INTERNAL_ERROR)
        if not self.closed:
            self.transmit()

    def flush_failed(self, exc: Exception) -> None:
        """``flush`` itself raised (not one stream's write): close this connection; its streams resume."""
        if not self.closed:
            with contextlib.suppress(Exception):
                self.close(error_code=ErrorCode.H3_INTERNAL_ERROR, reason_phrase="internal error")
                self.transmit()
            self._terminated()

    def _wake_paused(self) -> None:
        low = self.server.config.webtransport.stream_buffer_high // 2
        quic = self._quic
        for st in list(self.paused):
            if _send_buffered(quic, st.qid) <= low:
                self.paused.discard(st)
                st.release_reader()

    def tick(self, now: float) -> None:
        """Once a second: heartbeats on quiet streams, cut stalled readers, time out incomplete requests."""
        cfg = self.server.config
        wrote = False
        for st in list(self.streams.values()):
            if st.send_ended and not st.waiting_for_credit:
                continue
            if st.reader is not None:
                if now - st.opened_at >= cfg.header_timeout:
                    st.reader = None
                    self._reply_error(st, HttpError(408, "no complete request in time"))
                    wrote = True
            elif st.paused_at:
                if now - st.paused_at >= cfg.stall_timeout:
                    self.server.metrics.backpressure_closes_total += 1
                    self.reset(st, WtCode.RESUME)
                    wrote = True
            elif st.stream is not None and now - st.meter.last_write >= cfg.heartbeat_interval:
                self.send(st, _HEARTBEAT, False)
                st.meter.last_write = now
                self.server.metrics.heartbeats_total += 1
                wrote = True
        if wrote and not self.closed:
            self.transmit()

    # -- the end -------------------------------------------------------------------------------------

    def _terminated(self) -> None:
        """The QUIC connection is gone: detach every stream (generations go on)."""
        if self.closed:
            return
        self.closed = True
        server = self.server
        for st in self.streams.values():
            self._lost(st)
        self.streams.clear()
        self.paused.clear()
        self.held_connects.clear()
        server.session_count -= len(self.sessions)
        self.sessions.clear()
        server.connections.discard(self)

    def shutdown(self) -> None:
        """Tell every stream to resume elsewhere or later, and close the connection."""
        if self.closed:
            return
        for st in list(self.streams.values()):
            self.reset(st, WtCode.SHUTDOWN)
        self.transmit()  # the resets first: once closing, a connection sends nothing but its close frame
        self.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="server shutting down")
        self._terminated()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_QUIC_HANDLERS: dict[type[QuicEvent], Callable[[WebTransportConnection, Any], bool]] = {
    ProtocolNegotiated: WebTransportConnection._on_protocol_negotiated,
    HandshakeCompleted: WebTransportConnection._on_handshake_completed,
    StopSendingReceived: WebTransportConnection._on_stop_sending,
    StreamReset: WebTransportConnection._on_stream_reset,
    ConnectionTerminated: WebTransportConnection._on_terminated,
}


def _enlarge_socket_buffers(sock: Any, size: int) -> None:
    """Ask for ``size``-byte UDP buffers: one socket carries every session, and the kernel's default
    receive buffer (≈ 208 KiB) drops datagrams in bursts of many sessions. Beyond ``net.core.rmem_max`` the
    kernel caps the request; with CAP_NET_ADMIN the ``*FORCE`` options lift the cap. Best effort."""
    if sock is None or size <= 0:
        return
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):  # fmt: skip
        for option in (force, plain):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
            except OSError:
                continue


class WebTransportServer(ServerBase):
    """``tokenwire serve``'s WebTransport side: one UDP socket, one Hub (shared with the SSE server), one flusher.

    ``certificate``: a :class:`~tokenwire.server.certs.Certificate` (``load_certificate`` for production
    files); by default a development certificate is made (see :attr:`certificate` for its SHA-256).
    """

    metrics: WebTransportMetrics

    def __init__(
        self,
        hub: Hub | None = None,
        options: ServerOptions | ServerConfig | None = None,
        *,
        certificate: Certificate | None = None,
    ) -> None:
        super().__init__(hub, options, WebTransportMetrics())
        self.certificate = certificate if certificate is not None else make_dev_certificate()
        #: Whether clients must pin the certificate by its hash (the development certificate; any self-signed one).
        self.self_signed = self.certificate.self_signed
        self.endpoints = Endpoints(self)
        self.connections: set[WebTransportConnection] = set()
        self.session_count = 0
        self._tickets: collections.OrderedDict[bytes, SessionTicket] = collections.OrderedDict()
        self._transport: asyncio.DatagramTransport | None = None
        self._quic_server: QuicServer | None = None
        m = self.metrics
        m.gauges["connections"] = lambda: len(self.connections)
        m.gauges["sessions"] = lambda: self.session_count
        m.gauges["stream_connections"] = self.streams_attached

    def streams_attached(self) -> int:
        """Request streams now carrying a token stream, over every connection."""
        return sum(1 for c in self.connections for s in c.streams.values() if s.stream is not None)

    @property
    def port(self) -> int:
        if self._transport is None:
            raise RuntimeError("server not started")
        return int(self._transport.get_extra_info("sockname")[1])

    @property
    def url(self) -> str:
        host = self.config.host
        return f"https://{f'[{host}]' if ':' in host else host}:{self.port}{WT_PATH}"

    def certificate_info(self) -> dict[str, Any]:
        """What a browser page needs: ``new WebTransport(url, {serverCertificateHashes: [...]})``, the hash to be
        passed only when ``self_signed`` is true (docs/protocol.md §7.1)."""
        return {
            "url": self.url,
            "sha256": self.certificate.sha256_hex,
            "algorithm": "sha-256",
            "self_signed": self.self_signed,
        }

    def quic_configuration(self) -> QuicConfiguration:
        limits = self.config.webtransport
        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=H3_ALPN,
            max_datagram_frame_size=65536,
            idle_timeout=limits.idle_timeout,
            max_stream_data=limits.max_stream_data,
            max_data=limits.max_data,
        )
        chain = load_pem_x509_certificates(self.certificate.cert_pem)
        configuration.certificate = chain[0]
        configuration.certificate_chain = chain[1:]
        configuration.private_key = load_pem_private_key(self.certificate.key_pem)
        return configuration

    def _add_ticket(self, ticket: SessionTicket) -> None:
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self.config.webtransport.max_session_tickets:
            self._tickets.popitem(last=False)

    def _pop_ticket(self, label: bytes) -> SessionTicket | None:
        # Single use: a ticket presented twice (a replay) finds nothing the second time.
        return self._tickets.pop(label, None)

    async def start(self) -> None:
        loop = self._start_common()
        configuration = self.quic_configuration()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: QuicServer(
                configuration=configuration,
                create_protocol=partial(WebTransportConnection, server=self),
                session_ticket_fetcher=self._pop_ticket,
                session_ticket_handler=self._add_ticket,
            ),
            local_addr=(self.config.host, self.config.port),
            reuse_port=self.config.reuse_port or None,
        )
        self._transport = transport
        self._quic_server = protocol
        _enlarge_socket_buffers(transport.get_extra_info("socket"), self.config.webtransport.socket_buffer_bytes)
        self._tick = loop.call_later(1.0, self._on_tick)
        log.info(
            "WebTransport server listening on %s (UDP; epoch %s; certificate sha-256 %s)",
            self.url,
            self.hub.epoch,
            self.certificate.sha256_hex,
        )

    def _on_tick(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            conn.tick(now)
        self._tick = self.loop.call_later(1.0, self._on_tick)

    async def shutdown(self, drain_timeout: float | None = None, *, close_hub: bool = True) -> None:
        """Refuse new sessions, let open streams finish for up to ``drain_timeout``, then reset the rest with
        ``SHUTDOWN`` (clients resume) and close every connection; stop generations unless ``close_hub`` is
        false (a hub shared with a server still running)."""
        drain = self.config.drain_timeout if drain_timeout is None else drain_timeout
        self.draining = True
        loop = self.loop
        deadline = loop.time() + drain

        while self.streams_attached() and loop.time() < deadline:  # noqa: ASYNC110 - a deadline, polled
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.shutdown()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if close_hub:
            await self.hub.aclose()
        if self._transport is not None:
            self._transport.close()
        await asyncio.sleep(0)  # let the transport close
        log.info("WebTransport server stopped")
