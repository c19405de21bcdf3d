"""Every browser's WebTransport on the server: the exact SETTINGS frame, WebTransport flow control against a
client that turns it on (WT_MAX_DATA credit never exceeded, WT_DATA_BLOCKED, a limit that goes down), the
one-session rule of draft 13 on, CLOSE_WEBTRANSPORT_SESSION, and 0-RTT: no session is established from early
data, and a replayed first flight gets nothing (docs/protocol.md §3.1). Real QUIC over UDP on 127.0.0.1 with
aioquic clients; the webtransport-go interop test (tests/interop) checks the same flow control against an
independent implementation."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

import pytest
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted, QuicEvent, StreamDataReceived, StreamReset

import tokenwire.client.webtransport as client_module
from tests.support.servers import AnyWtServer, wt_client, wt_server
from tokenwire import FakeModel, _core
from tokenwire.client.webtransport import SessionTicketStore, WebTransportClient
from tokenwire.protocol.webtransport import (
    CAPSULE_WT_MAX_DATA,
    SESSION_GONE,
    SETTINGS_WT_INITIAL_MAX_DATA,
    SETTINGS_WT_MAX_SESSIONS,
    WT_FLOW_CONTROL_ERROR,
    StartRequested,
    WtCode,
    connect_headers,
    encode_capsule,
    encode_request,
)
from tokenwire.server import ServerConfig
from tokenwire.server.aioquic_adapter import ServerH3
from tokenwire.server.config import WebTransportLimits
from tokenwire.server.native import NativeWebTransportServer
from tokenwire.server.webtransport import WebTransportServer

pytestmark = pytest.mark.usefixtures("no_leaks", "wt_engine")

_WT_DATA_BLOCKED = 0x190B4D41


# -- the SETTINGS frame ----------------------------------------------------------------------------------


class _Recording(QuicConnection):
    """A QUIC connection that keeps every byte written to each stream."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.written: dict[int, bytes] = collections.defaultdict(bytes)

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.written[stream_id] += data
        super().send_stream_data(stream_id, data, end_stream)


def _varints(data: bytes) -> Iterator[int]:
    """QUIC varints (RFC 9000 §16), decoded here by hand rather than by the code under test."""
    i = 0
    while i < len(data):
        size = 1 << (data[i] >> 6)
        yield int.from_bytes(bytes([data[i] & 0x3F]) + data[i + 1 : i + size], "big")
        i += size


@pytest.mark.aioquic_only  # aioquic's SETTINGS bytes (ServerH3)
def test_the_settings_frame_the_server_writes_byte_for_byte() -> None:
    server = WebTransportServer(None, ServerConfig(webtransport=WebTransportLimits(max_sessions_per_connection=16)))
    quic = _Recording(configuration=server.quic_configuration(), original_destination_connection_id=bytes(8))
    ServerH3(quic, 16)
    (control,) = [data for data in quic.written.values() if data[:1] == b"\x00"]  # the control stream's type
    assert control == bytes.fromhex(
        "00"  # unidirectional stream type: control (RFC 9114 §6.2.1)
        "04 4041"  # frame type SETTINGS, length 65
        "01 5000"  # QPACK_MAX_TABLE_CAPACITY 4096 (aioquic's)
        "07 10"  # QPACK_BLOCKED_STREAMS 16 (aioquic's)
        "08 01"  # ENABLE_CONNECT_PROTOCOL 1 (RFC 9220)
        "21 01"  # a reserved identifier aioquic sends so that peers prove they ignore unknown settings
        "33 01"  # H3_DATAGRAM 1 (RFC 9297)
        "ab603742 01"  # SETTINGS_ENABLE_WEBTRANSPORT 1: drafts 02-06 (Chromium, Firefox)
        "c0000000c671706a 10"  # SETTINGS_WEBTRANSPORT_MAX_SESSIONS 16: drafts 07-12
        "94e9cd29 10"  # SETTINGS_WT_MAX_SESSIONS 16: drafts 13-14 (Safari 26.4)
        "ac7cf000 01"  # SETTINGS_WT_ENABLED 1: draft 15 on
        "6b61 d000000000000000"  # SETTINGS_WT_INITIAL_MAX_DATA 2^60
        "6b64 d000000000000000"  # SETTINGS_WT_INITIAL_MAX_STREAMS_UNI 2^60
        "6b65 d000000000000000"  # SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI 2^60
    )
    stream_type, frame_type, length, *pairs = _varints(control)
    assert (stream_type, frame_type, length) == (0, 4, 65)
    assert dict(zip(pairs[::2], pairs[1::2], strict=True)) == {
        0x01: 4096, 0x07: 16, 0x08: 1, 0x21: 1, 0x33: 1,
        0x2B603742: 1, 0xC671706A: 16, 0x14E9CD29: 16, 0x2C7CF000: 1,
        0x2B61: 1 << 60, 0x2B64: 1 << 60, 0x2B65: 1 << 60,
    }  # fmt: skip


