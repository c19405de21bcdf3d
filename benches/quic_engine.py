"""The native QUIC engine's own CPU, in one process: a native client engine and a native server engine on
127.0.0.1, pumped by hand (``select`` on both sockets, ``poll_io`` on the ready one), no event loop.

- ``tokens``: ``--sessions`` connections, one WebTransport session and ``--streams-per-session`` streams each. A tick appends one
  token to every stream's registry ring and flushes them all in ONE ``flush`` call (one transmit); until the
  next tick (``--interval``) the client reads and the server reads the acks. Printed: server CPU per token (flush + its ``poll_io``), ``poll_io`` per
  packet on each side, packets per token.
- ``wakeup``: a client datagram in, the server's ``poll_io`` that reads it, a reply ``send_datagram`` and
  ``transmit``: the server's wake-up path (datagram in -> reply bytes out), p50 / p99 over ``--rounds``; then
  the same on uvloop (``add_reader`` on both engines) across ``--sessions`` sessions, also measured from the
  client's send.

Numbers are wall time around the calls (``perf_counter``) on a machine others share: a first look, not a
benchmark of record (BENCHMARKS.md's runs use ``tokenwire loadtest`` against a real server)::

    .venv/bin/python -m benches.quic_engine --sessions 100 --ticks 100
"""

from __future__ import annotations

import argparse
import asyncio
import select
import statistics
import time
from collections.abc import Callable

import uvloop

from tokenwire import _core
from tokenwire._core import QuicEngine
from tokenwire.protocol.webtransport import WT_PATH, connect_headers, server_settings
from tokenwire.server.certs import make_dev_certificate
from tokenwire.server.config import WebTransportLimits

H3_BASE = {0x01: 0, 0x07: 0, 0x08: 1, 0x33: 1}
#: What ``tokenwire serve`` gives its engine by default (``stream_buffer_high``).
STREAM_SEND_WINDOW = WebTransportLimits().stream_buffer_high


class Side:
    """One engine, its events, and the time spent in its calls."""

    def __init__(self, engine: QuicEngine) -> None:
        self.engine = engine
        self.events: list[_core.QuicEvent] = []
        self.poll_s = 0.0
        self.polls = 0

    def poll(self) -> None:
        t0 = time.perf_counter()
        batch = self.engine.poll_io()
        self.poll_s += time.perf_counter() - t0
        self.polls += 1
        self.events += batch

    def packets_in(self) -> int:
        return self.engine.stats()["packets_in"]


def pump(sides: list[Side], done: Callable[[], bool], timeout: float = 10.0, *, until: float | None = None) -> None:
    """``poll_io`` each side whose socket is readable or whose deadline passed, until ``done()`` (or, with
    ``until``, until that ``time.monotonic()``)."""
    deadline = time.monotonic() + timeout if until is None else until
    fds = {s.engine.fileno(): s for s in sides}
    while until is not None or not done():
        now = time.monotonic()
        if now > deadline:
            if until is not None:
                return
            raise TimeoutError("the engines did not get there")
        waits = [t for s in sides if (t := s.engine.next_timeout()) is not None]
        ready, _, _ = select.select(list(fds), [], [], max(0.0, min([deadline - now, *waits])))
        for fd in ready:
            fds[fd].poll()
        for s in sides:
            t = s.engine.next_timeout()
            if t is not None and t <= 0:
                s.poll()


