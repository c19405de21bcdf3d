"""The native QUIC engine (``tokenwire._core.QuicEngine``) driven from the event loop as the server will drive
it: a reader on its UDP socket and one timer at its next deadline, each wake-up one ``poll_io()`` call.

Interop both ways: the native server against aioquic's HTTP/3 client (extended CONNECT, a WebTransport stream
each way, datagrams, frames flushed straight from a ``Registry``), and the native client against tokenwire's
aioquic ``WebTransportServer`` (a session and a start request)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DatagramReceived, H3Event, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

from tests.support.native_engine import CLIENT_SETTINGS, Driven, native_server, wait_in
from tests.support.servers import wt_server
from tests.support.udp_relay import UdpRelay
from tokenwire import _core
from tokenwire._core import QuicEngine
from tokenwire.errors import LocalProtocolError, StreamClosed
from tokenwire.protocol.webtransport import (
    REPLY_KINDS,
    REPLY_STREAM,
    WT_PATH,
    MessageReader,
    StartRequested,
    connect_headers,
    encode_request,
)
from tokenwire.server.certs import Certificate, make_dev_certificate

pytestmark = pytest.mark.usefixtures("no_leaks")


class H3Client(QuicConnectionProtocol):
    """aioquic's HTTP/3 client with WebTransport on; every HTTP/3 event kept. The server's bytes on a WebTransport
    stream this client opened are kept as ``WebTransportStreamDataReceived`` events made here: aioquic's H3
    layer would parse them as HTTP/3 frames (tokenwire's aioquic client bypasses it the same way)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.events: list[H3Event] = []
        self.terminated: ConnectionTerminated | None = None
        self.changed = asyncio.Event()
        self.own_wt: dict[int, int] = {}  # stream -> session

    def open_wt(self, session: int, data: bytes, end: bool) -> int:
        stream = self.h3.create_webtransport_stream(session)
        self.own_wt[stream] = session
        self._quic.send_stream_data(stream, data, end_stream=end)
        self.transmit()
        return stream

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
        if isinstance(event, StreamDataReceived) and event.stream_id in self.own_wt:
            self.events.append(
                WebTransportStreamDataReceived(
                    data=event.data,
                    stream_id=event.stream_id,
                    stream_ended=event.end_stream,
                    session_id=self.own_wt[event.stream_id],
                )
            )
        else:
            self.events += self.h3.handle_event(event)
        self.changed.set()

    async def wait_for(self, what: str, found: Callable[[H3Event], bool]) -> H3Event:
        return await wait_in(self.events, self.changed, what, found)

    def wt_bytes(self, stream_id: int) -> tuple[bytes, bool]:
        data, fin = b"", False
        for e in self.events:
            if isinstance(e, WebTransportStreamDataReceived) and e.stream_id == stream_id:
                data += e.data
                fin = fin or e.stream_ended
        return data, fin


@pytest.fixture(scope="module")
def certificate() -> Certificate:
    return make_dev_certificate()


@contextlib.asynccontextmanager
async def aioquic_client(port: int) -> AsyncIterator[H3Client]:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536)
    configuration.verify_mode = ssl.CERT_NONE  # a self-signed test certificate
    async with connect("127.0.0.1", port, configuration=configuration, create_protocol=H3Client) as client:
        assert isinstance(client, H3Client)
        yield client


async def open_session(server: Driven, client: H3Client) -> tuple[int, int]:
    """An extended CONNECT from the aioquic client, answered 200 by the native server: (server conn, session)."""
    session = client._quic.get_next_available_stream_id()
    client.h3.send_headers(session, connect_headers("localhost", WT_PATH))
    client.transmit()
    event = await server.wait_for("the CONNECT", lambda e: e[0] == "headers" and e[2] == session)
    assert event[0] == "headers"
    _, conn, _, headers, fin = event
    assert (b":protocol", b"webtransport") in headers and (b":path", WT_PATH.encode()) in headers
    assert not fin
    server.engine.send_headers(conn, session, [(b":status", b"200")], False)
    server.sent()
    response = await client.wait_for("the response", lambda e: isinstance(e, HeadersReceived))
    assert isinstance(response, HeadersReceived) and response.stream_id == session
    assert response.headers == [(b":status", b"200")]
    return conn, session


