"""RedisStorage against a real ``redis-server``: hubs that share one Redis are nodes of one deployment.

Each hub here has its own RedisStorage (its own connections, lease and tail reader), exactly as separate
processes would; the process-level tests (real ``tokenwire serve`` nodes, a node killed) are in
``test_cross_node.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable

import pytest

from tests.support.redis_server import RedisProcess
from tokenwire import EpochMismatch, Frame, FrameKind, Hub, ResumeExpired, StorageUnavailable, StreamNotFound
from tokenwire.redis_storage import RedisStorage
from tokenwire.storage import open_storage

pytestmark = pytest.mark.timeout(60)


async def tokens_of(n: int, every: float = 0.001, prefix: str = "t") -> AsyncIterator[str]:
    for i in range(n):
        await asyncio.sleep(every)
        yield f"{prefix}{i} "


def node(url: str, **kw: float) -> Hub:
    kw.setdefault("ship_interval", 0.002)
    kw.setdefault("lease", 0.6)
    return Hub(RedisStorage(url, **kw))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def two_nodes(url: str, **kw: float) -> AsyncIterator[tuple[Hub, Hub]]:
    a, b = node(url, **kw), node(url, **kw)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[Callable[..., Hub]]:
    made: list[Hub] = []

    def make(**kw: float) -> Hub:
        hub = node(redis_url, **kw)
        made.append(hub)
        return hub

    yield make
    for hub in made:
        await hub.aclose()


async def connected(*hubs: Hub) -> None:
    for hub in hubs:
        assert isinstance(hub.storage, RedisStorage)
        assert await hub.storage.wait_connected(5)


async def read_all(hub: Hub, stream_id: str, after: int, limit: float = 20) -> list[Frame]:
    await hub.find(stream_id, after)
    frames: list[Frame] = []
    async with asyncio.timeout(limit):
        async for batch in hub.subscribe(stream_id, after):
            frames += batch
    return frames


async def eventually(condition: Callable[[], bool], within: float = 10) -> None:
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def texts(frames: list[Frame]) -> list[str]:
    return [f.text for f in frames if f.kind is FrameKind.TOKEN]


async def test_open_storage_names_the_backends(redis_url: str) -> None:
    storage = open_storage(redis_url, ttl=5)
    assert isinstance(storage, RedisStorage) and storage.shared and storage.ttl == 5
    assert not open_storage("memory://").shared and not open_storage(None).shared
    with pytest.raises(ValueError, match="unknown storage URL"):
        open_storage("postgres://x")


async def test_the_epoch_belongs_to_the_store(nodes: Callable[..., Hub]) -> None:
    a, b = nodes(), nodes()
    await connected(a, b)
    assert a.epoch == b.epoch
    c = nodes()  # a node started later (a restarted one) keeps the ids valid
    await connected(c)
    assert c.epoch == a.epoch


async def test_resume_on_other_nodes_exactly_once_at_random_points(nodes: Callable[..., Hub]) -> None:
    """Many streams produced on A; each is read from a random point on B or C while it is produced: the
    catch-up from Redis and the live tail join with no gap and no duplicate."""
    a, b, c = nodes(), nodes(), nodes()
    await connected(a, b, c)
    rng = random.Random(7)
    n = 120
    streams = [a.start(tokens_of(n, 0.001, f"s{i}-")) for i in range(12)]
    await asyncio.sleep(0.03)

    async def resume(i: int) -> None:
        await asyncio.sleep(rng.random() * 0.1)
        after = rng.randrange(0, streams[i].last_seq + 1)
        reader = rng.choice([b, c])
        frames = await read_all(reader, streams[i].id, after)
        assert texts(frames) == [f"s{i}-{k} " for k in range(after, n)]
        assert [f.seq for f in frames] == list(range(after + 1, n + 2))
        assert frames[-1].kind is FrameKind.DONE and frames[-1].json() == {"reason": "stop"}

    await asyncio.gather(*(resume(i) for i in range(len(streams))))
    assert b.counters["streams_restored"] + c.counters["streams_restored"] == len(streams)
    assert a.counters["streams_restored"] == 0


async def test_a_copy_reports_its_end_and_then_stays_resumable(nodes: Callable[..., Hub]) -> None:
    a, b = nodes(), nodes()
    await connected(a, b)
    stream = a.start(tokens_of(20, 0.01))
    copy = await b.find(stream.id)
    assert copy.is_open and copy is b.get(stream.id)
    frames = await read_all(b, stream.id, 0)
    assert len(texts(frames)) == 20
    assert not copy.is_open and copy.end_reason == "stop"
    late = nodes()  # a node that never saw it: the finished stream comes from Redis whole
    await connected(late)
    finished = await late.find(stream.id)
    assert not finished.is_open and finished.end_reason == "stop"
    assert texts(await read_all(late, stream.id, 10)) == [f"t{k} " for k in range(10, 20)]


async def test_cancel_on_another_node_stops_the_producer(nodes: Callable[..., Hub]) -> None:
    a, b = nodes(), nodes()
    await connected(a, b)
    stream = a.start(tokens_of(100_000, 0.002))
    await asyncio.sleep(0.05)
    copy = await b.find(stream.id)
    copy.cancel("user")
    async with asyncio.timeout(5):
        frames = await read_all(b, stream.id, 0)
    assert frames[-1].kind is FrameKind.DONE and frames[-1].json()["reason"] == "user"
    assert stream.state.name == "CANCELLED" and copy.end_reason == "user"
    assert stream._producer is not None and stream._producer.done()


async def test_unknown_stream_is_not_found_on_any_node(nodes: Callable[..., Hub]) -> None:
    a = nodes()
    await connected(a)
    with pytest.raises(StreamNotFound, match="on any node"):
        await a.find("never-made")


async def test_resume_point_older_than_the_ring_is_410_on_another_node(nodes: Callable[..., Hub]) -> None:
    a, b = nodes(max_frames_per_stream=32), nodes(max_frames_per_stream=32)
    await connected(a, b)
    stream = a.start(tokens_of(200, 0.001))
    await read_all(a, stream.id, stream.oldest_seq - 1)
    await b.find(stream.id)
    with pytest.raises(ResumeExpired) as info:
        b.check_resume(stream.id, 5)
    assert info.value.oldest_seq > 6
    frames = await read_all(b, stream.id, info.value.oldest_seq - 1)
    assert texts(frames) == [f"t{k} " for k in range(info.value.oldest_seq - 1, 200)]


async def test_producer_lost_when_the_owner_stops_renewing_its_lease(nodes: Callable[..., Hub]) -> None:
    """The owner vanishes without a word (its tasks stop, its lease lapses): readers elsewhere get a final
    ``error`` frame, code ``producer_lost``, and everything produced before it."""
    a, b = nodes(lease=0.3), nodes(lease=0.3)
    await connected(a, b)
    stream = a.start(tokens_of(100_000, 0.002))
    await asyncio.sleep(0.05)
    await b.find(stream.id)
    reader = asyncio.ensure_future(read_all(b, stream.id, 0))
    await asyncio.sleep(0.05)
    storage = a.storage
    assert isinstance(storage, RedisStorage)
    for task in storage._tasks:  # the node "dies": nothing more ships, the lease is not renewed
        task.cancel()
    shipped = next(iter(storage._owned.values())).shipped
    frames = await asyncio.wait_for(reader, 10)
    last = frames[-1]
    assert last.kind is FrameKind.ERROR and last.json()["code"] == "producer_lost"
    assert texts(frames) == [f"t{k} " for k in range(last.seq - 1)]
    assert last.seq >= shipped + 1
    assert b.get(stream.id).end_reason == "producer_lost"
    storage._tasks.clear()


async def test_redis_restarted_with_its_data_resumes(redis_server: RedisProcess) -> None:
    async with two_nodes(redis_server.url) as (a, b):
        await connected(a, b)
        epoch = a.epoch
        stream = a.start(tokens_of(300, 0.003))
        await asyncio.sleep(0.1)
        redis_server.restart(keep_data=True)
        frames = await read_all_retrying(b, stream.id)
        assert texts(frames) == [f"t{k} " for k in range(300)]
        assert a.epoch == epoch == b.epoch


async def read_all_retrying(hub: Hub, stream_id: str, within: float = 15) -> list[Frame]:
    """``read_all`` once Redis answers again (a resume meanwhile is StorageUnavailable: 503)."""
    async with asyncio.timeout(within):
        while True:
            try:
                return await read_all(hub, stream_id, 0)
            except StorageUnavailable:
                await asyncio.sleep(0.05)


async def test_redis_restarted_empty_makes_old_resume_points_409(redis_server: RedisProcess) -> None:
    async with two_nodes(redis_server.url) as (a, b):
        await connected(a, b)
        old = a.epoch
        stream = a.start(tokens_of(100_000, 0.003))
        await asyncio.sleep(0.05)
        copy = await b.find(stream.id)
        redis_server.restart(keep_data=False)
        await eventually(lambda: old not in (a.epoch, b.epoch))
        assert a.epoch == b.epoch != old
        with pytest.raises(EpochMismatch):
            b.parse_resume(f"{stream.id}:{old}:3")
        # The copy cannot go on (its history is gone): its readers get a clear error, not a hang.
        assert not copy.is_open and copy.end_reason == "history_lost"
        # New streams work in the new epoch.
        fresh = a.start(tokens_of(5))
        assert texts(await read_all(b, fresh.id, 0)) == [f"t{k} " for k in range(5)]


async def test_redis_unreachable_at_start_then_back(redis_server: RedisProcess) -> None:
    redis_server.stop()
    a = node(redis_server.url, command_timeout=0.5)
    try:
        assert not await a.storage.wait_connected(0.3)  # type: ignore[attr-defined]
        with pytest.raises(StorageUnavailable, match="unreachable"):
            a.create_stream()
        with pytest.raises(StorageUnavailable):
            await a.find("some-stream")
        redis_server.start()
        assert await a.storage.wait_connected(5)  # type: ignore[attr-defined]
        assert a.create_stream().is_open
    finally:
        await a.aclose()


async def test_redis_down_mid_stream_local_readers_go_on_and_shipping_catches_up(
    redis_server: RedisProcess,
) -> None:
    async with two_nodes(redis_server.url, command_timeout=0.5) as (a, b):
        await connected(a, b)
        stream = a.start(tokens_of(200, 0.003))
        local = asyncio.ensure_future(read_all(a, stream.id, 0))
        await asyncio.sleep(0.05)
        redis_server.stop(save=True)
        await asyncio.sleep(0.3)
        with pytest.raises(StorageUnavailable):
            a.create_stream()
        redis_server.start()  # with what it held when it stopped
        frames = await asyncio.wait_for(local, 15)  # the local reader never depended on Redis
        assert texts(frames) == [f"t{k} " for k in range(200)]
        # Frames made while Redis was away were shipped once it came back: another node has them all.
        assert texts(await read_all_retrying(b, stream.id)) == [f"t{k} " for k in range(200)]
        assert a.storage.stats()["redis_errors"] > 0


async def test_abandonment_counts_readers_on_other_nodes(redis_url: str, nodes: Callable[..., Hub]) -> None:
    a = Hub(RedisStorage(redis_url, ship_interval=0.002, lease=0.3), abandon_after=0.5, sweep_interval=0.1)
    b = nodes(lease=0.3)
    try:
        await connected(a, b)
        read = a.start(tokens_of(100_000, 0.005))
        unread = a.start(tokens_of(100_000, 0.005))
        await b.find(read.id)
        sub = b.subscribe(read.id, 0)
        await eventually(lambda: not unread.is_open)
        assert unread.end_reason == "abandoned"
        assert read.is_open  # read on node B only: not abandoned
        sub.close()
    finally:
        await a.aclose()


async def test_storage_metrics_count_round_trips_not_tokens(nodes: Callable[..., Hub]) -> None:
    a = nodes(ship_interval=0.02)
    await connected(a)
    streams = [a.create_stream() for _ in range(20)]
    for _ in range(50):
        for s in streams:
            s.send("x")
        await asyncio.sleep(0.001)
    for s in streams:
        s.finish()
    await asyncio.sleep(0.1)
    stats = a.storage.stats()
    assert stats["redis_unshipped_streams"] == 0
    # 1,000 tokens of 20 streams went out in a few dozen script calls, not 1,000 commands.
    assert 0 < stats["redis_ship_calls"] < 200
    b = nodes()
    await connected(b)
    assert texts(await read_all(b, streams[3].id, 0)) == ["x"] * 50
    assert json.loads((await read_all(b, streams[3].id, 50))[-1].text) == {"reason": "stop"}


async def test_a_node_closing_ships_the_ends_of_its_streams(nodes: Callable[..., Hub]) -> None:
    """``Hub.aclose`` ends its producers' streams; the storage's close ships those final frames even when no
    tick came between the ends and the close: readers on other nodes get ``shutdown``, not ``producer_lost``."""
    a, b = nodes(ship_interval=30.0), nodes()  # a ships only when asked (no tick in this test)
    await connected(a, b)
    stream = a.start(tokens_of(100_000, 0.2))  # a slow model: nothing new between the last tick and the close
    await eventually(lambda: stream.last_seq >= 1)
    storage = a.storage
    assert isinstance(storage, RedisStorage)
    await storage._ship_once()  # everything so far is in Redis: nothing is pending
    await b.find(stream.id)
    reader = asyncio.ensure_future(read_all(b, stream.id, 0))
    await storage._ship_once()
    await a.aclose()
    frames = await asyncio.wait_for(reader, 10)
    assert frames[-1].kind is FrameKind.DONE and frames[-1].json()["reason"] == "shutdown"
    assert texts(frames) == [f"t{k} " for k in range(frames[-1].seq - 1)]


async def test_redis_back_from_an_older_snapshot_gets_the_lost_frames_again(redis_server: RedisProcess) -> None:
    """Redis restarts from a snapshot older than what it acknowledged: whichever call reaches it first after
    the outage (usually the next shipping tick), the owner ships again from what Redis holds, so another
    node reads every token, no hole."""
    async with two_nodes(redis_server.url, command_timeout=0.5) as (a, b):
        await connected(a, b)
        storage = a.storage
        assert isinstance(storage, RedisStorage)
        stream = a.create_stream()
        owned = next(iter(storage._owned.values()))
        for k in range(30):
            stream.send(f"t{k} ")
        await eventually(lambda: owned.shipped == 30)
        with redis_server.client() as client:
            client.save()  # the snapshot Redis will come back with
        for k in range(30, 60):
            stream.send(f"t{k} ")
        await eventually(lambda: owned.shipped == 60)  # acknowledged, and lost with the crash below
        proc = redis_server.proc
        assert proc is not None
        proc.kill()  # no shutdown save: the next start loads the older snapshot
        proc.wait()
        redis_server.proc = None
        await eventually(lambda: not storage.available)
        for k in range(60, 90):
            stream.send(f"t{k} ")
        redis_server.start()
        await eventually(lambda: owned.shipped == 90 and storage.available)
        stream.finish()
        frames = await read_all_retrying(b, stream.id)
        assert texts(frames) == [f"t{k} " for k in range(90)]


async def test_a_nodes_wake_key_expires(redis_server: RedisProcess) -> None:
    """Node ids are new at every start: the wake key a node's tail reader listens on must not outlive it."""
    async with two_nodes(redis_server.url) as (a, b):
        await connected(a, b)
        stream = a.start(tokens_of(100_000, 0.01))
        await b.find(stream.id)  # a copy: B wakes its tail reader
        storage = b.storage
        assert isinstance(storage, RedisStorage)
        with redis_server.client() as client:
            await eventually(lambda: client.exists(storage._wake_key) == 1)
            assert client.pttl(storage._wake_key) > 0


