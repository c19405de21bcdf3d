"""Hostile requests get a 4xx and disturb no other stream; a connection whose flush fails ends alone.

The fuzz test runs a real ``SseServer`` with 20 healthy streams (10 ``POST /v1/streams``, 10 streaming chat
completions, the custom OpenAI rendering) while a seeded generator throws hostile requests at it over raw
sockets: lone surrogates in every field, deep nesting, wrong types, huge numbers, invalid UTF-8, NUL/CR/LF in
ids, truncated bodies. Every hostile request must get a 4xx (never a 5xx, never a hang, never a stream) and
every healthy stream every token and its end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.server.test_asgi import wait_for
from tests.server.test_sse_server import events, tokens
from tests.support.servers import sse_server, wt_client, wt_server
from tokenwire import FakeModel, InvalidBody, _core
from tokenwire.protocol.webtransport import REQUEST_START
from tokenwire.server import SseServer
from tokenwire.server.endpoints import StreamPlan

pytestmark = pytest.mark.usefixtures("no_leaks")

HEALTHY = 20
TOKENS = 120
PACE = 100.0  # tokens per second: each healthy stream lasts about 1.2 s


def _lone_surrogate(rng: random.Random) -> str:
    return chr(rng.randrange(0xD800, 0xE000))


def _chat() -> dict[str, Any]:
    return {
        "model": "fake",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 5,
        "stream_options": {"include_usage": True},
    }


def _create() -> dict[str, Any]:
    return {"prompt": "hi", "max_tokens": 5, "stream_id": "fuzz", "ttft": 0, "tokens_per_s": 100, "stamp": False}


# Where a string goes in a body: (path into the body, the route).
STRING_PLACES: list[tuple[tuple[Any, ...], str]] = [
    (("model",), "chat"),
    (("messages", 0, "content"), "chat"),
    (("messages", 1, "content"), "chat"),
    (("messages", 1, "role"), "chat"),
    (("user",), "chat"),
    (("stream_id",), "chat"),
    (("prompt",), "create"),
    (("stream_id",), "create"),
    (("metadata", "note"), "create"),
]


def _put(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = body
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value


def _request(route: str, body: bytes, *, extra: bytes = b"", declared: int | None = None) -> bytes:
    path = b"/v1/chat/completions" if route == "chat" else b"/v1/streams"
    length = len(body) if declared is None else declared
    return (
        b"POST %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n%b"
        b"Content-Length: %d\r\n\r\n%b" % (path, extra, length, body)
    )


def _surrogate(rng: random.Random) -> tuple[str, bytes]:
    place, route = rng.choice(STRING_PLACES)
    body = _chat() if route == "chat" else _create()
    _put(body, place, "ok " + _lone_surrogate(rng) + " ok")
    if rng.random() < 0.2:  # in a key instead
        body[_lone_surrogate(rng) + "key"] = 1
    return f"surrogate {place}", _request(route, json.dumps(body).encode())


def _surrogate_in_key(rng: random.Random) -> tuple[str, bytes]:
    body = _chat()
    body["messages"][0][f"x{_lone_surrogate(rng)}"] = "y"
    return "surrogate in a key", _request("chat", json.dumps(body).encode())


def _deep(rng: random.Random) -> tuple[str, bytes]:
    depth = rng.choice([65, 200, 1500, 100_000])
    if rng.random() < 0.5:
        inner = b"[" * depth + b"1" + b"]" * depth
    else:
        inner = b'{"a":' * depth + b"1" + b"}" * depth
    return f"nesting {depth}", _request("create", b'{"prompt": "hi", "x": ' + inner + b"}")


WRONG_TYPES: list[tuple[str, str, Any]] = [
    ("chat", "stream", "no"),
    ("chat", "stream", 1),
    ("chat", "stream", []),
    ("chat", "max_tokens", "5"),
    ("chat", "max_tokens", 1.5),
    ("chat", "max_tokens", True),
    ("chat", "max_tokens", -1),
    ("chat", "messages", {}),
    ("chat", "messages", "hi"),
    ("chat", "messages", [1]),
    ("chat", "messages", [{"content": 3}]),
    ("chat", "model", 5),
    ("chat", "stream_options", "usage"),
    ("chat", "stream_options", {"include_usage": "yes"}),
    ("create", "prompt", 3),
    ("create", "prompt", None),
    ("create", "ttft", "soon"),
    ("create", "ttft", -1),
    ("create", "tokens_per_s", "fast"),
    ("create", "stamp", "yes"),
    ("create", "stream_id", 5),
    ("create", "stream_id", "a:b"),
    ("create", "stream_id", ""),
]


def _wrong_type(rng: random.Random) -> tuple[str, bytes]:
    route, name, value = rng.choice(WRONG_TYPES)
    body = _chat() if route == "chat" else _create()
    body[name] = value
    return f"wrong type {name}={value!r}", _request(route, json.dumps(body).encode())


def _huge(rng: random.Random) -> tuple[str, bytes]:
    name = rng.choice(["max_tokens", "max_completion_tokens", "ttft", "tokens_per_s"])
    number = rng.choice([b"1" + b"0" * 5000, b"1e400", b"-1e400", b"NaN", b"Infinity", b"%d" % 2**70])
    route = "chat" if name == "max_completion_tokens" else "create"
    text = json.dumps(_chat() if route == "chat" else _create())[:-1].encode()
    return f"huge {name}={number[:12]!r}", _request(route, text + b', "%b": %b}' % (name.encode(), number))


def _bad_utf8(rng: random.Random) -> tuple[str, bytes]:
    bad = rng.choice([b"\xff", b"\xed\xa0\x80", b"\xc3(", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\xe2\x82"])
    route = rng.choice(["chat", "create"])
    text = json.dumps(_chat() if route == "chat" else _create()).encode()
    text = text.replace(b'"hi"', b'"h' + bad + b'i"', 1)
    return f"invalid UTF-8 {bad!r}", _request(route, text)


def _bad_ids(rng: random.Random) -> tuple[str, bytes]:
    choice = rng.randrange(5)
    if choice == 0:
        body = _create()
        body["stream_id"] = rng.choice(["a\x00b", "a\r\nb", "a\nb", "a\rb", "\x00"])
        return "control characters in stream_id", _request("create", json.dumps(body).encode())
    if choice == 1:
        value = rng.choice([b"a\x00b:e:1", b"x:\x00:1", b"x:e:1\x00"])
        return (
            "NUL in Last-Event-ID",
            b"GET /v1/streams/x/events HTTP/1.1\r\nLast-Event-ID: %b\r\nConnection: close\r\n\r\n" % (value),
        )
    if choice == 2:
        target = rng.choice([b"/v1/streams/a%00b/events", b"/v1/streams/a%0D%0Ab/events", b"/v1/streams/%FF/events"])
        return "escaped control characters in the path", b"GET %b HTTP/1.1\r\nConnection: close\r\n\r\n" % target
    if choice == 3:
        query = rng.choice([b"%00", b"a%0D%0Ab:e:1", b"%ED%A0%80", b"x:e:1%0A"])
        return (
            "control characters in ?last_event_id",
            b"GET /v1/streams/x/events?last_event_id=%b HTTP/1.1\r\nConnection: close\r\n\r\n" % query,
        )
    raw = rng.choice(
        [b"GET /v1/streams/a\rb/events HTTP/1.1\r\n\r\n", b"GET /v1/streams/a\x00b/events HTTP/1.1\r\n\r\n"]
    )
    return "raw control characters in the request line", raw


def _truncated(rng: random.Random) -> tuple[str, bytes]:
    text = json.dumps(_chat()).encode()
    if rng.random() < 0.5:  # the JSON itself is cut short
        cut = rng.randrange(1, len(text) - 1)
        return f"JSON cut at {cut}", _request("chat", text[:cut])
    # Fewer bytes than declared, and then nothing: the request never completes (408 after header_timeout).
    return "body shorter than its Content-Length", _request("chat", text[: len(text) // 2], declared=len(text))


HOSTILE: list[Callable[[random.Random], tuple[str, bytes]]] = [
    _surrogate,
    _surrogate_in_key,
    _deep,
    _wrong_type,
    _huge,
    _bad_utf8,
    _bad_ids,
    _truncated,
]


async def _hostile_exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` on a new connection; ``(status, whole response)`` once the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(5):  # a hang fails the test
            response = await reader.read()
    finally:
        writer.close()
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), response[:200]
    return int(status_line.split()[1]), response


async def _healthy_sse(client: httpx.AsyncClient, server: SseServer, model: FakeModel, i: int) -> None:
    prompt = f"healthy {i}"
    body = {"prompt": prompt, "max_tokens": TOKENS, "tokens_per_s": PACE}
    async with client.stream("POST", f"http://127.0.0.1:{server.port}/v1/streams", json=body) as resp:
        raw = b"".join([chunk async for chunk in resp.aiter_bytes()])
    evs = events(raw)
    assert tokens(evs) == model.tokens(prompt, TOKENS), prompt
    assert evs[-1].type == "done" and json.loads(evs[-1].data)["reason"] == "length"


async def _healthy_chat(client: httpx.AsyncClient, server: SseServer, model: FakeModel, i: int) -> None:
    prompt = f"chat {i}"
    body = {
        "model": "fake",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "max_tokens": TOKENS,
        "tokens_per_s": PACE,
    }
    async with client.stream("POST", f"http://127.0.0.1:{server.port}/v1/chat/completions", json=body) as resp:
        raw = b"".join([chunk async for chunk in resp.aiter_bytes()])
    evs = events(raw)
    assert evs[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in evs[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "".join(model.tokens(prompt, TOKENS)), prompt
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_hostile_requests_get_4xx_and_every_healthy_stream_finishes() -> None:
    rng = random.Random(8)
    model = FakeModel(seed=5)
    async with sse_server(model=model, header_timeout=0.5) as server:
        limits = httpx.Limits(max_connections=HEALTHY + 5)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            healthy = [
                asyncio.create_task((_healthy_sse if i % 2 else _healthy_chat)(client, server, model, i))
                for i in range(HEALTHY)
            ]
            await wait_for(lambda: len(server.streaming) == HEALTHY)  # every healthy stream is on the wire
            cases = [make(rng) for make in HOSTILE for _ in range(12)]
            rng.shuffle(cases)
            answers: list[tuple[str, int, bytes]] = []
            gate = asyncio.Semaphore(8)

            async def attack(label: str, request: bytes) -> None:
                async with gate:
                    status, response = await _hostile_exchange(server.port, request)
                answers.append((label, status, response))

            async with asyncio.TaskGroup() as group:
                for label, request in cases:
                    group.create_task(attack(label, request))
            await asyncio.gather(*healthy)
        for label, status, response in answers:
            assert 400 <= status < 500, (label, response[:300])
            error = json.loads(response.partition(b"\r\n\r\n")[2])["error"]
            assert error["status"] == status and error["message"], label
        assert len(answers) == len(cases) == 12 * len(HOSTILE)
        # No hostile request started a generation: the healthy ones are all the model ran.
        assert model.calls == HEALTHY
        assert server.metrics.streams_started_total == HEALTHY


async def test_a_flush_that_raises_ends_only_its_own_connection(caplog: pytest.LogCaptureFixture) -> None:
    """One connection's render raises in every flush after its first token; it is queued first in each flush
    batch (its stream gets each token first). The other connections of the same batches get everything."""
    async with sse_server() as server, httpx.AsyncClient() as client:
        hub = server.hub
        streams = [hub.create_stream(f"s{i}") for i in range(6)]
        attach = server.router.attach

        def failing_render(frames: list[tuple[int, int, str]]) -> bytes:
            first_seq = frames[0][1]
            if first_seq > 1:
                raise RuntimeError("this connection's render fails")
            return _core.sse_batch([text for _, _, text in frames], id_prefix=f"s0:{hub.epoch}:", first_seq=first_seq)

        def attach_with_a_failing_render(*args: Any, **kwargs: Any) -> StreamPlan | None:
            plan = attach(*args, **kwargs)
            if plan is not None and plan.stream.id == "s0":
                plan.render = failing_render
            return plan

        server.router.attach = attach_with_a_failing_render  # type: ignore[method-assign]

        async def read(stream_id: str) -> bytes:
            got = b""
            async with client.stream("GET", f"http://127.0.0.1:{server.port}/v1/streams/{stream_id}/events") as r:
                async for chunk in r.aiter_bytes():
                    got += chunk
            return got

        readers = [asyncio.create_task(read(s.id)) for s in streams]
        await wait_for(lambda: len(server.streaming) == len(streams))
        with caplog.at_level(logging.ERROR, logger="tokenwire.server"):
            for i in range(20):
                for s in streams:  # s0 first: its connection heads every flush batch
                    s.send(f"t{i}")
                await asyncio.sleep(0.005)
            for s in streams:
                s.finish()
            async with asyncio.timeout(20):  # without isolation, the connections after s0 wait forever
                results = await asyncio.gather(*readers, return_exceptions=True)
        assert isinstance(results[0], httpx.TransportError), results[0]  # cut, so its client resumes
        for got in results[1:]:
            assert isinstance(got, bytes)
            evs = events(got)
            assert tokens(evs) == [f"t{i}" for i in range(20)] and evs[-1].type == "done"
        failed = [r for r in caplog.records if "flush of" in r.getMessage()]
        assert len(failed) == 1  # one failure, one connection closed; no other connection was touched


@pytest.mark.usefixtures("wt_engine")
async def test_a_webtransport_start_with_a_lone_surrogate_is_refused() -> None:
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server) as client:
        body = b'{"prompt": "hi \\ud800", "max_tokens": 3}'
        with pytest.raises(InvalidBody) as info:
            await client.request_raw(bytes([REQUEST_START]) + _core.encode_varint(len(body)) + body)
        assert info.value.field == "prompt"
        assert model.calls == 0 and server.metrics.streams_started_total == 0
        reader = await client.generate("still serving", max_tokens=5)
        assert [t async for t in reader] == model.tokens("still serving", 5)