async def test_a_client_receives_every_setting() -> None:
    async with wt_server(limits=WebTransportLimits(max_sessions_per_connection=4)) as server, wt_client(server) as c:
        await c.wait_connected()
        reader = await c.generate("settings", max_tokens=2, tokens_per_s=4000)
        assert len(await reader.text()) > 0
        assert c._conn is not None
        settings = c._conn.h3.received_settings or {}
        assert {k: settings[k] for k in (0x2B603742, 0xC671706A, 0x14E9CD29, 0x2C7CF000)} == {
            0x2B603742: 1, 0xC671706A: 4, 0x14E9CD29: 4, 0x2C7CF000: 1
        }  # fmt: skip
        assert [settings[k] for k in (0x2B61, 0x2B64, 0x2B65)] == [1 << 60] * 3
        # aioquic's client declares no flow control: it is off, QUIC's alone applies.
        (conn,) = server.connections
        assert [s.credit for s in conn.sessions.values()] == [None]


# -- flow control, with a client that turns it on --------------------------------------------------------


def _declaring_h3(extra: dict[int, int]) -> type[H3Connection]:
    class DeclaringH3(H3Connection):
        """aioquic's HTTP/3 with these SETTINGS added (a client of a newer draft, as Safari's or
        webtransport-go's with a Config)."""

        def _get_local_settings(self) -> dict[int, int]:
            return {**super()._get_local_settings(), **extra}

    return DeclaringH3


class _Observed:
    """What the client's QUIC layer receives: bytes per stream, resets, and the session's capsules."""

    def __init__(self) -> None:
        self.bytes: dict[int, int] = collections.defaultdict(int)
        self.resets: dict[int, int] = {}
        self.capsules: list[tuple[int, bytes]] = []