async def test_native_server_with_aioquic_client(certificate: Certificate) -> None:
    async with native_server(certificate) as server, aioquic_client(server.engine.local_address[1]) as client:
        connected = await server.wait_for("the connection", lambda e: e[0] == "connected")
        await server.wait_for("the handshake", lambda e: e[0] == "handshake")
        settings = await server.wait_for("the client's SETTINGS", lambda e: e[0] == "settings")
        assert settings[0] == "settings" and settings[2].get(0x33) == 1  # aioquic's H3_DATAGRAM
        conn, session = await open_session(server, client)
        assert connected[1] == conn
        assert client.h3.received_settings is not None
        assert client.h3.received_settings.get(0x2B603742) == 1  # the server's SETTINGS reached aioquic

        # A WebTransport stream from the client: its bytes arrive as wt_stream events of the session...
        ws = client.open_wt(session, b"ping " * 1000, end=True)
        assert await server.wt_until_fin(ws) == b"ping " * 1000
        assert all(e[3] == session for e in server.events if e[0] == "wt_stream")
        # ...and the server's reply reaches the client raw, with FIN.
        assert server.engine.send_data(conn, ws, b"pong", True) == 4
        server.sent()
        await client.wait_for("the reply", lambda e: isinstance(e, WebTransportStreamDataReceived) and e.stream_ended)
        assert client.wt_bytes(ws) == (b"pong", True)

        # A datagram each way.
        client.h3.send_datagram(session, b"dgram up")
        client.transmit()
        assert await server.wait_for("the datagram", lambda e: e[0] == "datagram") == (
            "datagram",
            conn,
            session,
            b"dgram up",
        )
        assert server.engine.send_datagram(conn, session, b"dgram down")
        server.sent()
        got = await client.wait_for("the datagram", lambda e: isinstance(e, DatagramReceived))
        assert isinstance(got, DatagramReceived) and (got.stream_id, got.data) == (session, b"dgram down")

        stats = server.engine.stats()
        assert stats["connections"] == 1 and stats["packets_in"] > 0 and stats["packets_out"] > 0
        assert stats["recv_buffer"] > 0 and stats["send_buffer"] > 0 and stats["gso_segments"] >= 1
        assert server.wakeups > 0

        # The server closes: aioquic hears the code and reason; the engine reports the connection closed.
        server.engine.close(conn, 0x100, b"bye")
        server.sent()
        await server.wait_for("closed", lambda e: e[0] == "closed")
        await client.wait_for("the close", lambda _: client.terminated is not None)
        assert client.terminated is not None
        assert (client.terminated.error_code, client.terminated.reason_phrase) == (0x100, "bye")


