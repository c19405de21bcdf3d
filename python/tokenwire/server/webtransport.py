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
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.tls import SessionTicket, load_pem_private_key, load_pem_x509_certificates

from tokenwire import _core
from tokenwire.errors import ResumeExpired, StreamNotFound, TokenwireError, Unauthorized
from tokenwire.hub import Cursor, Hub, TokenStream
from tokenwire.metrics import ServerMetrics, WriteMeter
from tokenwire.protocol.webtransport import (
    WT_PATH,
    AttachRequested,
    CancelConfirmed,
    CancelRequested,
    Request,
    StartRequested,
    StreamAttached,
    WtCode,
    encode_reply,
)
from tokenwire.protocol.wt_session import (
    Action,
    Authorize,
    CreditAvailable,
    CreditBlocked,
    FinishSession,
    ForgetStream,
    RequestReceived,
    ResetStream,
    SendCapsules,
    SendData,
    SendDatagram,
    SendHeaders,
    StopSending,
    StreamDetached,
    WtConnection,
    WtCounters,
    WtRules,
)
from tokenwire.server.aioquic_adapter import (
    ServerH3,
    forget_h3_stream,
    grant_bidi_streams,
    has_pending_datagrams,
    install_reset_stream_at,
    remote_max_datagram_frame_size,
    send_buffered,
    trim_datagrams,
    webtransport_session_of,
)
from tokenwire.server.base import ServerBase
from tokenwire.server.certs import Certificate, make_dev_certificate
from tokenwire.server.config import ServerConfig, ServerOptions
from tokenwire.server.endpoints import Endpoints, left_early

__all__ = ["WebTransportConnection", "WebTransportMetrics", "WebTransportServer"]

log = logging.getLogger("tokenwire.server.webtransport")

_HEARTBEAT = _core.encode_frame(_core.FRAME_HEARTBEAT, 0, "")


class WebTransportMetrics(ServerMetrics, WtCounters):
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

    def __init__(self) -> None:
        super().__init__("webtransport")


class _WtStream:
    """A request stream the server serves: the token stream it carries, where it reads it, and its write
    accounting. The stream's protocol state (request, halves, flow control credit) is the session layer's."""

    __slots__ = ("conn", "cursor", "dirty", "meter", "paused_at", "qid", "stream")

    def __init__(self, conn: WebTransportConnection, qid: int, opened_at: float) -> None:
        self.conn = conn
        self.qid = qid
        self.stream: TokenStream | None = None
        #: Where this stream reads its token stream (set with ``stream``): the reader backpressure sees.
        self.cursor: Cursor | None = None
        self.dirty = False
        self.paused_at = 0.0
        #: Write accounting (its ``observe`` is the cursor's hook) and the heartbeat clock (``last_write``).
        self.meter = WriteMeter(conn.server.metrics, conn.server.loop.time, opened_at)

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
        conn = self.conn
        state = conn.session.stream(self.qid)
        if state is None or state.send_ended or self.stream is None or cursor is None:
            return
        if state.held:  # waiting for flow control credit: the ring holds the rest
            self.hold_reader()
            return
        server = conn.server
        if conn.send_blocked(self.qid):
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
        if data and state.preview_tag:
            conn.session.preview(self.qid, data, remote_max_datagram_frame_size(conn.quic))
        if prefix:
            data = prefix + data
        if data or ended:  # ended: every frame up to the final one is in data now
            conn.send(self, data, ended)
        if ended:
            self.detach()


class _Gate:
    """The process-wide admission of sessions (the session layer's :class:`~tokenwire.protocol.wt_session.Gate`):
    draining refuses with 503, ``max_sessions`` over every connection with 429."""

    __slots__ = ("server",)

    def __init__(self, server: WebTransportServer) -> None:
        self.server = server

    def refusal(self) -> int:
        server = self.server
        if server.draining:
            return 503
        return 429 if server.session_count >= server.config.webtransport.max_sessions else 0

    def opened(self) -> None:
        self.server.session_count += 1

    def closed(self) -> None:
        self.server.session_count -= 1


