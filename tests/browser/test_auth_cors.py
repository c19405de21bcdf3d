"""Auth and origins in a real browser (headless Chromium): a page on another origin uses ``tokenwire serve``'s
servers with an API key, through the CORS preflight (the client's ``accessToken``: ``Authorization`` on every
fetch, ``?access_token=`` on the WebTransport CONNECT), over SSE (fetch streaming) and WebTransport. The
WebTransport CONNECT is refused without credentials, with wrong ones, and from an origin not allowed, however
good its token; that origin's fetches are refused by the browser at the preflight."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from playwright.async_api import Browser

from tests.support.browser import new_page, page_server
from tests.support.client_rig import RecordingRouter
from tests.support.servers import sse_server, wt_server
from tokenwire import FakeModel, Hub
from tokenwire.auth import ApiKeys
from tokenwire.server import SseServer
from tokenwire.server.endpoints import PRINCIPAL_LABEL
from tokenwire.server.webtransport import WebTransportServer

pytestmark = [
    pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]),
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("wt_engine"),
]

KEY = "page-key-0123456789abcdef"

STREAM_JS = """
async ({base, key}) => {
  const {TokenwireClient, TokenwireError} = await import(base + "/v1/client.js");
  const out = {};
  for (const transport of ["sse", "webtransport"]) {
    const client = new TokenwireClient(base, {transport, accessToken: key, maxRetries: 1});
    const stream = await client.generate({prompt: "cors auth", max_tokens: 8, tokens_per_s: 0});
    let text = "";
    for await (const token of stream) text += token;
    out[transport] = {text, id: stream.id, transport: stream.transport};
    client.close();
  }
  try {
    await new TokenwireClient(base, {transport: "sse", maxRetries: 0}).generate({prompt: "x", max_tokens: 2});
    out.noKey = "answered";
  } catch (e) {
    out.noKey = {name: e.name, status: e.status, code: e.body?.code, isTyped: e instanceof TokenwireError};
  }
  return out;
}
"""

# A bare WebTransport CONNECT from the page (no client): "ready", or the error name the browser gives.
CONNECT_JS = """
async ({url, hash}) => {
  const wt = new WebTransport(url, {serverCertificateHashes: [{algorithm: "sha-256", value: new Uint8Array(hash)}]});
  try {
    await wt.ready;
  } catch (e) {
    return e.name;
  }
  wt.close();
  return "ready";
}
"""

# A start with the key from the page: its status, or the error name when the browser refuses it.
FETCH_JS = """
({base, key}) => fetch(`${base}/v1/streams`, {
  method: "POST",
  headers: {"content-type": "application/json", authorization: `Bearer ${key}`},
  body: JSON.stringify({prompt: "x", max_tokens: 2}),
}).then((r) => r.status, (e) => e.name)
"""


@dataclass
class Servers:
    sse: SseServer
    wt: WebTransportServer
    router: RecordingRouter

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.sse.port}"


@contextlib.asynccontextmanager
async def servers(origin: str) -> AsyncIterator[Servers]:
    """``tokenwire serve --webtransport --api-key KEY --cors-origin ORIGIN`` in miniature: one hub, both servers."""
    hub, model, auth = Hub(), FakeModel(seed=5), ApiKeys([KEY])
    async with (
        sse_server(hub, model=model, auth=auth, allow_origins=(origin,)) as sse,
        wt_server(hub, model=model, auth=auth, allow_origins=(origin,)) as wt,
    ):
        sse.webtransport = wt
        sse.router = router = RecordingRouter(sse)
        yield Servers(sse, wt, router)


async def test_a_page_on_an_allowed_origin_streams_with_its_key_over_sse_and_webtransport(
    chromium_browser: Browser,
) -> None:
    async with page_server() as origin, servers(origin) as s, new_page(chromium_browser, origin) as page:
        got = await page.evaluate(STREAM_JS, {"base": s.base, "key": KEY})
        hub = s.sse.hub
        expected = "".join(FakeModel(seed=5).tokens("cors auth", 8))
        for transport in ("sse", "webtransport"):
            assert got[transport]["text"] == expected and got[transport]["transport"] == transport
            assert hub.get(got[transport]["id"]).labels[PRINCIPAL_LABEL] == ApiKeys.principal_of(KEY)
        assert got["noKey"] == {"name": "TokenwireError", "status": 401, "code": "unauthorized", "isTyped": True}
        # The SSE start went through a preflight (Authorization is not a simple header), then the POST.
        methods = [(seen.method, seen.path) for seen in s.router.seen]
        assert methods.index(("OPTIONS", "/v1/streams")) < methods.index(("POST", "/v1/streams"))
        assert s.wt.metrics.sessions_total == 1


async def test_the_webtransport_connect_needs_the_token_and_an_allowed_origin(chromium_browser: Browser) -> None:
    async with page_server() as origin, page_server() as other, servers(origin) as s:
        info = {"url": s.wt.url, "hash": list(s.wt.certificate.sha256)}
        with_key = {**info, "url": f"{s.wt.url}?access_token={KEY}"}
        async with new_page(chromium_browser, origin) as page:
            assert await page.evaluate(CONNECT_JS, info) != "ready"  # no credentials: 401
            assert await page.evaluate(CONNECT_JS, {**info, "url": f"{s.wt.url}?access_token=wrong"}) != "ready"
            assert await page.evaluate(CONNECT_JS, with_key) == "ready"
        async with new_page(chromium_browser, other) as page:
            assert await page.evaluate(CONNECT_JS, with_key) != "ready"  # the right key, from the wrong origin: 403
            assert (
                await page.evaluate(FETCH_JS, {"base": s.base, "key": KEY}) == "TypeError"
            )  # refused at the preflight
        assert s.wt.metrics.sessions_total == 1 and s.wt.metrics.sessions_refused_total == 3
        assert s.sse.metrics.streams_started_total == 0
        assert [seen.method for seen in s.router.seen] == ["OPTIONS"]
