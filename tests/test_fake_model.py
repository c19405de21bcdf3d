"""FakeModel draws its tokens as they are sent, and a generation's eventual ring bytes count against the hub's
memory cap from its start (HubFull -> 503)."""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from pathlib import Path

import httpx
import pytest

from tests.support.servers import sse_server
from tokenwire import FakeModel, Hub, MemoryStorage
from tokenwire.errors import HubFull
from tokenwire.fake_model import FakeEngine
from tokenwire.hub import FrameKind

pytestmark = pytest.mark.usefixtures("no_leaks")

HUGE = 5_000_000


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_tokens_are_the_sequence_rng_choices_gave() -> None:
    """The lazy draw hands out what ``Random.choices(vocabulary, k=n)`` did, in any slicing."""
    model = FakeModel(seed=11)
    for prompt, n in (("", 0), ("hello", 1), ("hello", 1000), ("日本", 3000)):
        rng = random.Random((11 << 32) ^ zlib.crc32(prompt.encode()))
        before = rng.choices(model.vocabulary, k=n)
        assert model.tokens(prompt, n) == before
        draw = model.draw(prompt, n)
        got = draw.take(7) + [draw.next() for _ in range(min(5, draw.left))] + draw.take(256) + draw.take(n)
        assert got == before and draw.left == 0


async def test_completion_and_engine_send_the_drawn_tokens() -> None:
    model = FakeModel(seed=3, tokens_per_s=None)
    hub = Hub()
    stream = hub.start(model.generate("p", 700))
    async with hub.subscribe(stream.id) as sub:
        got: list[str] = []
        async for batch in sub:
            got += [f.text for f in batch if f.kind is FrameKind.TOKEN]
    assert got == model.tokens("p", 700)
    engine = FakeEngine(model, hub, steps_per_s=1000)
    s2 = engine.submit("q", 30)
    got = []
    async with hub.subscribe(s2.id) as sub:
        async for batch in sub:
            got += [f.text for f in batch if f.kind is FrameKind.TOKEN]
    assert got == model.tokens("q", 30)
    await engine.aclose()
    await hub.aclose()


async def test_a_five_million_token_request_starts_with_bounded_memory() -> None:
    """Three requests for 5 M tokens each: each answers its first token, and the process grows by far less
    than one answer built up front would take (a list of 5 M tokens is 40 MB)."""
    model = FakeModel(seed=5, tokens_per_s=20)
    async with sse_server(model=model, max_tokens_limit=HUGE) as server:
        before = rss_bytes()
        for i in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            body = json.dumps({"prompt": f"huge {i}", "max_tokens": HUGE}).encode()
            writer.write(b"POST /v1/streams HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await asyncio.wait_for(reader.readuntil(b"event: token"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            writer.close()
        grown = rss_bytes() - before
        assert grown < 30 << 20, f"RSS grew by {grown / 1e6:.1f} MB"
        assert model.calls == 3


async def test_huge_requests_get_503_once_their_eventual_bytes_would_pass_the_cap() -> None:
    cap = 64 << 20
    hub = Hub(MemoryStorage(max_total_bytes=cap))
    model = FakeModel(seed=5, tokens_per_s=1)
    async with sse_server(hub, model=model, max_tokens_limit=HUGE) as server, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{server.port}/v1/streams"
        statuses: list[int] = []
        for i in range(40):
            async with client.stream("POST", url, json={"prompt": f"p{i}", "max_tokens": HUGE}) as resp:
                statuses.append(resp.status_code)
                if resp.status_code == 503:
                    assert resp.headers["retry-after"] == "1"
                    body = (await resp.aread()).decode()
                    assert "HubFull" in body
        accepted = statuses.count(200)
        assert 1 <= accepted < 40 and statuses == [200] * accepted + [503] * (40 - accepted), statuses
        assert hub.storage.memory_bytes <= cap
        # A short request still fits beside them; ending the huge ones gives their reservations back.
        async with client.stream("POST", url, json={"prompt": "short", "max_tokens": 8}) as resp:
            assert resp.status_code == 200
        for stream_id in list(hub._streams):
            hub.cancel(stream_id)
        async with client.stream("POST", url, json={"prompt": "again", "max_tokens": HUGE}) as resp:
            assert resp.status_code == 200


def test_engine_submit_is_refused_when_the_reservation_does_not_fit() -> None:
    hub = Hub(MemoryStorage(max_total_bytes=1 << 20))
    engine = FakeEngine(FakeModel(), hub)
    with pytest.raises(HubFull):
        engine.submit("p", HUGE)  # refused before the engine task starts: no loop needed
    assert len(hub) == 0 and engine.active == 0
