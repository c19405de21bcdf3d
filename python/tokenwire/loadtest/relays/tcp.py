"""User-space network impairment: a UDP relay and a TCP relay on loopback, and both in a child process.

This kernel has no ``netem`` qdisc, so a load test (``tokenwire loadtest --impair``) or a test that needs a bad
network puts a relay between client and server: :class:`UdpRelay` in front of a QUIC / WebTransport server,
:class:`TcpRelay` in front of an HTTP (SSE) server, :class:`RelayProcess` runs both in a child process of their
own with one :class:`~tokenwire.loadtest.impair.Impairment`. How each knob maps onto each protocol, and what it
does not model: ``docs/impairment.md``.

UdpRelay::

    async with UdpRelay(server_addr, loss=0.1, delay=0.01, jitter=0.005, seed=7) as relay:
        client.connect(relay.address)
        ...
        relay.loss = 0.3            # knobs are plain attributes, changed at any time
        relay.blackhole(True)       # the link dies: everything is dropped, in flight included
        relay.blackhole(False)
        relay.change_address()      # NAT rebinding: the server now sees the client on a new port

Like a NAT, every client source address gets its own upstream socket, so the server sees that socket's
address (``127.0.0.1:<port>``) as the client's. ``change_address`` / ``rebind`` replace those sockets
with new ones on new ports mid-connection (connection migration as the server sees it); a client that
rebinds its own socket simply shows up as a new client and gets a new upstream socket too.

Every datagram, in each direction, is (in this order) dropped with probability ``loss``; duplicated with
probability ``duplicate``; serialized onto the link at ``rate`` bytes/s, which every flow of that direction
shares (a datagram waits for its slot; one that finds more than ``queue_bytes`` waiting is dropped, as a
router's full queue drops); held for ``delay`` plus a uniform ``[-jitter, +jitter]`` (so jitter reorders by
itself); and with probability ``reorder`` held ``reorder_delay`` longer still (overtaken by the ones after
it). Each direction has its own random generator seeded from ``seed`` and draws the same number of values
per datagram whatever the knobs, so a run is reproducible given the same datagrams in the same order.

No tasks: sockets are non-blocking and read with ``loop.add_reader``, delayed datagrams wait in one heap
behind one timer handle, so it works the same on asyncio and uvloop and leaves nothing behind on exit.
The heap is bounded (``max_queue``); a datagram that finds it full, or a kernel buffer that is full, is
dropped and counted, as a router would.

TcpRelay: see its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import math
import multiprocessing
import os
import random
import socket
import struct
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypedDict, TypeVar, cast

from tokenwire._loop import loop_factory
from tokenwire.loadtest.impair import Impairment, effective_rto

Address = tuple[str, int]
Direction = Literal["up", "down"]

_READ_BATCH = 64  # datagrams read per readable callback, so a flood cannot starve the loop
_MAX_DATAGRAM = 65535
_TIMER_SLACK = 0.0005  # uvloop's timers have millisecond resolution; send what is due within this


@dataclass
class DirectionStats:
    """Counters of one direction (``up``: client → server, ``down``: server → client)."""

    received: int = 0  # datagrams that reached the relay
    forwarded: int = 0  # datagrams sent on (duplicates included)
    dropped: int = 0  # lost: random loss, blackhole, full queue, send errors
    duplicated: int = 0  # extra copies made
    reordered: int = 0  # datagrams held back by the ``reorder`` knob
    overflow: int = 0  # the part of ``dropped`` due to a full queue (delay heap, ``rate`` queue) or kernel buffer
    errors: int = 0  # the part of ``dropped`` due to other socket errors
    bytes_received: int = 0
    bytes_forwarded: int = 0


@dataclass
class RelayStats:
    up: DirectionStats = field(default_factory=DirectionStats)
    down: DirectionStats = field(default_factory=DirectionStats)
    foreign: int = 0  # datagrams that reached an upstream socket from another address than the target
    refused_flows: int = 0  # datagrams of new clients beyond ``max_flows``
    rebinds: list[float] = field(default_factory=list)  # time.time() of each address change


class _Flow:
    """One client's mapping: its address on the client side, its upstream socket on the server side."""

    __slots__ = ("client", "closed", "local", "sock")

    def __init__(self, client: Address, sock: socket.socket) -> None:
        self.client = client
        self.sock = sock
        self.local: Address = sock.getsockname()[:2]
        self.closed = False