async def test_a_cancel_on_another_node_during_a_redis_outage_reaches_the_owner(redis_server: RedisProcess) -> None:
    """``DELETE`` on a node that holds a copy answers at once; the cancel it sends the owner is not dropped
    because Redis was away at that moment (or the owner's control channel was reconnecting)."""
    async with two_nodes(redis_server.url, command_timeout=0.5) as (a, b):
        await connected(a, b)
        stream = a.start(tokens_of(100_000, 0.01))
        copy = await b.find(stream.id)
        redis_server.stop(save=True)
        copy.cancel("user")
        await asyncio.sleep(0.3)
        redis_server.start()
        await eventually(lambda: not stream.is_open)
        assert stream.end_reason == "user"


async def test_an_old_resume_point_is_409_on_a_node_that_never_held_the_stream(redis_server: RedisProcess) -> None:
    """Redis restarted empty: a resume point of the lost history is 409 on every node (as on the owner and as
    with the in-memory storage), not 404 where the node only looked the stream up in the store."""
    import httpx

    from tests.support.servers import sse_server

    async with two_nodes(redis_server.url) as (a, b), sse_server(b) as server, httpx.AsyncClient() as http:
        await connected(a, b)
        old = a.epoch
        stream = a.start(tokens_of(100_000, 0.01))
        await eventually(lambda: stream.last_seq >= 3)
        redis_server.restart(keep_data=False)
        await eventually(lambda: old not in (a.epoch, b.epoch))
        url = f"http://127.0.0.1:{server.port}/v1/streams/{stream.id}/events"
        r = await http.get(url, headers={"Last-Event-ID": f"{stream.id}:{old}:3"})
        assert r.status_code == 409, r.text


