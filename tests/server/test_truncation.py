"""A cut stream is an error to every client, never a short answer (docs/protocol.md §2.1).

Streaming responses are chunked and only a normal end writes the last chunk, so a client whose connection is
cut (here: by a proxy that forwards K bytes, then closes with a FIN, the case a close-delimited body cannot
tell from the end) raises: curl, httpx, the openai SDK for Python, and the npm ``openai`` package under node
(skipped where npm cannot install it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server.test_asgi import wait_for
from tests.server.test_sse_server import curl, events, tokens
from tests.support.asgi_servers import SERVERS
from tests.support.chunked import dechunk, split_response
from tests.support.cut_proxy import cut_proxy
from tests.support.openai_sdk import stream_chat
from tests.support.servers import sse_server
from tokenwire import FakeModel, Hub, ServerOptions
from tokenwire.asgi import TokenwireASGI

pytestmark = pytest.mark.usefixtures("no_leaks")

#: Past the response head (about 300 bytes), inside the events.
CUT_AT = 1500
MESSAGES: Any = [{"role": "user", "content": "Say hi"}]
CURL_POST = ("-X", "POST", "-H", "content-type: application/json", "-d", '{"prompt": "p", "max_tokens": 200}')


async def _sdk_chat(base_url: str, max_tokens: int = 40) -> tuple[str, str | None, Any]:
    """A streamed chat completion through the openai SDK: ``(text, finish_reason, usage)``."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    try:
        return await stream_chat(
            client, model="fake", messages=MESSAGES, max_tokens=max_tokens, extra_body={"tokens_per_s": 2000}
        )
    finally:
        await client.close()


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_a_cut_stream_is_an_error_to_the_openai_sdk_httpx_and_curl(reset: bool) -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server, cut_proxy(server.port, CUT_AT, reset=reset) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        with pytest.raises((httpx.TransportError, openai.APIError)):
            await _sdk_chat(f"{base}/v1")
        got = b""
        with pytest.raises(httpx.TransportError):  # RemoteProtocolError (FIN) or ReadError (RST)
            async with (
                httpx.AsyncClient() as client,
                client.stream("POST", f"{base}/v1/streams", json={"prompt": "p", "max_tokens": 200}) as resp,
            ):
                assert resp.headers["transfer-encoding"] == "chunked"
                async for chunk in resp.aiter_bytes():
                    got += chunk
        assert 0 < len(got) < CUT_AT  # it was cut mid-answer, not refused
        code, _ = await curl(*CURL_POST, f"{base}/v1/streams")
        assert code == 200  # curl prints the status it got, and exits non-zero (below)
        proc = await asyncio.create_subprocess_exec("curl", "-sN", "-o", "/dev/null", *CURL_POST, f"{base}/v1/streams")
        assert await proc.wait() in (18, 56)  # partial file (FIN) / receive failure (RST)
        assert len(proxy.cuts) == 4
        assert model.calls == 4  # every request was served; only the client side was cut


async def test_an_uncut_stream_ends_cleanly_for_curl_httpx_and_the_openai_sdk() -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server, cut_proxy(server.port, None) as proxy:
        for port in (server.port, proxy.port):  # directly, and through the proxy when it cuts nothing
            base = f"http://127.0.0.1:{port}"
            text, finish, usage = await _sdk_chat(f"{base}/v1")
            assert text == "".join(model.tokens("Say hi", 40))
            assert finish == "length" and usage is not None and usage.completion_tokens == 40
            async with httpx.AsyncClient() as client:
                r = await client.post(f"{base}/v1/streams", json={"prompt": "p", "max_tokens": 30})
            assert r.headers["transfer-encoding"] == "chunked"
            assert tokens(events(r.content)) == model.tokens("p", 30)
            code, body = await curl(*CURL_POST[:-1], '{"prompt": "p", "max_tokens": 30}', f"{base}/v1/streams")
            assert code == 200
            evs = events(body)
            assert tokens(evs) == model.tokens("p", 30) and evs[-1].type == "done"


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


async def test_raw_bytes_are_chunks_and_only_a_normal_end_writes_the_last_chunk() -> None:
    """The wire itself: one chunk per write, heartbeats included, ``0 CRLF CRLF`` at the end; an HTTP/1.0
    client gets a close-delimited body (chunked framing is HTTP/1.1)."""
    model = FakeModel(seed=5)
    async with sse_server(model=model, heartbeat_interval=0.05) as server:
        body = b'{"prompt": "raw", "max_tokens": 12, "ttft": 1.2, "tokens_per_s": 100}'
        head = (
            b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n"
        )
        raw = await asyncio.to_thread(_raw_exchange, server.port, head % len(body) + body)
        status, headers, chunked = split_response(raw)
        assert status == b"HTTP/1.1 200 OK" and headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
        payload, complete = dechunk(chunked)
        assert complete and chunked.endswith(b"\r\n0\r\n\r\n")
        evs = events(payload)
        assert tokens(evs) == model.tokens("raw", 12) and evs[-1].type == "done"
        assert b"\r\n2\r\n:\n\r\n" in chunked  # a heartbeat (server tick: 1 s) during the ttft is a chunk of its own

        old = head.replace(b"HTTP/1.1", b"HTTP/1.0")
        raw = await asyncio.to_thread(_raw_exchange, server.port, old % len(body) + body)
        status, headers, payload = split_response(raw)
        assert status == b"HTTP/1.1 200 OK" and "transfer-encoding" not in headers
        assert tokens(events(payload)) == model.tokens("raw", 12)