_Entry = tuple[float, int, Direction, _Flow, bytes]
_E = TypeVar("_E", bound=tuple[Any, ...])  # a heap entry: (when, seq, ...)


class _Relay(Generic[_E]):
    """What both relays share: a listening address, one heap of timed entries behind one timer handle (no tasks,
    so nothing is left behind on asyncio or uvloop), and an address change every ``rebind_every`` seconds."""

    def __init__(self, rebind_every: float) -> None:
        self.rebind_every = rebind_every  # s between address changes; 0: never
        self._loop: asyncio.AbstractEventLoop | None = None
        self._address: Address | None = None
        self._heap: list[_E] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._rebind_timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:  # pragma: no cover - both relays have their own
        raise NotImplementedError

    async def aclose(self) -> None:  # pragma: no cover - both relays have their own
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def address(self) -> Address:
        """Where clients connect or send: the relay's listening address."""
        if self._address is None:
            raise RuntimeError("relay not started")
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closed:
            raise RuntimeError("relay not running")
        return self._loop

    def _stop_timers(self) -> None:
        for timer in (self._timer, self._rebind_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._rebind_timer = None
        self._heap.clear()

    # ----------------------------------------------------------------- the heap

    def _push(self, entry: _E) -> None:
        heapq.heappush(self._heap, entry)
        self._arm()

    def _arm(self) -> None:
        if self._closed or self._loop is None:
            return
        if not self._heap:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        when = self._heap[0][0]
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_later(max(0.0, when - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic() + _TIMER_SLACK
        heap = self._heap
        while heap and heap[0][0] <= now:
            self._due(heapq.heappop(heap))
        self._arm()

    def _due(self, entry: _E) -> None:  # pragma: no cover - both relays have their own
        raise NotImplementedError

    # ----------------------------------------------------------------- periodic rebind

    def _arm_rebind(self) -> None:
        if self.rebind_every > 0 and not self._closed and self._loop is not None:
            self._rebind_timer = self._loop.call_later(self.rebind_every, self._on_rebind_timer)

    def _on_rebind_timer(self) -> None:
        self._rebind_timer = None
        self._rebind_now()
        self._arm_rebind()

    def _rebind_now(self) -> None:  # pragma: no cover - both relays have their own
        raise NotImplementedError


class UdpRelay(_Relay[_Entry]):
    """A lossy, slow, reordering, duplicating UDP relay in front of ``target``; an async context manager."""

    def __init__(
        self,
        target: Address,
        *,
        loss: float = 0.0,
        delay: float = 0.0,
        jitter: float = 0.0,
        reorder: float = 0.0,
        reorder_delay: float = 0.01,
        duplicate: float = 0.0,
        rate: float = 0.0,
        queue_bytes: int | None = None,
        rebind_every: float = 0.0,
        seed: int = 0,
        bind: Address = ("127.0.0.1", 0),
        upstream_host: str | None = None,
        max_queue: int = 10_000,
        max_flows: int = 1024,
    ) -> None:
        _check_knobs(
            probabilities={"loss": loss, "reorder": reorder, "duplicate": duplicate},
            durations={"delay": delay, "jitter": jitter, "reorder_delay": reorder_delay, "rebind_every": rebind_every},
            rate=rate,
        )
        super().__init__(rebind_every)
        self.target = target
        self.loss = loss
        self.delay = delay
        self.jitter = jitter
        self.reorder = reorder
        self.reorder_delay = reorder_delay
        self.duplicate = duplicate
        self.rate = rate  # bytes/s per direction, all flows together; 0: unlimited
        self.queue_bytes = queue_bytes  # what may wait for the ``rate``; None: 100 ms of it, at least 64 KiB
        self.max_queue = max_queue
        self.max_flows = max_flows
        self.stats = RelayStats()
        self._bind = bind
        self._upstream_host = upstream_host
        self._rng: dict[Direction, random.Random] = _seeded(seed)
        self._blackholed = False
        self._listen: socket.socket | None = None
        self._target_addr: Address = target
        self._target_family = socket.AF_INET
        self._flows: dict[Address, _Flow] = {}
        self._link = _Link()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("relay already started")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.target[0], self.target[1], type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        self._target_family = family
        self._target_addr = (str(sockaddr[0]), int(sockaddr[1]))
        bind_family = socket.AF_INET6 if ":" in self._bind[0] else socket.AF_INET
        sock = _udp_socket(bind_family, self._bind)
        self._loop = loop
        self._listen = sock
        self._address = sock.getsockname()[:2]
        loop.add_reader(sock.fileno(), self._on_listen_readable)
        self._arm_rebind()

    def close(self) -> None:
        """Stops at once: closes every socket, forgets every datagram in flight. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_timers()
        for flow in self._flows.values():
            self._close_socket(flow.sock)
            flow.closed = True
        self._flows.clear()
        if self._listen is not None:
            self._close_socket(self._listen)
            self._listen = None

    async def aclose(self) -> None:
        self.close()

    # ----------------------------------------------------------------- public knobs and views

    @property
    def up(self) -> DirectionStats:
        return self.stats.up

    @property
    def down(self) -> DirectionStats:
        return self.stats.down

    @property
    def flows(self) -> dict[Address, Address]:
        """Client address → the address the server sees for it (its upstream socket)."""
        return {client: flow.local for client, flow in self._flows.items()}

    @property
    def in_flight(self) -> int:
        """Datagrams waiting in the delay queue."""
        return len(self._heap)

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    def snapshot(self) -> dict[str, Any]:
        """The counters, JSON-ready (``RelayProcess.stats()["udp"]``)."""
        up, down = self.stats.up, self.stats.down
        return {
            "datagrams_up": up.received,
            "datagrams_down": down.received,
            "bytes_up": up.bytes_received,
            "bytes_down": down.bytes_received,
            "dropped_up": up.dropped,
            "dropped_down": down.dropped,
            "duplicated": up.duplicated + down.duplicated,
            "reordered": up.reordered + down.reordered,
            "rebinds": list(self.stats.rebinds),
            "forwarded_up": up.forwarded,
            "forwarded_down": down.forwarded,
            "bytes_forwarded_up": up.bytes_forwarded,
            "bytes_forwarded_down": down.bytes_forwarded,
            "overflow_up": up.overflow,
            "overflow_down": down.overflow,
            "flows": len(self._flows),
            "in_flight": len(self._heap),
        }

    def blackhole(self, on: bool = True) -> None:
        """A dead link while on: every datagram is dropped, those already delayed in flight at once."""
        self._blackholed = on
        if on:
            for _, _, direction, _, _ in self._heap:
                (self.stats.up if direction == "up" else self.stats.down).dropped += 1
            self._heap.clear()
            self._arm()

    def change_address(self, client: Address | None = None) -> dict[Address, Address]:
        """NAT rebinding: new upstream sockets on new ports for ``client`` (or every client).

        The old sockets are closed, so what the server still sends to the old addresses is lost, as
        behind a real NAT whose mapping changed. Datagrams already delayed go out from the new socket.
        Returns client address → new address the server sees. Each call is recorded (``stats.rebinds``).
        """
        loop = self._running_loop()
        if client is not None and client not in self._flows:
            raise LookupError(f"no flow for client {client}")
        self.stats.rebinds.append(time.time())
        chosen = [self._flows[client]] if client is not None else list(self._flows.values())
        changed: dict[Address, Address] = {}
        for flow in chosen:
            new = self._upstream_socket()  # bound while the old one still is: a different port
            loop.add_reader(new.fileno(), self._on_upstream_readable, flow, new)
            self._close_socket(flow.sock)
            flow.sock = new
            flow.local = new.getsockname()[:2]
            changed[flow.client] = flow.local
        return changed

    async def rebind(self, client: Address | None = None) -> dict[Address, Address]:
        """``change_address``, awaitable."""
        changed = self.change_address(client)
        await asyncio.sleep(0)
        return changed

    def _rebind_now(self) -> None:
        self.change_address()

    # ----------------------------------------------------------------- sockets

    def _upstream_socket(self) -> socket.socket:
        host = self._upstream_host or _source_host(self._target_addr[0], self._target_family)
        return _udp_socket(self._target_family, (host, 0))

    def _close_socket(self, sock: socket.socket) -> None:
        if self._loop is not None and sock.fileno() != -1:
            self._loop.remove_reader(sock.fileno())
        sock.close()

    def _on_listen_readable(self) -> None:
        sock = self._listen
        if sock is None:
            return
        for _ in range(_READ_BATCH):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats.up.errors += 1
                return
            client: Address = addr[:2]
            flow = self._flows.get(client)
            if flow is None:
                if len(self._flows) >= self.max_flows:
                    self.stats.refused_flows += 1
                    continue
                flow = _Flow(client, self._upstream_socket())
                self._flows[client] = flow
                self._running_loop().add_reader(flow.sock.fileno(), self._on_upstream_readable, flow, flow.sock)
            self._impair("up", flow, data)

    def _on_upstream_readable(self, flow: _Flow, sock: socket.socket) -> None:
        for _ in range(_READ_BATCH):
            if flow.closed or sock is not flow.sock:
                return
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats.down.errors += 1
                return
            if addr[:2] != self._target_addr:
                self.stats.foreign += 1
                continue
            self._impair("down", flow, data)

    # ----------------------------------------------------------------- impairment

    def _impair(self, direction: Direction, flow: _Flow, data: bytes) -> None:
        st = self.stats.up if direction == "up" else self.stats.down
        st.received += 1
        st.bytes_received += len(data)
        rng = self._rng[direction]
        # always the same draws per datagram, so changing one knob does not shift the others' sequence
        u_loss, u_dup, u_jitter, u_jitter2, u_reorder = (rng.random() for _ in range(5))
        if self._blackholed or u_loss < self.loss:
            st.dropped += 1
            return
        copies = [u_jitter]
        if u_dup < self.duplicate:
            st.duplicated += 1
            copies.append(u_jitter2)
        now = time.monotonic()
        for i, u in enumerate(copies):
            hold = max(0.0, self.delay + (2.0 * u - 1.0) * self.jitter)
            if self.rate > 0.0:
                queue = self.queue_bytes if self.queue_bytes is not None else max(64 * 1024, int(self.rate * 0.1))
                sent = self._link.serialize(direction, len(data), now, self.rate, queue)
                if sent is None:  # the rate's queue is full: a router drops it
                    st.dropped += 1
                    st.overflow += 1
                    continue
                hold += sent - now
            if i == 0 and u_reorder < self.reorder:
                st.reordered += 1
                hold += self.reorder_delay
            if hold <= 0.0:
                self._send(direction, flow, data)
            else:
                self._schedule(now + hold, direction, flow, data)

    def _schedule(self, when: float, direction: Direction, flow: _Flow, data: bytes) -> None:
        if len(self._heap) >= self.max_queue:
            st = self.stats.up if direction == "up" else self.stats.down
            st.dropped += 1
            st.overflow += 1
            return
        self._push((when, next(self._seq), direction, flow, data))

    def _due(self, entry: _Entry) -> None:
        _, _, direction, flow, data = entry
        self._send(direction, flow, data)

    def _send(self, direction: Direction, flow: _Flow, data: bytes) -> None:
        st = self.stats.up if direction == "up" else self.stats.down
        if self._blackholed or flow.closed or self._closed:
            st.dropped += 1
            return
        try:
            if direction == "up":
                flow.sock.sendto(data, self._target_addr)
            elif self._listen is not None:
                self._listen.sendto(data, flow.client)
        except (BlockingIOError, InterruptedError):
            st.dropped += 1
            st.overflow += 1
            return
        except OSError:
            st.dropped += 1
            st.errors += 1
            return
        st.forwarded += 1
        st.bytes_forwarded += len(data)


def _seeded(seed: int) -> dict[Direction, random.Random]:
    """One generator per direction: impairment, not cryptography."""
    return {d: random.Random(f"{seed}:{d}") for d in ("up", "down")}  # noqa: S311


class _Link:
    """The bottleneck of ``rate``: each direction serializes one chunk after another at ``rate`` bytes/s."""

    __slots__ = ("free_at",)

    def __init__(self) -> None:
        self.free_at: dict[Direction, float] = {"up": 0.0, "down": 0.0}

    def serialize(self, direction: Direction, size: int, now: float, rate: float, queue: float) -> float | None:
        """When ``size`` bytes arriving ``now`` are all on the wire; None when more than ``queue`` bytes wait."""
        start = max(now, self.free_at[direction])
        if (start - now) * rate + size > queue:
            return None
        self.free_at[direction] = done = start + size / rate
        return done


def _check_knobs(probabilities: dict[str, float], durations: dict[str, float], rate: float) -> None:
    for name, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability, got {p}")
    for name, d in durations.items():
        if not 0.0 <= d < math.inf:
            raise ValueError(f"{name} must be a number of seconds, 0 or more, got {d}")
    if not 0.0 <= rate < math.inf:
        raise ValueError(f"rate must be bytes/s, 0 (unlimited) or more, got {rate}")


def _source_host(target_host: str, family: int) -> str:
    """The address upstream sockets bind to: loopback for a loopback target (what the tests compare), else any."""
    try:
        loopback = ipaddress.ip_address(target_host).is_loopback
    except ValueError:
        loopback = False
    if family == socket.AF_INET6:
        return "::1" if loopback else "::"
    return "127.0.0.1" if loopback else "0.0.0.0"  # noqa: S104 - the source of a relay's outgoing socket


def _udp_socket(family: socket.AddressFamily, addr: Address) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
            except OSError:  # pragma: no cover - capped by the kernel, best effort
                pass
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


# ============================================================================================ TCP

MSS = 1448  # bytes: a TCP segment's payload on a 1500-byte Ethernet path with timestamps
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


class TcpRelay(_Relay[_TcpEntry]):
    """A slow, stalling TCP relay in front of ``target``; an async context manager.

    Every chunk read from one side is written to the other after ``delay`` plus a uniform ``[-jitter, +jitter]``,
    but never before a chunk read earlier in the same direction of the same connection: TCP's order is kept,
    jitter shows as head-of-line waits, never as reordering. ``rate`` (bytes/s) is the link's: each direction
    serializes every connection's chunks one after another. ``loss`` is the probability that each MSS-sized
    segment of a chunk is lost; TCP would retransmit it after a timeout, so a loss holds that direction of that
    connection for ``rto`` (``link="shared"``: every connection's, as many streams multiplexed on one TCP
    connection would wait). Bytes are never dropped, duplicated or reordered. A connection's ``connect()`` ends
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
        _check_knobs(
            probabilities={"loss": loss},
            durations={"delay": delay, "jitter": jitter, "rebind_every": rebind_every, "rto": rto or 0.0},
            rate=rate,
        )
        if link not in ("connection", "shared"):
            raise ValueError(f"link must be 'connection' or 'shared', got {link!r}")
        if rto is not None and rto <= 0:
            raise ValueError(f"rto must be more than 0 s, got {rto}")
        super().__init__(rebind_every)
        self.target = target
        self.delay = delay
        self.jitter = jitter
        self.rate = rate
        self.loss = loss
        self.rto = rto  # None: max(0.2, 2 * (2*delay + jitter)), as Impairment.effective_rto
        self.link = link
        self.tls = tls  # a TLS 1.3 handshake after TCP's: one more round trip before the first request byte
        self.max_buffer = max_buffer
        self.stats = TcpRelayStats()
        self._bind = bind
        self._rng = _seeded(seed)
        self._server: asyncio.Server | None = None
        self._conns: dict[int, _TcpConn] = {}
        self._ids = itertools.count()
        self._link = _Link()
        self._link_departs: dict[Direction, float] = {"up": 0.0, "down": 0.0}  # link="shared": one order

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
        ``tls``), each leg ``delay`` with its jitter; 0 on a link with neither. Counted in ``stats``."""
        if not (self.delay or self.jitter):
            return 0.0
        hold = 0.0
        for _ in range(2 if self.tls else 1):
            for direction in ("up", "down"):  # the client's SYN / ClientHello, the server's reply
                hold += max(0.0, self.delay + (2.0 * self._rng[direction].random() - 1.0) * self.jitter)
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
        hold += max(0.0, self.delay + (2.0 * rng.random() - 1.0) * self.jitter)
        if self.rate > 0.0:
            sent = self._link.serialize(direction, size, now, self.rate, math.inf)  # no drops: backpressure
            hold += (sent or now) - now
        segments = -(-size // MSS)
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


# ============================================================================================ process


class RelayProcessError(RuntimeError):
    """The relay process failed: it could not start, died, or did not answer (the child's traceback included)."""


class RelayProcess:
    """Both relays in a child process (its own uvloop), so relay work does not share the load generator's loop.

    ``start()`` returns once both listen on ``host`` (``tcp_port`` in front of ``(target_host, tcp_port)``,
    ``udp_port`` in front of ``(target_host, udp_port)``); ``stats()`` is a snapshot of both relays' counters,
    ``stop()`` the final one, and the child is gone after it. A context manager. ``impairment.rebind`` resets
    both relays' addresses on the same period. The calls block (a pipe round trip; ``start()`` spawns a Python
    process): from a running event loop, call them through ``asyncio.to_thread``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        target_host: str,
        tcp_port: int,
        udp_port: int,
        impairment: Impairment,
        *,
        seed: int = 0,
        cpus: set[int] | None = None,
    ) -> None:
        self.target_host = target_host
        self.target_tcp_port = tcp_port
        self.target_udp_port = udp_port
        self.impairment = impairment
        self.seed = seed
        self.cpus = set(cpus) if cpus else None
        self.tcp_port = 0
        self.udp_port = 0
        self.pid = 0
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._pipe: Connection | None = None
        self._final: dict[str, Any] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and self._final is None

    def start(self, timeout: float = 30.0) -> None:
        """Spawns the child and waits until both relays listen; raises :class:`RelayProcessError` if it fails."""
        if self._proc is not None:
            raise RelayProcessError("relay process already started")
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        args = (
            child,
            self.target_host,
            self.target_tcp_port,
            self.target_udp_port,
            self.impairment,
            self.seed,
            self.cpus,
        )
        self._proc = ctx.Process(target=_relay_main, args=args, name="tokenwire-relays", daemon=True)
        self._pipe = parent
        self._proc.start()
        child.close()
        try:
            ready = self._answer("ready", timeout)
        except BaseException:
            self._end_child(0.0)
            raise
        self.tcp_port, self.udp_port, self.pid = int(ready["tcp_port"]), int(ready["udp_port"]), int(ready["pid"])

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """``{"tcp": TcpRelay.snapshot(), "udp": UdpRelay.snapshot()}`` now; after ``stop()``, the final one."""
        if self._final is not None:
            return self._final
        self._send("stats")
        return self._answer("stats", timeout)

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stops both relays and ends the child; returns the final stats. Idempotent."""
        if self._final is not None:
            return self._final
        if self._proc is None:
            raise RelayProcessError("relay process not started")
        try:
            self._send("stop")
            self._final = self._answer("stopped", timeout)
        finally:
            self._end_child(timeout)
        return self._final

    # ----------------------------------------------------------------- the pipe

    def _send(self, command: str) -> None:
        if self._pipe is None or self._proc is None:
            raise RelayProcessError("relay process not started")
        try:
            self._pipe.send(command)
        except OSError as exc:
            raise RelayProcessError(f"relay process {self._proc.pid} is gone ({self._exit_text()})") from exc

    def _answer(self, kind: str, timeout: float) -> dict[str, Any]:
        pipe, proc = self._pipe, self._proc
        if pipe is None or proc is None:
            raise RelayProcessError("relay process not started")
        deadline = time.monotonic() + timeout
        while True:
            try:
                if pipe.poll(0.05):
                    got, payload = pipe.recv()
                    break
            except (EOFError, OSError) as exc:
                raise RelayProcessError(f"relay process {proc.pid} is gone ({self._exit_text()})") from exc
            if not proc.is_alive() and not pipe.poll(0):
                raise RelayProcessError(f"relay process {proc.pid} is gone ({self._exit_text()})")
            if time.monotonic() > deadline:
                raise RelayProcessError(f"relay process {proc.pid} did not answer {kind!r} within {timeout:g} s")
        if got == "error":
            raise RelayProcessError(f"relay process failed:\n{payload}")
        if got != kind:  # pragma: no cover - one request at a time
            raise RelayProcessError(f"relay process answered {got!r} to {kind!r}")
        return cast(dict[str, Any], payload)

    def _exit_text(self) -> str:
        code = self._proc.exitcode if self._proc is not None else None
        return "still running" if code is None else f"exit code {code}"

    def _end_child(self, timeout: float) -> None:
        proc, pipe = self._proc, self._pipe
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():  # it did not stop when asked: terminate, then kill
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if pipe is not None:
            pipe.close()
            self._pipe = None


def _relay_main(
    pipe: Connection,
    target_host: str,
    tcp_port: int,
    udp_port: int,
    impairment: Impairment,
    seed: int,
    cpus: set[int] | None,
) -> None:
    """The child: both relays on one uvloop until the parent says stop (or goes away)."""
    try:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            final = runner.run(_serve_relays(pipe, target_host, tcp_port, udp_port, impairment, seed))
        pipe.send(("stopped", final))
    except BaseException:  # noqa: BLE001 - whatever ends the child, the parent is told why
        with contextlib.suppress(OSError):
            pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


class _Knobs(TypedDict):
    """The knobs both relays take alike."""

    loss: float
    delay: float
    jitter: float
    rate: float
    rebind_every: float


async def _serve_relays(
    pipe: Connection, target_host: str, tcp_port: int, udp_port: int, imp: Impairment, seed: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    shared = _Knobs(loss=imp.loss, delay=imp.delay, jitter=imp.jitter, rate=imp.rate, rebind_every=imp.rebind)
    tcp = TcpRelay((target_host, tcp_port), rto=imp.rto, link=imp.link, tls=imp.tls, seed=seed, **shared)
    udp = UdpRelay((target_host, udp_port), reorder=imp.reorder, duplicate=imp.duplicate, seed=seed, **shared)
    stopping = loop.create_future()

    def snapshot() -> dict[str, Any]:
        return {"tcp": tcp.snapshot(), "udp": udp.snapshot()}

    def on_command() -> None:
        try:
            command = pipe.recv()
        except (EOFError, OSError):  # the parent is gone
            command = "stop"
        if command == "stats":
            pipe.send(("stats", snapshot()))
        elif not stopping.done():
            stopping.set_result(None)

    async with tcp, udp:
        pipe.send(("ready", {"tcp_port": tcp.port, "udp_port": udp.port, "pid": os.getpid()}))
        loop.add_reader(pipe.fileno(), on_command)
        try:
            await stopping
        finally:
            loop.remove_reader(pipe.fileno())
    return snapshot()
