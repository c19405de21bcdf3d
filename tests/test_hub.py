"""The hub: producers, subscribers, resume rules, abandonment, time-to-live, memory cap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.support.sse_spec_parser import SpecParser
from tokenwire import (
    Cursor,
    EpochMismatch,
    FakeEngine,
    FakeModel,
    Frame,
    FrameKind,
    Hub,
    HubFull,
    LocalProtocolError,
    MemoryStorage,
    RemoteProtocolError,
    ResumeExpired,
    ResumeFromFuture,
    Storage,
    StreamClosed,
    StreamNotFound,
    StreamState,
    _core,
)

pytestmark = pytest.mark.usefixtures("no_leaks")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def drain(sub: AsyncIterator[list[Frame]]) -> list[Frame]:
    frames: list[Frame] = []
    async for batch in sub:
        frames.extend(batch)
    return frames


def tokens_of(frames: list[Frame]) -> list[str]:
    return [f.text for f in frames if f.kind is FrameKind.TOKEN]


async def test_send_finish_subscribe_round_trip() -> None:
    async with Hub() as hub:
        s = hub.create_stream()
        assert s.send("a") == 1
        assert s.send_many(["b", " c\n", "日本"]) == 4
        sub = hub.subscribe(s.id)
        assert s.finish("stop", usage={"completion_tokens": 4}) == 5
        frames = await drain(sub)
        assert [f.seq for f in frames] == [1, 2, 3, 4, 5]
        assert tokens_of(frames) == ["a", "b", " c\n", "日本"]
        assert frames[-1].kind is FrameKind.DONE
        assert frames[-1].json() == {"reason": "stop", "usage": {"completion_tokens": 4}}
        assert s.state is StreamState.FINISHED
        with pytest.raises(StreamClosed):
            s.send("late")
        with pytest.raises(StreamClosed):
            s.finish()


async def test_subscribe_from_the_middle_gets_exactly_the_rest() -> None:
    async with Hub() as hub:
        s = hub.create_stream()
        s.send_many([str(i) for i in range(1, 11)])
        s.finish()
        frames = await drain(hub.subscribe(s.id, after=7))
        assert [f.seq for f in frames] == [8, 9, 10, 11]
        assert tokens_of(frames) == ["8", "9", "10"]
        assert await drain(hub.subscribe(s.id, after=11)) == []


async def test_generation_goes_on_while_nobody_is_attached_and_resume_is_exact() -> None:
    model = FakeModel(seed=3, tokens_per_s=2000)
    expected = model.tokens("p", 200)
    async with Hub() as hub:
        s = hub.start(model.generate("p", 200))
        got: list[str] = []
        sub = hub.subscribe(s.id)
        async for batch in sub:
            got += tokens_of(batch)
            if len(got) >= 20:
                break
        sub.close()
        position = sub.position
        assert s.subscribers == 0
        produced_at_detach = s.last_seq
        await asyncio.sleep(0.03)
        assert s.last_seq > produced_at_detach, "generation must not stop when the subscriber leaves"
        async with hub.resume(f"{s.id}:{hub.epoch}:{position}") as again:
            got += tokens_of(await drain(again))
        assert got == expected
        assert model.calls == 1
        assert hub.counters["resumes"] == 1


async def test_resume_in_sse_wire_parses_back_to_the_same_events() -> None:
    async with Hub() as hub:
        s = hub.create_stream()
        texts = ["Hello", " wor\nld", "", " é🙂"]
        s.send_many(texts)
        s.finish()
        parser = SpecParser()
        events = []
        async for chunk in hub.resume(f"{s.id}:{hub.epoch}:1", wire="sse"):
            events += parser.feed(chunk)
        assert [e.type for e in events] == ["token", "token", "token", "done"]
        assert [e.data for e in events[:3]] == texts[1:]
        assert [e.last_event_id for e in events] == [f"{s.id}:{hub.epoch}:{n}" for n in (2, 3, 4, 5)]
        assert json.loads(events[-1].data) == {"reason": "stop"}


async def test_resume_in_binary_wire_decodes_back() -> None:
    async with Hub() as hub:
        s = hub.create_stream()
        s.send_many(["x", "y\r\nz"])
        s.fail("boom", code="engine_error")
        dec = _core.FrameDecoder()
        frames = []
        async for chunk in hub.subscribe(s.id, wire="binary"):
            frames += dec.feed(chunk)
        dec.close()
        assert frames[:2] == [(1, 1, "x"), (1, 2, "y\r\nz")]
        kind, seq, body = frames[2]
        assert (kind, seq) == (_core.FRAME_ERROR, 3)
        assert json.loads(body) == {"code": "engine_error", "message": "boom"}
        assert s.state is StreamState.FAILED


async def test_resume_errors_are_typed_and_precise() -> None:
    async with Hub(MemoryStorage(max_frames_per_stream=5)) as hub:
        s = hub.create_stream()
        s.send_many([f"t{i}" for i in range(12)])
        with pytest.raises(RemoteProtocolError):
            hub.resume("not-a-resume-point")
        with pytest.raises(RemoteProtocolError):
            hub.resume(f"{s.id}:{hub.epoch}:-1")
        with pytest.raises(EpochMismatch) as epoch_err:
            hub.resume(f"{s.id}:otherEpc:3")
        assert epoch_err.value.expected == hub.epoch
        assert epoch_err.value.status_hint == 409
        with pytest.raises(StreamNotFound):
            hub.resume(f"nosuchstream:{hub.epoch}:0")
        with pytest.raises(ResumeFromFuture) as future:
            hub.resume(f"{s.id}:{hub.epoch}:13")
        assert future.value.last_seq == 12
        with pytest.raises(ResumeExpired) as expired:
            hub.resume(f"{s.id}:{hub.epoch}:3")
        assert expired.value.oldest_seq == 8
        assert expired.value.status_hint == 410
        # The oldest resumable point is oldest_seq - 1, and it serves everything after it.
        frames = hub.subscribe(s.id, after=7).read_ready()
        assert frames is not None
        assert [f.seq for f in frames] == [8, 9, 10, 11, 12]
        # Bad requests disturbed nothing.
        assert s.send("more") == 13


async def test_slow_subscriber_gets_expired_not_a_gap() -> None:
    async with Hub(MemoryStorage(max_frames_per_stream=4)) as hub:
        s = hub.create_stream()
        sub = hub.subscribe(s.id)
        s.send_many(["a", "b"])
        assert [f.seq for f in await sub.__anext__()] == [1, 2]
        s.send_many(["c", "d", "e", "f", "g"])  # seq 3 is pushed out before the subscriber reads it
        with pytest.raises(ResumeExpired) as err:
            await sub.__anext__()
        assert err.value.oldest_seq == 4
        sub.close()


async def test_many_subscribers_see_identical_frames() -> None:
    async with Hub() as hub:
        s = hub.start(FakeModel(seed=1, tokens_per_s=5000).generate("q", 100))
        subs = [hub.subscribe(s.id) for _ in range(20)]
        results = await asyncio.gather(*(drain(sub) for sub in subs))
        assert all(r == results[0] for r in results)
        assert [f.seq for f in results[0]] == list(range(1, 102))


async def test_cancel_stops_the_producer_and_ends_the_stream() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            while True:
                yield "tok"
                await asyncio.sleep(0.001)
        finally:
            closed.set()

    async with Hub() as hub:
        s = hub.start(endless())
        sub = hub.subscribe(s.id)
        await sub.__anext__()
        hub.cancel(s.id)
        frames = await drain(sub)
        assert frames[-1].kind is FrameKind.DONE
        assert frames[-1].json() == {"reason": "cancelled", "usage": {"completion_tokens": frames[-1].seq - 1}}
        assert s.state is StreamState.CANCELLED
        await asyncio.wait_for(closed.wait(), 1)
        assert hub.counters["streams_cancelled"] == 1
        hub.cancel(s.id)  # cancelling an ended stream is a no-op
        with pytest.raises(StreamNotFound):
            hub.cancel("unknown")


async def test_source_exception_fails_the_stream_with_an_error_frame() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "ok"
        raise RuntimeError("GPU fell off")

    async with Hub() as hub:
        s = hub.start(broken())
        frames = await drain(hub.subscribe(s.id))
        assert tokens_of(frames) == ["ok"]
        assert frames[-1].kind is FrameKind.ERROR
        assert frames[-1].json() == {"code": "generation_failed", "message": "RuntimeError: GPU fell off"}
        assert s.state is StreamState.FAILED


async def test_abandonment_policy_cancels_only_unwatched_producers() -> None:
    clock = FakeClock()

    async def slow() -> AsyncIterator[str]:
        while True:
            yield "t"
            await asyncio.sleep(0.01)

    hub = Hub(abandon_after=30.0, clock=clock)
    watched = hub.start(slow())
    unwatched = hub.start(slow())
    sub = hub.subscribe(watched.id)
    manual = hub.create_stream()  # no producer task: never abandoned
    clock.now += 29.0
    hub.sweep()
    assert unwatched.is_open
    clock.now += 2.0
    hub.sweep()
    assert unwatched.state is StreamState.CANCELLED
    assert unwatched.end_reason == "abandoned"
    assert watched.is_open and manual.is_open
    # Detaching starts the clock again for the watched stream.
    sub.close()
    clock.now += 29.0
    hub.sweep()
    assert watched.is_open
    clock.now += 1.5
    hub.sweep()
    assert watched.end_reason == "abandoned"
    assert manual.is_open
    assert hub.counters["streams_abandoned"] == 2
    await hub.aclose()


async def test_ended_streams_expire_after_ttl() -> None:
    clock = FakeClock()
    hub = Hub(MemoryStorage(ttl=60.0), clock=clock)
    s = hub.create_stream("my-stream_1")
    s.send("x")
    s.finish()
    clock.now += 59.0
    assert hub.sweep() == []
    assert [f.seq for f in hub.subscribe("my-stream_1").read_ready() or []] == [1, 2]
    clock.now += 1.0
    assert hub.sweep() == ["my-stream_1"]
    with pytest.raises(StreamNotFound):
        hub.subscribe("my-stream_1")
    assert hub.storage.memory_bytes == 0
    await hub.aclose()


async def test_memory_cap_refuses_new_streams_but_keeps_open_ones_whole() -> None:
    hub = Hub(MemoryStorage(max_total_bytes=200_000, max_bytes_per_stream=100_000))
    open_streams = []
    with pytest.raises(HubFull):
        for _ in range(100):
            s = hub.create_stream()
            s.send_many(["x" * 1000] * 20)
            open_streams.append(s)
    assert len(open_streams) >= 2
    for s in open_streams:
        assert s.oldest_seq == 1 and s.last_seq == 20
    # An ended stream's memory is reclaimed for new streams once the cap needs it.
    for s in open_streams:
        s.finish()
    hub.create_stream().send_many(["y" * 1000] * 20)
    await hub.aclose()


async def test_caller_chosen_ids_are_validated() -> None:
    async with Hub() as hub:
        hub.create_stream("abc")
        with pytest.raises(ValueError, match="exists"):
            hub.create_stream("abc")
        with pytest.raises(ValueError, match="stream id"):
            hub.create_stream("has:colon")
        assert len(hub.create_stream().id) == 22


async def test_engine_mode_steps_all_streams_together() -> None:
    model = FakeModel(seed=9)
    async with Hub() as hub:
        engine = FakeEngine(model, hub, steps_per_s=1000)
        streams = [engine.submit(f"prompt {i}", 5 + i) for i in range(4)]
        engine.step()
        engine.step()
        assert [s.last_seq for s in streams] == [2, 2, 2, 2]
        results = await asyncio.gather(*(drain(hub.subscribe(s.id)) for s in streams))
        for i, frames in enumerate(results):
            assert tokens_of(frames) == model.tokens(f"prompt {i}", 5 + i)
            assert frames[-1].json()["usage"]["completion_tokens"] == 5 + i
        assert model.calls == 4
        await engine.aclose()


async def test_engine_skips_cancelled_streams() -> None:
    async with Hub() as hub:
        engine = FakeEngine(FakeModel(), hub, steps_per_s=1000)
        a = engine.submit("a", 50)
        b = engine.submit("b", 3)
        engine.step()
        a.cancel()
        engine.step()
        assert a.last_seq == 2  # 1 token + the cancel's done frame
        assert engine.active == 1
        await drain(hub.subscribe(b.id))
        await engine.aclose()


async def test_aclose_ends_running_generations_with_shutdown() -> None:
    hub = Hub()
    s = hub.start(FakeModel(tokens_per_s=10).generate("x", 1000))
    await asyncio.sleep(0)
    await hub.aclose()
    assert s.state is StreamState.CANCELLED
    assert s.end_reason == "shutdown"
    frames = hub.subscribe(s.id).read_ready()
    assert frames is not None
    assert frames[-1].json() == {"reason": "shutdown", "usage": {"completion_tokens": frames[-1].seq - 1}}


def test_memory_storage_implements_the_storage_protocol() -> None:
    assert isinstance(MemoryStorage(), Storage)
    assert MemoryStorage().epoch != MemoryStorage().epoch


# -- the delivery cursor ------------------------------------------------------------------------------------


async def test_a_cursor_reads_each_frame_once_then_reports_the_end() -> None:
    async with Hub() as hub:
        s = hub.create_stream()
        cursor = s.cursor(0)
        assert isinstance(cursor, Cursor) and cursor.stream is s
        assert cursor.poll() == (b"", 0, False)
        s.send_many(["a", "b"])
        parser = SpecParser()
        data, last, ended = cursor.poll()
        assert (last, ended, cursor.position) == (2, False, 2)
        assert [(e.type, e.data, e.last_event_id) for e in parser.feed(data)] == [
            ("token", "a", f"{s.id}:{hub.epoch}:1"),
            ("token", "b", f"{s.id}:{hub.epoch}:2"),
        ]
        assert cursor.poll() == (b"", 2, False)  # nothing new: nothing twice
        s.finish()
        data, last, ended = cursor.poll()
        assert (last, ended, cursor.position) == (3, True, 3)
        assert [e.type for e in parser.feed(data)] == ["done"]
        assert cursor.poll() == (b"", 3, True)
        # The same frames in the binary wire, from a cursor placed in the middle.
        binary = s.cursor(1, wire="binary").poll()[0]
        assert _core.FrameDecoder().feed(binary) == [(1, 2, "b"), (_core.FRAME_DONE, 3, '{"reason":"stop"}')]


async def test_a_cursor_accounts_each_read_that_took_frames_once() -> None:
    async with Hub() as hub:
        s = hub.create_stream()
        reads: list[tuple[int, int, int]] = []
        cursor = s.cursor(0)
        cursor.on_read = lambda pos, last, nbytes: reads.append((pos, last, nbytes))
        cursor.poll()
        s.send_many(["x", "yz"])
        data, _, _ = cursor.poll()
        cursor.poll()
        s.send("w")
        frames_cursor = s.cursor(1, wire=None)
        frames_cursor.on_read = cursor.on_read
        assert [f.text for f in frames_cursor.frames()] == ["yz", "w"]
        assert frames_cursor.frames() == []
        assert reads == [(0, 2, len(data)), (1, 3, 0)]


async def test_a_cursor_raises_the_resume_errors_and_keeps_its_position() -> None:
    storage = MemoryStorage(max_frames_per_stream=4)
    async with Hub(storage) as hub:
        s = hub.create_stream()
        cursor = s.cursor(0)
        s.send_many([f"t{i}" for i in range(6)])  # seq 1 and 2 are gone
        with pytest.raises(ResumeExpired) as err:
            cursor.poll()
        assert err.value.oldest_seq == 3 and cursor.position == 0
        with pytest.raises(ResumeExpired):
            s.cursor(1, wire=None).frames()
        late = s.cursor(2)
        assert late.poll()[1:] == (6, False)
        s.finish()
        handle = storage.lookup(s.id)
        assert handle is not None
        storage.remove(handle)
        with pytest.raises(StreamNotFound):
            late.poll()
        assert late.position == 6
        with pytest.raises(LocalProtocolError):
            s.cursor(0, wire=None).poll()  # a frames-only cursor renders nothing


async def test_a_render_gets_the_frames_each_read_took() -> None:
    async with Hub() as hub:
        s = hub.create_stream()
        seen: list[list[tuple[int, int, str]]] = []

        def render(frames: list[tuple[int, int, str]]) -> bytes:
            seen.append(frames)
            return "|".join(text for _, _, text in frames).encode()

        cursor = s.cursor(0, render=render)
        assert cursor.poll() == (b"", 0, False)
        s.send_many(["a", "b"])
        assert cursor.poll() == (b"a|b", 2, False)
        s.fail("boom", code="x")
        data, last, ended = cursor.poll()
        assert (last, ended) == (3, True) and data.startswith(b'{"code":"x"')
        assert cursor.poll() == (b"", 3, True)  # ended, nothing new: the render is not called
        assert [[seq for _, seq, _ in frames] for frames in seen] == [[1, 2], [3]]
        assert seen[1][0][0] == _core.FRAME_ERROR


async def test_a_paused_cursor_holds_the_producer_back_until_it_reads() -> None:
    async with Hub(MemoryStorage(max_frames_per_stream=64)) as hub:
        s = hub.create_stream()
        cursor = s.cursor(0)
        s.reader_paused(cursor)
        s.send_many([f"t{i}" for i in range(hub.reader_high_water + 2)])
        assert s.readers_behind()
        cursor.poll()  # it took everything: no longer behind, though still paused
        assert not s.readers_behind()
        s.reader_resumed(cursor)


async def test_a_subscription_reads_through_its_cursor() -> None:
    async with Hub() as hub:
        s = hub.create_stream()
        s.send_many(["a", "b"])
        sub = hub.subscribe(s.id, after=1)
        assert sub.cursor.position == sub.position == 1
        frames = sub.read_ready()
        assert frames is not None and [f.seq for f in frames] == [2]
        assert sub.position == sub.cursor.position == 2 and sub.read_ready() is None
        sub.close()
