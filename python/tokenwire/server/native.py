"""The WebTransport server on the native QUIC engine (``tokenwire._core.QuicEngine``: quinn-proto, HTTP/3 and
batched UDP I/O in Rust), driven by the running loop (uvloop in production). ``tokenwire serve --wt-engine
native``; the same public surface as aioquic's :class:`~tokenwire.server.webtransport.WebTransportServer`.

The loop watches ONE engine: a reader on its UDP socket and ONE timer at the engine's next deadline (checked
after every wake-up, flush and transmit, moved when the deadline moved; never one timer per connection). Each
wake-up is one ``poll_io()`` call (drain the socket, run quinn, advance HTTP/3) whose batch of events goes,
connection by connection, into the sans-I/O session layer (:mod:`tokenwire.protocol.wt_session`) through
:class:`NativeConnection`, a :class:`~tokenwire.server.wt_host.SessionHost` whose transport actions are engine
calls; then ONE ``transmit()`` for the batch.

Flush: every dirty token stream of every connection is written by ONE ``engine.flush(registry, batch)`` per
flusher run: the binary frames go from the Rust registry into the QUIC streams and the packets out, and no
token byte passes through Python. A stream takes the Python path instead (``cursor.poll()`` and the session
layer's ``send``, as on aioquic) when its storage is not the in-memory registry (Redis), its frames are rendered
(raw OpenAI chunks), it gets datagram previews, or its session has WebTransport flow control (the client's
WT_MAX_DATA must see every byte).

0-RTT, as on aioquic: the engine keeps session tickets (``max_session_tickets``, single use) and accepts early
data on a resumed connection; it reports the early streams as they come, before the connection's ``handshake``
event, and the session layer holds them (a CONNECT in early data is answered only after the handshake), so a
replayed first flight, which never completes a handshake, gets nothing served.

What the engine cannot take at once (the peer's flow control, or the engine's send window: each open WebTransport
stream adds ``stream_buffer_high`` bytes a connection may leave unacknowledged, so a peer that stops acknowledging
blocks it): a flush that returns PAUSED left the rest in the engine, which reports
``writable`` once it is out; a short ``send_data`` (the Python path) keeps the rest here and sends it on
``writable``. Meanwhile the stream stops pulling frames from the ring (the slow-reader pause: the tick cuts it
with :attr:`WtCode.RESUME` after ``stall_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from tokenwire import _core
from tokenwire._core import QuicEngine
from tokenwire.errors import StreamClosed
from tokenwire.protocol.webtransport import WtCode, server_settings
from tokenwire.protocol.wt_session import (
    H3_NO_ERROR,
    FinishSession,
    ResetStream,
    SendCapsules,
    SendData,
    SendDatagram,
    SendHeaders,
    StopSending,
    feed,
)
from tokenwire.server.wt_host import ServedStream, SessionHost, WtServerBase

__all__ = ["H3_SETTINGS", "NativeConnection", "NativeWebTransportServer"]

log = logging.getLogger("tokenwire.server.webtransport")

#: HTTP/3 SETTINGS besides WebTransport's: no QPACK dynamic table (capacity 0, no blocked streams), extended
#: CONNECT (RFC 9220), HTTP/3 datagrams (RFC 9297, and draft 04's code for older clients).
H3_SETTINGS = {0x01: 0, 0x07: 0, 0x08: 1, 0x33: 1, 0xFFD277: 1}
#: What :meth:`NativeConnection.datagram_limit` reports: the engine announces 64 KiB DATAGRAM frames and says
#: ``False`` when QUIC refuses one (the peer takes none, or a smaller one): that preview is counted dropped.
_DATAGRAM_LIMIT = 65536
#: Events a wake-up handles before the rest of its batch: a connection's start, and the peer's SETTINGS, which
#: it sent first (on its control stream) but the engine may report after streams read in the same batch; a
#: CONNECT and its request streams wait for them (the session layer holds at most ``max_early_streams``).
_SETTINGS_FIRST = frozenset(("connected", "settings"))
#: One stream of an engine flush: (connection, stream id, registry handle, after seq, prefix).
_FlushItem = tuple[int, int, int, int, bytes]
_FLUSH_OK = _core.FLUSH_OK
#: The loop's timer resolution (uvloop's: one millisecond), in seconds.
_MS = 0.001


class _Unsent:
    """Bytes of a stream the engine did not take at once (a short ``send_data``), and whether FIN follows."""

    __slots__ = ("data", "end")

    def __init__(self, data: bytes, end: bool) -> None:
        self.data = bytearray(data)
        self.end = end


class NativeConnection(SessionHost):
    """One QUIC connection of the native engine (id ``cid``): its events into the session layer, the layer's
    actions as engine calls."""

    def __init__(self, server: NativeWebTransportServer, cid: int, peer: tuple[str, int]) -> None:
        self._init_host(server)
        self.server: NativeWebTransportServer = server
        self.cid = cid
        self.peer = peer
        #: Streams whose rest waits in the engine (a PAUSED flush): ``writable`` releases them.
        self._blocked: set[int] = set()
        #: Streams whose rest waits here (a short ``send_data``): sent on ``writable``.
        self._unsent: dict[int, _Unsent] = {}
        #: Streams whose FIN a flush has sent: the session layer's SendData(end) for it is only bookkeeping.
        self._fin_sent: set[int] = set()

    def __repr__(self) -> str:
        return f"<NativeConnection {self.cid} {self.peer[0]}:{self.peer[1]}>"

    def peer_address(self) -> tuple[str, int] | None:
        """The address this connection sends to now (after a migration, the new one); ``None`` once it is gone."""
        try:
            return self.server.engine.peer_address(self.cid)
        except (StreamClosed, RuntimeError):
            return None

    def close(self, error_code: int = H3_NO_ERROR, reason_phrase: str = "") -> None:
        """Close the connection (as aioquic's protocol ``close``): its streams are detached when the engine
        reports it closed; their clients resume."""
        self._close_connection(error_code, reason_phrase)
        self.server.transmit()

    # -- events ------------------------------------------------------------------------------------------------

    def event(self, event: _core.QuicEvent, now: float) -> None:
        if event[0] == "closed":
            self._gone()
        elif event[0] == "writable":
            self._writable(event[2])
        else:  # connected, datagram (clients send none), goaway: nothing the server acts on
            feed(self.session, event, now)
            self._pump()

    def _writable(self, qid: int) -> None:
        unsent = self._unsent.get(qid)
        if unsent is not None:
            try:
                n = self.server.engine.send_data(self.cid, qid, bytes(unsent.data), unsent.end)
            except StreamClosed:
                del self._unsent[qid]
                self._stream_lost(qid)
                return
            self.server.sent()
            if n < len(unsent.data):
                del unsent.data[:n]
                return
            del self._unsent[qid]
        self._blocked.discard(qid)
        st = self.streams.get(qid)
        if st is not None and st in self.paused:
            self.paused.discard(st)
            st.release_reader()

    def _stream_lost(self, qid: int) -> None:
        st = self.streams.get(qid)
        if st is not None:
            self._lost(st)

    def _gone(self) -> None:
        self._terminated()
        self._unsent.clear()
        self.server.forget(self)

    # -- the session layer's actions -----------------------------------------------------------------------

    def _send_headers(self, action: SendHeaders) -> None:
        with contextlib.suppress(StreamClosed):
            self.server.engine.send_headers(self.cid, action.stream_id, list(action.headers), action.end)
            self.server.sent()

    def _send_capsules(self, action: SendCapsules) -> None:
        with contextlib.suppress(StreamClosed):  # the CONNECT stream may be closing: the capsule is advice
            self.server.engine.send_data(self.cid, action.session_id, action.data, False)
            self.server.sent()

    def _finish_session(self, action: FinishSession) -> None:
        with contextlib.suppress(StreamClosed):
            self.server.engine.send_data(self.cid, action.session_id, b"", True)
            self.server.sent()

    def _send_data(self, action: SendData) -> None:
        qid = action.stream_id
        if qid in self._fin_sent and action.end and not action.data:
            self._fin_sent.discard(qid)  # the flush sent this FIN already
            return
        unsent = self._unsent.get(qid)
        if unsent is not None:  # behind bytes still waiting: keep the order
            unsent.data += action.data
            unsent.end = unsent.end or action.end
            return
        try:
            n = self.server.engine.send_data(self.cid, qid, action.data, action.end)
        except StreamClosed:  # reset by the peer's STOP_SENDING before we saw the event
            self._stream_lost(qid)
            return
        self.server.sent()
        if n < len(action.data):
            self._unsent[qid] = _Unsent(action.data[n:], action.end)

    def _reset_stream(self, action: ResetStream) -> None:
        qid = action.stream_id
        self._unsent.pop(qid, None)
        self._blocked.discard(qid)
        self._fin_sent.discard(qid)
        self.server.transmit_queued()  # what the layer sent before goes first (quinn puts resets ahead of data)
        with contextlib.suppress(StreamClosed):
            self.server.engine.reset_stream(self.cid, qid, action.code)
            self.server.sent(data=False)

    def _stop_sending(self, action: StopSending) -> None:
        with contextlib.suppress(StreamClosed):
            self.server.engine.stop_sending(self.cid, action.stream_id, action.code)
            self.server.sent(data=False)

    def _send_datagram(self, action: SendDatagram) -> None:
        try:
            queued = self.server.engine.send_datagram(self.cid, action.session_id, action.payload)
        except StreamClosed:
            queued = False
        if queued:
            self.server.sent()
        else:
            self.server.metrics.previews_dropped_total += 1

    # -- hooks of the session host ---------------------------------------------------------------------------

    def transmit(self) -> None:
        self.server.transmit()

    def send_blocked(self, qid: int) -> bool:
        """The engine (a PAUSED flush) or this connection (a short ``send_data``) holds bytes of ``qid`` that QUIC
        does not take yet (the peer's flow control, or the connection's send window: ``stream_buffer_high`` per
        open WebTransport stream left unacknowledged): a slow reader, a congested path, or a deaf peer."""
        return qid in self._blocked or qid in self._unsent

    def datagram_limit(self) -> int:
        return _DATAGRAM_LIMIT

    def pending_previews(self) -> int:
        try:
            return self.server.engine.pending_datagrams(self.cid)
        except StreamClosed:  # the connection is gone
            return 0

    def _close_connection(self, h3_code: int, reason: str) -> None:
        with contextlib.suppress(StreamClosed):
            self.server.engine.close(self.cid, h3_code, reason.encode())
            self.server.sent(data=False)  # its CONNECTION_CLOSE goes with the next transmit, not the next wake-up

    def mark_dirty(self, st: ServedStream) -> None:
        self._dirty.append(st)
        if not self._queued:
            self._queued = True
            self.server.queue_flush(self)

    # -- the server's flush ----------------------------------------------------------------------------------

    def take_dirty(self, batch: list[_FlushItem], served: list[tuple[NativeConnection, ServedStream]]) -> Any:
        """This connection's dirty streams: each one the engine's flush may write straight from the registry is
        added to ``batch`` (and ``served``), every other one is written now on the Python path. Returns the
        registry of the batch items added (``None`` if none, or the connection is closed).

        Once per stream and token: the checks are inline (no call per stream on the common path)."""
        self._queued = False
        dirty, self._dirty = self._dirty, []
        session = self.session
        if session.closed:
            return None
        states = session.streams
        cid = self.cid
        registry = None
        for st in dirty:
            st.dirty = False
            qid = st.qid
            try:
                state = states.get(qid)
                cursor = st.cursor
                if state is None or state.send_ended or st.stream is None or cursor is None:
                    continue
                native = cursor.native
                if native is None or state.preview_tag or state.session.credit is not None or state.held:
                    st.write()  # the Python path: cursor.poll() and the session layer's send
                    continue
                if self.send_blocked(qid):
                    st.hold_reader()
                    self.paused.add(st)
                    continue
            except Exception:  # one stream's failure is its own: the others of this connection go on
                log.exception("write of WebTransport stream %d failed; resetting that stream only", qid)
                with contextlib.suppress(Exception):
                    self.reset(st, WtCode.INTERNAL_ERROR)
                continue
            registry = native[0]
            batch.append((cid, qid, native[1], cursor.position, b""))
            served.append((self, st))
        return registry

    def flushed(self, st: ServedStream, new_after: int, status: int) -> None:
        """What the engine's flush did with ``st``: account the frames it took, then end, pause or cut it."""
        cursor = st.cursor
        if cursor is None:
            return
        if status <= _core.FLUSH_PAUSED:  # OK, ENDED, PAUSED: the frames up to new_after are the engine's now
            cursor.advance(new_after, 0)
        if status == _core.FLUSH_ENDED:
            self._fin_sent.add(st.qid)
            self.send(st, b"", True)  # the session layer's bookkeeping of the FIN the engine sent
            st.detach()
        elif status == _core.FLUSH_PAUSED:
            self._blocked.add(st.qid)
            st.hold_reader()
            self.paused.add(st)
        elif status == _core.FLUSH_EXPIRED:  # the reader fell behind the ring: its attach gets the 410 reply
            self.server.metrics.backpressure_closes_total += 1
            self.reset(st, WtCode.RESUME)
        elif status == _core.FLUSH_GONE:
            self.reset(st, WtCode.RESUME)
        elif status == _core.FLUSH_STREAM_CLOSED:
            self._lost(st)


class NativeWebTransportServer(WtServerBase):
    """``tokenwire serve --wt-engine native``'s WebTransport side: one native QUIC engine (one UDP socket), one
    Hub (shared with the SSE server), one flusher. Arguments as
    :class:`~tokenwire.server.webtransport.WebTransportServer`'s."""

    def _init_engine(self) -> None:
        self._engine: QuicEngine | None = None
        self._port = 0
        self._conns: dict[int, NativeConnection] = {}
        self._timer: asyncio.Handle | None = None
        #: The loop time ``_timer`` fires at.
        self._timer_at = 0.0
        #: Inside a wake-up or a flush: transmits wait for its one transmit.
        self._batching = False
        #: Engine calls queued packets since the last transmit; ``_queued_data``: stream bytes among them.
        self._queued = False
        self._queued_data = False
        self._dirty: list[NativeConnection] = []
        self._flush_queued = False
        m = self.metrics
        m.gauges["engine_wakeups"] = lambda: self.engine.stats()["wakeups"] if self._engine is not None else 0

    @property
    def engine(self) -> QuicEngine:
        if self._engine is None:
            raise RuntimeError("server not started")
        return self._engine

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("server not started")
        return self._port

    def h3_settings(self) -> dict[int, int]:
        """Every HTTP/3 setting the engine announces: no QPACK table, extended CONNECT, datagrams, and the
        WebTransport SETTINGS of every draft (as aioquic's engine announces them)."""
        return {**H3_SETTINGS, **server_settings(self.config.webtransport.max_sessions_per_connection)}

    async def start(self) -> None:
        loop = self._start_common()
        config = self.config
        limits = config.webtransport
        engine = QuicEngine(
            server=True,
            host=config.host,
            port=config.port,
            h3_settings=self.h3_settings(),
            cert_chain_pem=self.certificate.cert_pem,
            key_pem=self.certificate.key_pem,
            idle_timeout=limits.idle_timeout,
            max_bidi_streams=limits.quic_bidi_streams,
            stream_window=limits.max_stream_data,
            conn_window=limits.max_data,
            session_tickets=limits.max_session_tickets,  # 0-RTT: its streams wait in the session layer (HELD)
            stream_send_window=limits.stream_buffer_high,
            max_pending_datagrams=limits.max_pending_previews,
            reuse_port=config.reuse_port,
            socket_buffer=limits.socket_buffer_bytes,
        )
        self._engine = engine
        self._port = engine.local_address[1]  # still known after shutdown (as aioquic's server's)
        loop.add_reader(engine.fileno(), self._wake)
        self._arm()
        self._start_tick()
        log.info(
            "WebTransport server (native engine) listening on %s (UDP; epoch %s; certificate sha-256 %s)",
            self.url,
            self.hub.epoch,
            self.certificate.sha256_hex,
        )

    # -- the engine on the loop ------------------------------------------------------------------------------

    def _wake(self) -> None:
        """The socket is readable or the deadline came: one ``poll_io``, its events into the connections, one
        transmit, the timer re-armed."""
        engine = self._engine
        if engine is None:
            return
        events = engine.poll_io()
        if events:
            self._batching = True
            try:
                self._dispatch(events, self.loop.time())
            finally:
                self._batching = False
            if self._queued:
                self._queued = self._queued_data = False
                engine.transmit()
        self._arm()

    def _dispatch(self, events: list[_core.QuicEvent], now: float) -> None:
        conns = self._conns
        for event in events:  # connections first, and their SETTINGS (see _SETTINGS_FIRST)
            if event[0] == "connected":
                self._connected(event[1], (event[2], event[3]))
            elif event[0] == "settings" and (conn := conns.get(event[1])) is not None:
                conn.event(event, now)
        for event in events:
            if event[0] in _SETTINGS_FIRST:
                continue
            conn = conns.get(event[1])
            if conn is None:
                continue
            try:
                conn.event(event, now)
            except Exception as exc:  # one connection's failure is its own
                log.exception("WebTransport event %r failed; closing its connection", event[0])
                conn.flush_failed(exc)

    def _connected(self, cid: int, peer: tuple[str, int]) -> None:
        conn = self._conns[cid] = NativeConnection(self, cid, peer)
        self.connections.add(conn)
        self.metrics.connections_total += 1

    def forget(self, conn: NativeConnection) -> None:
        """``conn`` is gone (its ``closed`` event)."""
        self._conns.pop(conn.cid, None)
        self.connections.discard(conn)

    def _on_timer(self) -> None:
        self._timer = None  # it fired: _arm sets the next one
        self._wake()

    def _arm(self) -> None:
        """ONE timer, at the engine's next deadline (after anything that may have moved it), never before it: the
        loop's timers count whole milliseconds (uvloop), so a delay rounded down fires before the deadline, and a
        wake-up before the deadline finds nothing due and only re-arms (again and again until it is due). So the
        timer is set in whole milliseconds of the loop's clock, rounded up: it fires about a millisecond after
        the deadline at most. One already armed like that for the same deadline stands: a burst of ACKs moves the deadline by
        microseconds per wake-up (the next connection's loss timer), and a re-arm costs a new handle each time."""
        timer = self._timer
        engine = self._engine
        delay = None if engine is None else engine.next_timeout()
        if delay is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        deadline = time.monotonic() + delay  # the loop's clock is the monotonic one
        if timer is not None:
            if deadline <= self._timer_at < deadline + _MS:
                return
            timer.cancel()
        loop = self.loop
        now = loop.time()
        if deadline <= now:  # due already by the loop's clock
            self._timer_at = now
            self._timer = loop.call_soon(self._on_timer)
        else:
            ms = math.ceil((deadline - now) / _MS)
            self._timer_at = now + ms * _MS
            self._timer = loop.call_later(ms * _MS, self._on_timer)

    def sent(self, data: bool = True) -> None:
        """An engine call queued stream bytes (``data``) or a frame (a reset): they go out with the batch's
        transmit (or the next :meth:`transmit`)."""
        self._queued = True
        self._queued_data = self._queued_data or data

    def transmit_queued(self) -> None:
        """Send the stream bytes engine calls queued now, even inside a batch: a packet carries a stream's
        RESET_STREAM ahead of other streams' data, so a reset the session layer orders after a reply (a refused
        CONNECT's 429, then its request streams' resets) must not share the reply's packet. Resets after resets
        share one (as on aioquic)."""
        if self._queued_data and self._engine is not None:
            self._queued = self._queued_data = False
            self._engine.transmit()

    def transmit(self) -> None:
        """Send what engine calls queued; inside a wake-up or a flush, its one transmit does."""
        if self._batching or not self._queued or self._engine is None:
            return
        self._queued = self._queued_data = False
        self._engine.transmit()
        self._arm()

    # -- flushing ----------------------------------------------------------------------------------------

    def queue_flush(self, conn: NativeConnection) -> None:
        self._dirty.append(conn)
        if not self._flush_queued:
            self._flush_queued = True
            self.flusher.add(self)

    def flush(self) -> None:
        """Every dirty stream of every connection: ONE ``engine.flush`` for those it writes from the registry
        (it transmits too), the Python path for the others first, so their bytes share that transmit."""
        self._flush_queued = False
        conns, self._dirty = self._dirty, []
        if self.config.webtransport.datagram_previews:
            # Previews that waited since the last flush: the newest max_pending_previews per connection stay.
            self.metrics.previews_dropped_total += self.engine.trim_datagrams()
        batch: list[_FlushItem] = []
        served: list[tuple[NativeConnection, ServedStream]] = []
        registry = None
        self._batching = True
        try:
            for conn in conns:
                registry = conn.take_dirty(batch, served) or registry
            if batch and registry is not None:
                engine = self.engine
                before = engine.flushed_bytes
                results = engine.flush(registry, batch)
                self._queued = self._queued_data = False
                # The cursors account frames and tokens (advance); the bytes are the flush's, counted once.
                self.metrics.bytes_sent_total += engine.flushed_bytes - before
                for (conn, st), (_, _, new_after, status) in zip(served, results, strict=True):
                    if status == _FLUSH_OK:  # the common case, inline: the frames up to new_after went out
                        cursor = st.cursor
                        if cursor is not None and new_after > cursor.position:
                            cursor.advance(new_after, 0)
                    else:
                        conn.flushed(st, new_after, status)
        finally:
            self._batching = False
        self.transmit()
        self._arm()

    def flush_failed(self, exc: Exception) -> None:
        """:meth:`flush` itself raised (the engine's flush, not one stream's write): close the connections it
        covered; their streams resume."""
        for conn in list(self._conns.values()):
            if conn._queued or conn._dirty:
                conn.flush_failed(exc)
        self.transmit()

    # -- the end -----------------------------------------------------------------------------------------

    async def _close_engine(self) -> None:
        engine = self._engine
        if engine is None:
            return
        engine.close_all(0x100, b"server shutting down")  # H3_NO_ERROR
        engine.transmit()
        await asyncio.sleep(0)
        with contextlib.suppress(OSError):
            engine.poll_io()  # the connections' closing work; their CONNECTION_CLOSE went out
            engine.transmit()
        self.loop.remove_reader(engine.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._engine = None
        self._conns.clear()
        log.info("WebTransport server (native engine) stopped")
