"""tokenwire's own SSE client against the real server: exactly once across drops, typed errors, chaos."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.support.servers import sse_server
from tokenwire import EpochMismatch, FakeModel, Hub, MemoryStorage, ResumeExpired, StreamFailed, StreamNotFound
from tokenwire.client import SseClient
from tokenwire.client.sse import ConnectionFailed

pytestmark = pytest.mark.usefixtures("no_leaks")


async def test_generate_reads_every_token_once_across_a_drop() -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server, SseClient(f"http://127.0.0.1:{server.port}") as client:
        reader = await client.generate("hi", max_tokens=80, tokens_per_s=800)
        got = []
        async for token in reader:
            got.append(token)
            if len(got) in (10, 40):
                assert reader._response is not None
                reader._response.close()  # the network drops the connection
        assert got == model.tokens("hi", 80)
        assert reader.reconnects == 2
        assert reader.done is not None and reader.done["reason"] == "length"
        assert model.calls == 1


async def test_attach_and_typed_errors() -> None:
    hub = Hub(MemoryStorage(max_frames_per_stream=4))
    async with sse_server(hub) as server, SseClient(f"http://127.0.0.1:{server.port}") as client:
        s = hub.create_stream()
        s.send_many(["a", "b", "c", "d", "e", "f"])
        s.finish()
        reader = await client.attach(s.id, last_event_id=f"{s.id}:{hub.epoch}:4")
        assert [t async for t in reader] == ["e", "f"]
        with pytest.raises(ResumeExpired) as expired:
            await client.attach(s.id, last_event_id=f"{s.id}:{hub.epoch}:1")
        assert expired.value.oldest_seq == 4
        with pytest.raises(EpochMismatch):
            await client.attach(s.id, last_event_id=f"{s.id}:OtherEpc:1")
        with pytest.raises(StreamNotFound):
            await client.attach("missing")
        nothing_left = await client.attach(s.id, last_event_id=f"{s.id}:{hub.epoch}:7")
        assert [t async for t in nothing_left] == []
        failing = hub.create_stream()
        failing.send("x")
        failing.fail("model crashed", code="engine_error")
        reader = await client.attach(failing.id)
        with pytest.raises(StreamFailed) as failed:
            _ = [t async for t in reader]
        assert failed.value.code == "engine_error"
        await client.cancel(hub.create_stream().id)
        with pytest.raises(StreamNotFound):
            await client.cancel("missing")


async def test_server_gone_is_connection_failed() -> None:
    async with sse_server() as server:
        port = server.port
    client = SseClient(f"http://127.0.0.1:{port}", max_retries=1, backoff_initial=0.01)
    with pytest.raises(OSError):
        await client.generate("x")


async def test_chaos_random_drops_across_hundreds_of_streams() -> None:
    """300 concurrent streams; connections are cut at random points, many times. Every stream must end
    with exactly the model's tokens, in order, none twice, and the model must have run once per prompt."""
    rng = random.Random(1234)
    model = FakeModel(seed=5)
    n_streams, n_tokens = 300, 120
    async with (
        sse_server(model=model, engine_steps_per_s=100) as server,
        SseClient(f"http://127.0.0.1:{server.port}", backoff_initial=0.005, max_retries=20) as client,
    ):
        drops = 0

        async def one(i: int) -> list[str]:
            nonlocal drops
            reader = await client.generate(f"prompt {i}", max_tokens=n_tokens)
            got: list[str] = []
            cut_at = sorted(rng.sample(range(1, n_tokens), k=rng.randint(0, 4)))
            async for batch in reader.batches():
                got += batch
                while cut_at and len(got) >= cut_at[0]:
                    cut_at.pop(0)
                    if reader._response is not None:
                        reader._response.close()
                        drops += 1
            assert reader.done is not None
            return got

        results = await asyncio.gather(*(one(i) for i in range(n_streams)))
        for i, got in enumerate(results):
            assert got == model.tokens(f"prompt {i}", n_tokens), f"stream {i} differs"
        assert model.calls == n_streams
        assert drops > 200
        assert server.metrics.resumes_total >= drops - n_streams  # a cut right at the end needs no resume


async def test_reconnect_budget_is_bounded() -> None:
    model = FakeModel(seed=5)
    server_cm = sse_server(model=model)
    server = await server_cm.__aenter__()
    client = SseClient(f"http://127.0.0.1:{server.port}", max_retries=2, backoff_initial=0.01)
    try:
        reader = await client.generate("x", max_tokens=1000, tokens_per_s=100)
        await reader.__anext__()
    finally:
        await server_cm.__aexit__(None, None, None)
    with pytest.raises(ConnectionFailed):
        async for _ in reader:
            pass
    await client.aclose()


async def test_position_counts_what_the_caller_was_handed() -> None:
    """Breaking out mid-batch and resuming elsewhere from ``last_event_id`` loses nothing."""
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server, SseClient(f"http://127.0.0.1:{server.port}") as client:
        stream = server.hub.create_stream()
        texts = model.tokens("x", 50)
        stream.send_many(texts)  # all 50 arrive in one read: one parsed batch
        stream.finish()
        reader = await client.attach(stream.id)
        got = []
        async for token in reader:
            got.append(token)
            if len(got) == 7:
                break
        assert reader.position == 7
        await reader.aclose()
        again = await client.attach(stream.id, last_event_id=reader.last_event_id)
        got += [t async for t in again]
        assert got == texts
        assert again.position == 51  # the done frame
