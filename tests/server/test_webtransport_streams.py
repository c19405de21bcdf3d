"""Request streams as the QUIC layer sees them: a stream counts from the moment it opens (its WebTransport
header), times out when its request never comes, gives its QUIC stream credit back, and the documented
per-session limit is the one a client meets first (docs/protocol.md §4.4, Limits)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aioquic.quic.events import QuicEvent, StopSendingReceived

import tokenwire.client.webtransport as client_module
from tests.support.servers import wt_client, wt_server
from tokenwire import FakeModel, RemoteProtocolError, _core
from tokenwire.client.webtransport import WebTransportClient, _RequestStream
from tokenwire.protocol.webtransport import (
    REQUEST_ATTACH,
    REQUEST_START,
    RequestFailed,
    WtCode,
    encode_message,
)
from tokenwire.server.config import WebTransportLimits
from tokenwire.server.webtransport import WebTransportServer

pytestmark = pytest.mark.usefixtures("no_leaks", "wt_engine")


async def open_header_only(client: WebTransportClient) -> _RequestStream:
    """A bidirectional stream that carries the WebTransport stream header (0x41, session id) and nothing else,
    as a browser's ``createBidirectionalStream()`` whose write never happens."""
    conn = await client._session()
    qid = conn.h3.create_webtransport_stream(conn.session_id)  # writes the header only
    stream = _RequestStream(conn, qid)
    conn.streams[qid] = stream
    conn.transmit_soon()
    return stream


def server_streams(server: WebTransportServer) -> int:
    """Request streams the server holds for its sessions (pending or attached)."""
    return sum(len(s.streams) for c in server.connections for s in c.sessions.values())


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (10 s at most) until the server's state satisfies ``predicate``."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the server's state, polled under a deadline
            await asyncio.sleep(0.01)


async def test_header_only_streams_time_out_with_408_and_give_their_stream_credit_back() -> None:
    # QUIC grants this connection 4 + 1 + 1 = 6 concurrent streams: the CONNECT stream and 5 more. Two rounds
    # of 4 header-only streams and a real request need 10, so credit must come back after each round.
    limits = WebTransportLimits(max_streams_per_session=4, max_sessions_per_connection=1)
    assert limits.quic_bidi_streams == 6
    model = FakeModel(seed=5)
    async with wt_server(model=model, limits=limits, header_timeout=0.2) as server, wt_client(server) as client:
        await client.wait_connected()
        for _ in range(2):
            streams = [await open_header_only(client) for _ in range(4)]
            async with asyncio.timeout(10):
                replies = [await s.reply for s in streams]
            assert all(isinstance(r, RequestFailed) for r in replies)
            assert {(r.status, r.type, r.code) for r in replies if isinstance(r, RequestFailed)} == {
                (408, "HttpError", WtCode.BAD_REQUEST)
            }
            # The client's QUIC answered STOP_SENDING with a reset: the server forgets the streams.
            await until(lambda: not any(c.streams for c in server.connections))
        reader = await client.generate("after the timeouts", max_tokens=8, tokens_per_s=4000)
        assert await reader.text() == "".join(model.tokens("after the timeouts", 8))
        assert server.metrics.bad_requests_total == 8
        assert client.connections == 1


async def test_header_only_streams_count_against_the_per_session_limit() -> None:
    limits = WebTransportLimits(max_streams_per_session=3)
    async with wt_server(limits=limits) as server, wt_client(server) as client:
        await client.wait_connected()
        idle = [await open_header_only(client) for _ in range(3)]
        await until(lambda: server_streams(server) == 3)
        with pytest.raises(RemoteProtocolError, match="too many streams") as too_many:
            await client.generate("one too many", max_tokens=5)
        assert too_many.value.status_hint == 503
        for stream in idle:
            stream.abort()  # the client gives up on them: room again
        await until(lambda: server_streams(server) == 0)
        reader = await client.generate("room again", max_tokens=5, tokens_per_s=4000)
        assert len(await reader.text()) > 0