async def test_flush_from_registry_to_aioquic(certificate: Certificate) -> None:
    async with native_server(certificate) as server, aioquic_client(server.engine.local_address[1]) as client:
        conn, session = await open_session(server, client)
        ws = client.open_wt(session, b"start", end=False)
        await server.wait_for("the request", lambda e: e[0] == "wt_stream" and e[2] == ws)

        registry = _core.Registry()
        handle = registry.create("k", "s1")
        registry.append_many(handle, ["Hello", ", ", "wörld"])
        assert server.engine.flush(registry, [(conn, ws, handle, 0, b"PREFIX")]) == [(conn, ws, 3, _core.FLUSH_OK)]
        # Nothing new: OK, the position kept.
        assert server.engine.flush(registry, [(conn, ws, handle, 3, b"")]) == [(conn, ws, 3, _core.FLUSH_OK)]
        registry.append(handle, "!")
        registry.end(handle, _core.FRAME_DONE, '{"reason":"stop"}', _core.STATE_FINISHED, 0.0)
        assert server.engine.flush(registry, [(conn, ws, handle, 3, b"")]) == [(conn, ws, 5, _core.FLUSH_ENDED)]
        await client.wait_for("the FIN", lambda e: isinstance(e, WebTransportStreamDataReceived) and e.stream_ended)
        expected = b"PREFIX" + registry.since(handle, 0, _core.WIRE_BINARY)
        assert client.wt_bytes(ws) == (expected, True)
        decoded = _core.FrameDecoder().feed(expected[len(b"PREFIX") :])
        assert [(kind, seq) for kind, seq, _ in decoded] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 5)]
        assert [text for _, _, text in decoded[:4]] == ["Hello", ", ", "wörld", "!"]

        # The statuses: the stream is finished now; a handle that never was; frames the ring no longer holds.
        small = _core.Registry(max_frames_per_stream=2)
        short = small.create("short", "s2")
        small.append_many(short, ["a", "b", "c", "d"])
        ws2 = client.open_wt(session, b"start", end=False)
        await server.wait_for("the second request", lambda e: e[0] == "wt_stream" and e[2] == ws2)
        assert server.engine.flush(small, [(conn, ws, short, 0, b""), (conn, ws2, short + 99, 0, b"")]) == [
            (conn, ws, 0, _core.FLUSH_STREAM_CLOSED),
            (conn, ws2, 0, _core.FLUSH_GONE),
        ]
        assert server.engine.flush(small, [(conn, ws2, short, 0, b"")]) == [(conn, ws2, 0, _core.FLUSH_EXPIRED)]
        assert server.engine.flush(small, [(conn, ws2, short, 2, b"")]) == [(conn, ws2, 4, _core.FLUSH_OK)]
        assert server.engine.flush(small, [(999, ws2, short, 4, b"")]) == [(999, ws2, 4, _core.FLUSH_STREAM_CLOSED)]


async def test_native_server_through_a_lossy_relay_and_an_address_change(certificate: Certificate) -> None:
    """Loss, delay, reordering and duplicates between aioquic's client and the native server, and a NAT rebinding
    halfway: the server follows the client to its new address, and every frame flushed from the registry arrives
    once, in order, byte-exact."""
    async with native_server(certificate) as server:
        knobs: dict[str, Any] = {"loss": 0.03, "delay": 0.003, "jitter": 0.002, "reorder": 0.05, "duplicate": 0.02}
        async with (
            UdpRelay(("127.0.0.1", server.engine.local_address[1]), seed=11, **knobs) as relay,
            aioquic_client(relay.port) as client,
        ):
            conn, session = await open_session(server, client)
            ws = client.open_wt(session, b"start", end=False)
            await server.wait_for("the request", lambda e: e[0] == "wt_stream" and e[2] == ws)
            registry = _core.Registry()
            handle = registry.create("k", "s1")
            after, rounds = 0, 40
            for i in range(rounds):
                registry.append_many(handle, [f"token {i}.{j} " * 8 for j in range(20)])
                if i == rounds - 1:
                    registry.end(handle, _core.FRAME_DONE, '{"reason":"stop"}', _core.STATE_FINISHED, 0.0)
                ((_, _, after, status),) = server.engine.flush(registry, [(conn, ws, handle, after, b"")])
                assert status in (_core.FLUSH_OK, _core.FLUSH_ENDED)
                server.arm()
                if i == rounds // 2:
                    relay.change_address()  # the client's address, as the server sees it, changes
                    # What the server sends now goes to the old mapping: only a packet from the client tells it
                    # the new one (a client's keepalive does; tokenwire's client sends one).
                    client._quic.send_ping(1)
                    client.transmit()
                await asyncio.sleep(0.01)
            assert status == _core.FLUSH_ENDED
            await client.wait_for("the FIN", lambda e: isinstance(e, WebTransportStreamDataReceived) and e.stream_ended)
            assert client.wt_bytes(ws) == (registry.since(handle, 0, _core.WIRE_BINARY), True)
            # Half the frames went out after the old mapping's socket was closed: the server followed the client.
            assert not any(e[0] == "closed" for e in server.events)
            assert relay.stats.rebinds and relay.up.dropped > 0 and relay.down.dropped > 0
            assert server.engine.stats()["lost_packets"] > 0