@contextlib.asynccontextmanager
async def _client_declaring(
    monkeypatch: pytest.MonkeyPatch, server: WebTransportServer, settings: dict[int, int]
) -> AsyncIterator[tuple[WebTransportClient, _Observed]]:
    """A WebTransport client whose SETTINGS carry ``settings``, and what its connection receives."""
    monkeypatch.setattr(client_module, "H3Connection", _declaring_h3(settings))
    seen = _Observed()
    raw_capsules: list[bytes] = []
    original = client_module._Connection.quic_event_received

    def observe(conn: Any, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            seen.bytes[event.stream_id] += len(event.data)
            if event.stream_id == conn.session_id:
                raw_capsules.append(event.data)
        elif isinstance(event, StreamReset):
            seen.resets[event.stream_id] = event.error_code
        original(conn, event)

    monkeypatch.setattr(client_module._Connection, "quic_event_received", observe)
    async with wt_client(server) as client:
        yield client, seen
    seen.capsules = _capsules_of(b"".join(raw_capsules))


def _capsules_of(connect_stream: bytes) -> list[tuple[int, bytes]]:
    """The capsules in the server's side of a CONNECT stream: HEADERS, then DATA frames that carry them."""
    out: list[tuple[int, bytes]] = []
    payload = b""
    i = 0
    while i < len(connect_stream):
        frame_type, used = _core.decode_varint(connect_stream[i:]) or (0, 0)
        length, used_length = _core.decode_varint(connect_stream[i + used :]) or (0, 0)
        start = i + used + used_length
        if frame_type == 0x00:  # DATA
            payload += connect_stream[start : start + length]
        i = start + length
    j = 0
    while j < len(payload):
        capsule_type, used = _core.decode_varint(payload[j:]) or (0, 0)
        length, used_length = _core.decode_varint(payload[j + used :]) or (0, 0)
        start = j + used + used_length
        out.append((capsule_type, payload[start : start + length]))
        j = start + length
    return out


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - state polled under a deadline
            await asyncio.sleep(0.01)


def _grant(client: WebTransportClient, limit: int) -> None:
    """Send a WT_MAX_DATA capsule on the client's CONNECT stream."""
    conn = client._conn
    assert conn is not None
    conn.h3.send_data(conn.session_id, encode_capsule(CAPSULE_WT_MAX_DATA, _core.encode_varint(limit)), False)
    conn.transmit()


async def test_the_server_never_sends_past_the_clients_wt_max_data(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FakeModel(seed=5)
    limit = 300
    async with wt_server(model=model) as server:
        async with _client_declaring(monkeypatch, server, {SETTINGS_WT_INITIAL_MAX_DATA: limit}) as (client, seen):
            reader = await client.generate("credit", max_tokens=150, tokens_per_s=0)
            assert reader._stream is not None
            qid = reader._stream.qid
            await _until(lambda: seen.bytes[qid] == limit)  # the reply and the first frames, exactly the credit
            (conn,) = server.connections
            (session,) = conn.sessions.values()
            assert session.credit is not None and session.credit.sent == limit
            assert server.metrics.credit_waits_total == 1
            await asyncio.sleep(0.2)
            assert seen.bytes[qid] == limit  # nothing more without credit
            assert server.hub.get(reader.stream_id).last_seq > 10  # the generation goes on: the ring holds it

            _grant(client, 700)
            await _until(lambda: seen.bytes[qid] == 700)
            await asyncio.sleep(0.1)
            assert seen.bytes[qid] == 700
            _grant(client, 1 << 40)
            assert await reader.text() == "".join(model.tokens("credit", 150))
        # The server said where it blocked, once per limit: WT_DATA_BLOCKED 300, then 700.
        blocked = [_core.decode_varint(v) for t, v in seen.capsules if t == _WT_DATA_BLOCKED]
        assert blocked == [(300, 2), (700, 2)]
        assert reader.reconnects == 0 and model.calls == 1 and server.metrics.credit_waits_total == 2
        assert session.credit.sent == seen.bytes[qid] < 1 << 40


async def test_a_limit_that_goes_down_closes_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        wt_server() as server,
        _client_declaring(monkeypatch, server, {SETTINGS_WT_INITIAL_MAX_DATA: 100}) as (client, seen),
    ):
        reader = await client.generate("down", max_tokens=50, tokens_per_s=0)
        assert reader._stream is not None and client._conn is not None
        session_id, qid = client._conn.session_id, reader._stream.qid
        _grant(client, 99)
        await _until(lambda: session_id in seen.resets and qid in seen.resets)
        assert seen.resets[session_id] == WT_FLOW_CONTROL_ERROR
        assert seen.resets[qid] == SESSION_GONE
        await _until(lambda: not any(c.sessions for c in server.connections))


async def test_flow_control_capsules_are_ignored_when_it_is_off() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server) as client:
        reader = await client.generate("off", max_tokens=30, tokens_per_s=0)
        _grant(client, 1)  # flow control is off (this client declared none): no effect, no error
        assert await reader.text() == "".join(model.tokens("off", 30))
        assert server.metrics.credit_waits_total == 0 and server.metrics.sessions_total == 1


@pytest.mark.parametrize(("declared", "rejected"), [(1, True), (4, False)])
async def test_a_draft14_client_without_flow_control_gets_one_session_per_connection(
    monkeypatch: pytest.MonkeyPatch, declared: int, rejected: bool
) -> None:
    """Draft 14 §5.1: without flow control a second session on the connection is rejected (H3_REQUEST_REJECTED);
    with it (several sessions declared), a second one is accepted."""
    async with (
        wt_server() as server,
        _client_declaring(monkeypatch, server, {SETTINGS_WT_MAX_SESSIONS: declared}) as (client, seen),
    ):
        await client.wait_connected()
        conn = client._conn
        assert conn is not None
        await _until(lambda: server.metrics.sessions_total == 1)
        second = conn._quic.get_next_available_stream_id()
        conn.h3.send_headers(second, connect_headers(client.authority))
        conn.transmit()
        await _until(lambda: server.metrics.sessions_total + server.metrics.sessions_refused_total == 2)
        if rejected:
            await _until(lambda: second in seen.resets)
            assert seen.resets[second] == ErrorCode.H3_REQUEST_REJECTED
        assert server.metrics.sessions_refused_total == int(rejected)


async def test_close_webtransport_session_capsule_ends_the_session_not_the_generation() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server) as client:
        reader = await client.generate("close", max_tokens=400, tokens_per_s=200)
        await anext(aiter(reader))
        conn = client._conn
        assert conn is not None
        conn.h3.send_data(conn.session_id, encode_capsule(0x2843, b"\x00\x00\x00\x00"), False)
        conn.transmit()
        await _until(lambda: not any(c.sessions for c in server.connections))
        stream = server.hub.get(reader.stream_id)
        assert stream.is_open  # a closed session only detaches its readers
        stream.finish()


