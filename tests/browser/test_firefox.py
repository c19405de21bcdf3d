"""A second real browser: Debian's headless ``firefox-esr`` under Selenium and geckodriver, against tokenwire's own
servers (an in-process Hub behind an SseServer and a WebTransportServer, as ``tokenwire serve --webtransport``).

What these tests prove of Firefox itself, before the client suite runs in it (tests/browser/test_client*.py):
it opens a WebTransport session to the server's development certificate pinned by ``serverCertificateHashes``
(the certificate hash from ``/v1/webtransport/certificate``), speaks the request messages and reads the binary
frames (tokenwire_page.js, the page client the Chromium tests use), and reads SSE both from a streaming
``fetch`` (POST, the client's way) and from ``EventSource``. The server records what Firefox sent: the
HTTP/3 SETTINGS and the extended CONNECT's headers, which name the WebTransport draft it speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aioquic.h3.connection import Setting

from tests.support.firefox import FirefoxDriver, PageScriptError, open_firefox
from tests.support.servers import serve_pair
from tokenwire import FakeModel, Hub
from tokenwire.protocol.webtransport import (
    SETTINGS_ENABLE_WEBTRANSPORT,
    SETTINGS_WT_ENABLED,
    SETTINGS_WT_MAX_SESSIONS,
)
from tokenwire.protocol.wt_session import WtConnection
from tokenwire.server import SseServer
from tokenwire.server.webtransport import WebTransportServer

# One browser for the module, on one loop: these tests prove the browser, not the loop.
pytestmark = [
    pytest.mark.asyncio(loop_scope="module", loop_factories=["asyncio"]),
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("wt_engine"),
]

PAGE_JS = (Path(__file__).parent / "tokenwire_page.js").read_text()

# POSTs a generation and reads its SSE body from a streaming fetch, to the end; the events as the WHATWG
# rules dispatch them (the server ends every line with LF, docs/protocol.md §2.2, so lines split on LF).
FETCH_SSE_JS = """
async (body) => {
  const response = await fetch("/v1/streams", {
    method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)});
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const events = [];
  let buffer = "", type = "", data = [], id = "", reads = 0;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    reads++;
    buffer += value;
    let at;
    while ((at = buffer.indexOf("\\n")) >= 0) {
      const line = buffer.slice(0, at);
      buffer = buffer.slice(at + 1);
      if (line === "") {
        if (data.length) events.push({event: type || "message", data: data.join("\\n"), id});
        type = "";
        data = [];
        continue;
      }
      const colon = line.indexOf(":");
      if (colon === 0) continue;
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "event") type = val;
      else if (field === "data") data.push(val);
      else if (field === "id" && !val.includes("\\0")) id = val;
    }
  }
  return {status: response.status, type: response.headers.get("content-type"),
          streamId: response.headers.get("x-tokenwire-stream-id"), rest: buffer, events, reads};
}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def firefox() -> AsyncIterator[FirefoxDriver]:
    async with open_firefox() as driver:
        yield driver


@contextlib.asynccontextmanager
async def servers(model: FakeModel) -> AsyncIterator[tuple[SseServer, WebTransportServer]]:
    """``tokenwire serve --webtransport`` in miniature: one hub, SSE (TCP) and WebTransport (UDP)."""
    async with serve_pair(Hub(), model) as pair:
        yield pair


def record_connects(monkeypatch: pytest.MonkeyPatch) -> list[dict[bytes, bytes]]:
    """The headers of every request the WebTransport server receives from now on (the server still handles
    each one as usual)."""
    seen: list[dict[bytes, bytes]] = []
    handle = WtConnection.headers_received

    def recording(
        self: WtConnection, stream_id: int, headers: list[tuple[bytes, bytes]], fin: bool, now: float
    ) -> None:
        seen.append(dict(headers))
        handle(self, stream_id, headers, fin, now)

    monkeypatch.setattr(WtConnection, "headers_received", recording)
    return seen


