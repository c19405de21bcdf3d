"""Starts whose generator waits before its first token (a source's ``open()``: an upstream's answer): what arrives
meanwhile, and what happens when the start fails after the source opened. Real SSE server, real HTTP client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.servers import sse_server
from tokenwire import Hub
from tokenwire.generation import GenerationRequest
from tokenwire.storage import MemoryStorage

pytestmark = pytest.mark.usefixtures("no_leaks")


class Gated:
    """A generator whose sources wait in ``open()`` until the test opens the gate (a slow upstream); it counts
    the sources opened and closed."""

    def __init__(self, *, open_now: bool = False) -> None:
        self.gate = asyncio.Event()
        if open_now:
            self.gate.set()
        self.opened = 0
        self.closed = 0

    def generate(self, request: GenerationRequest) -> _GatedSource:
        return _GatedSource(self)


class _GatedSource:
    def __init__(self, owner: Gated) -> None:
        self.owner = owner
        self.tokens = ["a", "b", "c"]

    async def open(self) -> None:
        self.owner.opened += 1
        await self.owner.gate.wait()

    def __aiter__(self) -> _GatedSource:
        return self

    async def __anext__(self) -> str:
        if not self.tokens:
            raise StopAsyncIteration
        return self.tokens.pop(0)

    async def aclose(self) -> None:
        self.owner.closed += 1


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - server counters, polled under a deadline
            await asyncio.sleep(0.01)


BODIES: dict[str, dict[str, Any]] = {
    "/v1/streams": {"prompt": "hi", "max_tokens": 3},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True},
}


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_a_repeat_that_comes_while_its_start_opens_gets_that_start(path: str) -> None:
    gen = Gated()
    async with sse_server(model=gen) as server, httpx.AsyncClient() as http:

        async def post() -> httpx.Response:
            url = f"http://127.0.0.1:{server.port}{path}"
            return await http.post(url, json=BODIES[path], headers={"Idempotency-Key": "k-1"})

        first = asyncio.create_task(post())
        await until(lambda: gen.opened == 1)
        second = asyncio.create_task(post())
        await until(lambda: server.metrics.requests_total == 2)
        await asyncio.sleep(0.05)  # the second request's start has run as far as it goes before the gate opens
        gen.gate.set()
        a, b = await first, await second
    assert a.status_code == b.status_code == 200
    assert a.headers["x-tokenwire-stream-id"] == b.headers["x-tokenwire-stream-id"]
    assert gen.opened == 1  # one generation: the upstream is called once


async def test_a_stream_id_taken_by_a_start_that_opens_is_refused_at_once() -> None:
    gen = Gated()
    body = {"prompt": "hi", "max_tokens": 3, "stream_id": "mine-1"}
    async with sse_server(model=gen) as server, httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{server.port}/v1/streams"
        first = asyncio.create_task(http.post(url, json=body))
        await until(lambda: gen.opened == 1)
        second = await http.post(url, json=body)  # answered while the first still opens
        assert second.status_code == 409
        assert gen.opened == 1
        gen.gate.set()
        assert (await first).status_code == 200


async def test_a_source_opened_for_a_start_that_then_fails_is_closed() -> None:
    hub = Hub(MemoryStorage(max_total_bytes=100))
    full = hub.create_stream()
    full.send("x" * 90)  # the hub's memory cap is held: the next stream cannot start (HubFull, 503)
    gen = Gated(open_now=True)
    async with sse_server(hub, model=gen) as server, httpx.AsyncClient() as http:
        r = await http.post(f"http://127.0.0.1:{server.port}/v1/streams", json={"prompt": "hi"})
        full.finish()
    assert r.status_code == 503
    assert (gen.opened, gen.closed) == (1, 1)  # the upstream response opened for it is not left open


async def test_a_start_still_opening_at_shutdown_is_stopped_and_its_source_closed() -> None:
    gen = Gated()
    async with httpx.AsyncClient() as http:
        async with sse_server(model=gen) as server:
            post = asyncio.create_task(http.post(f"http://127.0.0.1:{server.port}/v1/streams", json={"prompt": "hi"}))
            await until(lambda: gen.opened == 1)
        assert (await post).status_code == 503  # a request still waiting for its answer is told to come back
    assert gen.closed == 1
    assert len(server.hub) == 0  # no stream started in the closed hub
