"""The WebTransport server end to end over UDP on 127.0.0.1, with the Python aioquic client."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aioquic.h3.connection import Setting
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import generates, read_n, sse_server, wt_client, wt_server
from tests.support.servers import wt_engine as default_engine
from tokenwire import (
    EpochMismatch,
    FakeModel,
    FrameError,
    Hub,
    MemoryStorage,
    RemoteProtocolError,
    ResumeExpired,
    ResumeFromFuture,
    StreamNotFound,
    StreamState,
)
from tokenwire.client import SseClient
from tokenwire.client.sse import ConnectionFailed
from tokenwire.client.webtransport import (
    CertificateMismatch,
    SessionTicketStore,
    WebTransportClient,
)
from tokenwire.protocol.webtransport import (
    REQUEST_START,
    SETTINGS_ENABLE_WEBTRANSPORT,
    SETTINGS_WT_ENABLED,
    SETTINGS_WT_MAX_SESSIONS,
    RequestTooLarge,
)
from tokenwire.server.certs import make_dev_certificate
from tokenwire.server.config import ServerConfig, WebTransportLimits
from tokenwire.server.native import NativeWebTransportServer

pytestmark = pytest.mark.usefixtures("no_leaks", "wt_engine")


async def test_whole_stream_equals_the_model_tokens() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server) as client:
        reader = await client.generate("hello", max_tokens=40, tokens_per_s=4000)
        assert reader.epoch == server.hub.epoch and reader.position == 0
        assert [t async for t in reader] == model.tokens("hello", 40)
        assert reader.done is not None and reader.done["reason"] == "length"
        assert reader.position == 41  # 40 tokens and the final frame
        assert reader.last_event_id == f"{reader.stream_id}:{server.hub.epoch}:41"
        m = server.metrics
        assert (m.sessions_total, m.streams_started_total, m.bad_requests_total) == (1, 1, 0)
        assert m.tokens_sent_total == 41 and m.ttft.count == 1
        assert b'tokenwire_sessions_total{protocol="webtransport"} 1.0' in server.render_metrics()


async def test_many_token_streams_multiplexed_on_one_session() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server) as client:
        prompts = [f"prompt {i}" for i in range(24)]
        readers = await asyncio.gather(*(client.generate(p, max_tokens=30, tokens_per_s=1000) for p in prompts))
        texts = await asyncio.gather(*(r.text() for r in readers))
        assert texts == ["".join(model.tokens(p, 30)) for p in prompts]
        assert len({r.stream_id for r in readers}) == 24
        assert client.connections == 1
        assert (server.metrics.connections_total, server.metrics.sessions_total) == (1, 1)
        # Frames of many streams leave together: far fewer flusher runs than frames written.
        assert server.flusher.runs < server.metrics.tokens_sent_total / 2


async def test_connection_dropped_mid_stream_resumes_exactly_once_with_0rtt() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server) as client:
        reader = await client.generate("resume me", max_tokens=120, tokens_per_s=600)
        got = await read_n(reader, 10)
        client.drop()  # CONNECTION_CLOSE, as a network failure would end it
        got += [t async for t in reader]
        assert got == model.tokens("resume me", 120)
        assert model.calls == 1
        assert reader.reconnects == 1
        assert client.connections == 2
        assert server.metrics.resumes_total == 1
        # The second connection resumed the TLS session and sent its attach in 0-RTT early data.
        assert client.sessions_resumed == 1 and client.early_data_accepted == 1
        # ... which the server answered once the handshake had completed (no session from early data).
        assert server.metrics.early_sessions_total == 1
        assert server.metrics.early_requests_total == 1
        assert server.metrics.resumes_total == 1


async def test_a_start_in_early_data_waits_for_the_handshake() -> None:
    model = FakeModel(seed=5)
    tickets = SessionTicketStore()
    async with wt_server(model=model) as server:
        async with wt_client(server, tickets=tickets) as first:
            await first.wait_connected()
            await asyncio.sleep(0.05)  # the ticket arrives after the handshake
        assert len(tickets) == 1
        async with wt_client(server, tickets=tickets) as second:
            reader = await second.generate("early", max_tokens=20, tokens_per_s=4000)
            assert await reader.text() == "".join(model.tokens("early", 20))
            assert second.early_data_accepted == 1
        assert server.metrics.deferred_starts_total == 1 and server.metrics.early_sessions_total == 1
        assert model.calls == 1


async def test_no_session_tickets_no_resumption_and_no_0rtt() -> None:
    """``max_session_tickets=0`` turns resumption and 0-RTT off on either engine: the server sends no ticket, so
    a second connection does a full handshake and its start waits for it."""
    model = FakeModel(seed=5)
    tickets = SessionTicketStore()
    async with wt_server(model=model, limits=WebTransportLimits(max_session_tickets=0)) as server:
        async with wt_client(server, tickets=tickets) as first:
            await generates(first, model, "first")
        assert len(tickets) == 0
        async with wt_client(server, tickets=tickets) as second:
            await generates(second, model, "second")
            assert (second.sessions_resumed, second.early_data_accepted) == (0, 0)
        m = server.metrics
        assert (m.early_sessions_total, m.deferred_starts_total, model.calls) == (0, 0, 2)


async def test_switch_protocols_mid_answer_webtransport_sse_webtransport() -> None:
    model = FakeModel(seed=5)
    hub = Hub()
    async with sse_server(hub, model=model) as sse, wt_server(hub, model=model) as wt:
        async with wt_client(wt) as client:
            reader = await client.generate("switch", max_tokens=200, tokens_per_s=400)
            got = await read_n(reader, 15)
            await reader.aclose()
            stream_id, epoch, pos = reader.stream_id, reader.epoch, reader.position

        async with SseClient(f"http://127.0.0.1:{sse.port}") as sse_client:
            over_sse = await sse_client.attach(stream_id, last_event_id=f"{stream_id}:{epoch}:{pos}")
            # Whole batches: the SSE reader's position counts the tokens it has parsed, handed out or not.
            async for batch in over_sse.batches():
                got += batch
                if len(got) >= 40:
                    break
            sse_position = over_sse.position
            await over_sse.aclose()

        async with wt_client(wt) as client:
            again = await client.attach(stream_id, epoch=epoch, after=sse_position)
            got += [t async for t in again]
            done = again.done or over_sse.done  # (a loaded machine may have let SSE read to the end)
            assert done is not None and done["reason"] == "length"
        assert got == model.tokens("switch", 200)
        assert model.calls == 1
        assert hub.get(stream_id).state is StreamState.FINISHED


async def test_bad_inputs_get_typed_errors_and_the_session_goes_on() -> None:
    model = FakeModel(seed=5)
    # A small ring in bytes: 5 of the long tokens below, but every frame of the model's short ones.
    storage = MemoryStorage(max_bytes_per_stream=1000)
    limits = WebTransportLimits(max_request_bytes=256)
    async with wt_server(Hub(storage), model=model, limits=limits) as server, wt_client(server) as client:
        hub = server.hub
        busy = await client.generate("keeps going", max_tokens=60, tokens_per_s=300)
        ended = hub.create_stream()
        ended.send_many([f"t{i}".ljust(190) for i in range(20)])
        ended.finish()

        with pytest.raises(FrameError, match="unknown message kind") as frame_error:
            await client.request_raw(b"\x01\x01\x02hi")
        assert frame_error.value.status_hint == 400
        with pytest.raises(FrameError, match="UTF-8 JSON"):
            await client.request_raw(bytes([REQUEST_START, 3]) + b"{x}")
        with pytest.raises(RequestTooLarge):
            await client.generate("x" * 1000)
        with pytest.raises(RemoteProtocolError, match="'max_tokens'"):
            await client.generate("x", max_tokens=0)
        with pytest.raises(StreamNotFound):
            await client.attach("no-such-stream")
        with pytest.raises(ResumeExpired) as expired:
            await client.attach(ended.id, epoch=hub.epoch, after=1)
        assert expired.value.oldest_seq == ended.oldest_seq > 2
        with pytest.raises(EpochMismatch) as mismatch:
            await client.attach(ended.id, epoch="another", after=18)
        assert mismatch.value.expected == hub.epoch
        with pytest.raises(ResumeFromFuture):
            await client.attach(ended.id, epoch=hub.epoch, after=99)

        # What is still held is served; nothing left is an empty, finished reader.
        tail = await client.attach(ended.id, epoch=hub.epoch, after=18)
        assert [t.strip() async for t in tail] == ["t18", "t19"] and tail.done == {"reason": "stop"}
        nothing = await client.attach(ended.id, epoch=hub.epoch, after=21)
        assert [t async for t in nothing] == [] and nothing.done is None

        # The session's other stream was never disturbed.
        assert await busy.text() == "".join(model.tokens("keeps going", 60))
        assert busy.reconnects == 0
        assert client.connections == 1
        assert server.metrics.bad_requests_total == 8


async def test_cancel_stops_generation_and_closing_a_stream_does_not() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server) as client:
        reader = await client.generate("long", max_tokens=10_000, tokens_per_s=200)
        await read_n(reader, 3)
        await reader.aclose()  # STOP_SENDING: the server detaches, the model goes on
        stream = server.hub.get(reader.stream_id)
        position = stream.last_seq
        await asyncio.sleep(0.1)
        assert stream.is_open and stream.last_seq > position
        assert stream.subscribers == 0

        watcher = await client.attach(reader.stream_id, epoch=reader.epoch, after=reader.position)
        await read_n(watcher, 2)
        await client.cancel(reader.stream_id)
        rest = [t async for t in watcher]
        # A Hub.start producer's cancel reports the tokens it produced: every frame before the done one.
        assert watcher.done == {"reason": "cancelled", "usage": {"completion_tokens": stream.last_seq - 1}}
        assert stream.state is StreamState.CANCELLED
        assert len(rest) < 10_000
        with pytest.raises(StreamNotFound):
            await client.cancel("no-such-stream")


async def test_session_and_stream_limits() -> None:
    limits = WebTransportLimits(max_sessions=1, max_streams_per_session=2)
    async with wt_server(limits=limits) as server, wt_client(server) as client:
        a = await client.generate("a", max_tokens=20, tokens_per_s=100)
        b = await client.generate("b", max_tokens=20, tokens_per_s=100)
        with pytest.raises(RemoteProtocolError, match="too many streams") as too_many:
            await client.generate("c", max_tokens=5)
        assert too_many.value.status_hint == 503
        async with wt_client(server, max_retries=0) as other:
            with pytest.raises(RemoteProtocolError, match="HTTP 429"):
                await other.generate("d", max_tokens=5)
        assert server.metrics.sessions_refused_total == 1
        assert len(await a.text()) > 0 and len(await b.text()) > 0
        later = await client.generate("e", max_tokens=5, tokens_per_s=1000)  # streams freed: room again
        assert len(await later.text()) > 0


async def test_certificates_pinned_by_hash_or_trusted_as_a_root() -> None:
    cert = make_dev_certificate()
    parsed = x509.load_pem_x509_certificate(cert.cert_pem)
    assert isinstance(parsed.public_key(), ec.EllipticCurvePublicKey)
    assert parsed.public_key().curve.name == "secp256r1"  # type: ignore[attr-defined]
    assert parsed.not_valid_after_utc - parsed.not_valid_before_utc < datetime.timedelta(days=14)
    assert len(cert.sha256) == 32
    with pytest.raises(ValueError, match="14 days"):
        make_dev_certificate(valid_for=datetime.timedelta(days=14))

    model = FakeModel(seed=5)
    async with wt_server(model=model) as server:
        assert server.certificate_info()["sha256"] == server.certificate.sha256_hex
        async with wt_client(server, server_certificate_hashes=[], cadata=server.certificate.cert_pem) as client:
            reader = await client.generate("trusted", max_tokens=5, tokens_per_s=4000)
            assert await reader.text() == "".join(model.tokens("trusted", 5))
        async with wt_client(server, server_certificate_hashes=[cert.sha256]) as wrong:
            with pytest.raises(CertificateMismatch):
                await wrong.generate("pinned elsewhere", max_tokens=5)


async def test_the_server_announces_every_drafts_webtransport_settings() -> None:
    limits = WebTransportLimits(max_sessions_per_connection=4)
    async with wt_server(limits=limits) as server, wt_client(server) as client:
        reader = await client.generate("settings", max_tokens=2, tokens_per_s=4000)
        assert len(await reader.text()) > 0  # the SETTINGS frame came before any reply
        assert client._conn is not None
        settings = client._conn.h3.received_settings or {}
        assert settings[Setting.ENABLE_CONNECT_PROTOCOL] == 1 and settings[Setting.H3_DATAGRAM] == 1
        assert settings[SETTINGS_ENABLE_WEBTRANSPORT] == 1  # drafts 02-06 (Chromium)
        assert settings[SETTINGS_WT_MAX_SESSIONS] == 4  # draft 14 (Safari)
        assert settings[SETTINGS_WT_ENABLED] == 1  # draft 15 on (webtransport-go v0.11 on)


async def test_shutdown_resets_streams_and_clients_see_a_typed_end() -> None:
    async with wt_server() as server:
        client = wt_client(server, max_retries=1)
        reader = await client.generate("bye", max_tokens=1000, tokens_per_s=100)
        await read_n(reader, 2)
        await server.shutdown(drain_timeout=0)
        with pytest.raises(ConnectionFailed):  # reset with SHUTDOWN, then nobody answers the resume
            async for _ in reader:
                pass
        assert server.metrics.streams_reset_total == 1
        await client.aclose()


async def test_a_small_send_buffer_pauses_and_wakes_streams_without_loss() -> None:
    model = FakeModel(seed=5)
    async with (
        wt_server(model=model, limits=WebTransportLimits(stream_buffer_high=16)) as server,
        wt_client(server) as client,
    ):
        readers = await asyncio.gather(*(client.generate(f"p{i}", max_tokens=25) for i in range(4)))
        texts = await asyncio.gather(*(r.text() for r in readers))
        assert texts == ["".join(model.tokens(f"p{i}", 25)) for i in range(4)]
        assert all(r.reconnects == 0 for r in readers)


async def test_a_reader_that_stops_acknowledging_is_cut_and_resumes() -> None:
    model = FakeModel(seed=5)
    limits = WebTransportLimits(stream_buffer_high=256)
    async with wt_server(model=model, limits=limits, stall_timeout=0.2) as server, wt_client(server) as client:
        reader = await client.generate("slow", max_tokens=400, tokens_per_s=1000)
        got = await read_n(reader, 5)
        conn = client._conn
        assert conn is not None
        receive = conn.datagram_received
        conn.datagram_received = lambda data, addr: None  # type: ignore[method-assign]  # deaf: no ACKs
        await asyncio.sleep(1.3)  # past stall_timeout and the server's once-a-second check
        conn.datagram_received = receive  # type: ignore[method-assign]
        got += [t async for t in reader]
        assert got == model.tokens("slow", 400)
        assert model.calls == 1
        assert server.metrics.backpressure_closes_total == 1 and server.metrics.streams_reset_total == 1
        assert reader.reconnects == 1 and client.connections == 1


@contextlib.asynccontextmanager
async def tokenwire_serve(*args: str) -> AsyncIterator[tuple[int, WebTransportClient]]:
    """``tokenwire serve --port 0 --tokens-per-s 0 ARGS`` in a subprocess: its SSE port and a WebTransport client
    pinned to the certificate hash it prints; it must exit cleanly on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenwire", "serve", "--port", "0", "--tokens-per-s", "0",
        "--wt-engine", default_engine.current, *args,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            sse_line = (await proc.stdout.readline()).decode()
            wt_line = (await proc.stdout.readline()).decode()
        port = re.search(r"http://127\.0\.0\.1:(\d+) ", sse_line)
        pinned = re.search(r"(https://\S+) \(UDP\).* sha-256 ([0-9a-f]{64})", wt_line)
        assert port and pinned, (sse_line, wt_line)
        assert pinned[1] == f"https://127.0.0.1:{port[1]}/v1/webtransport"
        async with WebTransportClient(pinned[1], server_certificate_hashes=[bytes.fromhex(pinned[2])]) as client:
            yield int(port[1]), client
    finally:
        proc.terminate()
        assert await proc.wait() == 0


