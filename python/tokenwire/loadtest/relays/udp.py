"""The UDP relay: a lossy, slow, reordering, duplicating relay in front of a QUIC / WebTransport server.

In use::

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
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from tokenwire.loadtest.relays._base import Address, Direction, RelayBase, check_knobs, jittered

__all__ = ["DirectionStats", "RelayStats", "UdpRelay"]

_READ_BATCH = 64  # datagrams read per readable callback, so a flood cannot starve the loop
_MAX_DATAGRAM = 65535


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


class UdpRelay(RelayBase[_Entry]):
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
        check_knobs(
            probabilities={"loss": loss, "reorder": reorder, "duplicate": duplicate},
            durations={"delay": delay, "jitter": jitter, "reorder_delay": reorder_delay, "rebind_every": rebind_every},
            rate=rate,
        )
        super().__init__(target, bind=bind, seed=seed, rebind_every=rebind_every)
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
        self._upstream_host = upstream_host
        self._blackholed = False
        self._listen: socket.socket | None = None
        self._target_addr: Address = target
        self._target_family = socket.AF_INET
        self._flows: dict[Address, _Flow] = {}

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

    def _counters(self, direction: Direction) -> DirectionStats:
        return self.stats.up if direction == "up" else self.stats.down

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
                self._counters(direction).dropped += 1
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
        st = self._counters(direction)
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
            hold = jittered(self.delay, self.jitter, u)
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
            st = self._counters(direction)
            st.dropped += 1
            st.overflow += 1
            return
        self._push((when, next(self._seq), direction, flow, data))

    def _due(self, entry: _Entry) -> None:
        _, _, direction, flow, data = entry
        self._send(direction, flow, data)

    def _send(self, direction: Direction, flow: _Flow, data: bytes) -> None:
        st = self._counters(direction)
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
