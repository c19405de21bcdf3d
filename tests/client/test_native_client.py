"""``WebTransportClient(engine="native")``: tokenwire's Rust QUIC engine as the client, against tokenwire's
WebTransport server on each engine (the ``wt_engine`` fixture): aioquic's (the interop pair "aioquic server,
native client") and the native one, over UDP on 127.0.0.1.

Start, many streams on one session, resume after a dropped connection, a server RESET_STREAM and a client cut,
0-RTT on a resumed connection (accepted, and refused then sent again), cancel, typed error replies, certificates,
credentials, datagram previews, migration, and exactly-once through a lossy relay with forced cuts."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.support.servers import generates, read_n, wt_client, wt_server
from tests.support.udp_relay import UdpRelay, until
from tokenwire import FakeModel, Hub, MemoryStorage, ResumeExpired, StreamNotFound, Unauthorized
from tokenwire.auth import ApiKeys
from tokenwire.client.native import NativeClientEngine
from tokenwire.client.sse import ConnectionFailed
from tokenwire.client.webtransport import CertificateMismatch, WebTransportClient
from tokenwire.errors import FrameError
from tokenwire.server.certs import make_dev_certificate
from tokenwire.server.config import WebTransportLimits
from tokenwire.server.webtransport import WebTransportServer

pytestmark = pytest.mark.usefixtures("no_leaks", "wt_engine")


def native(server: WebTransportServer, **options: Any) -> WebTransportClient:
    options.setdefault("engine", "native")
    return wt_client(server, **options)


async def test_streams_on_one_native_session_equal_the_model_tokens() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, native(server) as client:
        reader = await client.generate("hello", max_tokens=40, tokens_per_s=4000)
        assert [t async for t in reader] == model.tokens("hello", 40)
        assert reader.done is not None and reader.done["reason"] == "length" and reader.position == 41
        prompts = [f"prompt {i}" for i in range(16)]
        readers = await asyncio.gather(*(client.generate(p, max_tokens=30, tokens_per_s=1000) for p in prompts))
        assert await asyncio.gather(*(r.text() for r in readers)) == ["".join(model.tokens(p, 30)) for p in prompts]
        assert client.connections == 1
        assert (server.metrics.connections_total, server.metrics.sessions_total) == (1, 1)
        assert await client.wait_connected() is None  # no TLS session facts on the native engine


async def test_a_cut_stream_and_a_dropped_connection_resume_exactly_once() -> None:
    """The client resets its request stream (the load generator's forced cut of a shared session): the reader
    attaches again on a new stream of the same session after the last seq it had. Then the connection drops
    (CONNECTION_CLOSE, as a network failure would end it): the reader resumes on a new connection."""
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, native(server) as client:
        reader = await client.generate("cut", max_tokens=150, tokens_per_s=500)
        got = await read_n(reader, 10)
        stream = reader._stream
        assert stream is not None
        stream.abort()
        got += await read_n(reader, 10)
        assert (reader.reconnects, client.connections, server.metrics.resumes_total) == (1, 1, 1)
        client.drop()
        got += [t async for t in reader]
        assert got == model.tokens("cut", 150)
        assert (reader.reconnects, client.connections, server.metrics.resumes_total) == (2, 2, 2)
        assert server.metrics.connections_total == 2 and model.calls == 1


async def test_a_reconnect_resumes_the_tls_session_and_sends_its_attach_in_0rtt() -> None:
    """The connection drops mid-stream: the new one resumes with the ticket the server sent, and the attach
    leaves in 0-RTT early data, which the server answers once the handshake has completed."""
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, native(server) as client:
        reader = await client.generate("resume me", max_tokens=120, tokens_per_s=600)
        got = await read_n(reader, 10)
        assert (client.sessions_resumed, client.early_data_accepted) == (0, 0)  # the first connection: full
        client.drop()
        got += [t async for t in reader]
        assert got == model.tokens("resume me", 120) and model.calls == 1
        assert (client.connections, reader.reconnects) == (2, 1)
        assert (client.sessions_resumed, client.early_data_accepted) == (1, 1)
        m = server.metrics
        assert (m.early_sessions_total, m.early_requests_total, m.resumes_total) == (1, 1, 1)


async def test_a_start_in_0rtt_runs_once_and_a_refused_one_is_sent_again() -> None:
    """Clients of one shared engine share its tickets. A start sent in 0-RTT on a resumed connection runs once,
    after the handshake. Then a server that never issued the ticket (same certificate and name: a restarted
    server) refuses the early data: the client sends the CONNECT and the start again after the handshake, and
    the model runs once there too."""
    model = FakeModel(seed=5)
    certificate = make_dev_certificate()
    engine = NativeClientEngine(server_certificate_hashes=[certificate.sha256])
    try:
        async with wt_server(model=model, certificate=certificate) as server:
            async with native(server, engine=engine) as first:
                await generates(first, model, "ticket")
            async with native(server, engine=engine) as second:
                await generates(second, model, "early")
                assert second.early_data_accepted == 1
            m = server.metrics
            assert (m.early_sessions_total, m.deferred_starts_total, model.calls) == (1, 1, 2)
        assert engine.stats()["early_data_accepted"] == 1

        async with wt_server(model=model, certificate=certificate) as restarted:
            async with native(restarted, engine=engine) as third:
                await generates(third, model, "refused")
                assert (third.early_data_accepted, third.connections) == (0, 1)
            m = restarted.metrics
            assert (m.early_sessions_total, m.deferred_starts_total, m.streams_started_total) == (0, 0, 1)
        assert engine.stats()["early_data_rejected"] == 1 and model.calls == 3
    finally:
        engine.close()


async def test_a_server_reset_of_a_stalled_reader_resumes() -> None:
    """The link dies for 1.3 s (a relay blackhole): nothing acknowledged, so the server's stall check resets
    the stream (RESET_STREAM, once the link is back); the native client attaches after its last seq, on the
    same connection."""
    model = FakeModel(seed=5)
    limits = WebTransportLimits(stream_buffer_high=256)
    async with (
        wt_server(model=model, limits=limits, stall_timeout=0.2) as server,
        UdpRelay(("127.0.0.1", server.port)) as relay,
        native(server, via=relay.address) as client,
    ):
        reader = await client.generate("slow", max_tokens=400, tokens_per_s=1000)
        got = await read_n(reader, 5)
        relay.blackhole(True)
        await asyncio.sleep(1.3)  # past stall_timeout and the server's once-a-second check
        relay.blackhole(False)
        got += [t async for t in reader]
        metrics = server.metrics
        assert (metrics.backpressure_closes_total, metrics.streams_reset_total, metrics.resumes_total) == (1, 1, 1)
        assert got == model.tokens("slow", 400) and model.calls == 1
        assert reader.reconnects == 1 and client.connections == 1


async def test_cancel_and_typed_error_replies() -> None:
    model = FakeModel(seed=5)
    storage = MemoryStorage(max_bytes_per_stream=1000)
    async with wt_server(Hub(storage), model=model) as server, native(server) as client:
        reader = await client.generate("long", max_tokens=10_000, tokens_per_s=200)
        await read_n(reader, 3)
        await client.cancel(reader.stream_id)
        await reader.text()
        assert reader.done is not None and reader.done["reason"] == "cancelled"
        with pytest.raises(StreamNotFound) as not_found:
            await client.attach("no-such-stream")
        assert not_found.value.status_hint == 404
        with pytest.raises(StreamNotFound):
            await client.cancel("no-such-stream")
        with pytest.raises(FrameError, match="unknown message kind"):
            await client.request_raw(b"\x01\x01\x02hi")
        ended = server.hub.create_stream()
        ended.send_many([f"t{i}".ljust(190) for i in range(20)])
        ended.finish()
        with pytest.raises(ResumeExpired):
            await client.attach(ended.id, epoch=server.hub.epoch, after=1)
        assert client.connections == 1  # the session went on through every error


async def test_a_server_shutdown_ends_the_reader_with_a_typed_error() -> None:
    """The server shuts down mid-stream: its reset (SHUTDOWN) makes the reader resume, nobody answers, and the
    iteration ends with ``ConnectionFailed`` after the tokens it had."""
    model = FakeModel(seed=5)
    # One unconnected socket for every connection: no ICMP "port unreachable" ends a try early (as on
    # aioquic's connected sockets), the connect timeout does.
    async with wt_server(model=model) as server, native(server, max_retries=1, connect_timeout=0.5) as client:
        reader = await client.generate("bye", max_tokens=1000, tokens_per_s=100)
        got = await read_n(reader, 2)
        await server.shutdown(drain_timeout=0)
        assert server.metrics.streams_reset_total == 1
        with pytest.raises(ConnectionFailed):
            got += [t async for t in reader]
        assert got == model.tokens("bye", 1000)[: len(got)] and reader.position >= 2


async def test_certificates_by_hash_or_root_and_a_mismatch() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server:
        async with native(server, server_certificate_hashes=[], cadata=server.certificate.cert_pem) as client:
            reader = await client.generate("trusted", max_tokens=5, tokens_per_s=4000)
            assert await reader.text() == "".join(model.tokens("trusted", 5))
        other = make_dev_certificate()
        async with native(server, server_certificate_hashes=[other.sha256], max_retries=0) as wrong:
            with pytest.raises(CertificateMismatch, match="invalid peer certificate"):
                await wrong.generate("pinned elsewhere", max_tokens=5)
    with pytest.raises(ValueError, match="server_certificate_hashes or cadata"):
        WebTransportClient("https://127.0.0.1:1/v1/webtransport", verify=False, engine="native")
    with pytest.raises(ValueError, match="engine must be"):
        WebTransportClient("https://127.0.0.1:1/v1/webtransport", engine="quiche")


ALICE, BOB, NOBODY = "alice-key-0123456789", "bob-key-9876543210", "nobody-key-000000000"


async def test_credentials_on_the_native_connect() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model, auth=ApiKeys([ALICE, BOB])) as server:
        async with native(server, access_token=NOBODY) as refused:
            with pytest.raises(Unauthorized):
                await refused.generate("x", max_tokens=2)
        async with native(server, access_token=ALICE) as client:
            reader = await client.generate("wt", max_tokens=5, tokens_per_s=0)
            assert await reader.text() == "".join(model.tokens("wt", 5))
        assert server.metrics.sessions_refused_total == 1


async def test_datagram_previews_reach_the_native_client() -> None:
    model = FakeModel(seed=5)
    seen: list[tuple[int, str]] = []
    limits = WebTransportLimits(datagram_previews=True)
    async with wt_server(model=model, limits=limits) as server, native(server) as client:
        reader = await client.generate(
            "preview", max_tokens=30, tokens_per_s=200, on_preview=lambda seq, t: seen.append((seq, t))
        )
        assert await reader.text() == "".join(model.tokens("preview", 30))
        assert reader.previews and reader.previews_received > 0
        tokens = model.tokens("preview", 30)
        assert all(tokens[seq - 1] == text for seq, text in seen)


async def test_one_shared_engine_carries_many_clients_and_moves_them_all() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server:
        shared = NativeClientEngine(server_certificate_hashes=[server.certificate.sha256])
        try:
            clients = [native(server, engine=shared) for _ in range(4)]
            readers = [await c.generate(f"p{i}", max_tokens=60, tokens_per_s=300) for i, c in enumerate(clients)]
            got = [await read_n(r, 5) for r in readers]
            old = shared.local_address
            new = await clients[0].rebind()  # migration: the engine's one socket, so every connection
            assert new != old and shared.local_address == new
            for i, (r, g) in enumerate(zip(readers, got, strict=True)):
                assert g + [t async for t in r] == model.tokens(f"p{i}", 60)
                assert r.reconnects == 0
            assert server.metrics.connections_total == 4 and len(shared.conns) == 4
            assert shared.stats()["bytes_in"] > 0
            for c in clients:
                await c.aclose()
            assert not shared.closed  # a shared engine is its owner's to close
        finally:
            shared.close()


async def test_exactly_once_through_a_lossy_relay_with_forced_cuts() -> None:
    """Loss, reordering and duplicates between the native client and the aioquic server, while the client
    drops its connection or cuts a request stream at random moments: every stream ends with exactly the
    model's tokens, in order, none twice."""
    model = FakeModel(seed=5)
    rng = random.Random(7)
    async with (
        asyncio.timeout(60),
        wt_server(model=model) as server,
        UdpRelay(
            ("127.0.0.1", server.port), loss=0.03, delay=0.002, jitter=0.002, reorder=0.05, duplicate=0.02, seed=3
        ) as relay,
        native(server, via=relay.address, idle_timeout=5.0) as client,
    ):
        prompts = [f"lossy {i}" for i in range(8)]
        readers = await asyncio.gather(*(client.generate(p, max_tokens=150, tokens_per_s=300) for p in prompts))

        async def cuts() -> None:
            for k in range(6):
                await asyncio.sleep(rng.uniform(0.05, 0.15))
                if k % 3 == 2:
                    client.drop()
                else:
                    stream = rng.choice(readers)._stream
                    if stream is not None:
                        stream.abort()

        texts, _ = await asyncio.gather(asyncio.gather(*(r.text() for r in readers)), cuts())
        assert texts == ["".join(model.tokens(p, 150)) for p in prompts]
        assert model.calls == len(prompts)
        assert sum(r.reconnects for r in readers) >= 4
        await until(lambda: relay.up.dropped + relay.down.dropped > 0)
