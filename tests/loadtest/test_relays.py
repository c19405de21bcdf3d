"""The impairment relays measured: what goes through them on real sockets (127.0.0.1), against what each knob
promises. Tolerances: a lower bound that must hold (a relay never delivers early) and a generous upper bound
(this machine is shared); counts within a binomial tolerance of the expected number.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import random
import socket
import time
from collections.abc import AsyncIterator

import pytest

from tests.support.udp_relay import Address, echo_behind_relay, echo_server, msgs, udp_client, until
from tokenwire.loadtest.impair import Impairment
from tokenwire.loadtest.relays import MSS, SYN_RTO, RelayProcess, RelayProcessError, TcpRelay, UdpRelay

pytestmark = pytest.mark.usefixtures("no_leaks")

SLACK = 0.004  # s: timers (uvloop's have millisecond resolution) and loopback hops


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


# ------------------------------------------------------------------------------------ a TCP echo server


class TcpEcho:
    """Echoes every connection back; remembers each connection's peer address and whether it ended by a reset."""

    def __init__(self) -> None:
        self.peers: list[Address] = []
        self.resets = 0
        self.eofs = 0
        self.server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def address(self) -> Address:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return (str(host), int(port))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        host, port = writer.get_extra_info("peername")[:2]
        self.peers.append((str(host), int(port)))
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
            self.eofs += 1
            writer.write_eof()
            await writer.drain()
        except ConnectionResetError:
            self.resets += 1
        except OSError:  # aborted at the end of the test
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._handlers.pop(task, None)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[TcpEcho]:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self.server.close()
            for writer in self._handlers.values():  # the handlers end on their own, reset
                writer.transport.abort()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def tcp_echo_behind_relay(**knobs: object) -> AsyncIterator[tuple[TcpRelay, TcpEcho]]:
    async with TcpEcho().serving() as echo, TcpRelay(echo.address, **knobs) as relay:  # type: ignore[arg-type]
        yield relay, echo


@contextlib.asynccontextmanager
async def tcp_client(addr: Address) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*addr)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def echo_rtt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> float:
    sent = time.monotonic()
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    return time.monotonic() - sent


# ------------------------------------------------------------------------------------ UDP


async def test_udp_loss_rate_is_the_knob_both_ways() -> None:
    n, p = 2000, 0.2
    async with asyncio.timeout(10), echo_behind_relay(loss=p, seed=9) as (relay, echo, client):
        for i, m in enumerate(msgs(n)):
            client.send(m)
            if i % 50 == 0:
                await asyncio.sleep(0.001)  # the kernel buffers hold a burst, not all of it
        await until(lambda: relay.up.received == n and relay.in_flight == 0)
        await until(lambda: relay.down.received == len(echo.sources) and len(client.received) == relay.down.forwarded)
        reached_server = len(echo.sources)
        assert relay.up.dropped == n - reached_server  # the relay's count is what the server missed
        came_back = len(client.received)
        # The knob's drops: a busy machine may add a few more (a full kernel buffer, counted as overflow).
        for way, received in ((relay.up, n), (relay.down, reached_server)):
            assert within_binomial(way.dropped - way.overflow - way.errors, received, p), (way, received)
            assert way.overflow + way.errors <= way.dropped
        snap = relay.snapshot()
        assert snap["datagrams_up"] == n and snap["bytes_up"] == 5 * n
        assert snap["dropped_up"] + snap["dropped_down"] == n - came_back


async def test_udp_delay_and_jitter_stay_in_their_window() -> None:
    delay, jitter = 0.03, 0.01
    async with asyncio.timeout(10), echo_behind_relay(delay=delay, jitter=jitter, seed=4) as (_, _, client):
        rtts = []
        for m in msgs(8):
            sent = time.monotonic()
            client.send(m)
            await until(lambda: len(client.received) == len(rtts) + 1)
            rtts.append(client.received[-1][0] - sent)
        assert min(rtts) >= 2 * (delay - jitter) - SLACK, rtts  # never early
        assert max(rtts) <= 2 * (delay + jitter) + 0.15, rtts  # generous: a shared machine
        assert max(rtts) - min(rtts) > 0.002, rtts  # jitter varies it


