"""Producer backpressure: a live reader that stalls briefly holds a hub-driven producer back instead of falling
off the ring; a reader that is gone, or stalled past its timeout, holds nobody back."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from tests.support.asgi_servers import uvicorn_server
from tests.support.chunked import dechunk, split_response
from tests.support.servers import sse_server
from tests.support.sse_spec_parser import SpecParser
from tokenwire import FakeModel, Hub, ServerOptions
from tokenwire.asgi import TokenwireASGI
from tokenwire.storage import MemoryStorage

pytestmark = pytest.mark.usefixtures("no_leaks")

RING = 2048  # frames per stream: an unthrottled producer overruns it within milliseconds


def _request(prompt: str, n: int) -> bytes:
    body = json.dumps({"prompt": prompt, "max_tokens": n, "tokens_per_s": 0}).encode()
    head = (
        b"POST /v1/streams HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    return head + body


def _small_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def _read_all(sock: socket.socket, stall_after: int, stall: float) -> bytes:
    """Read to EOF; after ``stall_after`` bytes stop reading for ``stall`` seconds (a brief client stall)."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    stalled = False
    while True:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            return bytes(received)
        received += chunk
        if not stalled and len(received) >= stall_after:
            stalled = True
            await asyncio.sleep(stall)


async def _stream_with_a_stall(port: int, prompt: str, n: int) -> bytes:
    """A whole unthrottled stream of ``n`` tokens, read by a client with a small receive buffer that stops
    reading for 0.5 s after its first 8 KiB."""
    sock = _small_socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, _request(prompt, n))
        return await asyncio.wait_for(_read_all(sock, 8192, 0.5), 60)
    finally:
        sock.close()


def _tokens(stream_bytes: bytes) -> tuple[list[str], list[str]]:
    events = SpecParser().feed(stream_bytes)
    return [e.data for e in events if e.type == "token"], [e.type for e in events if e.type != "token"]


async def test_a_briefly_stalled_reader_holds_an_unthrottled_producer_back_and_gets_everything() -> None:
    model = FakeModel(seed=5)
    hub = Hub(MemoryStorage(max_frames_per_stream=RING))
    assert hub.reader_high_water == RING // 4
    n = 100_000
    async with sse_server(hub, model=model, write_buffer_high=16 * 1024, stall_timeout=10.0) as server:
        received = await _stream_with_a_stall(server.port, "unthrottled", n)
        status, headers, chunked = split_response(received)
        assert status == b"HTTP/1.1 200 OK" and headers["transfer-encoding"] == "chunked"
        body, complete = dechunk(chunked)
        assert complete
        got, others = _tokens(body)
        assert got == model.tokens("unthrottled", n)  # the whole answer, in order, once
        assert others == ["stream", "done"]
        assert hub.counters["producer_waits"] >= 1  # the producer waited for the reader ...
        assert server.metrics.backpressure_closes_total == 0  # ... so the reader never fell off the ring


async def test_a_reader_stalled_past_its_timeout_or_gone_holds_nobody_back() -> None:
    model = FakeModel(seed=5)
    hub = Hub(MemoryStorage(max_frames_per_stream=RING))
    n = 100_000
    async with sse_server(hub, model=model, write_buffer_high=16 * 1024, stall_timeout=0.3) as server:
        sock = _small_socket()
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(_request("stuck", n))
        try:
            # The client never reads: it is closed after its stall timeout and the producer goes on to the end.
            for _ in range(200):
                if hub.stats()["streams_started"] and not hub.stats()["open_streams"]:
                    break
                await asyncio.sleep(0.05)
            (stream,) = hub._streams.values()
            assert not stream.is_open
            assert stream.last_seq == n + 1  # every token, then done: nobody held the producer back for good
            assert server.metrics.backpressure_closes_total == 1
            assert hub.counters["producer_waits"] >= 1
        finally:
            sock.close()


async def test_engine_style_send_never_waits() -> None:
    hub = Hub(MemoryStorage(max_frames_per_stream=RING))

    class Paused:
        position = 0

    stream = hub.create_stream()
    reader = Paused()
    stream.attach(lambda: None)
    stream.reader_paused(reader)
    for i in range(RING * 2):
        stream.send(f"t{i}")  # synchronous: an engine's step is never blocked by a reader
    assert stream.readers_behind()
    stream.reader_resumed(reader)
    assert not stream.readers_behind()
    stream.finish()
    await hub.aclose()


class _PausedReader:
    def __init__(self, position: int = 0) -> None:
        self.position = position


async def _big_items(n: int, size: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield f"{i:08d}".ljust(size, "x")
        if i % 64 == 0:
            await asyncio.sleep(0)


async def test_items_large_enough_for_the_byte_bound_still_hold_the_producer_back() -> None:
    # 1 KiB items: the ring's 8 MiB bound holds ~8k of them, fewer than the 16,384-frame high-water mark.
    hub = Hub()
    stream = hub.start(_big_items(20_000, 1024))
    stream.attach(lambda: None)
    reader = _PausedReader(0)
    stream.reader_paused(reader)
    for _ in range(400):
        if hub.counters["producer_waits"]:
            break
        await asyncio.sleep(0.01)
    assert hub.counters["producer_waits"] >= 1
    assert hub.check_resume(stream.id, 0) is stream  # nothing the paused reader needs has been dropped
    stream.reader_resumed(reader)
    stream.cancel()
    await hub.aclose()


async def test_a_reader_that_outlasts_the_backpressure_timeout_holds_the_producer_once() -> None:
    hub = Hub(MemoryStorage(max_frames_per_stream=RING), backpressure_timeout=0.05)

    async def tokens(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield f"t{i}"
            if i % 256 == 0:
                await asyncio.sleep(0)

    stream = hub.start(tokens(4 * RING))
    stream.attach(lambda: None)
    stream.reader_paused(_PausedReader(0))  # never resumes, never goes away
    for _ in range(200):
        if not stream.is_open:
            break
        await asyncio.sleep(0.02)
    assert not stream.is_open
    assert hub.counters["producer_waits"] == 1  # one wait, then it goes on (the reader may get 410)
    await hub.aclose()


async def test_a_listener_that_detaches_another_during_send_skips_no_one() -> None:
    hub = Hub()
    stream = hub.create_stream()
    called: list[str] = []

    def b() -> None:
        called.append("b")

    def a() -> None:
        called.append("a")
        stream.detach(b)  # e.g. an inline flush cut another reader of this stream

    def c() -> None:
        called.append("c")

    for listener in (a, b, c):
        stream.attach(listener)
    stream.send("x")
    assert called == ["a", "b", "c"]  # this send's listeners all ran
    called.clear()
    stream.send("y")
    assert called == ["a", "c"]
    stream.finish()
    await hub.aclose()


async def test_an_asgi_response_whose_send_waits_holds_the_producer_back_too() -> None:
    model = FakeModel(seed=5)
    hub = Hub(MemoryStorage(max_frames_per_stream=RING))
    n = 100_000
    app = TokenwireASGI(hub, ServerOptions(generator=model))
    async with uvicorn_server(app, sndbuf=4096) as base:
        received = await _stream_with_a_stall(int(base.rsplit(":", 1)[1]), "asgi unthrottled", n)
        status, _headers, chunked = split_response(received)
        assert status == b"HTTP/1.1 200 OK"
        body, complete = dechunk(chunked)
        assert complete
        got, others = _tokens(body)
        assert got == model.tokens("asgi unthrottled", n)
        assert others == ["stream", "done"]
        assert hub.counters["producer_waits"] >= 1
