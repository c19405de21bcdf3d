"""The server's per-token path, send to write, with the socket left out: ``TokenStream.send`` -> listener ->
``Flusher`` -> ``SseConnection.flush`` (one core ``poll`` renders the SSE bytes) -> ``transport.write``.

One round sends one token to each of 1,000 streams, each with one connection, then lets the loop iteration end
(the flusher's scheduled run): the per-stream-producer shape, where every token marks a different connection.
The transport only counts bytes, so what is timed is tokenwire's own Python and Rust work per token (the
syscall is measured separately: ``benches/syscall_floor.py``). Per-token time = round time / 1,000.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tokenwire import Hub
from tokenwire.server import ServerConfig, SseServer
from tokenwire.server.endpoints import plan_sse
from tokenwire.server.sse import SseConnection

N = 1000


class CountingTransport(asyncio.Transport):
    """Counts what is written; never pauses. Stands in for the socket so that only tokenwire's work is timed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _setup(loop: asyncio.AbstractEventLoop, max_wait_ms: float) -> tuple[SseServer, list[Any], list[CountingTransport]]:
    async def build() -> tuple[SseServer, list[Any], list[CountingTransport]]:
        server = SseServer(Hub(abandon_after=None), ServerConfig(flush_max_wait_ms=max_wait_ms))
        server._start_common()
        streams, transports = [], []
        for _ in range(N):
            stream = server.hub.create_stream()
            conn = SseConnection(server)
            transport = CountingTransport()
            conn.connection_made(transport)
            conn.start_stream(plan_sse(server.hub, stream, 0, None))
            streams.append(stream)
            transports.append(transport)
        return server, streams, transports

    return loop.run_until_complete(build())


@pytest.mark.benchmark(group="per-token-path-1000-streams")
@pytest.mark.parametrize("max_wait_ms", [0.0, 0.2])
def test_send_flush_write(benchmark, max_wait_ms: float) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    try:
        server, streams, transports = _setup(loop, max_wait_ms)
        flusher = server.flusher
        sends = [s.send for s in streams]

        def one_round() -> None:
            for send in sends:
                send(" token")
            flusher._scheduled_run()  # the end of the loop iteration (a no-op when every mark was flushed inline)
            flusher._scheduled = False

        before = [t.written for t in transports]
        one_round()
        assert all(t.written > b for t, b in zip(transports, before, strict=True))  # every stream was written
        assert all(s.last_seq == 1 for s in streams)
        benchmark(one_round)
        for stream in streams:
            stream.finish()
        loop.run_until_complete(server.hub.aclose())
    finally:
        loop.close()