async def test_udp_rate_is_shared_by_every_flow() -> None:
    rate, size, each = 100_000.0, 1000, 25  # two clients x 25 x 1000 B = 50 KB: at least 0.5 s
    async with (
        asyncio.timeout(10),
        echo_server() as (addr, _),
        UdpRelay(addr, rate=rate) as relay,
        udp_client(relay.address) as a,
        udp_client(relay.address) as b,
    ):
        started = time.monotonic()
        for i in range(each):
            a.send(b"a%04d" % i + bytes(size - 5))
            b.send(b"b%04d" % i + bytes(size - 5))
        await until(lambda: len(a.received) == len(b.received) == each)
        last = max(a.received[-1][0], b.received[-1][0])
        # each datagram crosses the link twice (up, down), each direction has the whole rate
        assert last - started >= 2 * each * size / rate - SLACK
        assert last - started <= 2 * each * size / rate + 1.0
        assert relay.up.dropped == relay.down.dropped == 0
        assert [d[:5] for d in a.payloads] == [b"a%04d" % i for i in range(each)]  # a link keeps its order


async def test_udp_rate_queue_drops_when_full() -> None:
    async with asyncio.timeout(10), echo_behind_relay(rate=10_000.0, queue_bytes=5000) as (relay, echo, client):
        for i in range(20):
            client.send(b"%04d" % i + bytes(996))
        await until(lambda: relay.up.received == 20 and relay.in_flight == 0)
        assert relay.up.overflow == relay.up.dropped == 15  # 5 x 1000 B fit the queue, the rest find it full
        await until(lambda: len(echo.sources) == 5)


async def test_udp_periodic_rebind_gives_the_server_new_addresses() -> None:
    async with asyncio.timeout(10), echo_behind_relay(rebind_every=0.15) as (relay, echo, client):
        started = time.time()
        for m in msgs(40):
            client.send(m)
            await asyncio.sleep(0.015)
        await until(lambda: len(echo.sources) == 40)  # every datagram up reached the server
        await asyncio.sleep(0.05)
        seen = list(dict.fromkeys(echo.sources))
        times = relay.stats.rebinds
        # an echo on its way to the old address when it changes is lost, as behind a real NAT; the rest come back
        assert len(client.received) >= 40 - len(times)
        assert len(seen) >= 3, seen  # 0.6 s or more of sending, a change every 0.15 s
        assert len(seen) <= len(times) + 1, (seen, times)  # a new address only at a change
        assert all(host == "127.0.0.1" for host, _ in seen)
        assert started < times[0] and all(b - a >= 0.15 - SLACK for a, b in itertools.pairwise(times))
        assert relay.snapshot()["rebinds"] == times


# ------------------------------------------------------------------------------------ TCP


async def test_tcp_delay_and_jitter_stay_in_their_window() -> None:
    delay, jitter = 0.03, 0.01
    async with (
        asyncio.timeout(10),
        tcp_echo_behind_relay(delay=delay, jitter=jitter, seed=1) as (relay, _),
        tcp_client(relay.address) as (reader, writer),
    ):
        rtts = [await echo_rtt(reader, writer, b"x%03d" % i) for i in range(8)]
        assert min(rtts) >= 2 * (delay - jitter) - SLACK, rtts
        assert max(rtts) <= 2 * (delay + jitter) + 0.15, rtts
        relay.delay = relay.jitter = 0.0  # knobs change at once
        assert await echo_rtt(reader, writer, b"fast") < delay


@pytest.mark.parametrize(("tls", "handshake_rtts"), [(False, 1), (True, 2)])
async def test_tcp_new_connection_pays_its_handshake_round_trips(tls: bool, handshake_rtts: int) -> None:
    delay = 0.1  # a round trip of 200 ms: one more, or not, stands out of a busy machine's timer noise
    rtt = 2 * delay
    async with (
        asyncio.timeout(10),
        tcp_echo_behind_relay(delay=delay, tls=tls) as (relay, _),
    ):
        started = time.monotonic()
        async with tcp_client(relay.address) as (reader, writer):
            writer.write(b"request")  # at once, as an HTTP client does after connect()
            assert await reader.readexactly(7) == b"request"
            first = time.monotonic() - started
            again = await echo_rtt(reader, writer, b"next")  # the same connection: no handshake
        st = relay.stats
    assert first >= (handshake_rtts + 1) * rtt - SLACK, first  # handshake(s), then the request's round trip
    assert rtt - SLACK <= again < 2 * rtt - SLACK, again
    assert st.handshakes == 1
    assert st.handshake_seconds == pytest.approx(handshake_rtts * rtt)
    assert relay.snapshot()["handshakes"] == 1


