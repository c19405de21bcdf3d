"""Real browsers against the native engine's server end: Debian's headless Chromium (Playwright) and
firefox-esr (Selenium). What a browser itself needs of the engine: its SETTINGS, the QPACK streams, extended
CONNECT, WebTransport streams both ways, flow control on a large answer. The server here is a few lines of
echo over ``QuicEngine``'s events, not tokenwire's session layer, so the tests prove the engine, as
tests/browser/test_chromium_webtransport.py proves Chromium against a minimal aioquic server with the same page
script."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser

from tests.browser.test_chromium_webtransport import WEBTRANSPORT_JS, answer
from tests.support.browser import chromium, new_page, page_server
from tests.support.firefox import open_firefox
from tests.support.native_engine import Driven, native_server
from tokenwire import _core
from tokenwire.server.certs import make_dev_certificate

pytestmark = [pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


class Echo:
    """Answers a CONNECT to ``/wt`` with 200 and each request stream (``name:size``, then FIN) with
    ``answer(request)``, written as flow control allows (the rest on ``writable``)."""

    def __init__(self) -> None:
        self.server: Driven | None = None
        self.connects: list[dict[bytes, bytes]] = []
        self.requests: list[bytes] = []
        self.received: dict[tuple[int, int], bytes] = {}
        self.outgoing: dict[tuple[int, int], bytes] = {}
        self.writables = 0
        self.settings: dict[int, int] = {}

    def __call__(self, event: _core.QuicEvent) -> None:
        assert self.server is not None
        engine = self.server.engine
        match event:
            case ("settings", _, settings):
                self.settings = settings
            case ("headers", conn, stream_id, headers, _):
                self.connects.append(dict(headers))
                engine.send_headers(conn, stream_id, [(b":status", b"200")], False)
            case ("wt_stream", conn, stream_id, _, data, fin):
                key = (conn, stream_id)
                self.received[key] = self.received.get(key, b"") + data
                if fin:
                    self.requests.append(self.received[key])
                    self.outgoing[key] = answer(self.received[key])
                    self.push(key)
            case ("writable", conn, stream_id):
                self.writables += 1
                self.push((conn, stream_id))
            case _:
                pass

    def push(self, key: tuple[int, int]) -> None:
        assert self.server is not None
        data = self.outgoing.get(key)
        if data is None:
            return
        n = self.server.engine.send_data(key[0], key[1], data, True)
        if n == len(data):
            del self.outgoing[key]
        else:
            self.outgoing[key] = data[n:]


#: A page script runner: (page origin, script, its argument) -> what the script resolved to.
RunPage = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


async def echo_over_native_engine(run_page: RunPage) -> None:
    """The page opens a session to the native server, runs three requests on streams of their own at once, and
    reads each answer whole; then checks what the engine saw."""
    certificate = make_dev_certificate()
    echo = Echo()
    requests = ["alpha:3000000", "beta:20000", "gamma:7"]
    async with page_server() as origin, native_server(certificate, echo, conn_window=1 << 20) as server:
        echo.server = server
        result = await run_page(
            origin,
            WEBTRANSPORT_JS,
            {
                "url": f"https://127.0.0.1:{server.engine.local_address[1]}/wt",
                "hash": list(certificate.sha256),
                "requests": requests,
            },
        )
        stats = server.engine.stats()

    assert "error" not in result, result
    assert [base64.b64decode(r["answer"]) for r in result["results"]] == [answer(r.encode()) for r in requests]
    (connect,) = echo.connects
    assert (connect[b":method"], connect[b":protocol"], connect[b":path"]) == (b"CONNECT", b"webtransport", b"/wt")
    assert connect[b"origin"] == origin.encode()
    assert sorted(echo.requests) == sorted(r.encode() for r in requests)
    assert echo.settings.get(0x33) == 1  # the browser's SETTINGS_H3_DATAGRAM reached the engine
    # 3 MB is more than the engine's send window (1 MiB here): it said "writable" on the way.
    assert echo.writables > 0
    # Chromium opens one connection; Firefox may race a second one and close it (H3_NO_ERROR) unused.
    assert stats["connections_accepted"] >= 1


async def test_chromium_over_the_native_engine(browser: Browser) -> None:
    async def run_page(origin: str, script: str, arg: dict[str, Any]) -> Any:
        async with new_page(browser, origin) as page:
            return await page.evaluate(script, arg)

    await echo_over_native_engine(run_page)


async def test_firefox_over_the_native_engine() -> None:
    async with open_firefox() as firefox:

        async def run_page(origin: str, script: str, arg: dict[str, Any]) -> Any:
            await firefox.goto(origin)
            return await firefox.run(script, arg)

        await echo_over_native_engine(run_page)