class WebTransportConnection(QuicConnectionProtocol):
    """One QUIC connection: moves aioquic's events into its session layer (:class:`WtConnection`), performs the
    layer's actions on aioquic, and serves the requests the layer hands over (hub, generations, auth verdicts)."""

    def __init__(
        self, quic: QuicConnection, stream_handler: QuicStreamHandler | None = None, *, server: WebTransportServer
    ) -> None:
        super().__init__(quic, stream_handler)
        self.server = server
        self.quic = quic
        grant_bidi_streams(quic, server.config.webtransport.quic_bidi_streams)
        install_reset_stream_at(quic)
        self.h3: H3Connection | None = None
        self.session = WtConnection(server.wt_rules, server.gate, server.metrics)
        #: The request streams the server serves (what the session layer handed over), by stream id.
        self.streams: dict[int, _WtStream] = {}
        self.paused: set[_WtStream] = set()
        self._settings_seen = False
        self._dirty: list[_WtStream] = []
        self._queued = False

    # The session layer's state, as the server's tests read it.

    @property
    def sessions(self) -> dict[int, Any]:
        return self.session.sessions

    @property
    def sessions_opened(self) -> int:
        return self.session.sessions_opened

    @property
    def held_connects(self) -> list[Any]:
        return self.session.held_connects

    @property
    def authorizing(self) -> dict[int, Any]:
        return self.session.authorizing

    @property
    def handshake_done(self) -> bool:
        return self.session.handshake_done

    @property
    def closed(self) -> bool:
        return self.session.closed

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
                if not self._settings_seen and h3.received_settings is not None:  # the client's SETTINGS came
                    self._settings_seen = True
                    self.session.settings_received(h3.received_settings, self.server.loop.time())
                    self._pump()
                for h3_event in h3_events:
                    self._h3_event_received(h3_event)
                if not h3_events and not self.session.knows_stream(event.stream_id):
                    self._maybe_header_only(h3, event.stream_id)
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
        session_id = webtransport_session_of(h3, qid)
        if session_id is not None:
            self.session.wt_stream_data(qid, session_id, b"", False, self.server.loop.time())
            self._pump()

    def _on_protocol_negotiated(self, event: ProtocolNegotiated) -> bool:
        if event.alpn_protocol in H3_ALPN:
            self.h3 = ServerH3(self.quic, self.server.config.webtransport.max_sessions_per_connection)
        return False

    def _on_handshake_completed(self, event: HandshakeCompleted) -> bool:
        self.session.handshake_completed(self.server.loop.time())
        self._pump()
        return False

    def _on_stop_sending(self, event: StopSendingReceived) -> bool:
        # The client stopped reading a request stream (QUIC has reset our side). Generation goes on.
        consumed = self.session.stop_sending(event.stream_id, event.error_code)
        self._pump()
        return consumed

    def _on_stream_reset(self, event: StreamReset) -> bool:
        consumed = self.session.stream_reset(event.stream_id, event.error_code)
        self._pump()
        return consumed

    def _on_terminated(self, event: ConnectionTerminated) -> bool:
        self._terminated()
        return True

    def _h3_event_received(self, event: H3Event) -> None:
        session = self.session
        if isinstance(event, WebTransportStreamDataReceived):
            session.wt_stream_data(
                event.stream_id, event.session_id, event.data, event.stream_ended, self.server.loop.time()
            )
        elif isinstance(event, HeadersReceived):
            session.headers_received(event.stream_id, event.headers, event.stream_ended, self.server.loop.time())
        elif isinstance(event, DataReceived):
            session.data_received(event.stream_id, event.data, event.stream_ended)
        self._pump()

    # -- the session layer's actions -----------------------------------------------------------------

    def _pump(self) -> bool:
        """Perform what the session layer asked for, in order (handling one may ask for more); whether any."""
        session = self.session
        did = False
        while actions := session.take_actions():
            did = True
            for action in actions:
                _ACTIONS[type(action)](self, action)
        return did

    def _send_headers(self, action: SendHeaders) -> None:
        if self.h3 is not None:
            self.h3.send_headers(action.stream_id, action.headers, end_stream=action.end)

    def _send_capsules(self, action: SendCapsules) -> None:
        if self.h3 is not None:
            with contextlib.suppress(Exception):  # the CONNECT stream may be closing: the capsule is advice
                self.h3.send_data(action.session_id, action.data, end_stream=False)

    def _finish_session(self, action: FinishSession) -> None:
        with contextlib.suppress(Exception):
            self.quic.send_stream_data(action.session_id, b"", end_stream=True)

    def _send_data(self, action: SendData) -> None:
        try:
            self.quic.send_stream_data(action.stream_id, action.data, action.end)
        except RuntimeError:  # reset by the peer's STOP_SENDING before we saw the event
            st = self.streams.get(action.stream_id)
            if st is not None:
                self._lost(st)

    def _reset_stream(self, action: ResetStream) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            self.quic.reset_stream(action.stream_id, action.code)

    def _stop_sending(self, action: StopSending) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            self.quic.stop_stream(action.stream_id, action.code)

    def _send_datagram(self, action: SendDatagram) -> None:
        if self.h3 is not None:
            self.h3.send_datagram(action.session_id, action.payload)

    def _forget_stream(self, action: ForgetStream) -> None:
        self.streams.pop(action.stream_id, None)
        if self.h3 is not None:
            forget_h3_stream(self.h3, action.stream_id)

    def _stream_detached(self, action: StreamDetached) -> None:
        st = self.streams.get(action.stream_id)
        if st is not None:
            self._lost(st)

    def _credit_blocked(self, action: CreditBlocked) -> None:
        self._served(action.stream_id).hold_reader()

    def _credit_available(self, action: CreditAvailable) -> None:
        self._served(action.stream_id).release_reader()

    def _served(self, qid: int) -> _WtStream:
        """The server's side of request stream ``qid`` (made when first needed)."""
        st = self.streams.get(qid)
        if st is None:
            state = self.session.stream(qid)
            st = self.streams[qid] = _WtStream(self, qid, state.opened_at if state else self.server.loop.time())
        return st

    # -- auth ----------------------------------------------------------------------------------------

    def _authorize_session(self, action: Authorize) -> None:
        """Who opens session ``action.session_id`` (auth is on): a verdict at once, or later from an async
        authenticator (the CONNECT waits meanwhile)."""
        sid = action.session_id
        try:
            verdict = self.server.endpoints.authorize(
                "webtransport", action.fields, action.query, action.path, "webtransport"
            )
        except Unauthorized as exc:
            self.session.session_refused(sid, exc.challenge)
            return
        except Exception:
            log.exception("authenticator failed on a WebTransport CONNECT")
            self.session.session_refused(sid, None)
            return
        if verdict is None or isinstance(verdict, str):
            self.session.session_authorized(sid, verdict, self.server.loop.time())
        else:
            self.server.spawn(self._authorize(sid, verdict))

    async def _authorize(self, sid: int, verdict: Awaitable[str]) -> None:
        """Await an async authenticator's verdict on CONNECT ``sid``, then answer it (unless the client reset it
        or the connection went meanwhile)."""
        principal: str | None = None
        refused: Unauthorized | None = None
        failed = False
        try:
            principal = await verdict
        except Unauthorized as exc:
            refused = exc
        except Exception:
            log.exception("authenticator failed on a WebTransport CONNECT")
            failed = True
        if self.closed:
            return
        if refused is None and not failed:
            self.session.session_authorized(sid, principal, self.server.loop.time())
        else:
            self.session.session_refused(sid, None if refused is None else refused.challenge)
        self._pump()
        self.transmit()

    # -- requests ------------------------------------------------------------------------------------

    def _request_received(self, action: RequestReceived) -> None:
        state = self.session.stream(action.stream_id)
        if state is None or state.send_ended:  # reset or answered meanwhile
            return
        st = self._served(action.stream_id)
        st.meter.requested_at = self.server.loop.time()
        self._handle(st, action.request)

    def _open(self, st: _WtStream) -> bool:
        """``st`` is still a stream the server may answer (not reset, not closed meanwhile)."""
        state = self.session.stream(st.qid)
        return self.streams.get(st.qid) is st and state is not None and not state.send_ended

    def _handle(self, st: _WtStream, request: Request) -> None:
        server = self.server
        hub = server.hub
        state = self.session.stream(st.qid)
        if state is None:
            return
        principal = state.session.principal
        after = request.after if isinstance(request, AttachRequested) else 0
        if isinstance(request, AttachRequested | CancelRequested) and hub.needs_restore(request.stream_id, after):
            server.spawn(self._restore_then_handle(st, request))  # another node's stream, maybe: copy it first
            return
        try:
            if isinstance(request, AttachRequested):
                stream = server.endpoints.attach_stream(request.stream_id, request.after, request.epoch, principal)
                self._serve(st, stream, request.after, request.previews)
            elif isinstance(request, StartRequested):
                server.spawn(self._start(st, request))  # its generator may wait on an upstream first
            else:
                server.endpoints.cancel(request.stream_id, principal)
                self.send(st, encode_reply(CancelConfirmed(request.stream_id)), True)
        except TokenwireError as exc:
            self._reply_error(st, exc)
        except Exception as exc:
            log.exception("WebTransport request %r failed", request)
            self._reply_error(st, exc)

    async def _start(self, st: _WtStream, request: StartRequested) -> None:
        state = self.session.stream(st.qid)
        if state is None:
            return
        session = state.session
        try:
            body = request.body()
            stream = await self.server.endpoints.start_keyed(body, request.prompt, session.headers, session.principal)
        except Exception as exc:
            if not isinstance(exc, TokenwireError):
                log.exception("WebTransport request %r failed", request)
            if self._open(st):
                self._reply_error(st, exc)
                self.transmit()
            return
        if self._open(st):  # still open (a stream reset meanwhile leaves its generation to resume)
            self._serve(st, stream, 0, body.get("previews") is True)
            self.transmit()

    async def _restore_then_handle(self, st: _WtStream, request: AttachRequested | CancelRequested) -> None:
        try:
            if isinstance(request, AttachRequested):
                await self.server.hub.find(request.stream_id, request.after, request.epoch)
            else:
                await self.server.hub.find(request.stream_id)
        except TokenwireError as exc:  # 404 on no node, 503 storage unreachable
            if self._open(st):
                self._reply_error(st, exc)
                self.transmit()
            return
        if self._open(st):  # still open
            self._handle(st, request)
            self.transmit()

    def _serve(self, st: _WtStream, stream: TokenStream, after: int, previews: bool) -> None:
        """Attach ``st`` to ``stream`` after seq ``after``: the reply, the replay and live frames.

        ``previews`` (asked for): granted when the server enables them and the peer takes QUIC datagrams."""
        st.stream = stream
        st.cursor = stream.cursor(after, "binary")
        st.cursor.on_read = st.meter.observe
        tag = self.session.grant_previews(st.qid, remote_max_datagram_frame_size(self.quic)) if previews else 0
        stream.attach(st.on_frames)
        st.write(encode_reply(StreamAttached(stream.id, self.server.hub.epoch, after, tag)))

    def _reply_error(self, st: _WtStream, exc: BaseException) -> None:
        """A typed error reply to the request ``st`` read whole, then FIN."""
        self.session.reply_error(st.qid, exc, request_read=True)
        self._pump()

    # -- sending -------------------------------------------------------------------------------------

    def send(self, st: _WtStream, data: bytes, end: bool) -> None:
        """Write ``data`` (then FIN if ``end``) on ``st``, within the session's flow control credit."""
        self.session.send(st.qid, data, end)
        self._pump()

    def reset(self, st: _WtStream, code: int) -> None:
        """Reset a request stream with a WebTransport error code (its token stream is detached)."""
        self.session.reset_stream(st.qid, code)
        self._pump()

    def _trim_previews(self) -> None:
        """Previews a congested connection could not send wait in QUIC's queue, ahead of stream data in every
        packet: keep the newest ``max_pending_previews`` and drop the older ones (they are stale)."""
        dropped = trim_datagrams(self.quic, self.server.config.webtransport.max_pending_previews)
        self.server.metrics.previews_dropped_total += dropped

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
        if has_pending_datagrams(self.quic):
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

    def send_blocked(self, qid: int) -> bool:
        """QUIC holds more than ``stream_buffer_high`` bytes of stream ``qid`` (unsent or unacknowledged): a slow
        reader, or a congested path."""
        return send_buffered(self.quic, qid) > self.server.config.webtransport.stream_buffer_high

    def _wake_paused(self) -> None:
        low = self.server.config.webtransport.stream_buffer_high // 2
        quic = self.quic
        for st in list(self.paused):
            if send_buffered(quic, st.qid) <= low:
                self.paused.discard(st)
                st.release_reader()

    def tick(self, now: float) -> None:
        """Once a second: time out incomplete requests (the session layer), heartbeats on quiet streams, cut
        stalled readers."""
        cfg = self.server.config
        session = self.session
        session.tick(now)
        wrote = self._pump()
        for st in list(self.streams.values()):
            if not session.active(st.qid):
                continue
            if st.paused_at:
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
        self.session.connection_terminated()
        self._pump()
        for st in self.streams.values():
            self._lost(st)
        self.streams.clear()
        self.paused.clear()
        self.server.connections.discard(self)

    def shutdown(self) -> None:
        """Tell every stream to resume elsewhere or later, and close the connection."""
        if self.closed:
            return
        for qid in list(self.session.streams):
            self.session.reset_stream(qid, WtCode.SHUTDOWN)
        self._pump()
        self.transmit()  # the resets first: once closing, a connection sends nothing but its close frame
        self.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="server shutting down")
        self._terminated()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_ACTIONS: dict[type[Action], Callable[[WebTransportConnection, Any], None]] = {
    SendHeaders: WebTransportConnection._send_headers,
    SendCapsules: WebTransportConnection._send_capsules,
    FinishSession: WebTransportConnection._finish_session,
    SendData: WebTransportConnection._send_data,
    ResetStream: WebTransportConnection._reset_stream,
    StopSending: WebTransportConnection._stop_sending,
    SendDatagram: WebTransportConnection._send_datagram,
    ForgetStream: WebTransportConnection._forget_stream,
    Authorize: WebTransportConnection._authorize_session,
    RequestReceived: WebTransportConnection._request_received,
    StreamDetached: WebTransportConnection._stream_detached,
    CreditBlocked: WebTransportConnection._credit_blocked,
    CreditAvailable: WebTransportConnection._credit_available,
}

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
        self.gate = _Gate(self)
        limits = self.config.webtransport
        #: What every connection's session layer applies.
        self.wt_rules = WtRules(
            max_sessions_per_connection=limits.max_sessions_per_connection,
            max_streams_per_session=limits.max_streams_per_session,
            max_early_streams=limits.max_early_streams,
            max_request_bytes=limits.max_request_bytes,
            header_timeout=self.config.header_timeout,
            allow_origins=self.config.allow_origins,
            datagram_previews=limits.datagram_previews,
            auth=self.options.auth is not None,
        )
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
        await self._stop_background()
        if close_hub:
            await self.hub.aclose()
        if self._transport is not None:
            self._transport.close()
        await asyncio.sleep(0)  # let the transport close
        log.info("WebTransport server stopped")