async def test_tcp_handshake_runs_from_connect_and_takes_its_jitter() -> None:
    delay, jitter = 0.1, 0.02
    rtt = 2 * delay
    async with (
        asyncio.timeout(10),
        tcp_echo_behind_relay(delay=delay, jitter=jitter, seed=4) as (relay, _),
        tcp_client(relay.address) as (reader, writer),
    ):
        await asyncio.sleep(2 * (rtt + 2 * jitter))  # a client that writes late finds the handshake done
        late = await echo_rtt(reader, writer, b"late")
        st = relay.stats
    assert 2 * (delay - jitter) - SLACK <= late < 2 * rtt - SLACK, late
    assert st.handshakes == 1
    assert 2 * (delay - jitter) <= st.handshake_seconds <= 2 * (delay + jitter)
    assert st.handshake_seconds != pytest.approx(rtt)  # jittered as the other packets are


@pytest.mark.parametrize("tls", [False, True])
async def test_tcp_handshake_packets_are_lost_too(tls: bool) -> None:
    """loss=100%: every handshake leg is lost once; a SYN / SYN-ACK waits SYN_RTO, a TLS flight rto."""
    async with (
        asyncio.timeout(10),
        tcp_echo_behind_relay(loss=1.0, rto=0.3, tls=tls) as (relay, _),
        tcp_client(relay.address),
    ):
        await until(lambda: relay.stats.handshakes == 1)
        st = relay.stats
    assert st.handshake_losses == (4 if tls else 2)
    assert st.handshake_seconds == pytest.approx(2 * SYN_RTO + (2 * 0.3 if tls else 0.0))


@pytest.mark.parametrize("tls", [False, True])
async def test_tcp_no_handshake_hold_on_a_link_without_delay(tls: bool) -> None:
    async with (
        asyncio.timeout(10),
        tcp_echo_behind_relay(loss=0.0, tls=tls) as (relay, _),
        tcp_client(relay.address) as (reader, writer),
    ):
        await echo_rtt(reader, writer, b"x")
        st = relay.stats
    assert st.connections == 1 and st.handshakes == 0 and st.handshake_seconds == 0.0


async def test_tcp_keeps_every_byte_in_order_through_jitter_and_stalls() -> None:
    loss, payload = 0.02, random.Random(3).randbytes(400_000)
    async with (
        asyncio.timeout(20),
        tcp_echo_behind_relay(delay=0.002, jitter=0.002, loss=loss, rto=0.01, seed=8) as (relay, echo),
        tcp_client(relay.address) as (reader, writer),
    ):
        rng = random.Random(5)
        view, sent = memoryview(payload), 0
        while sent < len(payload):  # odd-sized writes, so chunks differ from the server's reads
            step = rng.randint(1, 20_000)
            writer.write(view[sent : sent + step])
            sent += step
            await writer.drain()
        writer.write_eof()
        echoed = await reader.read()  # to EOF: the server's FIN came through, after every byte
    assert echoed == payload
    st = relay.stats
    assert st.bytes_up == st.delivered_up == st.bytes_down == st.delivered_down == len(payload)
    assert st.segments >= 2 * len(payload) / MSS
    assert st.stalls > 0 and within_binomial(st.stalls, st.segments, loss), (st.stalls, st.segments)
    assert st.stall_seconds == pytest.approx(st.stalls * 0.01)
    assert echo.eofs == 1 and echo.resets == 0


@pytest.mark.parametrize("link", ["connection", "shared"])
async def test_tcp_stall_holds_the_other_connection_only_when_the_link_is_shared(link: str) -> None:
    rto = 0.3
    async with (
        asyncio.timeout(10),
        tcp_echo_behind_relay(rto=rto, link=link) as (relay, _),
        tcp_client(relay.address) as (ra, wa),
        tcp_client(relay.address) as (rb, wb),
    ):
        await echo_rtt(ra, wa, b"warm")  # both connected all the way
        await echo_rtt(rb, wb, b"warm")
        relay.loss = 1.0
        wa.write(b"A" * MSS)  # one segment, lost: a stall of rto
        await until(lambda: relay.stats.stalls == 1)
        relay.loss = 0.0
        rtt_b = await echo_rtt(rb, wb, b"B")
        rtt_a_started = time.monotonic()
        assert await ra.readexactly(MSS) == b"A" * MSS
        rtt_a_rest = time.monotonic() - rtt_a_started
    assert relay.stats.stalls == 1 and relay.stats.stall_seconds == pytest.approx(rto)
    if link == "shared":
        assert rtt_b >= rto - 0.05, rtt_b  # B's bytes wait behind A's lost segment (head-of-line blocking)
        assert rtt_a_rest < rto  # A's came first
    else:
        assert rtt_b < rto / 2, rtt_b  # B goes on while A waits
        assert rtt_b + rtt_a_rest >= rto - 0.05  # A still waited its rto


