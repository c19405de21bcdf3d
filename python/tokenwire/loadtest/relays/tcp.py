"""The TCP relay: a slow, stalling relay in front of an HTTP (SSE) server; what it models: :class:`TcpRelay`."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, cast

from tokenwire.loadtest.impair import effective_rto
from tokenwire.loadtest.relays._base import Address, Direction, RelayBase, check_knobs, jittered

__all__ = ["MSS", "SYN_RTO", "TcpRelay", "TcpRelayStats"]

MSS = 1448  # bytes: a TCP segment's payload on a 1500-byte Ethernet path with timestamps
SYN_RTO = 1.0  # seconds: the retransmission timeout of a lost SYN or SYN-ACK (RFC 6298's initial RTO, Linux's)
_HIGH_WATER = 1 << 20  # bytes queued in the relay for one direction of one connection before its sender pauses
_DATA, _EOF, _CLOSE = 0, 1, 2  # what an entry of the TCP relay's heap carries


@dataclass
class TcpRelayStats:
    """Counters of a :class:`TcpRelay` (``up``: client → server, ``down``: server → client)."""

    connections: int = 0  # accepted from clients
    connect_errors: int = 0  # accepted, but the target refused or could not be reached
    bytes_up: int = 0  # read from clients
    bytes_down: int = 0  # read from the target
    delivered_up: int = 0  # written to the target
    delivered_down: int = 0  # written to clients
    segments: int = 0  # MSS-sized segments the bytes make, chunk by chunk (what ``loss`` draws on)
    stalls: int = 0  # segments "lost": each held its connection (or, link="shared", the link) for ``rto``
    stall_seconds: float = 0.0  # stalls x rto
    handshakes: int = 0  # connections whose first bytes waited for the handshake round trips (TCP, then TLS)
    handshake_seconds: float = 0.0  # the sum of those waits
    handshake_losses: int = 0  # handshake packets lost (each waited SYN_RTO, or rto for TLS's)
    resets: int = 0  # connections reset by ``reset_connections`` / ``rebind``
    rebinds: list[float] = field(default_factory=list)  # time.time() of each rebind
    pauses: int = 0  # times a sender was paused because too much waited for it (backpressure)


class _TcpSide(asyncio.Protocol):
    """One socket of a relayed connection; what it reads travels in direction ``reads``."""

    def __init__(self, relay: TcpRelay, conn: _TcpConn | None, reads: Direction) -> None:
        self.relay = relay
        self.conn = conn
        self.reads: Direction = reads
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.paused = False  # its reading, by the relay
        self.write_blocked = False  # its transport's buffer is full (pause_writing)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        _nodelay(self.transport)
        if self.conn is None:  # a client: connect upstream before reading anything
            self.relay._accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.relay._received(self.conn, self.reads, data)

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.relay._ended(self.conn, self.reads, _EOF, None)
        return True  # half-close: the other direction goes on

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.conn is not None:
            self.relay._ended(self.conn, self.reads, _CLOSE, exc)

    def pause_writing(self) -> None:
        self.write_blocked = True
        if self.conn is not None:
            self.relay._flow_control(self.conn, _other(self.reads))

    def resume_writing(self) -> None:
        self.write_blocked = False
        if self.conn is not None:
            self.relay._flow_control(self.conn, _other(self.reads))


class _TcpConn:
    """One relayed connection: the client's socket, the one to the target, what waits for each direction."""

    __slots__ = ("client", "closed", "connecting", "departs", "early", "ended", "id", "queued", "ready", "upstream")

    def __init__(self, cid: int, client: _TcpSide, ready: float) -> None:
        self.id = cid
        self.client = client
        self.upstream: _TcpSide | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.queued: dict[Direction, int] = {"up": 0, "down": 0}  # bytes in the relay's heap
        self.departs: dict[Direction, float] = {"up": 0.0, "down": 0.0}  # when its latest entry leaves
        self.ended: dict[Direction, bool] = {"up": False, "down": False}  # close delivered that way
        self.closed = False  # reset, or both ways closed: forgotten
        self.early: list[bytes | None] = []  # read from the client before the target answered (None: EOF)
        self.ready = ready  # monotonic time its handshakes end: no client byte leaves before it

    def source(self, direction: Direction) -> _TcpSide | None:
        return self.client if direction == "up" else self.upstream

    def sink(self, direction: Direction) -> _TcpSide | None:
        return self.upstream if direction == "up" else self.client


_TcpEntry = tuple[float, int, _TcpConn, Direction, int, bytes, bool]  # when, seq, conn, way, kind, data, error


