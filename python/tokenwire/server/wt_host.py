"""The engine-neutral half of a WebTransport server connection: it serves what the session layer
(:mod:`tokenwire.protocol.wt_session`) hands over, from the hub.

An engine adapter (aioquic's :class:`~tokenwire.server.webtransport.WebTransportConnection`; a native QUIC
engine's) subclasses :class:`SessionHost`: it feeds the connection's events to ``self.session``, calls
:meth:`SessionHost._pump`, and implements the transport actions (``_send_headers``, ``_send_data``, ...) and the few
hooks below (``transmit``, ``send_blocked``, ``datagram_limit``, ...). This class does the rest: auth verdicts,
start / attach / cancel requests (through :class:`~tokenwire.server.endpoints.Endpoints`), token streams read
through a hub cursor into their request streams, heartbeats, slow readers, shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

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
    H3_NO_ERROR,
    Action,
    Authorize,
    CreditAvailable,
    CreditBlocked,
    FinishSession,
    ForgetStream,
    Gate,
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
from tokenwire.server.base import ServerBase
from tokenwire.server.certs import Certificate, make_dev_certificate
from tokenwire.server.config import ServerConfig, ServerOptions
from tokenwire.server.endpoints import Endpoints, left_early
from tokenwire.server.flusher import Flusher

__all__ = [
    "ServedStream",
    "SessionGate",
    "SessionHost",
    "WebTransportMetrics",
    "WtServer",
    "WtServerBase",
    "wt_rules",
]

log = logging.getLogger("tokenwire.server.webtransport")

_HEARTBEAT = _core.encode_frame(_core.FRAME_HEARTBEAT, 0, "")
#: HTTP/3 error code a connection closes with when the server fails (RFC 9114 §8.1).
H3_INTERNAL_ERROR = 0x102


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


class WtServer(Protocol):
    """What a :class:`SessionHost` needs of its server (``WebTransportServer``, or a native engine's)."""

    #: Sessions open over every connection (:class:`SessionGate` counts them).
    session_count: int

    @property
    def config(self) -> ServerConfig: ...

    @property
    def metrics(self) -> WebTransportMetrics: ...

    @property
    def hub(self) -> Hub: ...

    @property
    def endpoints(self) -> Endpoints: ...

    @property
    def draining(self) -> bool: ...

    @property
    def wt_rules(self) -> WtRules: ...

    @property
    def gate(self) -> Gate: ...

    @property
    def connections(self) -> set[Any]: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def flusher(self) -> Flusher: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


def wt_rules(config: ServerConfig, auth: bool) -> WtRules:
    """The session layer's rules for a server of ``config`` (``auth``: credentials are checked)."""
    limits = config.webtransport
    return WtRules(
        max_sessions_per_connection=limits.max_sessions_per_connection,
        max_streams_per_session=limits.max_streams_per_session,
        max_early_streams=limits.max_early_streams,
        max_request_bytes=limits.max_request_bytes,
        header_timeout=config.header_timeout,
        allow_origins=config.allow_origins,
        datagram_previews=limits.datagram_previews,
        auth=auth,
    )


class ServedStream:
    """A request stream a connection serves: the token stream it carries, where it reads it, and its write
    accounting. The stream's protocol state (request, halves, flow control credit) is the session layer's."""

    __slots__ = ("conn", "cursor", "dirty", "meter", "paused_at", "qid", "stream")

    def __init__(self, conn: SessionHost, qid: int, opened_at: float) -> None:
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
        """Stop taking frames (a full send buffer in the engine, or no flow control credit): the ring holds them, a
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
        """A slow reader: the ring holds its frames. The engine wakes it once its buffer drains (aioquic: ACKs in
        ``datagram_received``; a native engine: a ``writable`` event); the tick cuts it."""
        conn = self.conn
        if not self.paused_at:
            conn.paused.add(self)
            self.hold_reader()
        if prefix:
            conn.send(self, prefix, False)

    def write(self, prefix: bytes = b"") -> None:
        """Send everything new since ``position`` (after ``prefix``) in one write; FIN at the end.

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
            conn.session.preview(self.qid, data, conn.datagram_limit())
        if prefix:
            data = prefix + data
        if data or ended:  # ended: every frame up to the final one is in data now
            conn.send(self, data, ended)
        if ended:
            self.detach()


class SessionGate:
    """The process-wide admission of sessions (the session layer's :class:`~tokenwire.protocol.wt_session.Gate`):
    draining refuses with 503, ``max_sessions`` over every connection with 429."""

    __slots__ = ("server",)

    def __init__(self, server: WtServer) -> None:
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


class SessionHost:
    """One connection's sessions (``session``, the sans-I/O layer) and the request streams it serves
    (``streams``). Subclasses call :meth:`_init_host` and implement the transport actions and hooks."""

    server: WtServer
    session: WtConnection
    streams: dict[int, ServedStream]
    paused: set[ServedStream]
    _dirty: list[ServedStream]
    _queued: bool

    def _init_host(self, server: WtServer) -> None:
        self.server = server
        self.session = WtConnection(server.wt_rules, server.gate, server.metrics)
        #: The request streams the server serves (what the session layer handed over), by stream id.
        self.streams = {}
        self.paused = set()
        self._dirty = []
        self._queued = False
        self._handlers: dict[type[Action], Any] = {
            SendHeaders: self._send_headers,
            SendCapsules: self._send_capsules,
            FinishSession: self._finish_session,
            SendData: self._send_data,
            ResetStream: self._reset_stream,
            StopSending: self._stop_sending,
            SendDatagram: self._send_datagram,
            ForgetStream: self._forget_stream,
            Authorize: self._authorize_session,
            RequestReceived: self._request_received,
            StreamDetached: self._stream_detached,
            CreditBlocked: self._credit_blocked,
            CreditAvailable: self._credit_available,
        }

    # -- what an engine adapter implements ------------------------------------------------------------

    def _send_headers(self, action: SendHeaders) -> None:
        raise NotImplementedError

    def _send_capsules(self, action: SendCapsules) -> None:
        raise NotImplementedError

    def _finish_session(self, action: FinishSession) -> None:
        raise NotImplementedError

    def _send_data(self, action: SendData) -> None:
        """Write the bytes; a stream the peer reset meanwhile (STOP_SENDING not seen yet): :meth:`_lost`."""
        raise NotImplementedError

    def _reset_stream(self, action: ResetStream) -> None:
        raise NotImplementedError

    def _stop_sending(self, action: StopSending) -> None:
        raise NotImplementedError

    def _send_datagram(self, action: SendDatagram) -> None:
        raise NotImplementedError

    def _forget_engine_stream(self, qid: int) -> None:
        """Both halves of request stream ``qid`` are done: drop what the engine keeps of it (if anything)."""

    def transmit(self) -> None:
        """Send what the actions queued (one batch of packets)."""
        raise NotImplementedError

    def send_blocked(self, qid: int) -> bool:
        """The engine holds too many unsent or unacknowledged bytes of stream ``qid``: stop reading its token
        stream (resume with ``release_reader`` once it drains)."""
        raise NotImplementedError

    def datagram_limit(self) -> int:
        """The peer's largest DATAGRAM frame (0: it takes none)."""
        raise NotImplementedError

    def _trim_previews(self) -> None:
        """Drop previews the engine still queues beyond ``max_pending_previews`` (they are stale)."""

    def pending_previews(self) -> int:
        """Preview datagrams of this connection the engine has not sent yet (a full congestion window, a dead
        path): at most ``max_pending_previews`` from one flush to the next, plus what a flush adds."""
        raise NotImplementedError

    def _close_connection(self, h3_code: int, reason: str) -> None:
        raise NotImplementedError

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

    # -- the session layer's actions ---------------------------------------------------------------------

    def _pump(self) -> bool:
        """Perform what the session layer asked for, in order (handling one may ask for more); whether any."""
        session = self.session
        did = False
        handlers = self._handlers
        while actions := session.take_actions():
            did = True
            for action in actions:
                handlers[type(action)](action)
        return did

    def _forget_stream(self, action: ForgetStream) -> None:
        self.streams.pop(action.stream_id, None)
        self._forget_engine_stream(action.stream_id)

    def _stream_detached(self, action: StreamDetached) -> None:
        st = self.streams.get(action.stream_id)
        if st is not None:
            self._lost(st)

    def _credit_blocked(self, action: CreditBlocked) -> None:
        self._served(action.stream_id).hold_reader()

    def _credit_available(self, action: CreditAvailable) -> None:
        self._served(action.stream_id).release_reader()

    def _served(self, qid: int) -> ServedStream:
        """The server's side of request stream ``qid`` (made when first needed)."""
        st = self.streams.get(qid)
        if st is None:
            state = self.session.stream(qid)
            st = self.streams[qid] = ServedStream(self, qid, state.opened_at if state else self.server.loop.time())
        return st

    # -- auth --------------------------------------------------------------------------------------------

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

    # -- requests ----------------------------------------------------------------------------------------

    def _request_received(self, action: RequestReceived) -> None:
        state = self.session.stream(action.stream_id)
        if state is None or state.send_ended:  # reset or answered meanwhile
            return
        st = self._served(action.stream_id)
        st.meter.requested_at = self.server.loop.time()
        self._handle(st, action.request)

    def _open(self, st: ServedStream) -> bool:
        """``st`` is still a stream the server may answer (not reset, not closed meanwhile)."""
        state = self.session.stream(st.qid)
        return self.streams.get(st.qid) is st and state is not None and not state.send_ended

    def _handle(self, st: ServedStream, request: Request) -> None:
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

    async def _start(self, st: ServedStream, request: StartRequested) -> None:
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

    async def _restore_then_handle(self, st: ServedStream, request: AttachRequested | CancelRequested) -> None:
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

    def _serve(self, st: ServedStream, stream: TokenStream, after: int, previews: bool) -> None:
        """Attach ``st`` to ``stream`` after seq ``after``: the reply, the replay and live frames.

        ``previews`` (asked for): granted when the server enables them and the peer takes QUIC datagrams."""
        st.stream = stream
        st.cursor = stream.cursor(after, "binary")
        st.cursor.on_read = st.meter.observe
        tag = self.session.grant_previews(st.qid, self.datagram_limit()) if previews else 0
        stream.attach(st.on_frames)
        st.write(encode_reply(StreamAttached(stream.id, self.server.hub.epoch, after, tag)))

    def _reply_error(self, st: ServedStream, exc: BaseException) -> None:
        """A typed error reply to the request ``st`` read whole, then FIN."""
        self.session.reply_error(st.qid, exc, request_read=True)
        self._pump()

    # -- sending -----------------------------------------------------------------------------------------

    def send(self, st: ServedStream, data: bytes, end: bool) -> None:
        """Write ``data`` (then FIN if ``end``) on ``st``, within the session's flow control credit."""
        self.session.send(st.qid, data, end)
        self._pump()

    def reset(self, st: ServedStream, code: int) -> None:
        """Reset a request stream with a WebTransport error code (its token stream is detached)."""
        self.session.reset_stream(st.qid, code)
        self._pump()

    def _lost(self, st: ServedStream) -> None:
        if st.stream is not None and left_early(st.stream, st.position):
            self.server.metrics.disconnects_total += 1
        st.detach()

    # -- flushing ----------------------------------------------------------------------------------------

    def mark_dirty(self, st: ServedStream) -> None:
        self._dirty.append(st)
        if not self._queued:
            self._queued = True
            self.server.flusher.add(self)

    def flush(self) -> None:
        """Every dirty stream's new frames into its QUIC stream, then one transmit for the connection."""
        self._queued = False
        dirty, self._dirty = self._dirty, []
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
                self._close_connection(H3_INTERNAL_ERROR, "internal error")
                self.transmit()
            self._terminated()

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

    # -- the end -----------------------------------------------------------------------------------------

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
        self._close_connection(H3_NO_ERROR, "server shutting down")
        self._terminated()


class WtServerBase(ServerBase):
    """What both WebTransport servers share (aioquic's :class:`~tokenwire.server.webtransport.WebTransportServer`,
    the native engine's :class:`~tokenwire.server.native.NativeWebTransportServer`): the certificate, the session
    gate and rules, the connections, the once-a-second tick and the drain of a shutdown."""

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
        self.connections: set[Any] = set()
        self.session_count = 0
        self.gate = SessionGate(self)
        #: What every connection's session layer applies.
        self.wt_rules = wt_rules(self.config, self.options.auth is not None)
        m = self.metrics
        m.gauges["connections"] = lambda: len(self.connections)
        m.gauges["sessions"] = lambda: self.session_count
        m.gauges["stream_connections"] = self.streams_attached
        self._init_engine()

    def _init_engine(self) -> None:
        """The engine's own state (no socket yet: :meth:`start` binds it)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def _close_engine(self) -> None:
        """At the end of a shutdown, every connection closed: close the socket."""
        raise NotImplementedError

    def streams_attached(self) -> int:
        """Request streams now carrying a token stream, over every connection."""
        return sum(1 for c in self.connections for s in c.streams.values() if s.stream is not None)

    @property
    def port(self) -> int:
        raise NotImplementedError

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

    def _start_tick(self) -> None:
        self._tick = self.loop.call_later(1.0, self._on_tick)

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
        await self._close_engine()