@pytest.mark.parametrize("link", ["connection", "shared"])
async def test_tcp_segments_are_per_chunk_or_packed_over_the_shared_link(link: str) -> None:
    """Small writes: each its own segment on its own connection; one connection carrying every stream packs
    them, a segment per MSS of the link's bytes (what the loss draws are made on)."""
    writes, size = 60, 100
    async with (
        asyncio.timeout(10),
        tcp_echo_behind_relay(link=link) as (relay, _),
        tcp_client(relay.address) as (ra, wa),
        tcp_client(relay.address) as (rb, wb),
    ):
        for _ in range(writes):
            for reader, writer in ((ra, wa), (rb, wb)):
                await echo_rtt(reader, writer, bytes(size))  # one chunk each way, read before the next write
        st = relay.stats
    total = 2 * writes * size  # each way
    if link == "shared":
        assert st.segments == 2 * (total // MSS)
    else:
        assert st.segments == 2 * 2 * writes


async def test_tcp_rate_caps_the_whole_link() -> None:
    rate, each = 200_000.0, 50_000  # two connections x 50 KB each way: at least 0.5 s
    async with (
        asyncio.timeout(10),
        tcp_echo_behind_relay(rate=rate) as (relay, _),
        tcp_client(relay.address) as (ra, wa),
        tcp_client(relay.address) as (rb, wb),
    ):
        started = time.monotonic()
        for w in (wa, wb):
            w.write(bytes(each))
        await asyncio.gather(ra.readexactly(each), rb.readexactly(each))
        elapsed = time.monotonic() - started
    assert elapsed >= 2 * each / rate - SLACK, elapsed  # up and down pipeline: one direction's worth at least
    assert elapsed <= 4 * each / rate + 1.0, elapsed


async def test_tcp_backpressure_bounds_what_the_relay_holds() -> None:
    size, cap = 600_000, 32 * 1024
    async with (
        asyncio.timeout(15),
        tcp_echo_behind_relay(rate=1_000_000.0, max_buffer=cap) as (relay, _),
        tcp_client(relay.address) as (reader, writer),
    ):
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, relay.queued_bytes)
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        writer.write(bytes(size))
        try:
            assert len(await reader.readexactly(size)) == size
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert relay.stats.pauses > 0
    assert 0 < peak <= 2 * (cap + 256 * 1024), peak  # the cap plus what one read hands over, each way


async def test_tcp_rebind_resets_connections_and_the_client_reconnects() -> None:
    async with asyncio.timeout(10), tcp_echo_behind_relay(delay=0.001) as (relay, echo):
        async with tcp_client(relay.address) as (reader, writer):
            await echo_rtt(reader, writer, b"hello")
            assert relay.active == 1
            before = time.time()
            assert await relay.rebind() == 1
            with pytest.raises(ConnectionResetError):  # a reset, not a clean end
                await reader.read(100)
                writer.write(b"more")
                await writer.drain()
                await reader.read(100)
        async with tcp_client(relay.address) as (reader, writer):  # the client's next connection
            await echo_rtt(reader, writer, b"again")
        await until(lambda: echo.resets == 1)
    assert len(echo.peers) == 2 and echo.peers[0] != echo.peers[1]  # the server saw a new connection
    assert relay.stats.resets == 1 and relay.stats.connections == 2
    assert len(relay.stats.rebinds) == 1 and before <= relay.stats.rebinds[0] <= time.time()


async def test_tcp_periodic_rebind() -> None:
    every = 0.3
    async with asyncio.timeout(10), tcp_echo_behind_relay(rebind_every=every) as (relay, echo):
        started = time.time()
        for _ in range(2):  # each connection is reset within one period, and the next one works
            async with tcp_client(relay.address) as (reader, writer):
                writer.write(b"x")
                with pytest.raises(ConnectionResetError):
                    while await reader.read(100):
                        pass
    times = relay.stats.rebinds
    assert len(times) >= 2 and relay.stats.resets >= 2
    assert started < times[0] <= started + every + 0.1
    assert all(b - a >= every - SLACK for a, b in itertools.pairwise(times))
    assert len(echo.peers) == 2


async def test_tcp_half_close_passes_through() -> None:
    async with (
        asyncio.timeout(10),
        tcp_echo_behind_relay(delay=0.005) as (relay, echo),
        tcp_client(relay.address) as (reader, writer),
    ):
        writer.write(b"request")
        writer.write_eof()  # the client is done sending, and still reads
        assert await reader.read() == b"request"
        await until(lambda: relay.active == 0)
    assert echo.eofs == 1


