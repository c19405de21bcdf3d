"""The engine-neutral half of a WebTransport connection (``server/wt_host.py``) on an engine that is not aioquic:
a recording engine, fed the event tuples a native QUIC engine reports; a real hub, generator and flusher, no
sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from tokenwire import FakeModel, Hub, ServerOptions, _core
from tokenwire.protocol.webtransport import (
    AttachRequested,
    CancelConfirmed,
    CancelRequested,
    ReplyReader,
    StartRequested,
    StreamAttached,
    WtCode,
    connect_headers,
    encode_request,
    http3_error_code,
)
from tokenwire.protocol.wt_session import (
    Action,
    FinishSession,
    ResetStream,
    SendCapsules,
    SendData,
    SendDatagram,
    SendHeaders,
    StopSending,
    feed,
)
from tokenwire.server import ServerConfig
from tokenwire.server.webtransport import WebTransportServer
from tokenwire.server.wt_host import SessionHost

pytestmark = pytest.mark.usefixtures("no_leaks")

SID, QID = 0, 4


class RecordingEngine(SessionHost):
    """A connection of an engine that writes nothing anywhere: what the host asks of it is recorded."""

    def __init__(self, server: WebTransportServer) -> None:
        self._init_host(server)
        self.out: list[Action] = []
        self.closed_with: tuple[int, str] | None = None
        self.transmits = 0
        self.blocked = False

    def _record(self, action: Action) -> None:
        self.out.append(action)

    _send_headers = _send_capsules = _finish_session = _send_data = _record
    _reset_stream = _stop_sending = _send_datagram = _record

    def transmit(self) -> None:
        self.transmits += 1

    def send_blocked(self, qid: int) -> bool:
        return self.blocked

    def datagram_limit(self) -> int:
        return 1200

    def _close_connection(self, h3_code: int, reason: str) -> None:
        self.closed_with = (h3_code, reason)

    def event(self, *event: object) -> None:
        """One event as a native engine reports it (connection id 1)."""
        feed(self.session, (event[0], 1, *event[1:]), self.server.loop.time())
        self._pump()

    def sent(self, qid: int) -> tuple[bytes, bool]:
        data = [a for a in self.out if isinstance(a, SendData) and a.stream_id == qid]
        return b"".join(a.data for a in data), any(a.end for a in data)


@pytest.fixture
async def server() -> AsyncIterator[WebTransportServer]:
    model = FakeModel(seed=3, tokens_per_s=None)
    server = WebTransportServer(Hub(), ServerOptions(ServerConfig(stall_timeout=5.0), generator=model))
    server._start_common()  # the loop and the flusher, no socket
    yield server
    await server._stop_background()
    await server.hub.aclose()


def session(server: WebTransportServer) -> RecordingEngine:
    conn = RecordingEngine(server)
    conn.event("settings", {})
    conn.event("handshake")
    conn.event("headers", SID, connect_headers("127.0.0.1:4433"), False)
    (answer,) = [a for a in conn.out if isinstance(a, SendHeaders)]
    assert dict(answer.headers)[b":status"] == b"200"
    return conn


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def tokens_of(data: bytes) -> tuple[StreamAttached, list[str]]:
    reader = ReplyReader()
    frames = reader.feed(data)
    reader.close()
    assert isinstance(reader.reply, StreamAttached)
    return reader.reply, [payload for kind, _, payload in frames if kind == _core.FRAME_TOKEN]


async def test_a_start_request_streams_its_generation_to_the_end(server: WebTransportServer) -> None:
    conn = session(server)
    conn.event("wt_stream", QID, SID, encode_request(StartRequested("hello", 20)), True)
    await until(lambda: conn.sent(QID)[1])
    data, _ = conn.sent(QID)
    reply, tokens = tokens_of(data)
    assert tokens == FakeModel(seed=3).tokens("hello", 20)
    assert reply.after == 0 and reply.epoch == server.hub.epoch
    assert conn.transmits > 0 and QID not in conn.streams and conn.session.streams == {}
    # Attach again from seq 5 (a resume): counted, and served from there.
    conn.event("wt_stream", QID + 4, SID, encode_request(AttachRequested(reply.stream_id, reply.epoch, 5)), True)
    await until(lambda: conn.sent(QID + 4)[1])
    again, rest = tokens_of(conn.sent(QID + 4)[0])
    assert again.after == 5 and rest == tokens[5:]
    assert server.metrics.resumes_total == 1


async def test_a_slow_reader_waits_then_is_cut_to_resume(server: WebTransportServer) -> None:
    conn = session(server)
    conn.blocked = True  # the engine holds too many of the stream's bytes
    conn.event("wt_stream", QID, SID, encode_request(StartRequested("slow", 50)), True)
    await until(lambda: bool(conn.sent(QID)[0]))
    data, fin = conn.sent(QID)
    reply, tokens = tokens_of(data)
    assert tokens == [] and not fin  # the reply went out; the frames wait in the ring
    (st,) = conn.paused
    assert st.paused_at
    conn.blocked = False
    st.release_reader()  # what a "writable" event does
    await until(lambda: conn.sent(QID)[1])
    assert tokens_of(conn.sent(QID)[0])[1] == FakeModel(seed=3).tokens("slow", 50)

    conn.blocked = True
    conn.event("wt_stream", QID + 4, SID, encode_request(AttachRequested(reply.stream_id)), True)
    await until(lambda: bool(conn.paused))
    (st,) = conn.paused
    conn.tick(st.paused_at + 5.0)
    assert ResetStream(QID + 4, http3_error_code(WtCode.RESUME)) in conn.out
    assert server.metrics.backpressure_closes_total == 1 and not conn.paused


async def test_errors_and_cancels_are_replies(server: WebTransportServer) -> None:
    conn = session(server)
    conn.event("wt_stream", QID, SID, encode_request(AttachRequested("nope")), True)
    data, fin = conn.sent(QID)
    reader = ReplyReader()
    reader.feed(data)
    assert fin and getattr(reader.reply, "status", None) == 404
    conn.event("wt_stream", QID + 4, SID, encode_request(StartRequested("c", 10_000)), True)
    await until(lambda: bool(conn.sent(QID + 4)[0]))
    reply, _ = tokens_of(conn.sent(QID + 4)[0])  # the reply and the frames so far
    conn.event("wt_stream", QID + 8, SID, encode_request(CancelRequested(reply.stream_id)), True)
    cancelled = ReplyReader()
    cancelled.feed(conn.sent(QID + 8)[0])
    assert cancelled.reply == CancelConfirmed(reply.stream_id)
    await until(lambda: conn.sent(QID + 4)[1])  # the cancelled generation ends its stream


async def test_shutdown_resets_every_stream_and_closes(server: WebTransportServer) -> None:
    conn = session(server)
    conn.blocked = True  # frames wait in the ring: the stream stays open
    conn.event("wt_stream", QID, SID, encode_request(StartRequested("long", 10_000)), True)
    await until(lambda: bool(conn.sent(QID)[0]))
    conn.event("wt_stream", QID + 4, SID, encode_request(StartRequested("x"))[:3], False)  # a request half-read
    assert server.session_count == 1
    conn.shutdown()
    code = http3_error_code(WtCode.SHUTDOWN)
    assert {ResetStream(QID, code), ResetStream(QID + 4, code), StopSending(QID + 4, code)} <= set(conn.out)
    assert conn.closed_with == (0x100, "server shutting down") and conn.closed
    assert server.session_count == 0 and conn.streams == {}
    assert not any(isinstance(a, SendCapsules | SendDatagram | FinishSession) for a in conn.out)
