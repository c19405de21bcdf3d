"""A real browser against tokenwire's own servers: Debian's headless Chromium, under Playwright.

One Hub behind a WebTransportServer and an SseServer, as ``tokenwire serve --webtransport`` runs them. The
page comes from the SSE server's origin (a secure context, and same-origin for ``fetch`` and
``EventSource``); it learns the WebTransport URL and the certificate hash to pin from the SSE server's
``/v1/webtransport/certificate``, and speaks the wire protocol with a client written in JavaScript from
docs/protocol.md alone (tokenwire_page.js): request and reply messages (§3.1), the core's binary frames
(§3), ``EventSource`` with its own ``Last-Event-ID`` reconnects (§2, §4).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page

from tests.support.browser import chromium, new_page
from tests.support.servers import serve_pair
from tokenwire import FakeModel, GenerationRequest, Hub
from tokenwire.server import SseServer
from tokenwire.server.config import WebTransportLimits
from tokenwire.server.webtransport import WebTransportServer

# One browser for the module, on one loop: these tests prove the browser, not the loop (conftest runs every
# async test on asyncio and uvloop otherwise).
pytestmark = [
    pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]),
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("wt_engine"),
]

PAGE_JS = (Path(__file__).parent / "tokenwire_page.js").read_text()


class GatedModel(FakeModel):
    """The FakeModel's tokens, paced at ``tokens_per_s``, with a generation that stops after ``hold_after``
    tokens until :attr:`gate` is set, so a test can cut a reader at a known point mid-answer."""

    def __init__(self, *, hold_after: int, **options: Any) -> None:
        super().__init__(**options)
        self.hold_after = hold_after
        self.gate = asyncio.Event()

    def generate(self, request: GenerationRequest) -> _GatedCompletion:  # type: ignore[override]
        self.calls += 1
        rate = request.body.get("tokens_per_s") or 100.0
        return _GatedCompletion(self, self.tokens(request.prompt, request.max_tokens), rate)


class _GatedCompletion:
    def __init__(self, model: GatedModel, tokens: list[str], tokens_per_s: float) -> None:
        self._model = model
        self._tokens = tokens
        self._interval = 1 / tokens_per_s
        self._i = 0
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None

    def __aiter__(self) -> _GatedCompletion:
        return self

    async def __anext__(self) -> str:
        i = self._i
        if i >= len(self._tokens):
            self.finish_reason = "length"
            raise StopAsyncIteration
        if i == self._model.hold_after:
            await self._model.gate.wait()
        await asyncio.sleep(self._interval)
        self._i = i + 1
        return self._tokens[i]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@contextlib.asynccontextmanager
async def servers(
    model: FakeModel, limits: WebTransportLimits | None = None
) -> AsyncIterator[tuple[SseServer, WebTransportServer]]:
    """``tokenwire serve --webtransport`` in miniature: one hub, SSE (TCP) and WebTransport (UDP)."""
    # retry 200 ms: EventSource comes back quickly after the forced disconnect.
    async with serve_pair(Hub(), model, limits=limits, retry_ms=200) as pair:
        yield pair


@contextlib.asynccontextmanager
async def tokenwire_page(browser: Browser, sse: SseServer, wt: WebTransportServer) -> AsyncIterator[Page]:
    """A page of the SSE server's origin with the JavaScript client loaded and one WebTransport session,
    ``"s1"``, open to ``wt``."""
    async with new_page(browser, f"http://127.0.0.1:{sse.port}/healthz") as page:
        assert await page.evaluate("() => isSecureContext && typeof WebTransport === 'function'")
        await page.evaluate(PAGE_JS)
        info = await page.evaluate("tw.certificate()")
        assert info == wt.certificate_info()
        assert info["url"] == f"https://127.0.0.1:{wt.port}/v1/webtransport"
        assert bytes.fromhex(info["sha256"]) == wt.certificate.sha256
        assert await page.evaluate("([name, info]) => tw.open(name, info)", ["s1", info]) is None
        yield page


async def request(page: Page, name: str, session: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Sends a request on a new stream of ``session``; returns its reply (``{kind, body}``)."""
    reply: dict[str, Any] = await page.evaluate(
        "([name, session, kind, body]) => tw.request(name, session, kind, body)", [name, session, kind, body]
    )
    assert reply is not None, await page.evaluate(f"tw.finished[{name!r}]")
    return reply