@pytest.mark.parametrize("previews", [False, True], ids=["default", "datagram-previews"])
async def test_tokenwire_serve_adds_webtransport_on_the_same_port_number(previews: bool) -> None:
    async with tokenwire_serve(*(["--datagram-previews"] if previews else [])) as (_, client):
        reader = await client.generate("cli", max_tokens=12, on_preview=lambda seq, token: None)
        assert reader.previews is previews  # asked for; granted only with --datagram-previews
        assert await reader.text() == "".join(FakeModel(seed=0).tokens("cli", 12))


async def test_tokenwire_serve_metrics_show_both_protocols() -> None:
    """One ``GET /metrics`` of ``tokenwire serve`` renders the WebTransport series beside the SSE ones."""
    async with tokenwire_serve("--datagram-previews") as (port, client):
        readers = [await client.generate(f"m{i}", max_tokens=5, on_preview=lambda seq, token: None) for i in range(30)]
        texts = await asyncio.gather(*(r.text() for r in readers))
        assert texts == ["".join(FakeModel(seed=0).tokens(f"m{i}", 5)) for i in range(30)]
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/healthz")
            scrape = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert scrape.status_code == 200
    samples = {
        (s.name, s.labels.get("protocol")): s.value
        for family in text_string_to_metric_families(scrape.text)
        for s in family.samples
    }
    wt = "webtransport"
    assert samples[("tokenwire_sessions_total", wt)] == 1
    assert samples[("tokenwire_streams_started_total", wt)] == 30
    assert samples[("tokenwire_requests_total", wt)] == 30
    assert samples[("tokenwire_tokens_sent_total", wt)] == 30 * 6  # 5 tokens and the final frame each
    assert samples[("tokenwire_time_to_first_token_seconds_count", wt)] == 30
    assert ("tokenwire_previews_dropped_total", wt) in samples and ("tokenwire_previews_sent_total", wt) in samples
    assert samples[("tokenwire_requests_total", "sse")] == 2  # /healthz and this scrape
    assert samples[("tokenwire_streams_started_total", "sse")] == 0
    # The hub's gauges are the same for both servers: rendered once.
    assert ("tokenwire_open_streams", "sse") in samples and ("tokenwire_open_streams", wt) not in samples
    # One family per name (the exposition format allows no repeats): both protocols are samples of it.
    types = [line for line in scrape.text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))