class TcpRelay(RelayBase[_TcpEntry]):
    """A slow, stalling TCP relay in front of ``target``; an async context manager.

    Every chunk read from one side is written to the other after ``delay`` plus a uniform ``[-jitter, +jitter]``,
    but never before a chunk read earlier in the same direction of the same connection: TCP's order is kept,
    jitter shows as head-of-line waits, never as reordering. ``rate`` (bytes/s) is the link's: each direction
    serializes every connection's chunks one after another. ``loss`` is the probability that each MSS-sized
    segment of a chunk is lost; TCP would retransmit it after a timeout, so a loss holds that direction of that
    connection for ``rto`` (``link="shared"``: every connection's, as many streams multiplexed on one TCP
    connection would wait; and, as that one connection would pack their writes, the segments are counted over
    the link's bytes, a full segment every ``MSS``, rather than at least one per chunk). Bytes are never dropped, duplicated or reordered. A connection's ``connect()`` ends
    at the relay's own socket, so the handshake the client would pay on a real path is charged here instead: no
    client byte leaves before one round trip (SYN, SYN-ACK; each way ``delay`` with its jitter) after the accept,
    two with ``tls=True`` (a TLS 1.3 handshake on top, as an HTTPS endpoint costs). ``reset_connections()`` /
    ``rebind()`` (every ``rebind_every`` seconds when set) resets every open connection, both sides, as an
    address change does to TCP. A direction with more than ``max_buffer`` bytes waiting pauses its sender until
    half of that has gone (so a slow link pushes back on the sender as TCP's window would).

    No task per connection: protocols and one heap behind one timer handle (one short task per upstream
    connect), so it works the same on asyncio and uvloop and leaves nothing behind on ``aclose()``.
    """

    def __init__(
        self,
        target: Address,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        rate: float = 0.0,
        loss: float = 0.0,
        rto: float | None = None,
        link: str = "connection",
        tls: bool = False,
        rebind_every: float = 0.0,
        seed: int = 0,
        bind: Address = ("127.0.0.1", 0),
        max_buffer: int = _HIGH_WATER,
    ) -> None:
        check_knobs(
            probabilities={"loss": loss},
            durations={"delay": delay, "jitter": jitter, "rebind_every": rebind_every, "rto": rto or 0.0},
            rate=rate,
        )
        if link not in ("connection", "shared"):
            raise ValueError(f"link must be 'connection' or 'shared', got {link!r}")
        if rto is not None and rto <= 0:
            raise ValueError(f"rto must be more than 0 s, got {rto}")
        super().__init__(target, bind=bind, seed=seed, rebind_every=rebind_every)
        self.delay = delay
        self.jitter = jitter
        self.rate = rate
        self.loss = loss
        self.rto = rto  # None: max(0.2, 2 * (2*delay + jitter)), as Impairment.effective_rto
        self.link = link
        self.tls = tls  # a TLS 1.3 handshake after TCP's: one more round trip before the first request byte
        self.max_buffer = max_buffer
        self.stats = TcpRelayStats()
        self._server: asyncio.Server | None = None
        self._conns: dict[int, _TcpConn] = {}
        self._ids = itertools.count()
        self._link_departs: dict[Direction, float] = {"up": 0.0, "down": 0.0}  # link="shared": one order
        self._link_bytes: dict[Direction, int] = {"up": 0, "down": 0}  # link="shared": bytes of a partial segment

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("relay already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._server = await loop.create_server(lambda: _TcpSide(self, None, "up"), self._bind[0], self._bind[1])
        self._address = self._server.sockets[0].getsockname()[:2]
        self._arm_rebind()

    def close(self) -> None:
        """Stops at once: stops listening, resets every connection, forgets what waits. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_timers()
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            self._reset(conn)

    async def aclose(self) -> None:
        """``close()``, then waits until every socket is closed and the connect tasks are done."""
        connecting = [c.connecting for c in self._conns.values() if c.connecting is not None]
        self.close()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.gather(*connecting, return_exceptions=True)
        for _ in range(3):  # transports close in callbacks of the next loop iterations
            await asyncio.sleep(0)

    # ----------------------------------------------------------------- views and actions

    @property
    def active(self) -> int:
        """Connections open now."""
        return len(self._conns)

    @property
    def queued_bytes(self) -> int:
        """Bytes read and not yet written on: waiting for their delay, their rate slot or a stall."""
        return sum(c.queued["up"] + c.queued["down"] for c in self._conns.values())

    @property
    def effective_rto(self) -> float:
        return effective_rto(self.delay, self.jitter, self.rto)

    def snapshot(self) -> dict[str, Any]:
        """The counters, JSON-ready (``RelayProcess.stats()["tcp"]``)."""
        st = self.stats
        return {
            "connections": st.connections,
            "bytes_up": st.bytes_up,
            "bytes_down": st.bytes_down,
            "stalls": st.stalls,
            "stall_seconds": st.stall_seconds,
            "handshakes": st.handshakes,
            "handshake_seconds": st.handshake_seconds,
            "handshake_losses": st.handshake_losses,
            "resets": st.resets,
            "rebinds": list(st.rebinds),
            "delivered_up": st.delivered_up,
            "delivered_down": st.delivered_down,
            "segments": st.segments,
            "connect_errors": st.connect_errors,
            "pauses": st.pauses,
            "active": len(self._conns),
        }

    def reset_connections(self) -> int:
        """An address change as TCP meets it: every open connection is reset (RST to both sides), what waits in
        the relay for them is dropped; recorded in ``stats.rebinds``. Returns how many connections were reset."""
        if self._closed:
            raise RuntimeError("relay not running")
        self.stats.rebinds.append(time.time())
        conns = list(self._conns.values())
        for conn in conns:
            self._reset(conn)
        self.stats.resets += len(conns)
        self._heap = [e for e in self._heap if not e[2].closed]
        heapq.heapify(self._heap)
        self._arm()
        return len(conns)

    async def rebind(self) -> int:
        """``reset_connections``, awaitable."""
        count = self.reset_connections()
        await asyncio.sleep(0)
        return count

    def _rebind_now(self) -> None:
        self.reset_connections()

    # ----------------------------------------------------------------- connections

    def _accepted(self, client: _TcpSide) -> None:
        transport = client.transport
        if transport is None:  # pragma: no cover - connection_made sets it
            return
        if self._closed or self._loop is None:
            transport.abort()
            return
        transport.pause_reading()  # until the target answers
        client.paused = True
        self._loop.call_soon(self._repause, client)  # uvloop starts reading after connection_made
        conn = _TcpConn(next(self._ids), client, time.monotonic() + self._handshake())
        client.conn = conn
        self._conns[conn.id] = conn
        self.stats.connections += 1
        conn.connecting = self._loop.create_task(self._connect(conn))

    def _handshake(self) -> float:
        """The round trips a new connection pays before its first request byte (TCP's, then TLS 1.3's with
        ``tls``), each leg ``delay`` with its jitter; 0 on a link with none of delay, jitter and loss. Each leg is
        lost with probability ``loss`` and sent again after a timeout: ``SYN_RTO`` for TCP's (a SYN or SYN-ACK
        has no RTT sample yet), ``rto`` for TLS's. Counted in ``stats``."""
        if not (self.delay or self.jitter or self.loss):
            return 0.0
        hold = 0.0
        for trip in range(2 if self.tls else 1):
            for direction in ("up", "down"):  # the client's SYN / ClientHello, the server's reply
                rng = self._rng[direction]
                hold += jittered(self.delay, self.jitter, rng.random())
                if self.loss and rng.random() < self.loss:
                    hold += SYN_RTO if trip == 0 else self.effective_rto
                    self.stats.handshake_losses += 1
        self.stats.handshakes += 1
        self.stats.handshake_seconds += hold
        return hold

    def _repause(self, side: _TcpSide) -> None:
        if side.paused and side.transport is not None and not side.transport.is_closing():
            side.transport.pause_reading()

    async def _connect(self, conn: _TcpConn) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, side = await loop.create_connection(lambda: _TcpSide(self, conn, "down"), *self.target)
        except OSError:
            self.stats.connect_errors += 1
            self._reset(conn)
            return
        finally:
            conn.connecting = None
        if conn.closed or self._closed:
            _abort(side)
            return
        conn.upstream = side
        early, conn.early = conn.early, []
        for data in early:  # in case a loop read before its pause took
            if data is None:
                self._ended(conn, "up", _EOF, None)
            else:
                self._received(conn, "up", data)
        self._flow_control(conn, "up")

    def _reset(self, conn: _TcpConn) -> None:
        conn.closed = True
        self._conns.pop(conn.id, None)
        if conn.connecting is not None:
            conn.connecting.cancel()
        for side in (conn.client, conn.upstream):
            if side is not None:
                _abort(side)

    def _forget_if_done(self, conn: _TcpConn) -> None:
        """Both directions ended (EOF or close passed on): close what is still open, as a proxy does."""
        if conn.ended["up"] and conn.ended["down"] and not conn.closed:
            conn.closed = True
            self._conns.pop(conn.id, None)
            for side in (conn.client, conn.upstream):
                if side is not None and side.transport is not None and not side.transport.is_closing():
                    side.transport.close()

    # ----------------------------------------------------------------- impairment

    def _segments(self, direction: Direction, size: int) -> int:
        """The segments a chunk of ``size`` bytes completes, each a draw of ``loss``. Own connections: the chunk
        makes its own (``ceil(size / MSS)``, at least one: a write of a few bytes is a packet of its own). One shared
        connection packs what every stream writes into full segments, so the link's bytes are counted
        together and a segment is complete every ``MSS`` of them, whichever connection's chunk completes it."""
        if self.link != "shared":
            return -(-size // MSS)
        packed = self._link_bytes[direction] + size
        self._link_bytes[direction] = packed % MSS
        return packed // MSS

    def _order(self, conn: _TcpConn, direction: Direction, when: float) -> float:
        """``when``, or later: never before what went into the same order (the connection's, or the link's)."""
        departs = self._link_departs if self.link == "shared" else conn.departs
        when = max(when, departs[direction], conn.departs[direction])
        departs[direction] = conn.departs[direction] = when
        return when

    def _received(self, conn: _TcpConn, direction: Direction, data: bytes) -> None:
        if conn.closed or self._closed:
            return
        if conn.upstream is None:
            conn.early.append(data)
            return
        now = time.monotonic()
        size = len(data)
        st = self.stats
        if direction == "up":
            st.bytes_up += size
        else:
            st.bytes_down += size
        rng = self._rng[direction]
        hold = max(0.0, conn.ready - now) if direction == "up" else 0.0  # sent during the handshake: waits for it
        hold += jittered(self.delay, self.jitter, rng.random())
        if self.rate > 0.0:
            sent = self._link.serialize(direction, size, now, self.rate, math.inf)  # no drops: backpressure
            hold += (sent or now) - now
        segments = self._segments(direction, size)
        st.segments += segments
        if self.loss > 0.0:
            lost = sum(1 for _ in range(segments) if rng.random() < self.loss)
            if lost:
                stall = lost * self.effective_rto
                st.stalls += lost
                st.stall_seconds += stall
                hold += stall
        when = self._order(conn, direction, now + hold)
        conn.queued[direction] += size
        self._push((when, next(self._seq), conn, direction, _DATA, data, False))
        self._flow_control(conn, direction)

    def _ended(self, conn: _TcpConn, direction: Direction, kind: int, exc: Exception | None) -> None:
        """The side that reads ``direction`` sent EOF or is gone: passed on in order, after its data."""
        if conn.closed or self._closed:
            return
        if conn.upstream is None:
            if kind == _CLOSE:  # the client left before the target answered
                self._reset(conn)
            else:
                conn.early.append(None)
            return
        now = time.monotonic()
        start = max(now, conn.ready) if direction == "up" else now
        when = self._order(conn, direction, start + self.delay)
        self._push((when, next(self._seq), conn, direction, kind, b"", exc is not None))

    def _flow_control(self, conn: _TcpConn, direction: Direction) -> None:
        """Pauses the sender of ``direction`` while too much waits for it, or its receiver's buffer is full."""
        source, sink = conn.source(direction), conn.sink(direction)
        if source is None or source.transport is None or source.lost or conn.closed or source.transport.is_closing():
            return
        waiting = conn.queued[direction]
        stop = sink is None or sink.write_blocked or waiting > self.max_buffer
        go = sink is not None and not sink.write_blocked and waiting <= self.max_buffer // 2
        if stop and not source.paused:
            source.paused = True
            self.stats.pauses += sink is not None
            source.transport.pause_reading()
        elif go and source.paused:
            source.paused = False
            source.transport.resume_reading()

    def _due(self, entry: _TcpEntry) -> None:
        _, _, conn, direction, kind, data, error = entry
        if conn.closed:
            return
        conn.queued[direction] -= len(data)
        self._deliver(conn, direction, kind, data, error)
        self._flow_control(conn, direction)

    def _deliver(self, conn: _TcpConn, direction: Direction, kind: int, data: bytes, error: bool) -> None:
        sink = conn.sink(direction)
        transport = sink.transport if sink is not None else None
        if sink is None or transport is None or sink.lost or transport.is_closing():
            if kind == _CLOSE:
                conn.ended[direction] = True
                self._forget_if_done(conn)
            return
        if kind == _DATA:
            transport.write(data)
            if direction == "up":
                self.stats.delivered_up += len(data)
            else:
                self.stats.delivered_down += len(data)
        elif kind == _EOF:
            if transport.can_write_eof():
                transport.write_eof()
            conn.ended[direction] = True
            self._forget_if_done(conn)
        else:
            conn.ended[direction] = True
            if error:
                _abort(sink)
            else:
                transport.close()
            self._forget_if_done(conn)


def _other(direction: Direction) -> Direction:
    return "down" if direction == "up" else "up"


def _nodelay(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _abort(side: _TcpSide) -> None:
    """Closes ``side`` with a reset (RST, not FIN): SO_LINGER 0, then abort."""
    transport = side.transport
    if transport is None or side.lost:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