async def test_firefox_reads_a_stream_over_webtransport_pinned_by_the_certificate_hash(
    firefox: FirefoxDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt, n = "Firefox, byte for byte", 800
    model = FakeModel(seed=5)
    connects = record_connects(monkeypatch)
    async with servers(model) as (sse, wt):
        await firefox.goto(f"http://127.0.0.1:{sse.port}/healthz")
        assert await firefox.run("() => isSecureContext && typeof WebTransport === 'function'") is True
        await firefox.run(PAGE_JS)
        info = await firefox.run("() => tw.certificate()")
        opened = await firefox.run("([name, info]) => tw.open(name, info)", ["s1", info])
        body = {"prompt": prompt, "max_tokens": n, "tokens_per_s": 4000}
        reply = await firefox.run("(args) => tw.request(...args)", ["wt", "s1", "start", body])
        run = await firefox.run("() => tw.finished.wt")
        origin = f"http://127.0.0.1:{sse.port}"
        # Firefox opens two QUIC connections for one session: the CONNECT goes on the second, the first
        # carries only its control streams.
        (conn,) = [c for c in wt.connections if c.sessions_opened]
        settings = dict(conn.session.peer_settings or {})  # what the session layer was given, on either engine
        connections = wt.metrics.connections_total
        closed = await firefox.run("() => tw.close('s1')")

    logging.getLogger("tests.browser").info(
        "Firefox's SETTINGS %s; its CONNECT %s; QUIC connections: %d",
        {hex(k): v for k, v in settings.items()},
        connects,
        connections,
    )
    assert info == wt.certificate_info() and info["algorithm"] == "sha-256"
    assert opened is None, opened  # the development certificate, pinned by its SHA-256, is accepted
    stream_id = reply["body"]["stream_id"]
    assert reply == {"kind": "stream", "body": {"stream_id": stream_id, "epoch": wt.hub.epoch, "after": 0}}
    assert run["failed"] is None and run["fin"]
    assert run["tokens"] == model.tokens(prompt, n)  # multi-byte UTF-8, tabs, newlines, leading spaces
    assert run["seqs"] == list(range(1, n + 1))
    assert (run["end"]["kind"], run["end"]["seq"], run["end"]["body"]["reason"]) == ("done", n + 1, "length")
    assert run["end"]["body"]["usage"]["completion_tokens"] == n
    assert run["reads"] > 1
    assert closed is None, closed
    assert model.calls == 1
    # What Firefox speaks (docs/protocol.md's table of drafts): WebTransport draft 02, as Chromium does. Its
    # extended CONNECT has `:protocol webtransport` and `sec-webtransport-http3-draft02: 1`; its SETTINGS
    # have SETTINGS_ENABLE_WEBTRANSPORT and H3 datagrams (RFC 9297's 0x33 and draft 04's 0xffd277), and none
    # of the newer drafts' WT_MAX_SESSIONS or WT_ENABLED. A Firefox of another draft fails here: update the
    # table, then this.
    (connect,) = connects
    assert connect[b":method"] == b"CONNECT" and connect[b":protocol"] == b"webtransport"
    assert connect[b"sec-webtransport-http3-draft02"] == b"1"
    assert connect[b"origin"] == origin.encode()
    assert settings[Setting.ENABLE_CONNECT_PROTOCOL] == 1 and settings[Setting.H3_DATAGRAM] == 1
    assert settings[SETTINGS_ENABLE_WEBTRANSPORT] == 1
    assert SETTINGS_WT_MAX_SESSIONS not in settings and SETTINGS_WT_ENABLED not in settings


async def test_firefox_reads_sse_from_a_streaming_fetch_and_replays_it_over_eventsource(
    firefox: FirefoxDriver,
) -> None:
    prompt, n = "Firefox over SSE", 300
    model = FakeModel(seed=5)
    async with servers(model) as (sse, _):
        await firefox.goto(f"http://127.0.0.1:{sse.port}/healthz")
        got = await firefox.run(FETCH_SSE_JS, {"prompt": prompt, "max_tokens": n, "tokens_per_s": 2000})
        await firefox.run(PAGE_JS)
        url = f"/v1/streams/{got['streamId']}/events"
        await firefox.run("([name, url]) => tw.eventSource(name, url)", ["es", url])
        replay = await firefox.run("() => tw.finished.es")

    expected = model.tokens(prompt, n)
    assert got["status"] == 200 and got["type"] == "text/event-stream; charset=utf-8" and got["rest"] == ""
    intro, *tokens, done = got["events"]
    stream_id, epoch = got["streamId"], sse.hub.epoch
    prefix = f"{stream_id}:{epoch}:"
    assert intro["event"] == "stream" and intro["id"] == f"{prefix}0"
    assert [e["data"] for e in tokens] == expected and {e["event"] for e in tokens} == {"token"}
    assert [e["id"] for e in tokens] == [f"{prefix}{seq}" for seq in range(1, n + 1)]
    assert (done["event"], done["id"], json.loads(done["data"])["reason"]) == ("done", f"{prefix}{n + 1}", "length")
    assert got["reads"] > 1  # streamed, not read whole at the end
    # The same stream, ended, replayed whole over EventSource.
    assert replay["tokens"] == expected and replay["ids"] == [e["id"] for e in tokens]
    assert (replay["opens"], replay["errors"]) == (1, 0)
    assert model.calls == 1


async def test_firefox_driver_returns_json_raises_page_errors_and_logs_the_console(
    firefox: FirefoxDriver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.browser")
    async with servers(FakeModel(seed=5)) as (sse, _):
        await firefox.goto(f"http://127.0.0.1:{sse.port}/healthz")
        echoed = await firefox.run("async (arg) => ({arg, nothing: undefined, at: location.pathname})", [1, "é\n"])
        nothing = await firefox.run("() => { sessionStorage.setItem('kept', 'yes'); window.mark = 1; }")
        with pytest.raises(PageScriptError) as thrown:
            await firefox.run("async () => { await null; throw new RangeError('out of range'); }")
        await firefox.run("() => console.warn('firefox says %s', 'hello')")
        await firefox.reload()
        after = await firefox.run("() => [sessionStorage.getItem('kept'), typeof window.mark]")
        await firefox.screenshot(tmp_path / "page.png")
        for _ in range(100):  # BiDi events arrive on their own thread
            if any("firefox says hello" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)

    assert echoed == {"arg": [1, "é\n"], "at": "/healthz"}
    assert nothing is None
    assert thrown.value.name == "RangeError" and thrown.value.message == "out of range"
    assert after == ["yes", "undefined"]  # a reload keeps sessionStorage, loses the page's state
    png = (tmp_path / "page.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 720)
    assert "console.warn: firefox says hello" in [r.getMessage() for r in caplog.records]


# A stream per request on one session: the page writes an attach request for a stream nobody has and keeps its
# own side of the stream open (no FIN), then reads to the end. Each outcome: the bytes read, and how it ended.
OPEN_SIDE_REQUESTS_JS = """
async ({info, body, n}) => {
  if ((await tw.open("e", info)) !== null) throw new Error("no session");
  const request = new TextEncoder().encode(JSON.stringify(body));
  const outcomes = [];
  for (let i = 0; i < n; i++) {
    const stream = await tw.sessions.e.createBidirectionalStream();
    await stream.writable.getWriter().write(new Uint8Array([0x12, 0x40 | (request.length >> 8), request.length & 0xff,
                                                             ...request]));
    const reader = stream.readable.getReader();
    const bytes = [];
    let end = "fin";
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        bytes.push(...value);
      }
    } catch (e) {
      end = `${e.name}: ${e.message}`;
    }
    outcomes.push({bytes, end});
  }
  return outcomes;
}
"""


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"stream_id": "nosuchstream", "after": 0}, "StreamNotFound"),  # refused by the hub
        ({"stream_id": "nosuchstream", "after": 1, "epoch": "not an epoch"}, "RemoteProtocolError"),  # malformed
    ],
    ids=["not-found", "malformed"],
)
async def test_firefox_gets_the_error_reply_of_a_whole_request(
    firefox: FirefoxDriver, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any], error: str
) -> None:
    """The server answers each request with a typed error (the hub refused it, or the message failed its checks)
    and ends the stream (FIN). The page keeps its side open, and the request was read whole: no STOP_SENDING
    follows (docs/protocol.md §4.4). With one, Firefox ESR 153 errored the readable ("TypeError: Error in input
    stream") and lost the reply, 30 times out of 30 (Chromium kept it), and the client (js/src/client.js) saw a
    typed error as a broken stream and asked again."""
    n = 5
    stops: list[bool] = []
    reply_error = WtConnection._reply_error

    def recording(self: WtConnection, st: Any, exc: BaseException, *, request_read: bool = False) -> None:
        stops.append(not st.recv_ended and not request_read)  # what makes the server send STOP_SENDING
        reply_error(self, st, exc, request_read=request_read)

    monkeypatch.setattr(WtConnection, "_reply_error", recording)
    async with servers(FakeModel(seed=5)) as (sse, wt):
        await firefox.goto(f"http://127.0.0.1:{sse.port}/healthz")
        await firefox.run(PAGE_JS)
        info = await firefox.run("() => tw.certificate()")
        body = {"epoch": wt.hub.epoch, **body}
        outcomes = await firefox.run(OPEN_SIDE_REQUESTS_JS, {"info": info, "body": body, "n": n})

    got = [(o["end"], reply_of(bytes(o["bytes"]))) for o in outcomes]
    assert got == [("fin", ("error", error))] * n
    assert stops == [False] * n and wt.metrics.bad_requests_total == n


def reply_of(data: bytes) -> tuple[str, str] | None:
    """``(reply kind, error type)`` of a whole reply message (docs/protocol.md §3.1); None for anything else."""
    if len(data) < 2 or data[0] != 0x23:
        return None
    size = 1 << (data[1] >> 6)
    length = int.from_bytes(data[1 : 1 + size], "big") & ((1 << (8 * size - 2)) - 1)
    if len(data) != 1 + size + length:
        return None
    return "error", json.loads(data[1 + size :])["type"]