async def test_sse_server_names_webtransport_without_alt_svc() -> None:
    """``tokenwire serve`` runs both: the certificate endpoint names the URL and hash; SSE responses carry no
    ``Alt-Svc``, since HTTP/3 serves only the WebTransport CONNECT (a browser would move its fetches there)."""
    async with sse_server() as sse:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{sse.port}/v1/webtransport/certificate")
            assert r.status_code == 404
        async with wt_server(sse.hub) as wt:
            sse.webtransport = wt
            stream = sse.hub.create_stream()
            stream.send("x")
            stream.finish()
            async with httpx.AsyncClient() as client:
                info = (await client.get(f"http://127.0.0.1:{sse.port}/v1/webtransport/certificate")).json()
                events = await client.get(f"http://127.0.0.1:{sse.port}/v1/streams/{stream.id}/events")
            assert info == wt.certificate_info()
            assert len(bytes.fromhex(info["sha256"])) == 32
            assert events.status_code == 200
            assert "alt-svc" not in events.headers
            sse.webtransport = None


@pytest.mark.parametrize(
    ("options", "max_ack_delay"),
    [
        ({}, 0.025),  # aioquic's defaults: ACK after 1 ms, announced max_ack_delay 25 ms
        ({"batch_transmit": False}, 0.025),  # aioquic's transmit after every datagram
        ({"ack_delay": 0.1}, 0.1),  # fewer ACKs, and the server is told
    ],
    ids=["default", "transmit-per-datagram", "ack-delay-100ms"],
)
async def test_client_transmit_and_ack_options_keep_the_stream_exact(
    options: dict[str, object], max_ack_delay: float, wt_engine: str
) -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server, **options) as client:
        readers = [await client.generate(f"opt {i}", max_tokens=80, tokens_per_s=400) for i in range(4)]
        texts = await asyncio.gather(*(r.text() for r in readers))
        assert texts == ["".join(model.tokens(f"opt {i}", 80)) for i in range(4)]
        if wt_engine == "native":
            return  # what the client announced is checked in aioquic's server state below
        (conn,) = server.connections
        assert conn._quic._loss.max_ack_delay == pytest.approx(max_ack_delay)


