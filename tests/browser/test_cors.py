"""CORS in a real browser: a page on one origin calls ``tokenwire serve``'s SSE server on another (another
port of 127.0.0.1), as the browser client does: a preflighted ``POST /v1/streams`` with JSON and an
``Idempotency-Key``, the exposed ``X-Tokenwire-*`` headers, the stream read to its end, a resume with
``Last-Event-ID``, a typed error body, and a ``DELETE``. The same calls from an origin the server does not
allow are refused by the browser."""

from __future__ import annotations

import json

import pytest
from playwright.async_api import Browser

from tests.support.browser import new_page, page_server
from tests.support.servers import sse_server
from tests.support.sse_spec_parser import SpecParser
from tokenwire import FakeModel
from tokenwire.protocol.http1 import HttpLimits

pytestmark = [pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]), pytest.mark.timeout(60)]

CALLS_JS = """
async (base) => {
  const out = {};
  const post = await fetch(`${base}/v1/streams`, {
    method: "POST",
    headers: {"content-type": "application/json", "idempotency-key": "cors-1"},
    body: JSON.stringify({prompt: "cors", max_tokens: 6, tokens_per_s: 0}),
  });
  out.status = post.status;
  out.streamId = post.headers.get("x-tokenwire-stream-id");
  out.epoch = post.headers.get("x-tokenwire-epoch");
  out.location = post.headers.get("location");
  out.body = await post.text();
  const resumed = await fetch(`${base}/v1/streams/${out.streamId}/events`, {
    headers: {"last-event-id": `${out.streamId}:${out.epoch}:3`},
  });
  out.resumed = await resumed.text();
  const missing = await fetch(`${base}/v1/streams/nope/events`);
  out.missing = [missing.status, await missing.json()];
  const again = await fetch(`${base}/v1/streams`, {method: "POST", headers: {"content-type": "application/json"},
                                                   body: JSON.stringify({prompt: "long", max_tokens: 5000})});
  const id = again.headers.get("x-tokenwire-stream-id");
  const cancel = await fetch(`${base}/v1/streams/${id}`, {method: "DELETE"});
  out.cancel = cancel.status;
  out.cancelledTail = await again.text();
  return out;
}
"""

REFUSED_JS = """
async (base) => {
  try {
    await fetch(`${base}/v1/streams`, {method: "POST", headers: {"content-type": "application/json"},
                                       body: JSON.stringify({prompt: "x", max_tokens: 2})});
    return "answered";
  } catch (e) {
    return e.name;
  }
}
"""


async def test_a_page_on_an_allowed_origin_uses_the_endpoints(chromium_browser: Browser) -> None:
    model = FakeModel(seed=5)
    async with page_server() as origin, sse_server(model=model, allow_origins=(origin,)) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with new_page(chromium_browser, origin) as page:
            got = await page.evaluate(CALLS_JS, base)
    assert got["status"] == 200 and got["streamId"] and got["epoch"] == server.hub.epoch
    assert got["location"] == f"/v1/streams/{got['streamId']}/events"
    events = SpecParser().feed(got["body"].encode())
    assert [e.data for e in events if e.type == "token"] == model.tokens("cors", 6)
    assert events[-1].type == "done"
    resumed = [e for e in SpecParser().feed(got["resumed"].encode()) if e.type in ("token", "done")]
    prefix = f"{got['streamId']}:{server.hub.epoch}:"
    # After seq 3: tokens 4 to 6, then the final frame.
    assert [e.last_event_id for e in resumed] == [f"{prefix}{seq}" for seq in range(4, 8)]
    assert got["missing"][0] == 404 and got["missing"][1]["error"]["type"] == "StreamNotFound"
    assert got["cancel"] == 204
    tail = SpecParser().feed(got["cancelledTail"].encode())
    assert tail[-1].type == "done" and json.loads(tail[-1].data)["reason"] == "cancelled"


async def test_a_page_on_another_origin_is_refused_by_the_browser(chromium_browser: Browser) -> None:
    async with (
        page_server() as origin,
        page_server() as other,
        sse_server(allow_origins=(other,)) as server,
        new_page(chromium_browser, origin) as page,
    ):
        assert await page.evaluate(REFUSED_JS, f"http://127.0.0.1:{server.port}") == "TypeError"
        assert server.metrics.streams_started_total == 0  # the preflight failed: the POST was never sent


TOO_LARGE_JS = """
async ({base, size}) => {
  try {
    const r = await fetch(`${base}/v1/streams`, {method: "POST", headers: {"content-type": "application/json"},
                                                 body: JSON.stringify({prompt: "x".repeat(size), max_tokens: 2})});
    return [r.status, await r.json()];
  } catch (e) {
    return e.name;
  }
}
"""


async def test_a_page_reads_the_typed_413_of_a_prompt_over_the_body_limit(chromium_browser: Browser) -> None:
    """The 413 that the SSE server gives before the body is read (its Content-Length is over
    ``max_body_bytes``) carries the grant like every other answer, so the page gets the typed error, not a
    network error that a client would retry."""
    limit = 1 << 16
    async with (
        page_server() as origin,
        sse_server(allow_origins=(origin,), http=HttpLimits(max_body_bytes=limit)) as server,
        new_page(chromium_browser, origin) as page,
    ):
        got = await page.evaluate(TOO_LARGE_JS, {"base": f"http://127.0.0.1:{server.port}", "size": 4 * limit})
        assert server.metrics.streams_started_total == 0
    assert got[0] == 413 and got[1]["error"]["type"] == "HttpError" and got[1]["error"]["status"] == 413