async def finished(page: Page, name: str) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(f"tw.finished[{name!r}]")
    return result


async def wait_tokens(page: Page, name: str, n: int) -> None:
    await page.wait_for_function(f"() => tw.runs[{name!r}].tokens.length >= {n}", polling=10, timeout=10_000)


def seqs(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


async def test_chromium_reads_a_whole_stream_over_webtransport_then_replays_it_over_eventsource(
    browser: Browser,
) -> None:
    prompt, n = "Tell the browser everything, byte for byte", 1500
    model = FakeModel(seed=5)
    async with servers(model) as (sse, wt), tokenwire_page(browser, sse, wt) as page:
        reply = await request(page, "wt", "s1", "start", {"prompt": prompt, "max_tokens": n, "tokens_per_s": 5000})
        run = await finished(page, "wt")
        stream_id = reply["body"]["stream_id"]
        # The same stream, ended now, over EventSource from its start: all of it replayed from the ring.
        await page.evaluate("([name, url]) => tw.eventSource(name, url)", ["sse", f"/v1/streams/{stream_id}/events"])
        over_sse = await finished(page, "sse")

    expected = model.tokens(prompt, n)
    assert reply == {"kind": "stream", "body": {"stream_id": stream_id, "epoch": wt.hub.epoch, "after": 0}}
    assert run["failed"] is None and run["fin"]
    assert run["tokens"] == expected  # byte for byte: multi-byte UTF-8, tabs, newlines, leading spaces
    assert run["seqs"] == seqs(1, n)
    assert run["end"]["kind"] == "done" and run["end"]["seq"] == n + 1
    assert run["end"]["body"]["reason"] == "length"
    assert run["reads"] > 1  # delivered as it was generated, frames split across reads
    assert over_sse["tokens"] == expected
    prefix = f"{stream_id}:{wt.hub.epoch}:"
    assert over_sse["ids"] == [f"{prefix}{seq}" for seq in seqs(1, n)]
    assert over_sse["end"]["id"] == f"{prefix}{n + 1}" and over_sse["end"]["body"] == run["end"]["body"]
    assert (over_sse["opens"], over_sse["errors"], over_sse["starts"]) == (1, 0, [{"after": 0, "seen": 0}])
    assert model.calls == 1
    assert (wt.metrics.sessions_total, wt.metrics.streams_started_total, wt.metrics.bad_requests_total) == (1, 1, 0)


async def test_one_stream_live_over_webtransport_and_eventsource_resumed_after_forced_disconnect(
    browser: Browser,
) -> None:
    prompt, n, held = "Two readers, one answer", 80, 25
    model = GatedModel(seed=5, hold_after=held)
    async with servers(model) as (sse, wt), tokenwire_page(browser, sse, wt) as page:
        reply = await request(page, "wt", "s1", "start", {"prompt": prompt, "max_tokens": n, "tokens_per_s": 100})
        stream_id = reply["body"]["stream_id"]
        # While it is generated, the same stream over EventSource too (from seq 0: the URL has no resume point).
        await page.evaluate("([name, url]) => tw.eventSource(name, url)", ["sse", f"/v1/streams/{stream_id}/events"])
        await wait_tokens(page, "wt", held)
        await wait_tokens(page, "sse", held)
        # The generation is held at `held`: both readers are mid-answer with every token produced so far.
        (conn,) = sse.streaming
        assert conn.transport is not None
        conn.transport.abort()  # the server drops the browser's SSE connection
        # The generation goes on while EventSource waits out its retry (200 ms): what is produced meanwhile
        # comes back from the ring on the resumed connection, the rest live.
        model.gate.set()
        run = await finished(page, "wt")
        over_sse = await finished(page, "sse")
        stream = wt.hub.get(stream_id)

    expected = model.tokens(prompt, n)
    assert run["failed"] is None and run["fin"]
    assert run["tokens"] == expected and run["seqs"] == seqs(1, n)
    assert run["end"] == {"kind": "done", "seq": n + 1, "body": {"reason": "length"}}
    # Exactly once and in order over EventSource across the forced disconnect.
    assert over_sse["tokens"] == expected
    prefix = f"{stream_id}:{wt.hub.epoch}:"
    assert over_sse["ids"] == [f"{prefix}{seq}" for seq in seqs(1, n)]
    assert over_sse["end"] == {"body": {"reason": "length"}, "id": f"{prefix}{n + 1}"}
    # Two connections: the second resumed exactly after the browser's last event, which the server can only
    # know from the Last-Event-ID header that EventSource sent by itself.
    assert (over_sse["opens"], over_sse["errors"]) == (2, 1)
    assert over_sse["starts"] == [{"after": 0, "seen": 0}, {"after": held, "seen": held}]
    assert sse.metrics.resumes_total == 1
    assert model.calls == 1
    assert stream.last_seq == n + 1


async def test_chromium_resumes_over_webtransport_with_attach_after_closing_its_session(browser: Browser) -> None:
    prompt, n, held = "Close the session and come back", 60, 20
    model = GatedModel(seed=5, hold_after=held)
    async with servers(model) as (sse, wt), tokenwire_page(browser, sse, wt) as page:
        reply = await request(page, "first", "s1", "start", {"prompt": prompt, "max_tokens": n, "tokens_per_s": 100})
        stream_id, epoch = reply["body"]["stream_id"], reply["body"]["epoch"]
        await wait_tokens(page, "first", held)
        closed = await page.evaluate("tw.close('s1')")  # mid-answer: closing a session never stops a generation
        first = await finished(page, "first")
        model.gate.set()
        await asyncio.sleep(0.1)  # the generation goes on while nobody reads it
        info = await page.evaluate("tw.certificate()")
        assert await page.evaluate("([name, info]) => tw.open(name, info)", ["s2", info]) is None
        position = first["seqs"][-1]
        body = {"stream_id": stream_id, "epoch": epoch, "after": position}
        again = await request(page, "second", "s2", "attach", body)
        second = await finished(page, "second")

    assert closed is None, closed
    assert first["failed"] is not None and not first["fin"] and first["end"] is None  # cut, not ended
    assert first["tokens"] == model.tokens(prompt, n)[:held] and first["seqs"] == seqs(1, held)
    assert again == {"kind": "stream", "body": {"stream_id": stream_id, "epoch": epoch, "after": held}}
    assert second["failed"] is None and second["fin"]
    assert second["seqs"] == seqs(held + 1, n)
    assert first["tokens"] + second["tokens"] == model.tokens(prompt, n)
    assert second["end"] == {"kind": "done", "seq": n + 1, "body": {"reason": "length"}}
    assert model.calls == 1
    assert (wt.metrics.sessions_total, wt.metrics.resumes_total) == (2, 1)


async def test_chromium_receives_datagram_previews_that_match_the_stream(browser: Browser) -> None:
    """Previews enabled on the server and asked for by the page: Chromium's ``datagrams.readable`` gets
    HTTP/3 datagrams whose tag is the one the reply named and whose frames are the stream's own frames;
    a stream that did not ask gets none."""
    model = FakeModel(seed=5)
    limits = WebTransportLimits(datagram_previews=True)
    async with servers(model, limits) as (sse, wt), tokenwire_page(browser, sse, wt) as page:
        await page.evaluate("tw.readPreviews('s1')")
        asked = await request(
            page,
            "asked",
            "s1",
            "start",
            {"prompt": "preview me", "max_tokens": 60, "tokens_per_s": 200, "previews": True},
        )
        plain = await request(page, "plain", "s1", "start", {"prompt": "not me", "max_tokens": 60, "tokens_per_s": 200})
        run = await finished(page, "asked")
        other = await finished(page, "plain")
        await asyncio.sleep(0.05)  # datagrams and stream bytes leave together; let the last reads land
        got = await page.evaluate("tw.previews['s1']")

    tag = asked["body"]["preview"]
    assert isinstance(tag, int) and tag > 0 and "preview" not in plain["body"]
    assert run["tokens"] == model.tokens("preview me", 60) and other["tokens"] == model.tokens("not me", 60)
    assert got["malformed"] == 0 and got["datagrams"]
    assert {d["tag"] for d in got["datagrams"]} == {tag}  # none for the stream that did not ask
    by_seq = dict(zip(run["seqs"], run["tokens"], strict=True))
    previewed = [f for d in got["datagrams"] for f in d["frames"] if f["kind"] == "token"]
    assert previewed and all(by_seq[f["seq"]] == f["payload"] for f in previewed)
    assert wt.metrics.previews_sent_total == len(got["datagrams"])  # loopback: every datagram arrived