@pytest.mark.parametrize("ack_delay", [0.0, -1.0, 1.5])
def test_client_ack_delay_is_checked(ack_delay: float) -> None:
    with pytest.raises(ValueError, match="ack_delay"):
        WebTransportClient("https://127.0.0.1:9/v1/webtransport", ack_delay=ack_delay)


async def test_the_native_servers_timer_stands_at_the_engine_deadline_never_before_it(wt_engine: str) -> None:
    """The native server's one timer fires at the engine's next deadline rounded up to the loop's millisecond:
    never before it (a wake-up before it finds nothing due and only re-arms), less than 1 ms after it; checked
    between the server's wake-ups and flushes while a stream runs (its ACKs move the deadline)."""
    if wt_engine != "native":
        pytest.skip("aioquic's server has a timer per connection")
    model = FakeModel(seed=11)
    async with wt_server(model=model) as server, wt_client(server) as client:
        assert isinstance(server, NativeWebTransportServer)
        reader = await client.generate("timer", max_tokens=120, tokens_per_s=200)
        checked = 0
        async for _ in reader:
            before = time.monotonic()
            delay = server.engine.next_timeout()
            after = time.monotonic()
            if not delay:  # none, or due already (its timer fires on this loop iteration): nothing to check
                continue
            # The deadline lies between these two (the engine read its clock between them, even if this process
            # was preempted there); 0.1 ms for the two clocks' own reading.
            earliest, latest = before + delay, after + delay
            assert server._timer is not None
            assert earliest - 1e-4 <= server._timer_at < latest + 1e-3 + 1e-4
            checked += 1
        assert checked >= 10  # most of the 120 tokens (a loaded machine may find more deadlines due)


def test_the_engine_setting_is_checked() -> None:
    assert ServerConfig().wt_engine == "native"
    assert ServerConfig(wt_engine="aioquic").wt_engine == "aioquic"
    with pytest.raises(ValueError, match="wt_engine is one of aioquic, native"):
        ServerConfig(wt_engine="quiche")  # type: ignore[arg-type]