def setup(
    sessions: int,
    per_session: int = 1,
    ack_frequency: tuple[int, float] | None = None,
    stream_send_window: int | None = STREAM_SEND_WINDOW,
) -> tuple[Side, Side, list[tuple[int, int]]]:
    """A server, a client with ``sessions`` connections, each with a session and ``per_session`` WebTransport
    streams the client opened and wrote on: ``(server, client, [(server conn, stream)])``, as the server sees
    them."""
    cert = make_dev_certificate()
    server = Side(
        QuicEngine(
            server=True,
            host="127.0.0.1",
            port=0,
            h3_settings={**H3_BASE, **server_settings(16)},
            cert_chain_pem=cert.cert_pem,
            key_pem=cert.key_pem,
            ack_frequency=ack_frequency,
            stream_send_window=stream_send_window,
        )
    )
    client = Side(
        QuicEngine(
            server=False,
            host="127.0.0.1",
            port=0,
            h3_settings={0x01: 0, 0x07: 0, 0x33: 1, 0x2B603742: 1},
            server_cert_hashes=[cert.sha256],
        )
    )
    port = server.engine.local_address[1]
    conns = [client.engine.connect("127.0.0.1", port, "localhost") for _ in range(sessions)]
    pump([server, client], lambda: sum(e[0] == "connected" for e in client.events) == sessions)
    sessions_of = {}
    for c in conns:
        session = client.engine.open_bidi(c)
        client.engine.send_headers(c, session, connect_headers("localhost", WT_PATH), False)
        sessions_of[c] = session
    client.engine.transmit()
    pump([server, client], lambda: sum(e[0] == "headers" for e in server.events) == sessions)
    for e in server.events:
        if e[0] == "headers":
            server.engine.send_headers(e[1], e[2], [(b":status", b"200")], False)
    server.engine.transmit()
    pump([server, client], lambda: sum(e[0] == "headers" for e in client.events) == sessions)
    for c in conns:
        for _ in range(per_session):
            ws = client.engine.open_wt_stream(c, sessions_of[c])
            client.engine.send_data(c, ws, b"start", False)
    client.engine.transmit()

    def seen() -> list[tuple[int, int]]:
        return list(dict.fromkeys((e[1], e[2]) for e in server.events if e[0] == "wt_stream"))

    pump([server, client], lambda: len(seen()) == sessions * per_session)
    return server, client, seen()


def tokens(
    sessions: int,
    per_session: int,
    ticks: int,
    interval: float,
    ack_frequency: tuple[int, float] | None,
    stream_send_window: int | None,
) -> None:
    server, client, streams = setup(sessions, per_session, ack_frequency, stream_send_window)
    registry = _core.Registry()
    handles = [registry.create(f"s{i}", f"s{i}") for i in range(len(streams))]
    after = dict.fromkeys(handles, 0)
    s_poll0, s_polls0, c_poll0 = server.poll_s, server.polls, client.poll_s
    s_in0, c_in0 = server.packets_in(), client.packets_in()
    s_out0 = server.engine.stats()["packets_out"]
    c_events0 = len(client.events)
    flush_s = 0.0
    for tick in range(ticks):
        for h in handles:
            registry.append(h, f"token {tick} ")
        batch = [(s, ws, h, after[h], b"") for (s, ws), h in zip(streams, handles, strict=True)]
        t0 = time.perf_counter()
        results = server.engine.flush(registry, batch)
        flush_s += time.perf_counter() - t0
        for (_, _, new_after, status), h in zip(results, handles, strict=True):
            assert status == _core.FLUSH_OK, status
            after[h] = new_after
        pump([server, client], lambda: True, until=time.monotonic() + interval)  # tokens out, acks back
    want = ticks * len(streams)
    expected = sum(len(registry.since(h, 0, _core.WIRE_BINARY)) for h in handles)

    def received() -> int:
        return sum(len(e[4]) for e in client.events[c_events0:] if e[0] == "wt_stream")

    pump([server, client], lambda: received() >= expected)
    s_in, c_in = server.packets_in() - s_in0, client.packets_in() - c_in0
    s_out = server.engine.stats()["packets_out"] - s_out0
    server_s = flush_s + server.poll_s - s_poll0
    print(f"tokens: {sessions} sessions x {per_session} streams x {ticks} ticks = {want} tokens, {expected} bytes")
    print(f"  ack frequency asked of the client: {ack_frequency or 'none (its defaults)'}")
    print(f"  server send window per stream: {stream_send_window or 'none (conn_window)'}")
    print(f"  server: flush {flush_s / want * 1e6:.2f} us/token; flush + poll_io {server_s / want * 1e6:.2f} us/token")
    print(f"  server: {s_out} packets out ({s_out / want:.2f}/token), {s_in} in, {server.polls - s_polls0} poll_io")
    if s_in:
        print(f"  server poll_io: {(server.poll_s - s_poll0) / s_in * 1e6:.2f} us/packet in")
    if c_in:
        print(f"  client poll_io: {(client.poll_s - c_poll0) / c_in * 1e6:.2f} us/packet in ({c_in} packets)")
    print(f"  server stats: {server.engine.stats()}")


