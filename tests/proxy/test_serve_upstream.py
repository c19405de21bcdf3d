"""``tokenwire serve --upstream`` end to end, with real processes: the official ``openai`` SDK, raw SSE, and
tokenwire's WebTransport client in front; the independent upstream of tests/support/upstream.py behind.

Every test checks the upstream's own record of what it sent (``/calls``): chunks arrive byte for byte, and
however often a client cuts and resumes, the upstream was called exactly once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.proxy.conftest import Serve
from tests.support.openai_sdk import stream_chat
from tests.support.servers import read_n
from tests.support.sse_spec_parser import Event, SpecParser
from tests.support.upstream import Upstream, content_tokens
from tokenwire.client.webtransport import WebTransportClient
from tokenwire.protocol.openai import assemble_completion, chunk_content

pytestmark = pytest.mark.usefixtures("no_leaks")

KEY = "sk-upstream-e2e-secret-4242"
TOOLS: Any = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "book", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def served(upstream: Upstream) -> Iterator[Serve]:
    with Serve("--upstream", upstream.url, "--upstream-timeout-token", "1") as serve:
        yield serve


@pytest.fixture
async def up(upstream: Upstream) -> Upstream:
    await upstream.reset()
    return upstream


@pytest.fixture
async def sdk(served: Serve) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=served.base + "/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


def messages(content: str) -> Any:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]


def prompt(content: str) -> str:
    return "Be brief.\n" + content  # what the upstream answers to: the messages' contents joined


def paced(rate: float, **query: Any) -> str:
    """A model name the upstream reads its behaviour from (tests/support/upstream.py)."""
    return "test-model?" + "&".join(f"{k}={v}" for k, v in {"tokens_per_s": rate, **query}.items())


def sse_text(text: str) -> str:
    """A token's text as SSE delivers it, each token apart (CR and CRLF become LF)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


async def read_events(response: httpx.Response, stop_after: int | None = None) -> list[Event]:
    """SSE events of ``response`` until it ends (or ``stop_after`` events other than a ``stream`` intro)."""
    parser = SpecParser()
    events: list[Event] = []
    async for data in response.aiter_raw():
        events += parser.feed(data)
        if stop_after is not None and sum(e.type != "stream" for e in events) >= stop_after:
            break
    return events


# -- the SDK -----------------------------------------------------------------------------------------------


async def test_sdk_stream_carries_the_upstream_chunks_byte_for_byte(up: Upstream, sdk: AsyncOpenAI) -> None:
    params: Any = {"model": "test-model", "messages": messages("Stream this"), "max_tokens": 20, "temperature": 0.3}
    async with sdk.chat.completions.with_streaming_response.create(
        stream=True, stream_options={"include_usage": True}, **params
    ) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in raw.iter_lines()]
    sent = await up.record(1)
    assert [line[len("data: ") :] for line in lines if line.startswith("data: ")] == [*sent["chunks"], "[DONE]"]
    assert sent["body"]["temperature"] == 0.3 and sent["body"]["stream"] is True

    text, finish, usage = await stream_chat(sdk, **params)  # typed, as an application reads it
    assert text == "".join(content_tokens(prompt("Stream this"), 20))
    assert finish == json.loads(sent["chunks"][-2])["choices"][0]["finish_reason"]
    typed = (await up.record(2))["chunks"]
    assert usage is not None and usage.model_dump(exclude_none=True) == json.loads(typed[-1])["usage"]
    assert (await up.counters())["calls"] == 2