async def test_a_copy_ahead_of_an_older_snapshot_still_gets_producer_lost(redis_server: RedisProcess) -> None:
    """Redis comes back from a snapshot older than what a copy holds, and the owner is gone: the copy's
    readers still get ``producer_lost`` (the end written in Redis, after what it still holds, would never reach
    a copy that is past it), instead of waiting forever."""
    async with two_nodes(redis_server.url, command_timeout=0.5, lease=0.3) as (a, b):
        await connected(a, b)
        owner = a.storage
        assert isinstance(owner, RedisStorage)
        stream = a.create_stream()
        for k in range(10):
            stream.send(f"t{k} ")
        await eventually(lambda: next(iter(owner._owned.values())).shipped == 10)
        with redis_server.client() as client:
            client.save()  # the snapshot Redis will come back with
        copy = await b.find(stream.id)
        for k in range(10, 20):
            stream.send(f"t{k} ")
        await eventually(lambda: copy.last_seq == 20)
        for task in owner._tasks:  # the owner dies: nothing more ships, its lease is not renewed
            task.cancel()
        proc = redis_server.proc
        assert proc is not None
        proc.kill()  # no shutdown save: the next start loads the older snapshot
        proc.wait()
        redis_server.proc = None
        redis_server.start()
        await eventually(lambda: not copy.is_open)
        assert copy.end_reason == "producer_lost"
        owner._tasks.clear()


async def test_a_stream_id_taken_on_another_node_does_not_mix_two_histories(nodes: Callable[..., Hub]) -> None:
    """A client-chosen stream id already produced on node A, started again on node B (which does not hold it):
    B's frames must not be spliced into A's history in Redis; B's duplicate ends instead."""
    a, b, c = nodes(), nodes(), nodes()
    await connected(a, b, c)
    first = a.create_stream("chosen-id")
    for k in range(5):
        first.send(f"a{k} ")
    await eventually(lambda: next(iter(a.storage._owned.values())).shipped == 5)  # type: ignore[attr-defined]
    second = b.create_stream("chosen-id")
    for k in range(10):
        second.send(f"b{k} ")
    await eventually(lambda: not second.is_open)
    first.finish()
    assert texts(await read_all(c, "chosen-id", 0)) == [f"a{k} " for k in range(5)]
