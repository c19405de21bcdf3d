"""A POST that starts a stream, retried: ``Last-Event-ID`` resumes, ``Idempotency-Key`` repeats, and neither
starts a second generation. On the socket server and on the ASGI app under uvicorn and hypercorn, with
httpx and curl (docs/protocol.md §7.2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.asgi_servers import SERVERS
from tests.support.servers import sse_server, wt_client, wt_server
from tests.support.sse_spec_parser import Event, SpecParser
from tokenwire import FakeModel, Hub, ServerOptions
from tokenwire.asgi import TokenwireASGI
from tokenwire.errors import RemoteProtocolError
from tokenwire.server import ServerConfig
from tokenwire.server.base import HubHost

pytestmark = pytest.mark.usefixtures("no_leaks")

CURL = shutil.which("curl")
FRONTS = ["sse", *sorted(SERVERS)]


@contextlib.asynccontextmanager
async def front(kind: str, model: FakeModel, **config: Any) -> AsyncIterator[tuple[str, HubHost]]:
    """``(base URL, host)`` of the socket server (``sse``) or of the ASGI app under an ASGI server."""
    if kind == "sse":
        async with sse_server(model=model, **config) as server:
            yield f"http://127.0.0.1:{server.port}", server
        return
    app = TokenwireASGI(Hub(), ServerOptions(ServerConfig(**config), model))
    async with SERVERS[kind](app) as base:
        yield base, app


def events(body: bytes) -> list[Event]:
    return SpecParser().feed(body)


def tokens(evs: list[Event]) -> list[str]:
    return [e.data for e in evs if e.type == "token"]


async def read_tokens(resp: httpx.Response, n: int) -> tuple[list[str], str]:
    """Tokens of ``resp`` until ``n`` have arrived, and the id of the last event dispatched; then the caller
    drops the connection."""
    parser = SpecParser()
    got: list[str] = []
    last_id = ""
    async for chunk in resp.aiter_bytes():
        for e in parser.feed(chunk):
            last_id = e.last_event_id
            if e.type == "token":
                got.append(e.data)
        if len(got) >= n:
            break
    return got, last_id


@pytest.fixture(params=FRONTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_post_retry_with_last_event_id_resumes_the_same_generation(kind: str) -> None:
    model = FakeModel(seed=5)
    body = {"prompt": "retry me", "max_tokens": 40, "tokens_per_s": 400}
    expected = model.tokens("retry me", 40)
    async with front(kind, model) as (base, host), httpx.AsyncClient(base_url=base) as client:
        async with client.stream("POST", "/v1/streams", json=body) as resp:
            stream_id = resp.headers["x-tokenwire-stream-id"]
            got, last_id = await read_tokens(resp, 10)
        # The client's retry: the same POST, with the id of the last event it saw.
        r = await client.post("/v1/streams", json=body, headers={"Last-Event-ID": last_id})
        assert r.status_code == 200, r.text
        assert r.headers["x-tokenwire-stream-id"] == stream_id
        evs = events(r.content)
        assert evs[0].type == "stream" and evs[0].last_event_id == last_id
        assert json.loads(evs[0].data)["after"] == len(got)
        assert got + tokens(evs) == expected
        assert evs[-1].type == "done"
        # A retry after the end: 204, nothing left (EventSource-style clients stop there).
        r = await client.post("/v1/streams", json=body, headers={"Last-Event-ID": evs[-1].last_event_id})
        assert r.status_code == 204
        # The resume errors of GET .../events: malformed 400, another epoch 409, unknown stream 404, expired 410.
        epoch = host.hub.epoch
        for lei, status in (
            ("nonsense", 400),
            (f"{stream_id}:otherepoch:1", 409),
            (f"AAAAAAAAAAAAAAAAAAAAAA:{epoch}:1", 404),
            (f"{stream_id}:{epoch}:999", 400),
        ):
            r = await client.post("/v1/streams", json=body, headers={"Last-Event-ID": lei})
            assert r.status_code == status, (lei, r.text)
        assert model.calls == 1
        assert host.metrics.streams_started_total == 1


async def test_post_retry_of_a_chat_completion_resumes_in_the_openai_format(kind: str) -> None:
    model = FakeModel(seed=5)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "q"}],
        "stream": True,
        "max_tokens": 30,
        "tokens_per_s": 400,
    }
    expected = model.tokens("q", 30)
    async with front(kind, model) as (base, host), httpx.AsyncClient(base_url=base) as client:
        parser = SpecParser()
        first: list[Event] = []
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for chunk in resp.aiter_bytes():
                first += parser.feed(chunk)
                if len(first) >= 8:
                    break
        last_id = first[-1].last_event_id
        r = await client.post("/v1/chat/completions", json=body, headers={"Last-Event-ID": last_id})
        assert r.status_code == 200, r.text
        rest = events(r.content)
        assert rest[-1].data == "[DONE]"
        chunks = [json.loads(e.data) for e in [*first, *rest[:-1]]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert len({c["id"] for c in chunks}) == 1
        text = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:] if c["choices"]]
        assert "".join(text) == "".join(expected)
        assert model.calls == 1
        # A stream of POST /v1/streams is not a chat completion: it cannot be resumed as one.
        r = await client.post("/v1/streams", json={"prompt": "p", "max_tokens": 2})
        plain = events(r.content)[-1].last_event_id
        r = await client.post("/v1/chat/completions", json=body, headers={"Last-Event-ID": plain})
        assert r.status_code == 400
        assert host.metrics.streams_started_total == 2


async def test_idempotency_key_returns_the_same_stream_and_refuses_another_body(kind: str) -> None:
    model = FakeModel(seed=5)
    body = {"prompt": "once", "max_tokens": 20, "tokens_per_s": 2000}
    expected = model.tokens("once", 20)
    async with front(kind, model, max_idempotency_keys=2) as (base, host), httpx.AsyncClient(base_url=base) as client:
        key = {"Idempotency-Key": "8e03978e-40d5-43e8-bc93-6894a57f9324"}
        r1 = await client.post("/v1/streams", json=body, headers=key)
        r2 = await client.post("/v1/streams", json=dict(reversed(body.items())), headers=key)  # same JSON
        assert r1.status_code == r2.status_code == 200
        assert r1.headers["x-tokenwire-stream-id"] == r2.headers["x-tokenwire-stream-id"]
        assert tokens(events(r1.content)) == tokens(events(r2.content)) == expected
        # With a Last-Event-ID too: resumed after it. A structured-field string names the same key.
        third = events(r1.content)[3].last_event_id
        r3 = await client.post(
            "/v1/streams", json=body, headers={"Idempotency-Key": f'"{key["Idempotency-Key"]}"', "Last-Event-ID": third}
        )
        assert tokens(events(r3.content)) == expected[3:]
        assert model.calls == 1
        # The same key with another body is 422; a malformed key is 400.
        r = await client.post("/v1/streams", json={**body, "max_tokens": 21}, headers=key)
        assert r.status_code == 422, r.text
        assert "Idempotency-Key" in r.json()["error"]["message"]
        for bad in (b"x" * 256, "caf\u00e9".encode(), b"a b"):
            r = await client.post("/v1/streams", json=body, headers={"Idempotency-Key": bad})
            assert r.status_code == 400, bad
        # Keys are bounded (2 here): after two newer keys the first is forgotten and starts a new generation.
        for other in ("k2", "k3"):
            assert (await client.post("/v1/streams", json=body, headers={"Idempotency-Key": other})).status_code == 200
        assert model.calls == 3
        r = await client.post("/v1/streams", json=body, headers=key)
        assert r.headers["x-tokenwire-stream-id"] != r1.headers["x-tokenwire-stream-id"]
        assert model.calls == 4
        # A non-streaming chat completion repeated with its key: the same completion, one generation.
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "tokens_per_s": 2000}
        c1 = await client.post("/v1/chat/completions", json=chat, headers={"Idempotency-Key": "chat-1"})
        c2 = await client.post("/v1/chat/completions", json=chat, headers={"Idempotency-Key": "chat-1"})
        assert c1.status_code == c2.status_code == 200
        assert c1.json() == c2.json()
        assert model.calls == 5
        assert host.metrics.streams_started_total == 5


async def test_idempotency_key_with_curl_while_the_stream_runs() -> None:
    assert CURL, "curl is installed by the test command"
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server:
        url = f"http://127.0.0.1:{server.port}/v1/streams"
        body = json.dumps({"prompt": "curl", "max_tokens": 30, "tokens_per_s": 300})
        args = [CURL, "-sN", "--max-time", "20", "-H", "content-type: application/json", "-H", "Idempotency-Key: c1"]
        procs = [
            await asyncio.create_subprocess_exec(*args, "-d", body, url, stdout=asyncio.subprocess.PIPE)
            for _ in range(3)
        ]
        outs = [(await p.communicate())[0] for p in procs]
        streams = [events(out) for out in outs]
        assert all(tokens(s) == model.tokens("curl", 30) for s in streams)
        assert len({s[0].data for s in streams}) == 1  # the same stream intro: one stream
        assert model.calls == 1


async def test_post_retry_after_the_finish_chunk_gets_the_rest_of_the_openai_end(kind: str) -> None:
    model = FakeModel(seed=5)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "end"}],
        "stream": True,
        "max_tokens": 5,
        "tokens_per_s": 0,
        "stream_options": {"include_usage": True},
    }
    async with front(kind, model) as (base, _), httpx.AsyncClient(base_url=base) as client:
        whole = events((await client.post("/v1/chat/completions", json=body)).content)
        finish = next(e for e in whole if e.last_event_id.endswith(":finish"))
        r = await client.post("/v1/chat/completions", json=body, headers={"Last-Event-ID": finish.last_event_id})
        assert r.status_code == 200, r.text
        assert events(r.content) == whole[whole.index(finish) + 1 :]  # the usage chunk, then [DONE]
        r = await client.post("/v1/chat/completions", json=body, headers={"Last-Event-ID": whole[-1].last_event_id})
        assert r.status_code == 204
        assert model.calls == 1


async def test_webtransport_start_with_an_idempotency_key_repeats_the_same_stream() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server) as client:
        first = await client.generate("wt key", max_tokens=20, tokens_per_s=4000, idempotency_key="wt-1")
        tokens_first = [t async for t in first]
        again = await client.generate("wt key", max_tokens=20, tokens_per_s=4000, idempotency_key="wt-1")
        assert again.stream_id == first.stream_id
        assert [t async for t in again] == tokens_first == model.tokens("wt key", 20)
        assert model.calls == 1 and server.metrics.streams_started_total == 1
        with pytest.raises(RemoteProtocolError, match="Idempotency-Key") as refused:  # another request: 422
            await client.generate("another", max_tokens=20, idempotency_key="wt-1")
        assert refused.value.status_hint == 422
        assert model.calls == 1


async def test_a_key_is_one_key_for_webtransport_and_post_on_one_hub() -> None:
    """``tokenwire serve`` runs both servers on one hub: a browser client whose WebTransport start failed before
    its reply retries it as ``POST /v1/streams`` with the same key, and must get the stream already started."""
    hub, model = Hub(), FakeModel(seed=5)
    async with (
        sse_server(hub, model=model) as sse,
        wt_server(hub, model=model) as wt,
        wt_client(wt) as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{sse.port}") as http,
    ):
        started = await client.generate("one key", max_tokens=12, tokens_per_s=4000, idempotency_key="both-1")
        tokens = [t async for t in started]
        r = await http.post(
            "/v1/streams",
            json={"prompt": "one key", "max_tokens": 12, "tokens_per_s": 4000},
            headers={"Idempotency-Key": "both-1"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-tokenwire-stream-id"] == started.stream_id
        assert [e.data for e in events(r.content) if e.type == "token"] == tokens
        assert model.calls == 1
    await hub.aclose()
