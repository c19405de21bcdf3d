"""tokenwire.proxy against a real upstream process (tests/support/upstream.py), before any server is involved:
what it sends, what it yields, how it fails, and that closing it closes the upstream's stream."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.redis_server import free_port
from tests.support.upstream import Upstream, content_tokens
from tokenwire.errors import GenerationRefused, UpstreamError
from tokenwire.generation import GenerationRequest
from tokenwire.protocol.openai import assemble_completion, chunk_content
from tokenwire.proxy import UpstreamOptions, UpstreamProxy, UpstreamSource

pytestmark = pytest.mark.usefixtures("no_leaks")

KEY = "sk-upstream-secret-0123456789"


def chat(content: str = "Tell me", max_tokens: int = 12, **extra: Any) -> GenerationRequest:
    body = {"model": "test-model", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return GenerationRequest("chat", content, max_tokens, {**body, "stream": True, **extra}, "s1")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream("--tokens-per-s", "0") as up:
        yield up


@pytest.fixture(scope="module")
def keyed() -> Iterator[Upstream]:
    with Upstream("--api-key", KEY) as up:
        yield up


@pytest.fixture
async def fresh(upstream: Upstream) -> Upstream:
    await upstream.reset()
    return upstream


async def drain(source: UpstreamSource) -> list[str]:
    out: list[str] = []
    async for item in source:
        out.extend([item] if isinstance(item, str) else item)
    return out


async def test_chunks_arrive_verbatim_once(fresh: Upstream) -> None:
    async with UpstreamProxy(fresh.url) as proxy:
        source = proxy.generate(chat(stream_options={"include_usage": True}, temperature=0.5, stream_id="mine"))
        await source.open()
        try:
            chunks = await drain(source)
        finally:
            await source.aclose()
    record = await fresh.record(1)
    assert chunks == record["chunks"]  # byte for byte, in order, each once
    assert "".join(map(chunk_content, chunks)) == "".join(content_tokens("Tell me", 12))
    sent = record["body"]
    assert sent["stream"] is True and sent["temperature"] == 0.5 and sent["stream_options"] == {"include_usage": True}
    assert "stream_id" not in sent  # tokenwire's own member stays here
    assert source.finish_reason == json.loads(chunks[-2])["choices"][0]["finish_reason"]
    assert source.usage == json.loads(chunks[-1])["usage"]
    counters = await fresh.counters()
    assert (counters["calls"], counters["completed"], counters["disconnects"]) == (1, 1, 0)


async def test_tool_call_deltas_pass_through(fresh: Upstream) -> None:
    tools = [{"type": "function", "function": {"name": name, "parameters": {}}} for name in ("get", "put")]
    async with UpstreamProxy(fresh.url) as proxy:
        source = proxy.generate(chat("weather?", tools=tools))
        chunks = await drain(source)  # not opened first: the first read opens
        await source.aclose()
    assert chunks == (await fresh.record(1))["chunks"]
    message = assemble_completion(chunks)["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get", "put"]
    assert all(json.loads(c["function"]["arguments"])["query"] == "weather?" for c in message["tool_calls"])
    assert source.finish_reason == "tool_calls"


async def test_a_start_and_a_non_streaming_chat_become_streamed_chats(fresh: Upstream) -> None:
    opts = UpstreamOptions(fresh.url, model="default-model")
    async with UpstreamProxy(opts) as proxy:
        start = proxy.generate(
            GenerationRequest("create", "Say it", 7, {"prompt": "p", "temperature": 1, "tokens_per_s": 5}, "s2")
        )
        whole = proxy.generate(
            GenerationRequest("chat", "x", 16, {"messages": [{"role": "user", "content": "x"}], "stream": False}, "s3")
        )
        for source in (start, whole):
            await drain(source)
            await source.aclose()
    first, second = (await fresh.record(1))["body"], (await fresh.record(2))["body"]
    assert first == {
        "model": "default-model", "temperature": 1, "messages": [{"role": "user", "content": "Say it"}],
        "max_tokens": 7, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    assert second["stream"] is True and second["stream_options"] == {"include_usage": True}
    assert second["model"] == "default-model"
    assert start.usage is not None and start.usage["completion_tokens"] == len(content_tokens("Say it", 7))


@pytest.mark.parametrize("status", [429, 503])
async def test_a_refusal_before_the_first_chunk_keeps_status_and_body(fresh: Upstream, status: int) -> None:
    async with UpstreamProxy(fresh.url) as proxy:
        source = proxy.generate(chat(model=f"test-model?mode=fail-before&status={status}"))
        with pytest.raises(GenerationRefused) as refused:
            await source.open()
        await source.aclose()
    assert refused.value.status == status
    assert refused.value.content_type.startswith("application/json")
    assert json.loads(refused.value.body)["error"]["code"] == "rate_limit_exceeded"
    assert (await fresh.counters())["calls"] == 1


async def test_a_cut_mid_stream_is_an_upstream_error(fresh: Upstream) -> None:
    async with UpstreamProxy(fresh.url) as proxy:
        source = proxy.generate(chat(model="test-model?mode=fail-mid&after=4"))
        await source.open()
        got: list[str] = []
        with pytest.raises(UpstreamError) as failed:
            async for item in source:
                got.extend([item] if isinstance(item, str) else item)
        await source.aclose()
    assert failed.value.code == "upstream_error"
    assert got == (await fresh.record(1))["chunks"] and len(got) == 4


async def test_a_stall_hits_the_token_timeout_and_closing_frees_the_upstream(fresh: Upstream) -> None:
    async with UpstreamProxy(UpstreamOptions(fresh.url, token_timeout=0.3)) as proxy:
        source = proxy.generate(chat(model="test-model?mode=stall&after=3"))
        await source.open()
        with pytest.raises(UpstreamError) as failed:
            await drain(source)
        assert failed.value.code == "upstream_timeout"
        assert source.chunks == 3
        await source.aclose()
        counters = await fresh.wait_for("disconnects", 1)
    assert counters["completed"] == 0


async def test_no_first_chunk_in_time_is_a_timeout(fresh: Upstream) -> None:
    async with UpstreamProxy(UpstreamOptions(fresh.url, first_token_timeout=0.3, token_timeout=30)) as proxy:
        source = proxy.generate(chat(model="test-model?ttft=5"))
        await source.open()  # the headers come at once; the first chunk after 5 s
        with pytest.raises(UpstreamError, match="first chunk") as failed:
            await drain(source)
        await source.aclose()
    assert failed.value.code == "upstream_timeout"
    await fresh.wait_for("disconnects", 1)


async def test_an_unreachable_upstream_is_502() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with UpstreamProxy(url) as proxy:
        source = proxy.generate(chat())
        with pytest.raises(GenerationRefused) as refused:
            await source.open()
    assert refused.value.status == 502
    assert json.loads(refused.value.body)["error"]["code"] == "upstream_error"


async def test_closing_mid_stream_closes_the_upstream_connection(fresh: Upstream) -> None:
    async with UpstreamProxy(fresh.url) as proxy:
        source = proxy.generate(chat(max_tokens=40, model="test-model?tokens_per_s=20"))
        await source.open()
        got = [await anext(source), await anext(source)]
        assert len(got) == 2
        await source.aclose()
        counters = await fresh.wait_for("disconnects", 1)
        assert counters["completed"] == 0 and counters["active"] == 0
        assert await drain(source) == []  # closed: nothing more


async def test_the_pool_is_bounded(fresh: Upstream) -> None:
    opts = UpstreamOptions(fresh.url, max_connections=2, first_token_timeout=0.5)
    async with UpstreamProxy(opts) as proxy:
        stalled = [proxy.generate(chat(model="test-model?mode=stall&after=1")) for _ in range(2)]
        for source in stalled:
            await source.open()
        third = proxy.generate(chat())
        with pytest.raises(GenerationRefused) as refused:
            await third.open()  # waits for a pooled connection until the first-token timeout
        assert refused.value.status == 504
        assert (await fresh.counters())["active"] == 2
        for source in stalled:
            await source.aclose()
        await fresh.wait_for("disconnects", 2)
        again = proxy.generate(chat())
        assert await drain(again)  # a connection is free again
        await again.aclose()


async def test_credentials_own_key_pass_through_or_none(keyed: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    await keyed.reset()
    client = {"authorization": f"Bearer {KEY}"}
    caplog.set_level(logging.DEBUG)
    async with (
        UpstreamProxy(UpstreamOptions(keyed.url, api_key=KEY)) as own,
        UpstreamProxy(UpstreamOptions(keyed.url, pass_authorization=True)) as passing,
        UpstreamProxy(UpstreamOptions(keyed.url)) as bare,
    ):
        for proxy, headers in ((own, {}), (passing, client)):
            source = proxy.generate(dataclasses.replace(chat(), headers=headers))
            assert await drain(source)
            await source.aclose()
        for proxy, headers in ((bare, client), (passing, {})):
            source = proxy.generate(dataclasses.replace(chat(), headers=headers))
            with pytest.raises(GenerationRefused) as refused:
                await source.open()
            assert refused.value.status == 401
        assert KEY not in repr(own) and KEY not in repr(own.options)
    records = [await keyed.record(n) for n in (1, 2, 3, 4)]
    assert [r["authorization"] for r in records] == [f"Bearer {KEY}", f"Bearer {KEY}", None, None]
    assert caplog.records  # something was logged, and none of it holds the key
    assert all(KEY not in r.getMessage() for r in caplog.records)


def test_options_are_checked() -> None:
    for bad in ("ftp://x/v1", "127.0.0.1:9000", "http:///v1"):
        with pytest.raises(ValueError, match="upstream URL"):
            UpstreamOptions(bad)
    with pytest.raises(ValueError, match="max_connections"):
        UpstreamOptions("http://h/v1", max_connections=0)
    with pytest.raises(ValueError, match="token_timeout"):
        UpstreamOptions("http://h/v1", token_timeout=0)
    with pytest.raises(ValueError) as bad_url:
        UpstreamOptions("ftp://user:pw@h/v1")
    assert "pw" not in str(bad_url.value)


async def test_a_closed_proxy_refuses() -> None:
    proxy = UpstreamProxy("http://127.0.0.1:9/v1")
    await proxy.aclose()
    with pytest.raises(GenerationRefused) as refused:
        await proxy.generate(chat()).open()
    assert refused.value.status == 503
    await asyncio.sleep(0)


def test_without_aiohttp_the_import_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['aiohttp'] = None\ntry:\n import tokenwire.proxy\nexcept ImportError as e:\n print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)  # noqa: S603
    assert "pip install 'tokenwire[proxy]'" in out.stdout