def test_default_limits_let_a_session_reach_its_documented_503() -> None:
    limits = WebTransportLimits()
    assert limits.max_streams_per_session == 256  # docs/protocol.md §4.4
    # A session alone on its connection: its CONNECT stream, 256 request streams, and the one refused with 503.
    assert limits.quic_bidi_streams >= 1 + limits.max_streams_per_session + 1
    # Every session the connection may open has its CONNECT stream besides.
    assert limits.quic_bidi_streams >= limits.max_streams_per_session + limits.max_sessions_per_connection


async def test_the_default_per_session_limit_is_reached_before_quic_stream_credit() -> None:
    limits = WebTransportLimits()
    async with wt_server() as server, wt_client(server) as client:
        await client.wait_connected()
        conn = client._conn
        assert conn is not None
        assert conn._quic._remote_max_streams_bidi == limits.quic_bidi_streams  # what the server granted
        pending = [await open_header_only(client) for _ in range(limits.max_streams_per_session)]
        await until(lambda: server_streams(server) == limits.max_streams_per_session)
        with pytest.raises(RemoteProtocolError, match="too many streams") as too_many:
            await client.generate("stream 257", max_tokens=5)
        assert too_many.value.status_hint == 503
        assert not any(s.reply.done() for s in pending)  # still waiting for their requests


@pytest.mark.parametrize(
    ("request_bytes", "stopped", "error"),
    [
        # Whole messages: only the client's FIN can follow, so no STOP_SENDING (Firefox loses a reply it overtakes).
        (encode_message(REQUEST_START, {"prompt": "x", "max_tokens": "five"}), False, "InvalidBody"),
        (encode_message(REQUEST_ATTACH, {"stream_id": "s", "after": 2, "epoch": "a b"}), False, "RemoteProtocolError"),
        (bytes((REQUEST_START, 3)) + b"[1]", False, "FrameError"),  # a whole message, not a JSON object
        (encode_message(REQUEST_ATTACH, {"stream_id": "nobody", "after": 0}), False, "StreamNotFound"),
        # Not read whole: the client is told to stop sending.
        (bytes((REQUEST_START,)) + _core.encode_varint(1 << 30), True, "RequestTooLarge"),
        (bytes((0x7F,)), True, "FrameError"),
        (encode_message(REQUEST_ATTACH, {"stream_id": "s", "after": 0}) + b"\x12", True, "FrameError"),
    ],
    ids=["invalid-field", "bad-epoch", "not-an-object", "not-found", "too-large", "unknown-kind", "bytes-after"],
)
async def test_the_error_reply_to_a_whole_request_comes_without_stop_sending(
    monkeypatch: pytest.MonkeyPatch, request_bytes: bytes, stopped: bool, error: str
) -> None:
    """The client sends a request and keeps its side open (no FIN). A request the server read whole gets its
    error reply and FIN alone, whether the message failed to parse or the hub refused it (docs/protocol.md §4.4);
    one it did not read whole is also stopped (STOP_SENDING with the reply's code)."""
    stops: list[int] = []
    original = client_module._Connection.quic_event_received

    def observe(conn: Any, event: QuicEvent) -> None:
        if isinstance(event, StopSendingReceived):
            stops.append(event.stream_id)
        original(conn, event)

    monkeypatch.setattr(client_module._Connection, "quic_event_received", observe)
    async with wt_server() as server, wt_client(server) as client:
        stream = await open_header_only(client)
        stream.conn._quic.send_stream_data(stream.qid, request_bytes, end_stream=False)
        stream.conn.transmit_soon()
        async with asyncio.timeout(10):
            reply = await stream.reply
        assert isinstance(reply, RequestFailed) and reply.type == error
        async with asyncio.timeout(10):
            while not stream.ended:  # noqa: ASYNC110 - the reply's FIN, polled under a deadline
                await asyncio.sleep(0.01)
        # The reply, its FIN and any STOP_SENDING leave in one transmit: they have all arrived by now.
        await client.generate("the session goes on", max_tokens=2, tokens_per_s=4000)
        assert stops == ([stream.qid] if stopped else [])
        if not stopped:  # the client ends its side: the server forgets the stream
            stream.conn._quic.send_stream_data(stream.qid, b"", end_stream=True)
            stream.conn.transmit_soon()
            await until(lambda: all(stream.qid not in c.streams for c in server.connections))
