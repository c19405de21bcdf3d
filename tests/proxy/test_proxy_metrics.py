"""The proxy's metrics (``tokenwire_upstream_*``, docs/proxy.md "Metrics and logs"), scraped from ``/metrics`` of a
real ``tokenwire serve --upstream`` process (SSE and WebTransport in one) in front of the upstream of
tests/support/upstream.py: each test reads the counters before and after what it does and checks that exactly
the right ones moved (the server is shared by the module's tests, so they compare differences, not totals)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.conftest import Serve
from tests.support.asgi_servers import uvicorn_server
from tests.support.redis_server import free_port
from tests.support.sse_spec_parser import SpecParser
from tests.support.upstream import Upstream
from tokenwire.asgi import TokenwireASGI
from tokenwire.errors import GenerationRefused
from tokenwire.generation import GenerationRequest
from tokenwire.metrics import status_label
from tokenwire.proxy import UpstreamOptions, UpstreamProxy
from tokenwire.server import ServerOptions

pytestmark = pytest.mark.usefixtures("no_leaks")

#: In the upstream URL: credentials (sent as Basic auth) that must never show in a label or a log.
URL_SECRET = "pw-9f3e1c"  # noqa: S105 - a test's made-up password
#: The label names the upstream metrics may have: nothing of a request, no URL.
ALLOWED_LABELS = {"outcome", "status", "phase"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def served(upstream: Upstream) -> Iterator[Serve]:
    url = upstream.url.replace("http://", f"http://metrics:{URL_SECRET}@")
    timeouts = ("--upstream-timeout-token", "1", "--upstream-timeout-first-token", "1")
    with Serve("--upstream", url, *timeouts, verbose=2) as serve:
        yield serve
    assert URL_SECRET not in serve.log


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(base: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(base + "/metrics")
    response.raise_for_status()
    return parse(response.text)


def requests(samples: Samples, outcome: str, **labels: str) -> float:
    """``tokenwire_upstream_requests_total{outcome, labels}`` (0 when the series is not there yet)."""
    key = frozenset({"outcome": outcome, **labels}.items())
    return samples.get(("tokenwire_upstream_requests_total", key), 0.0)


def value(samples: Samples, name: str) -> float:
    return samples[(name, frozenset())]


def outcome_deltas(before: Samples, after: Samples) -> dict[str, float]:
    """Each ``tokenwire_upstream_requests_total`` series that moved, ``outcome[/label]`` -> how much."""
    out: dict[str, float] = {}
    for (name, labels), now in after.items():
        if name == "tokenwire_upstream_requests_total" and now != before.get((name, labels), 0.0):
            named = dict(labels)
            key = "/".join([named.pop("outcome"), *named.values()])
            out[key] = now - before.get((name, labels), 0.0)
    return out


async def settle(base: str, done: Callable[[Samples], bool], within: float = 10.0) -> Samples:
    """Scrapes until ``done(samples)`` (an outcome counted once the proxy has closed its upstream response)."""
    deadline = time.monotonic() + within
    while True:
        samples = await scrape(base)
        if done(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)


async def events_of(response: httpx.Response, stop_after: int | None = None) -> list[Any]:
    parser = SpecParser()
    events: list[Any] = []
    async for data in response.aiter_raw():
        events += [e for e in parser.feed(data) if e.type != "stream"]
        if stop_after is not None and len(events) >= stop_after:
            break
    return events


async def test_a_streamed_request_counts_streamed_completed_chunks_and_both_latencies(
    upstream: Upstream, served: Serve
) -> None:
    await upstream.reset()
    before = await scrape(served.base)
    body = {"model": "test-model", "messages": [{"role": "user", "content": "Count me"}], "stream": True}
    async with (
        httpx.AsyncClient(base_url=served.base, timeout=10) as http,
        http.stream("POST", "/v1/chat/completions", json={**body, "max_tokens": 7}) as response,
    ):
        events = await events_of(response)
    after = await settle(served.base, lambda s: requests(s, "completed") > requests(before, "completed"))
    sent = (await upstream.record(1))["chunks"]
    assert [e.data for e in events] == [*sent, "[DONE]"]
    assert outcome_deltas(before, after) == {"streamed": 1, "completed": 1}
    chunks = "tokenwire_upstream_chunks_received_total"
    assert value(after, chunks) - value(before, chunks) == len(sent)
    for histogram in ("tokenwire_upstream_response_seconds", "tokenwire_upstream_first_chunk_seconds"):
        assert value(after, histogram + "_count") - value(before, histogram + "_count") == 1
        assert value(after, histogram + "_sum") > value(before, histogram + "_sum")
    assert value(after, "tokenwire_upstream_open_requests") == 0
    assert value(after, "tokenwire_upstream_max_connections") == 1000


@pytest.mark.parametrize(("status", "label"), [(429, "429"), (503, "503"), (599, "5xx")])
async def test_a_refusal_counts_refused_with_its_status(
    upstream: Upstream, served: Serve, status: int, label: str
) -> None:
    before = await scrape(served.base)
    body = {"prompt": "x", "model": f"test-model?mode=fail-before&status={status}"}
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(served.base + "/v1/streams", json=body)
    assert answer.status_code == status
    after = await scrape(served.base)  # counted before the answer went out
    assert outcome_deltas(before, after) == {f"refused/{label}": 1}
    response_count = "tokenwire_upstream_response_seconds_count"
    assert value(after, response_count) - value(before, response_count) == 1  # the headers came
    first_count = "tokenwire_upstream_first_chunk_seconds_count"
    assert value(after, first_count) == value(before, first_count)  # no chunk did
    assert value(after, "tokenwire_upstream_open_requests") == 0


async def test_a_mid_stream_failure_counts_failed_between_chunks(served: Serve) -> None:
    before = await scrape(served.base)
    body = {"prompt": "Cut", "model": "test-model?mode=fail-mid&after=3"}
    async with (
        httpx.AsyncClient(base_url=served.base, timeout=10) as http,
        http.stream("POST", "/v1/streams", json=body) as response,
    ):
        events = await events_of(response)
    assert [e.type for e in events] == ["token"] * 3 + ["error"]
    after = await scrape(served.base)  # counted before the error event was sent
    assert outcome_deltas(before, after) == {"streamed": 1, "failed/between_chunks": 1}
    chunks = "tokenwire_upstream_chunks_received_total"
    assert value(after, chunks) - value(before, chunks) == 3
    assert await settle_open(served.base)


async def settle_open(base: str) -> bool:
    """The open-requests gauge is back to 0 soon (a failed request ends when its response is closed)."""
    samples = await settle(base, lambda s: value(s, "tokenwire_upstream_open_requests") == 0)
    return value(samples, "tokenwire_upstream_open_requests") == 0


@pytest.mark.parametrize(("after_chunks", "phase"), [(3, "between_chunks"), (0, "first_chunk")])
async def test_a_stall_counts_a_timeout_with_its_phase(
    upstream: Upstream, served: Serve, after_chunks: int, phase: str
) -> None:
    await upstream.reset()
    before = await scrape(served.base)
    body = {"prompt": "Stall", "model": f"test-model?mode=stall&after={after_chunks}"}
    async with (
        httpx.AsyncClient(base_url=served.base, timeout=10) as http,
        http.stream("POST", "/v1/streams", json=body) as response,
    ):
        status = response.status_code
        events = await events_of(response)
    after = await scrape(served.base)  # counted before the error event was sent
    assert status == 200 and [e.type for e in events] == ["token"] * after_chunks + ["error"]
    assert outcome_deltas(before, after) == {"streamed": 1, f"timeout/{phase}": 1}
    await upstream.wait_for("disconnects", 1)  # the stalled connection was closed
    assert await settle_open(served.base)


async def test_a_delete_counts_cancelled_and_a_client_gone_does_not(upstream: Upstream, served: Serve) -> None:
    await upstream.reset()
    before = await scrape(served.base)
    body = {"prompt": "Slow", "max_tokens": 40, "model": "test-model?tokens_per_s=20"}
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
        async with http.stream("POST", "/v1/streams", json=body) as response:
            stream_id = response.headers["x-tokenwire-stream-id"]
            await events_of(response, stop_after=2)
        # the client went away: the upstream request goes on
        during = await scrape(served.base)
        assert outcome_deltas(before, during) == {"streamed": 1}
        assert value(during, "tokenwire_upstream_open_requests") == 1
        assert (await http.delete(f"/v1/streams/{stream_id}")).status_code == 204
    after = await settle(served.base, lambda s: requests(s, "cancelled") > requests(before, "cancelled"))
    assert outcome_deltas(before, after) == {"streamed": 1, "cancelled": 1}
    assert (await upstream.wait_for("disconnects", 1))["completed"] == 0  # and the upstream saw it
    assert value(after, "tokenwire_upstream_open_requests") == 0


async def test_one_set_of_upstream_metrics_per_process_with_bounded_labels(served: Serve) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(served.base + "/metrics")).text
    # SSE and WebTransport servers share the proxy: its families are rendered once.
    assert text.count("# TYPE tokenwire_upstream_requests_total counter") == 1
    assert 'protocol="webtransport"' in text
    upstream_families = [f for f in text_string_to_metric_families(text) if f.name.startswith("tokenwire_upstream")]
    assert {f.name for f in upstream_families} >= {
        "tokenwire_upstream_requests",
        "tokenwire_upstream_chunks_received",
        "tokenwire_upstream_open_requests",
        "tokenwire_upstream_response_seconds",
        "tokenwire_upstream_first_chunk_seconds",
    }
    for family in upstream_families:
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= ALLOWED_LABELS, sample
    for secret in (URL_SECRET, "test-model", "127.0.0.1"):
        assert secret not in text


async def test_the_asgi_app_shows_the_upstream_metrics_and_a_fake_model_server_none(upstream: Upstream) -> None:
    assert b"tokenwire_upstream" not in TokenwireASGI().render_metrics()  # another generator: none of them
    async with UpstreamProxy(upstream.url) as proxy:
        app = TokenwireASGI(None, ServerOptions(generator=proxy))
        async with uvicorn_server(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
            body = {"model": "test-model", "messages": [{"role": "user", "content": "ASGI"}], "max_tokens": 5}
            whole = await http.post("/v1/chat/completions", json=body)
            samples = parse((await http.get("/metrics")).text)
        await app.shutdown()
    assert whole.status_code == 200
    assert requests(samples, "streamed") == requests(samples, "completed") == 1
    assert value(samples, "tokenwire_upstream_chunks_received_total") == proxy.metrics.chunks_received_total > 0


async def test_an_upstream_that_cannot_be_reached_counts_failed_at_connect() -> None:
    request = GenerationRequest("create", "x", 4, {"prompt": "x"}, "unreachable")
    async with UpstreamProxy(UpstreamOptions(f"http://127.0.0.1:{free_port()}/v1")) as proxy:
        source = proxy.generate(request)
        with pytest.raises(GenerationRefused) as refused:
            await source.open()
        await source.aclose()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(proxy.metrics)  # type: ignore[arg-type]  # a collector in all but its base class
        samples = parse(generate_latest(registry).decode())
    assert refused.value.status == 502
    assert {k: v for k, v in proxy.metrics.requests.items() if v} == {(("outcome", "failed"), ("phase", "connect")): 1}
    assert requests(samples, "failed", phase="connect") == 1
    assert value(samples, "tokenwire_upstream_open_requests") == 0
    assert value(samples, "tokenwire_upstream_response_seconds_count") == 0  # no headers ever came


def test_status_labels_are_registered_codes_or_a_class() -> None:
    assert [status_label(s) for s in (400, 401, 429, 500, 503, 418)] == ["400", "401", "429", "500", "503", "418"]
    assert [status_label(s) for s in (499, 520, 599, 302)] == ["4xx", "5xx", "5xx", "302"]
    assert len({status_label(s) for s in range(100, 1000)}) < 80  # bounded, whatever an upstream sends