async def test_sdk_stream_of_tool_calls(up: Upstream, sdk: AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="test-model",
        messages=messages("Book a table"),
        tools=TOOLS,
        stream=True,
    )
    received = [chunk.model_dump_json(exclude_unset=True) async for chunk in stream]
    sent = (await up.record(1))["chunks"]
    assert [json.loads(r) for r in received] == [json.loads(s) for s in sent]  # every field of every chunk
    calls = assemble_completion(sent)["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["lookup", "book"]
    assert json.loads(calls[0]["function"]["arguments"])["query"] == prompt("Book a table")[:40]


async def test_sdk_non_streaming_completion(up: Upstream, sdk: AsyncOpenAI) -> None:
    whole = await sdk.chat.completions.create(model="test-model", messages=messages("Whole"), max_tokens=9)
    sent = await up.record(1)
    assert whole.id == json.loads(sent["chunks"][0])["id"]  # the upstream's own
    assert whole.choices[0].message.content == "".join(content_tokens(prompt("Whole"), 9))
    assert whole.usage is not None and whole.usage.completion_tokens == len(content_tokens(prompt("Whole"), 9))
    assert sent["body"]["stream"] is True and sent["body"]["stream_options"] == {"include_usage": True}

    tools = await sdk.chat.completions.create(model="test-model", messages=messages("Tools"), tools=TOOLS)
    message = tools.choices[0].message
    assert tools.choices[0].finish_reason == "tool_calls" and message.tool_calls is not None
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == [  # type: ignore[union-attr]
        (c["function"]["name"], c["function"]["arguments"])
        for c in assemble_completion((await up.record(2))["chunks"])["choices"][0]["message"]["tool_calls"]
    ]
    assert (await up.counters())["calls"] == 2


# -- cut and resume ------------------------------------------------------------------------------------------


async def test_cut_and_resume_over_sse_in_the_openai_format(up: Upstream, served: Serve) -> None:
    body = {"model": paced(150), "messages": messages("Resume me"), "max_tokens": 30, "stream": True}
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            location = first.headers["location"]
            head = await read_events(first, stop_after=6)
        cut_at = head[-1].last_event_id
        async with http.stream("GET", location, headers={"Last-Event-ID": cut_at}) as second:
            rest = await read_events(second)
    sent = (await up.record(1))["chunks"]
    assert [e.data for e in head + rest] == [*sent, "[DONE]"]  # exactly once, in order
    seqs = [int(e.last_event_id.rsplit(":", 1)[1]) for e in head + rest]
    assert seqs == list(range(1, len(sent) + 2))
    assert (await up.counters())["calls"] == 1


async def test_cut_and_resume_over_native_sse(up: Upstream, served: Serve) -> None:
    body = {"prompt": "Native", "max_tokens": 30, "model": paced(150)}
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
        async with http.stream("POST", "/v1/streams", json=body) as first:
            assert first.status_code == 200
            stream_id = first.headers["x-tokenwire-stream-id"]
            head = [e for e in await read_events(first, stop_after=7) if e.type != "stream"]
        url = f"/v1/streams/{stream_id}/events"
        async with http.stream("GET", url, headers={"Last-Event-ID": head[-1].last_event_id}) as second:
            rest = [e for e in await read_events(second) if e.type != "stream"]
    sent = await up.record(1)
    assert sent["body"]["messages"] == [{"role": "user", "content": "Native"}] and sent["body"]["max_tokens"] == 30
    events = head + rest
    tokens = [e.data for e in events if e.type == "token"]
    assert tokens == [sse_text(chunk_content(c)) for c in sent["chunks"]]  # one token per chunk, "" for none
    assert "".join(tokens) == "".join(map(sse_text, content_tokens("Native", 30)))
    done = json.loads(events[-1].data)
    assert events[-1].type == "done"
    assert done["reason"] == json.loads(sent["chunks"][-2])["choices"][0]["finish_reason"]
    assert done["usage"] == json.loads(sent["chunks"][-1])["usage"]
    assert (await up.counters())["calls"] == 1


async def test_cut_and_resume_over_webtransport(up: Upstream, served: Serve) -> None:
    async with WebTransportClient(served.wt_url, server_certificate_hashes=[served.wt_hash]) as client:
        reader = await client.generate("Over QUIC", max_tokens=30, model=paced(150))
        got = await read_n(reader, 8)
        client.drop()  # the connection dies; the reader resumes on a new one
        got += [t async for t in reader]
        assert reader.reconnects == 1
    assert "".join(got) == "".join(content_tokens("Over QUIC", 30))  # binary frames keep every byte
    assert got == [chunk_content(c) for c in (await up.record(1))["chunks"]]
    assert (await up.counters())["calls"] == 1


# -- cancel and disconnect -----------------------------------------------------------------------------------


async def test_delete_closes_the_upstream_and_a_disconnect_does_not(up: Upstream, served: Serve) -> None:
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
        ids = []
        for _ in range(2):
            body = {"prompt": "Slow", "max_tokens": 40, "model": paced(20)}
            async with http.stream("POST", "/v1/streams", json=body) as response:
                ids.append(response.headers["x-tokenwire-stream-id"])
                await read_events(response, stop_after=2)
            # the client went away: the upstream goes on
        assert (await http.delete(f"/v1/streams/{ids[0]}")).status_code == 204
        counters = await up.wait_for("disconnects", 1)
        assert counters["calls"] == 2 and counters["completed"] == 0
        counters = await up.wait_for("completed", 1)  # the one nobody cancelled ran to its end
        assert counters["disconnects"] == 1
        async with http.stream("GET", f"/v1/streams/{ids[1]}/events") as again:
            tokens = [e.data for e in await read_events(again) if e.type == "token"]
    assert "".join(tokens) == "".join(map(sse_text, content_tokens("Slow", 40)))


async def test_a_webtransport_cancel_closes_the_upstream(up: Upstream, served: Serve) -> None:
    async with WebTransportClient(served.wt_url, server_certificate_hashes=[served.wt_hash]) as client:
        reader = await client.generate("Cancel me", max_tokens=40, model=paced(20))
        assert len(await read_n(reader, 2)) == 2
        await client.cancel(reader.stream_id)
        await reader.aclose()
    counters = await up.wait_for("disconnects", 1)
    assert counters["completed"] == 0 and counters["calls"] == 1


# -- upstream failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/streams"])
async def test_a_refusal_is_answered_with_the_upstreams_status_and_body(up: Upstream, served: Serve, path: str) -> None:
    model = "test-model?mode=fail-before&status=429"
    async with httpx.AsyncClient(timeout=10) as http:
        direct = await http.post(up.url + "/chat/completions", json={"model": model, "messages": messages("x")})
        body: dict[str, Any] = {"model": model, "stream": True}
        body.update({"messages": messages("x")} if "chat" in path else {"prompt": "x"})
        proxied = await http.post(served.base + path, json=body)
    assert direct.status_code == proxied.status_code == 429
    assert proxied.content == direct.content
    assert proxied.headers["content-type"] == direct.headers["content-type"]
    assert "x-tokenwire-stream-id" not in proxied.headers  # no stream was started
    assert (await up.counters())["calls"] == 2


async def test_sdk_sees_the_refusal_as_the_upstreams_error(up: Upstream, sdk: AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as refused:
        await sdk.chat.completions.create(model="test-model?mode=fail-before", messages=messages("x"), stream=True)
    assert refused.value.code == "rate_limit_exceeded"


async def test_a_cut_upstream_ends_the_stream_with_an_error_event(
    up: Upstream, served: Serve, sdk: AsyncOpenAI
) -> None:
    body = {"model": "test-model?mode=fail-mid&after=4", "messages": messages("Cut"), "stream": True}
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            events = await read_events(response)
        native = {"prompt": "Cut", "model": "test-model?mode=fail-mid&after=3"}
        async with http.stream("POST", "/v1/streams", json=native) as response:
            native_events = [e for e in await read_events(response) if e.type != "stream"]
        whole = await http.post("/v1/chat/completions", json={**body, "stream": False})
    sent = (await up.record(1))["chunks"]
    assert [e.data for e in events[:4]] == sent
    error = json.loads(events[4].data)["error"]
    assert error["code"] == "upstream_error" and events[4].last_event_id.endswith(":5:error")
    assert events[5].data == "[DONE]" and len(events) == 6
    assert [e.type for e in native_events] == ["token"] * 3 + ["error"]
    assert json.loads(native_events[-1].data)["code"] == "upstream_error"
    assert whole.status_code == 502 and whole.json()["error"]["code"] == "upstream_error"
    stream = await sdk.chat.completions.create(**body)
    with pytest.raises(openai.APIError, match="upstream"):
        async for _ in stream:
            pass
    await stream.close()
    await asyncio.sleep(0.05)  # the SDK's inner async generators, dropped mid-way, are closed by loop tasks


async def test_a_stalled_upstream_hits_the_token_timeout(up: Upstream, served: Serve) -> None:
    body = {"prompt": "Stall", "model": "test-model?mode=stall&after=3"}
    async with (
        httpx.AsyncClient(base_url=served.base, timeout=10) as http,
        http.stream("POST", "/v1/streams", json=body) as response,
    ):
        events = [e for e in await read_events(response) if e.type != "stream"]
    assert [e.type for e in events] == ["token"] * 3 + ["error"]
    assert json.loads(events[-1].data)["code"] == "upstream_timeout"
    await up.wait_for("disconnects", 1)  # the stalled upstream connection was closed


# -- credentials -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed() -> Iterator[Upstream]:
    with Upstream("--api-key", KEY) as up:
        yield up


async def test_the_proxys_own_key_from_the_environment_never_logged(keyed: Upstream) -> None:
    await keyed.reset()
    env = {"TOKENWIRE_UPSTREAM_API_KEY": KEY}
    with Serve("--upstream", keyed.url, env=env, webtransport=False, verbose=2) as serve:
        client = AsyncOpenAI(base_url=serve.base + "/v1", api_key="client-token", max_retries=0)
        text, _, _ = await stream_chat(client, model="test-model", messages=messages("Keyed"), max_tokens=5)
        await client.close()
        assert text == "".join(content_tokens(prompt("Keyed"), 5))
        assert (await keyed.counters())["last_authorization"] == f"Bearer {KEY}"
        assert "DEBUG" in serve.log or "debug" in serve.log.lower()  # it did log at debug level
    assert KEY not in serve.log


async def test_pass_through_of_the_clients_authorization(keyed: Upstream) -> None:
    await keyed.reset()
    with Serve("--upstream", keyed.url, "--upstream-pass-authorization", webtransport=False) as serve:
        good = AsyncOpenAI(base_url=serve.base + "/v1", api_key=KEY, max_retries=0)
        bad = AsyncOpenAI(base_url=serve.base + "/v1", api_key="sk-wrong", max_retries=0)
        whole = await good.chat.completions.create(model="test-model", messages=messages("Pass"), max_tokens=4)
        assert whole.choices[0].message.content == "".join(content_tokens(prompt("Pass"), 4))
        with pytest.raises(openai.AuthenticationError) as refused:
            await bad.chat.completions.create(model="test-model", messages=messages("Pass"))
        assert refused.value.code == "invalid_api_key"
        await good.close()
        await bad.close()
    records = [await keyed.record(n) for n in (1, 2)]
    assert [r["authorization"] for r in records] == [f"Bearer {KEY}", "Bearer sk-wrong"]
    assert KEY not in serve.log
