"""A real browser: Debian's headless Chromium, under Playwright, over WebTransport and over EventSource.

The WebTransport tests talk to a minimal aioquic server of the test support (tests/support/wt_echo.py),
not to tokenwire's, so they prove what Chromium itself needs: a page in a secure context, an HTTP/3
server with WebTransport settings, and an ECDSA certificate valid for at most 14 days pinned by its
SHA-256. The EventSource test reads a stream of ``tokenwire serve``'s SSE server and resumes it with
``Last-Event-ID`` after the server drops the connection mid-answer.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser

from tests.support.browser import chromium, new_page, page_server
from tests.support.servers import sse_server
from tests.support.wt_echo import EchoServer, echo_server, make_pinned_certificate

# One browser for the module, on one loop: these tests prove the browser, not the loop (conftest runs every
# async test on asyncio and uvloop otherwise).
pytestmark = [pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]), pytest.mark.timeout(60)]

# Opens one session, runs every request on its own bidirectional stream at once, reads each answer to its
# end; answers are base64, so bytes come back to Python exactly.
WEBTRANSPORT_JS = """
async ({url, hash, requests}) => {
  const toBase64 = (chunks) => {
    let s = "";
    for (const c of chunks) for (let i = 0; i < c.length; i += 8192) s += String.fromCharCode(...c.subarray(i, i + 8192));
    return btoa(s);
  };
  const wt = new WebTransport(url, {serverCertificateHashes: [{algorithm: "sha-256", value: new Uint8Array(hash)}]});
  try {
    await wt.ready;
  } catch (e) {
    return {error: `${e.name}: ${e.message}`};
  }
  const exchange = async (request) => {
    const stream = await wt.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    await writer.write(new TextEncoder().encode(request));
    await writer.close();
    const chunks = [];
    const reader = stream.readable.getReader();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      chunks.push(value);
    }
    return {answer: toBase64(chunks), reads: chunks.length};
  };
  const results = await Promise.all(requests.map(exchange));
  wt.close();
  await wt.closed;
  return {results};
}
"""


def answer(request: bytes) -> bytes:
    """The echo server's answer: ``name:size`` -> ``size`` bytes of ``name|name|...``."""
    name, size = request.split(b":")
    n = int(size)
    return ((name + b"|") * (n // (len(name) + 1) + 1))[:n]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def page_origin() -> AsyncIterator[str]:
    async with page_server() as origin:
        yield origin


async def run_webtransport(browser: Browser, origin: str, server: EchoServer, requests: list[str]) -> dict[str, Any]:
    async with new_page(browser, origin) as page:
        assert await page.evaluate("() => isSecureContext && typeof WebTransport === 'function'")
        return await page.evaluate(
            WEBTRANSPORT_JS,
            {
                "url": f"https://127.0.0.1:{server.port}/wt",
                "hash": list(server.certificate.sha256),
                "requests": requests,
            },
        )


async def test_chromium_reads_whole_webtransport_streams(browser: Browser, page_origin: str) -> None:
    # Three streams multiplexed in one session, answered in 1,000-byte writes (one transmit each) spread
    # over many loop iterations, one of them larger than a single flow-control window would carry at once.
    requests = ["alpha:300000", "beta:20000", "gamma:7"]
    async with echo_server(answer, chunk=1000, interval=0.0005) as server:
        result = await run_webtransport(browser, page_origin, server, requests)

    assert "error" not in result, result
    assert [base64.b64decode(r["answer"]) for r in result["results"]] == [answer(r.encode()) for r in requests]
    assert result["results"][0]["reads"] > 1  # really streamed, not one buffer
    (connect,) = server.stats.sessions
    assert connect[":method"] == "CONNECT"
    assert connect[":protocol"] == "webtransport"
    assert connect[":path"] == "/wt"
    assert connect["origin"] == page_origin
    assert sorted(server.stats.requests) == sorted(r.encode() for r in requests)


async def test_chromium_refuses_a_pinned_certificate_valid_for_over_14_days(browser: Browser, page_origin: str) -> None:
    async with echo_server(answer, certificate=make_pinned_certificate(datetime.timedelta(days=15))) as server:
        result = await run_webtransport(browser, page_origin, server, ["alpha:10"])

    assert result == {"error": "WebTransportError: Opening handshake failed."}
    assert server.stats.sessions == []


# Collects a stream's events; resolves on `done` and closes the EventSource, which would reconnect otherwise.
EVENTSOURCE_JS = """
(url) => {
  const sse = window.sse = {tokens: [], ids: [], starts: [], opens: 0, errors: 0};
  window.sseDone = new Promise((resolve) => {
    const es = new EventSource(url);
    es.addEventListener("open", () => { sse.opens++; });
    es.addEventListener("error", () => { sse.errors++; });
    es.addEventListener("stream", (e) => { sse.starts.push({after: JSON.parse(e.data).after, seen: sse.tokens.length}); });
    es.addEventListener("token", (e) => { sse.tokens.push(e.data); sse.ids.push(e.lastEventId); });
    es.addEventListener("done", (e) => { es.close(); resolve({done: JSON.parse(e.data), id: e.lastEventId}); });
  });
}
"""


async def paced(tokens: list[str], per_s: float, hold_after: int, release: asyncio.Event) -> AsyncIterator[str]:
    """A generation that stops after ``hold_after`` tokens until ``release`` is set, then goes on."""
    for i, token in enumerate(tokens):
        if i == hold_after:
            await release.wait()
        await asyncio.sleep(1 / per_s)
        yield token


async def test_chromium_eventsource_resumes_after_forced_disconnect(browser: Browser) -> None:
    max_tokens, held = 60, 20
    release = asyncio.Event()
    async with sse_server(retry_ms=200) as server:
        expected = server.generator.tokens("Tell the browser about resumable streams", max_tokens)
        stream = server.hub.start(paced(expected, 100, held, release))
        origin = f"http://127.0.0.1:{server.port}"
        # A page of the server's own origin, so EventSource is same-origin (the server sends no CORS headers).
        async with new_page(browser, f"{origin}/healthz") as page:
            await page.evaluate(EVENTSOURCE_JS, f"{origin}/v1/streams/{stream.id}/events")
            await page.wait_for_function(f"() => window.sse.tokens.length === {held}", polling=20)
            (conn,) = server.streaming
            conn.transport.abort()  # the server drops the browser's connection mid-answer
            # The generation goes on while the browser is away (its retry is 200 ms): what it produces in the
            # meantime comes back from the ring on the resumed connection, the rest live.
            release.set()
            end = await page.evaluate("window.sseDone")
            sse = await page.evaluate("window.sse")

    assert sse["tokens"] == expected
    prefix = f"{stream.id}:{server.hub.epoch}:"
    assert sse["ids"] == [f"{prefix}{seq}" for seq in range(1, max_tokens + 1)]
    assert end == {"done": {"reason": "stop"}, "id": f"{prefix}{max_tokens + 1}"}
    # Two connections: the first from seq 0; the second resumed exactly after the browser's last event,
    # which the server can only know from the Last-Event-ID header that EventSource sent by itself.
    assert sse["opens"] == 2
    assert sse["errors"] == 1
    assert sse["starts"] == [{"after": 0, "seen": 0}, {"after": held, "seen": held}]
