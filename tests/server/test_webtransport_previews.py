"""Datagram previews (docs/protocol.md §4.5): off by default, only for a request that asks, never instead of
the reliable stream, bounded when the path cannot carry them. Real server and client on this loop, and the
lossy UDP relay of ``tests.support.udp_relay`` where loss matters."""

from __future__ import annotations

import asyncio

import pytest
from aioquic.quic.configuration import QuicConfiguration

from tests.support.servers import wt_client, wt_server
from tests.support.udp_relay import UdpRelay
from tokenwire import FakeModel
from tokenwire.client.webtransport import WebTransportClient, WebTransportStreamReader
from tokenwire.server.config import WebTransportLimits

pytestmark = pytest.mark.usefixtures("no_leaks", "wt_engine")

PREVIEWS = WebTransportLimits(datagram_previews=True)


class Previews:
    """What ``on_preview`` was handed, and checks against what the stream delivered."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def __call__(self, seq: int, token: str) -> None:
        self.seen.append((seq, token))

    def check(self, reliable: list[str], first_seq: int = 1) -> None:
        """Each preview is the token the stream delivered at that seq; no seq twice, in increasing order."""
        seqs = [seq for seq, _ in self.seen]
        assert seqs == sorted(set(seqs))
        for seq, token in self.seen:
            assert token == reliable[seq - first_seq]


async def test_previews_are_off_by_default() -> None:
    model = FakeModel(seed=5)
    previews = Previews()
    async with wt_server(model=model) as server, wt_client(server) as client:
        reader = await client.generate("quiet", max_tokens=40, tokens_per_s=400, on_preview=previews)
        assert reader.previews is False  # asked for, not granted
        assert await reader.text() == "".join(model.tokens("quiet", 40))
        assert reader.previews_received == 0 and previews.seen == []
        assert server.metrics.previews_sent_total == 0


async def test_previews_only_for_the_stream_that_asks() -> None:
    model = FakeModel(seed=5)
    previews = Previews()
    async with wt_server(model=model, limits=PREVIEWS) as server, wt_client(server) as client:
        asked = await client.generate("asked", max_tokens=60, tokens_per_s=300, on_preview=previews)
        plain = await client.generate("plain", max_tokens=60, tokens_per_s=300)
        assert asked.previews is True and plain.previews is False
        got_asked, got_plain = await asyncio.gather(collect(asked), collect(plain))
        assert got_asked == model.tokens("asked", 60) and got_plain == model.tokens("plain", 60)
        assert plain.previews_received == 0
        assert asked.previews_received > 0 and previews.seen  # on loopback they arrive first
        previews.check(got_asked)
        assert server.metrics.previews_sent_total == asked.previews_received  # nothing lost on loopback


async def collect(reader: WebTransportStreamReader) -> list[str]:
    return [token async for token in reader]


async def test_under_loss_previews_are_hints_and_the_stream_stays_exact() -> None:
    """10% loss each way: previews arrive ahead of the retransmitted stream bytes or never; the reliable
    iteration still delivers every token once, and no preview contradicts it."""
    model = FakeModel(seed=5)
    previews = Previews()
    async with (
        wt_server(model=model, limits=PREVIEWS) as server,
        UdpRelay(("127.0.0.1", server.port), loss=0.1, delay=0.005, jitter=0.002, seed=3) as relay,
        wt_client(server, via=relay.address) as client,
    ):
        reader = await client.generate("lossy", max_tokens=300, tokens_per_s=200, on_preview=previews)
        got = await collect(reader)
        assert got == model.tokens("lossy", 300)
        assert reader.duplicates_dropped == 0 and model.calls == 1
        previews.check(got)
        assert 0 < reader.previewed_tokens < 300  # some previews lost, some tokens seen early
        assert relay.down.dropped > 0


async def test_a_resume_asks_again_and_an_oversized_replay_is_not_previewed() -> None:
    model = FakeModel(seed=5)
    previews = Previews()
    async with wt_server(model=model, limits=PREVIEWS) as server, wt_client(server) as client:
        first = await client.generate("backlog", max_tokens=400, tokens_per_s=0)  # unthrottled: all in the ring
        await first.text()
        stream_id, epoch = first.stream_id, first.epoch
        again = await client.attach(stream_id, epoch=epoch, after=10, on_preview=previews)
        assert again.previews is True
        assert await collect(again) == model.tokens("backlog", 400)[10:]
        # The replay (390 frames in one write) does not fit a datagram: dropped, counted, not sent.
        assert server.metrics.previews_dropped_total >= 1 and previews.seen == []


async def test_the_preview_queue_is_bounded_while_the_path_is_blackholed() -> None:
    """While nothing gets through, QUIC's congestion window fills and DATAGRAM frames wait: the server keeps
    at most ``max_pending_previews`` of them from one flush to the next and drops the older ones; the
    stream then catches up exactly."""
    model = FakeModel(seed=5)
    limits = WebTransportLimits(datagram_previews=True, max_pending_previews=8)
    previews = Previews()
    async with (
        wt_server(model=model, limits=limits) as server,
        UdpRelay(("127.0.0.1", server.port)) as relay,
        wt_client(server, via=relay.address) as client,
    ):
        reader = await client.generate("blackhole", max_tokens=1500, tokens_per_s=1000, on_preview=previews)
        got = [await anext(reader) for _ in range(20)]
        (conn,) = server.connections
        relay.blackhole()
        most = 0
        for _ in range(80):  # 0.8 s of generation into a dead path: more than the congestion window
            await asyncio.sleep(0.01)
            most = max(most, conn.pending_previews())
        relay.blackhole(on=False)
        got += await collect(reader)
        assert got == model.tokens("blackhole", 1500)
        assert 0 < most <= 8 + 1  # the kept backlog, and this flush's preview of the one stream
        assert server.metrics.previews_dropped_total > 0
        previews.check(got)


async def test_many_previewed_streams_on_one_session_lose_no_preview_on_a_clear_path() -> None:
    """One engine step writes a preview for each of 100 streams in one flush: more than
    ``max_pending_previews``, all sent (the bound is on what waits from one flush to the next)."""
    model = FakeModel(seed=5)
    n = 100
    async with (
        wt_server(model=model, limits=PREVIEWS, engine_steps_per_s=50) as server,
        wt_client(server) as client,
    ):
        readers = [
            await client.generate(f"many {i}", max_tokens=20, on_preview=lambda seq, token: None) for i in range(n)
        ]
        texts = await asyncio.gather(*(collect(r) for r in readers))
        assert texts == [model.tokens(f"many {i}", 20) for i in range(n)]
        assert server.metrics.previews_dropped_total == 0
        assert sum(r.previews_received for r in readers) == server.metrics.previews_sent_total > 20 * n // 2


class SmallDatagramsClient(WebTransportClient):
    """A peer that takes only tiny DATAGRAM frames (its transport parameter says 64 bytes)."""

    def _configuration(self) -> QuicConfiguration:
        configuration = super()._configuration()
        configuration.max_datagram_frame_size = 64
        return configuration


async def test_previews_respect_the_peers_datagram_size_limit() -> None:
    """A preview that would exceed the peer's ``max_datagram_frame_size`` is dropped, not sent: aioquic (and
    RFC 9221) close the whole connection over a DATAGRAM frame larger than announced."""
    model = FakeModel(seed=5)
    async with wt_server(model=model, limits=PREVIEWS) as server:
        async with SmallDatagramsClient(server.url, server_certificate_hashes=[server.certificate.sha256]) as client:
            reader = await client.generate("x" * 10, max_tokens=200, tokens_per_s=0, on_preview=Previews())
            assert await collect(reader) == model.tokens("x" * 10, 200)
            assert client.connections == 1 and reader.reconnects == 0
        assert server.metrics.previews_dropped_total > 0