# -- 0-RTT: no session from early data -------------------------------------------------------------------


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


async def _ticket_for(server: AnyWtServer) -> Any:
    """A session ticket of ``server`` (single use), from a client that connected once."""
    tickets = SessionTicketStore()
    async with wt_client(server, tickets=tickets) as first:
        await first.wait_connected()
        await _until(lambda: len(tickets) > 0)  # the ticket comes after the handshake
    return tickets.take("127.0.0.1")


class _EarlyClient:
    """A hand-driven aioquic client that resumes a connection with ``ticket``: what it queues before its first
    :meth:`send` leaves in 0-RTT, and it answers the server's flight only when told (:meth:`run_until`)."""

    def __init__(self, server: AnyWtServer, ticket: Any, settings: dict[int, int] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.addr = ("127.0.0.1", server.port)
        config = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536, server_name="127.0.0.1"
        )
        config.verify_mode = ssl.CERT_NONE
        config.session_ticket = ticket
        self.quic = QuicConnection(configuration=config)
        self.quic.connect(self.addr, now=self.loop.time())
        self.h3 = _declaring_h3(settings or {})(self.quic, enable_webtransport=True)
        self.session_id = self.quic.get_next_available_stream_id()
        self.h3.send_headers(self.session_id, connect_headers(f"127.0.0.1:{server.port}"))
        #: What arrived: HEADERS and DATA of the H3 layer, the bytes and end of raw streams, resets.
        self.h3_events: list[Any] = []
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._sock = _Datagrams()

    async def __aenter__(self) -> Self:
        self._transport, _ = await self.loop.create_datagram_endpoint(lambda: self._sock, remote_addr=self.addr)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._transport is not None
        self._transport.close()

    def request(self, message: bytes, end: bool = True) -> int:
        """A request stream of the session carrying ``message``; its stream id."""
        qid = self.h3.create_webtransport_stream(self.session_id)
        self.quic.send_stream_data(qid, message, end_stream=end)
        self.data[qid] = b""
        return qid

    def send(self) -> None:
        assert self._transport is not None
        for data, _ in self.quic.datagrams_to_send(now=self.loop.time()):
            self._transport.sendto(data)

    def _receive(self, data: bytes) -> list[QuicEvent]:
        self.quic.receive_datagram(data, self.addr, now=self.loop.time())
        events = []
        while (event := self.quic.next_event()) is not None:
            events.append(event)
            if isinstance(event, StreamDataReceived) and event.stream_id in self.data:
                # A request stream: its bytes are replies and frames, not HTTP/3 frames (aioquic's client H3
                # layer does not know the bidirectional WebTransport streams it opened).
                self.data[event.stream_id] += event.data
                if event.end_stream:
                    self.ended.add(event.stream_id)
                continue
            if isinstance(event, StreamReset):
                self.resets[event.stream_id] = event.error_code
            self.h3_events.extend(
                e for e in self.h3.handle_event(event) if isinstance(e, HeadersReceived | DataReceived)
            )
        return events

    async def read_flight(self, seconds: float = 0.5) -> list[QuicEvent]:
        """Everything the server sends within ``seconds``, without answering (no Finished, no ACK)."""
        events: list[QuicEvent] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    events += self._receive(await self._sock.queue.get())
        return events

    async def run_until(self, predicate: Any) -> None:
        """Complete the handshake and go on exchanging packets (and running QUIC's timers) until ``predicate()``."""
        async with asyncio.timeout(10):
            while not predicate():
                timer = self.quic.get_timer()
                if timer is not None and timer <= self.loop.time():
                    self.quic.handle_timer(now=self.loop.time())
                self.send()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        self._receive(await self._sock.queue.get())

    def status(self) -> bytes | None:
        """The server's answer to the CONNECT (``None``: none yet)."""
        for e in self.h3_events:
            if isinstance(e, HeadersReceived) and e.stream_id == self.session_id:
                return dict(e.headers)[b":status"]
        return None