def wakeup(rounds: int) -> None:
    server, client, _ = setup(1)
    s = next(e[1] for e in server.events if e[0] == "connected")
    c = next(e[1] for e in client.events if e[0] == "connected")
    session = next(e[2] for e in server.events if e[0] == "headers")
    times = []
    for i in range(rounds):
        client.engine.send_datagram(c, session, b"ping %d" % i)
        client.engine.transmit()
        select.select([server.engine.fileno()], [], [], 1.0)
        t0 = time.perf_counter()
        batch = server.engine.poll_io()
        for e in batch:
            if e[0] == "datagram":
                server.engine.send_datagram(s, session, e[3])
        server.engine.transmit()
        times.append(time.perf_counter() - t0)
        pump([server, client], lambda: True)
        select.select([client.engine.fileno()], [], [], 1.0)
        client.poll()
    print(f"wakeup (select, poll_io + echo + transmit), {rounds} rounds: {percentiles(times)}")


def percentiles(times: list[float]) -> str:
    times = sorted(times)
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return f"p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us"


def wakeup_uvloop(sessions: int, rounds: int) -> None:
    """The wake-up path as the server will run it: both engines on uvloop, each watched by ``add_reader``. A
    client datagram on one of ``sessions`` sessions; the server's reader callback runs ``poll_io``, echoes the
    datagram, ``transmit``s. Measured: the callback's start -> the reply on the wire, and the client's
    ``transmit`` -> the reply on the wire (the kernel's loopback and the loop's dispatch included)."""
    server, client, _ = setup(sessions)
    # Each client connection's session: the stream its 200 came back on.
    session_of = {e[1]: e[2] for e in client.events if e[0] == "headers"}
    wake_to_out: list[float] = []
    send_to_out: list[float] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        sent_at = 0.0
        echoed: asyncio.Future[None] | None = None

        def server_wake() -> None:
            t0 = time.perf_counter()
            replied = False
            for e in server.engine.poll_io():
                if e[0] == "datagram":
                    server.engine.send_datagram(e[1], e[2], e[3])
                    replied = True
            server.engine.transmit()
            if replied:
                t1 = time.perf_counter()
                wake_to_out.append(t1 - t0)
                send_to_out.append(t1 - sent_at)

        def client_wake() -> None:
            if any(e[0] == "datagram" for e in client.engine.poll_io()) and echoed is not None and not echoed.done():
                echoed.set_result(None)

        loop.add_reader(server.engine.fileno(), server_wake)
        loop.add_reader(client.engine.fileno(), client_wake)
        try:
            conns = list(session_of)
            for i in range(rounds):
                c = conns[i % len(conns)]
                echoed = loop.create_future()
                client.engine.send_datagram(c, session_of[c], b"ping %d" % i)
                sent_at = time.perf_counter()
                client.engine.transmit()
                await asyncio.wait_for(echoed, 1.0)
        finally:
            loop.remove_reader(server.engine.fileno())
            loop.remove_reader(client.engine.fileno())

    uvloop.run(run())
    print(f"wakeup on uvloop, {sessions} sessions, {rounds} rounds:")
    print(f"  reader callback -> reply on the wire: {percentiles(wake_to_out)}")
    print(f"  client transmit -> reply on the wire: {percentiles(send_to_out)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--streams-per-session", type=int, default=1)
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between ticks (0.05: 20 tokens/s)")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument(
        "--ack-frequency",
        metavar="THRESHOLD,DELAY",
        help="the server asks the client to ACK after more than THRESHOLD packets or DELAY seconds",
    )
    parser.add_argument(
        "--stream-send-window",
        type=int,
        default=STREAM_SEND_WINDOW,
        help="bytes a server stream may leave unacknowledged, as `tokenwire serve` sets it from stream_buffer_high "
        "(0: the engine's connection window)",
    )
    args = parser.parse_args()
    ack = None
    if args.ack_frequency:
        threshold, delay = args.ack_frequency.split(",")
        ack = (int(threshold), float(delay))
    tokens(args.sessions, args.streams_per_session, args.ticks, args.interval, ack, args.stream_send_window or None)
    wakeup(args.rounds)
    wakeup_uvloop(args.sessions, args.rounds)


if __name__ == "__main__":
    main()