async def test_native_client_with_aioquic_server() -> None:
    async with wt_server() as server:
        engine = QuicEngine(
            server=False,
            host="127.0.0.1",
            port=0,
            h3_settings=CLIENT_SETTINGS,
            server_cert_hashes=[server.certificate.sha256],
        )
        client = Driven(engine)
        try:
            conn = engine.connect("127.0.0.1", server.port, "localhost")
            client.arm()
            await client.wait_for("the handshake", lambda e: e[0] == "connected")
            session = engine.open_bidi(conn)
            engine.send_headers(conn, session, connect_headers(f"127.0.0.1:{server.port}", WT_PATH), False)
            client.sent()
            response = await client.wait_for("the response", lambda e: e[0] == "headers" and e[2] == session)
            assert response[0] == "headers" and (b":status", b"200") in response[3]

            async def generate(prompt: str) -> list[tuple[int, int, str]]:
                ws = engine.open_wt_stream(conn, session)
                request = encode_request(StartRequested(prompt, max_tokens=5))
                assert engine.send_data(conn, ws, request, True) == len(request)
                client.sent()
                reply = await client.wt_until_fin(ws)
                reader = MessageReader(REPLY_KINDS)
                message = reader.feed(reply)
                assert message is not None and message.kind == REPLY_STREAM
                return _core.FrameDecoder().feed(reader.rest)

            frames = await generate("hello")
            assert [kind for kind, _, _ in frames] == [1] * 5 + [2]
            assert [seq for _, seq, _ in frames] == list(range(1, 7))
            # The client moves to a new socket (migration): the same connection goes on from the new port.
            old_port = engine.local_address[1]
            client.rebind()
            assert engine.local_address[1] != old_port
            frames = await generate("after the move")
            assert [kind for kind, _, _ in frames] == [1] * 5 + [2]
            assert server.metrics.connections_total == 1
            engine.close(conn, 0x100, b"done")
            client.sent()
            await client.wait_for("closed", lambda e: e[0] == "closed")
        finally:
            client.close()


def test_bad_setups_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="cert_chain_pem"):
        QuicEngine(server=True, host="127.0.0.1", port=0, h3_settings={})
    with pytest.raises(LocalProtocolError, match="server_cert_hashes or ca_pem"):
        QuicEngine(server=False, host="127.0.0.1", port=0, h3_settings={})
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        QuicEngine(server=False, host="127.0.0.1", port=0, h3_settings={}, server_cert_hashes=[b"short"])
    with pytest.raises(LocalProtocolError, match="certificate"):
        QuicEngine(server=True, host="127.0.0.1", port=0, h3_settings={}, cert_chain_pem=b"junk", key_pem=b"junk")
    with pytest.raises(ValueError, match="idle_timeout must be seconds"):
        QuicEngine(
            server=False, host="127.0.0.1", port=0, h3_settings={}, server_cert_hashes=[b"\0" * 32], idle_timeout=-1
        )
    with pytest.raises(LocalProtocolError, match="endpoint_key must be a secret of at least 16 bytes"):
        QuicEngine(
            server=False, host="127.0.0.1", port=0, h3_settings={}, server_cert_hashes=[b"\0" * 32], endpoint_key=b"x"
        )
    with pytest.raises(ValueError, match="ack_frequency delay must be seconds"):
        QuicEngine(
            server=False,
            host="127.0.0.1",
            port=0,
            h3_settings={},
            server_cert_hashes=[b"\0" * 32],
            ack_frequency=(4, -0.1),
        )
    engine = QuicEngine(server=False, host="127.0.0.1", port=0, h3_settings={}, server_cert_hashes=[b"\0" * 32])
    with pytest.raises(StreamClosed, match="no connection 7"):
        engine.send_data(7, 0, b"x", False)
    assert engine.poll_io() == [] and engine.next_timeout() is None