async def test_tcp_unreachable_target_resets_the_client() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[:2]
    async with asyncio.timeout(10), TcpRelay(dead) as relay, tcp_client(relay.address) as (reader, _):
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
    assert relay.stats.connect_errors == 1 and relay.active == 0


async def test_tcp_close_resets_open_connections_and_frees_the_port() -> None:
    async with asyncio.timeout(10), TcpEcho().serving() as echo:
        relay = TcpRelay(echo.address, delay=0.5)
        await relay.start()
        async with tcp_client(relay.address) as (reader, writer):
            await until(lambda: relay.active == 1)
            writer.write(b"in flight")  # still in the relay when it closes
            await until(lambda: relay.queued_bytes > 0)
            port = relay.port
            await relay.aclose()
            with pytest.raises(ConnectionResetError):
                await reader.read(100)
        assert relay.closed and relay.active == 0 and relay.queued_bytes == 0
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_tcp_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="loss"):
        TcpRelay(("127.0.0.1", 9), loss=2.0)
    with pytest.raises(ValueError, match="link"):
        TcpRelay(("127.0.0.1", 9), link="bus")
    with pytest.raises(ValueError, match="rto"):
        TcpRelay(("127.0.0.1", 9), rto=0.0)
    with pytest.raises(ValueError, match="rate"):
        TcpRelay(("127.0.0.1", 9), rate=-1.0)
    assert TcpRelay(("127.0.0.1", 9), delay=0.5).effective_rto == 2.0


# ------------------------------------------------------------------------------------ both, in a process


async def test_relay_process_end_to_end() -> None:
    imp = Impairment(delay=0.01, rebind=1.0, tls=True)
    async with asyncio.timeout(30), TcpEcho().serving() as tcp_echo, echo_server() as (udp_addr, udp_echo):
        relays = RelayProcess("127.0.0.1", tcp_echo.address[1], udp_addr[1], imp, seed=3, cpus={0})
        await asyncio.to_thread(relays.start)
        try:
            assert relays.pid != os.getpid() and relays.running
            assert os.sched_getaffinity(relays.pid) == {0}
            async with udp_client((relays.host, relays.udp_port)) as client:
                client.send(b"datagram")
                await until(lambda: len(client.received) == 1)
                assert client.received[0][1] == b"datagram"
                async with tcp_client((relays.host, relays.tcp_port)) as (reader, writer):
                    assert await echo_rtt(reader, writer, b"bytes") >= 2 * imp.delay - SLACK  # + the handshakes
                    with pytest.raises(ConnectionResetError):  # the periodic rebind resets TCP ...
                        await reader.read(100)
                client.send(b"after")  # ... and moves the UDP flow
                await until(lambda: len(client.received) == 2)
            assert len(set(udp_echo.sources)) == 2
            stats = await asyncio.to_thread(relays.stats)
            assert stats["tcp"]["connections"] == 1 and stats["tcp"]["bytes_up"] == 5
            assert stats["tcp"]["resets"] == 1 and stats["tcp"]["rebinds"]
            assert stats["tcp"]["handshakes"] == 1  # TCP + TLS (the impairment's tls=True): 2 round trips
            assert stats["tcp"]["handshake_seconds"] == pytest.approx(2 * 2 * imp.delay)
            assert stats["udp"]["datagrams_up"] == 2 and stats["udp"]["bytes_down"] == 13
            assert stats["udp"]["rebinds"]
            assert abs(stats["tcp"]["rebinds"][0] - stats["udp"]["rebinds"][0]) < 0.1  # the same period
        finally:
            final = await asyncio.to_thread(relays.stop)
        assert final["tcp"]["bytes_down"] == 5 and final["udp"]["datagrams_down"] == 2
        assert not relays.running
        assert relays.stop() == final and relays.stats() == final
        with pytest.raises(ProcessLookupError):
            os.kill(relays.pid, 0)


def test_relay_process_failure_surfaces_in_the_parent() -> None:
    relays = RelayProcess("127.0.0.1", 9, 9, Impairment(), cpus={100_000})  # no such CPU
    with pytest.raises(RelayProcessError, match=r"sched_setaffinity|Invalid argument"):
        relays.start()
    assert not relays.running


def test_relay_process_as_a_context_manager_with_stats() -> None:
    with RelayProcess("127.0.0.1", 9, 9, Impairment.parse("loss=1%")) as relays:
        pid = relays.pid
        snap = relays.stats()
        assert snap["tcp"]["connections"] == 0 and snap["udp"]["datagrams_up"] == 0
        assert relays.tcp_port > 0 and relays.udp_port > 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