async def test_a_connect_in_early_data_is_answered_only_after_the_handshake() -> None:
    """A hand-driven aioquic client sends its CONNECT and a start request in 0-RTT, then reads everything the
    server sends before the client's own Finished (its handshake flight and any 0.5-RTT data): the server took
    the early data but neither answered the CONNECT nor started the model. That is all a replayed first flight
    can ever get, since a replay cannot complete the handshake. Once the client completes it, the session is
    established and the generation runs, once."""
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server:
        ticket = await _ticket_for(server)
        assert ticket is not None and ticket.max_early_data_size
        sessions_before = server.metrics.sessions_total  # the session of the client that got the ticket
        async with _EarlyClient(server, ticket) as client:
            qid = client.request(encode_request(StartRequested("early", 5, {"tokens_per_s": 0})))
            client.send()  # Initial and 0-RTT: one flight
            await _until(lambda: any(c.held_connects for c in server.connections))
            (conn,) = [c for c in server.connections if c.held_connects]
            assert conn.held_connects[0].early and not conn.handshake_done  # the CONNECT came in 0-RTT

            # Read the server's flight without answering it.
            events = await client.read_flight()
            completed = [e for e in events if isinstance(e, HandshakeCompleted)]
            assert completed and completed[0].early_data_accepted  # the server took the 0-RTT data...
            assert client.status() is None
            assert client.data[qid] == b""  # ... and answered neither the CONNECT nor the request
            assert server.metrics.sessions_total == sessions_before and model.calls == 0
            assert not conn.handshake_done and conn.held_connects

            # The client's Finished: the handshake completes, the session is established, the model runs.
            await client.run_until(lambda: qid in client.ended)
        assert client.status() == b"200"
        reply = client.data[qid]
        assert reply[:1] == b"\x21" and model.calls == 1  # the stream reply, then the frames; one generation
        m = server.metrics
        assert (m.sessions_total - sessions_before, m.early_sessions_total, m.deferred_starts_total) == (1, 1, 1)


def _quic_connections(server: AnyWtServer) -> int:
    """Connections the server's QUIC layer still knows (closing ones too: they still take their packets)."""
    if isinstance(server, NativeWebTransportServer):
        return int(server.engine.stats()["connections"])
    return len(server.connections)  # aioquic's: a connection leaves once its draining period is over


async def test_a_replayed_first_flight_gets_no_session_and_no_generation() -> None:
    """An attacker who recorded a client's first flight (Initial + 0-RTT: a CONNECT and a start) sends it again
    once that connection is gone. The ticket was single use: the server no longer has that session, so it
    does a full handshake and cannot read the 0-RTT packets at all. The replay gets the server's handshake
    flight and nothing more: no session held or established, the model runs once (the original's)."""
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server:
        ticket = await _ticket_for(server)
        await _until(lambda: _quic_connections(server) == 0)
        async with _EarlyClient(server, ticket) as client:
            qid = client.request(encode_request(StartRequested("once", 5, {"tokens_per_s": 0})))
            flight = [data for data, _ in client.quic.datagrams_to_send(now=client.loop.time())]
            assert client._transport is not None
            for data in flight:
                client._transport.sendto(data)
            await client.run_until(lambda: qid in client.ended)
            client.quic.close()
            client.send()
        assert model.calls == 1 and server.metrics.early_sessions_total == 1
        sessions = server.metrics.sessions_total
        await _until(lambda: _quic_connections(server) == 0)

        replay = _Datagrams()
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: replay, remote_addr=("127.0.0.1", server.port)
        )
        try:
            for data in flight:
                transport.sendto(data)
            await _until(lambda: not replay.queue.empty())  # the server's handshake flight: the replay was read
            await asyncio.sleep(0.3)  # and whatever else it would send
        finally:
            transport.close()
        assert _quic_connections(server) == 1
        assert not any(c.held_connects or c.sessions or c.handshake_done for c in server.connections)
        assert server.metrics.sessions_total == sessions and server.metrics.early_sessions_total == 1
        assert model.calls == 1 and server.metrics.streams_started_total == 1