def _stream_then_health(port: int, request: bytes) -> tuple[bytes, bytes]:
    """One connection: ``request`` (a stream), read to its last chunk, then ``GET /healthz`` on the same
    connection: ``(the stream's raw response, the health answer)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while not received.endswith(b"\r\n0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, f"closed before the last chunk: {received[-200:]!r}"
            received += chunk
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return received, answer


async def test_a_kept_alive_connection_takes_a_request_after_its_stream() -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server:
        body = b'{"prompt": "again", "max_tokens": 20, "tokens_per_s": 500}'
        req = b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        stream, answer = await asyncio.to_thread(_stream_then_health, server.port, req % (len(body), body))
        _status, headers, chunked = split_response(stream)
        assert headers["connection"] == "keep-alive" and headers["transfer-encoding"] == "chunked"
        payload, complete = dechunk(chunked)
        assert complete and tokens(events(payload)) == model.tokens("again", 20)
        assert answer.startswith(b"HTTP/1.1 200 OK") and server.hub.epoch.encode() in answer
        assert not server.streaming


async def test_shutdown_closes_an_idle_kept_alive_connection_without_a_byte() -> None:
    """After its stream the connection waits for a request: shutdown closes it with nothing written (an
    unsolicited response would confuse the client's next request)."""
    async with sse_server() as server:
        body = b'{"prompt": "idle", "max_tokens": 3, "tokens_per_s": 0}'
        req = b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(req % (len(body), body))
        await reader.readuntil(b"\r\n0\r\n\r\n")
        await wait_for(lambda: not server.streaming)
        await server.shutdown(drain_timeout=0)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


@pytest.mark.parametrize("server_name", sorted(SERVERS))
async def test_asgi_servers_chunk_the_app_stream_so_a_cut_is_an_error(server_name: str) -> None:
    model = FakeModel(seed=5)
    app = TokenwireASGI(None, ServerOptions(generator=model))
    async with SERVERS[server_name](app) as base:
        port = int(base.rsplit(":", 1)[1])
        async with cut_proxy(port, CUT_AT) as proxy:
            with pytest.raises((httpx.TransportError, openai.APIError)):
                await _sdk_chat(f"http://127.0.0.1:{proxy.port}/v1")
        text, finish, _ = await _sdk_chat(f"{base}/v1")
        assert text == "".join(model.tokens("Say hi", 40)) and finish == "length"


# -- the npm openai package under node -------------------------------------------------------------------

NODE_CHAT = """
import OpenAI from "openai";
const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0 });
let text = "", finish = null, usage = null;
try {
  const stream = await client.chat.completions.create({
    model: "fake", messages: [{ role: "user", content: "Say hi" }], stream: true, max_tokens: 40,
    stream_options: { include_usage: true }, tokens_per_s: 2000,
  });
  for await (const chunk of stream) {
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
    } else usage = chunk.usage;
  }
  console.log(JSON.stringify({ ok: true, text, finish, usage }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e), text }));
}
"""


@pytest.fixture(scope="module")
def node_openai(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the npm ``openai`` package (v6) installed and a chat script; skips without npm or network."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node and npm are not installed")
    folder = tmp_path_factory.mktemp("node_openai")
    try:
        subprocess.run(  # noqa: S603 - a fixed command
            [npm, "install", "--no-audit", "--no-fund", "--silent", "openai@6"],
            cwd=folder, check=True, timeout=90, capture_output=True,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"npm could not install openai (offline?): {exc}")
    (folder / "chat.mjs").write_text(NODE_CHAT)
    return folder


async def _node_chat(folder: Path, base_url: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node", "chat.mjs", base_url, cwd=folder, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    result: dict[str, Any] = json.loads(out)
    return result


async def test_the_npm_openai_sdk_raises_on_a_cut_stream_and_reads_an_uncut_one(node_openai: Path) -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server:
        whole = await _node_chat(node_openai, f"http://127.0.0.1:{server.port}/v1")
        assert whole["ok"], whole
        assert whole["text"] == "".join(model.tokens("Say hi", 40))
        assert whole["finish"] == "length" and whole["usage"]["completion_tokens"] == 40
        async with cut_proxy(server.port, CUT_AT) as proxy:
            cut = await _node_chat(node_openai, f"http://127.0.0.1:{proxy.port}/v1/")
        assert not cut["ok"], cut  # before chunking: ok, with a short text and no finish_reason
        assert cut["text"] and len(cut["text"]) < len(whole["text"])


@pytest.mark.parametrize("server_name", sorted(SERVERS))
async def test_asgi_shutdown_hint_leaves_the_body_incomplete(server_name: str) -> None:
    """As on ``tokenwire serve``: the hint is body bytes, then the response is cut (no last chunk), so even a
    client that ignores the hint sees a cut and resumes. (A stream the hub's close ends gets its ``done``
    frame instead: its producer stopped; this one's producer is the test.)"""
    hub = Hub()
    app = TokenwireASGI(hub, ServerOptions(generator=FakeModel(seed=5)))
    async with SERVERS[server_name](app) as base, httpx.AsyncClient() as client:
        stream = hub.create_stream()
        stream.send("first")
        async with client.stream("GET", f"{base}/v1/streams/{stream.id}/events") as resp:
            it = resp.aiter_bytes()
            rest = await anext(it)
            await app.shutdown()
            with pytest.raises(httpx.RemoteProtocolError):
                async for chunk in it:
                    rest += chunk
        assert b"data: first" in rest and b"server shutting down, reconnect to resume" in rest
        stream.finish()