@pytest.mark.parametrize("how", ["fin", "close-capsule", "reset"])
async def test_a_session_the_client_closed_before_its_connect_was_answered_serves_nothing(how: str) -> None:
    """In 0-RTT the client opens a session and a start request, then closes the session again (the end of its
    CONNECT stream, a CLOSE_WEBTRANSPORT_SESSION capsule, or a reset) before the handshake has completed, so
    while the server still holds the CONNECT. Once the handshake completes, the server keeps no session for it
    and serves none of its requests: the request stream is reset (WEBTRANSPORT_SESSION_GONE), no model runs."""
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server:
        ticket = await _ticket_for(server)
        await _until(lambda: server.session_count == 0)  # the ticket's own session is over
        async with _EarlyClient(server, ticket) as client:
            qid = client.request(encode_request(StartRequested("closed", 5, {"tokens_per_s": 0})))
            client.send()
            await _until(lambda: any(c.held_connects for c in server.connections))
            if how == "reset":
                client.quic.reset_stream(client.session_id, ErrorCode.H3_REQUEST_CANCELLED)
            else:
                close = encode_capsule(0x2843, b"\x00\x00\x00\x00") if how == "close-capsule" else b""
                client.h3.send_data(client.session_id, close, end_stream=True)
            client.send()  # still 0-RTT: the client has not read the server's flight
            await client.run_until(lambda: qid in client.resets or qid in client.ended)
            await _until(lambda: all(c.handshake_done and not c.held_connects for c in server.connections))
        assert client.resets.get(qid) == SESSION_GONE and client.data[qid] == b""
        assert not any(c.sessions for c in server.connections) and server.session_count == 0
        assert model.calls == 0 and server.metrics.streams_started_total == 0


async def test_credit_granted_before_the_connect_was_answered_counts() -> None:
    """A client that turns flow control on (initial limit 1 byte) and raises its limit with WT_MAX_DATA in 0-RTT,
    while the server still holds its CONNECT: the capsule is applied when the session is established, so the
    whole answer comes without the server ever blocking."""
    model = FakeModel(seed=5)
    async with wt_server(model=model, stall_timeout=1.0) as server:
        ticket = await _ticket_for(server)
        async with _EarlyClient(server, ticket, {SETTINGS_WT_INITIAL_MAX_DATA: 1}) as client:
            qid = client.request(encode_request(StartRequested("credit early", 20, {"tokens_per_s": 0})))
            grant = encode_capsule(CAPSULE_WT_MAX_DATA, _core.encode_varint(1 << 20))
            client.h3.send_data(client.session_id, grant, end_stream=False)
            client.send()
            await _until(lambda: any(c.held_connects for c in server.connections))
            await client.run_until(lambda: qid in client.resets or qid in client.ended)
        assert qid in client.ended and qid not in client.resets
        assert client.data[qid][:1] == b"\x21" and server.metrics.credit_waits_total == 0


async def test_early_request_streams_are_held_by_stream_not_by_packet() -> None:
    """In 0-RTT the client opens 12 request streams (fewer than the 16 a session may have held) whose requests
    are split across the packets of its first flight: every one is served once the session is established."""
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server:
        ticket = await _ticket_for(server)
        assert server.config.webtransport.max_early_streams == 16
        async with _EarlyClient(server, ticket) as client:
            prompts = [f"{i:02d}" + "p" * 600 for i in range(12)]
            qids = [client.request(encode_request(StartRequested(p, 2, {"tokens_per_s": 0}))) for p in prompts]
            client.send()
            await _until(lambda: any(c.held_connects for c in server.connections))
            await client.run_until(lambda: all(q in client.resets or q in client.ended for q in qids))
        assert {q: client.resets[q] for q in qids if q in client.resets} == {}
        assert all(client.data[q][:1] == b"\x21" for q in qids)
        assert model.calls == 12 and server.metrics.deferred_starts_total == 12


@pytest.mark.parametrize("case", ["too-large", "bytes-after"])
async def test_an_early_stream_over_the_request_limit_is_answered_as_any_other(case: str) -> None:
    """A held stream keeps no more than the request limit (plus a message head and a byte): what it answers is
    unchanged, a 413 error reply for a request over the limit, a 400 one for bytes after a request."""
    limits = WebTransportLimits(max_request_bytes=200)
    model = FakeModel(seed=5)
    async with wt_server(model=model, limits=limits) as server:
        ticket = await _ticket_for(server)
        async with _EarlyClient(server, ticket) as client:
            start = encode_request(StartRequested("x" * (400 if case == "too-large" else 10), 2, {}))
            qid = client.request(start if case == "too-large" else start + b"\x11" * 2000)
            client.send()
            await _until(lambda: any(c.held_connects for c in server.connections))
            await client.run_until(lambda: qid in client.resets or qid in client.ended)
        reply = client.data[qid]
        assert qid in client.ended and reply[:1] == b"\x23"  # an error reply, then FIN
        error = json.loads(reply[reply.index(b"{") :])
        if case == "too-large":
            assert (error["type"], error["status"], error["code"]) == ("RequestTooLarge", 413, WtCode.TOO_LARGE)
        else:
            assert (error["type"], error["status"], error["code"]) == ("FrameError", 400, WtCode.BAD_REQUEST)
            assert "bytes followed it" in error["message"]
        assert model.calls == 0
