"""Streams whose frames are raw OpenAI chunks (label format=openai-chunks), in one process: what each reader of the
hub gets, what a non-streaming request collects, how a typed source failure ends the stream, and which chat
messages a request may carry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.sse_spec_parser import parse
from tokenwire import Hub, _core
from tokenwire.errors import InvalidBody, UpstreamError
from tokenwire.hub import RAW_CHUNKS, FrameKind, TokenStream, Wire
from tokenwire.server.endpoints import collect_chunks, is_raw_chunks, message_text, plan_openai_chunks

pytestmark = pytest.mark.usefixtures("no_leaks")

HEAD = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    return json.dumps({**HEAD, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}, ensure_ascii=False)


CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hé"}),
    chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}),
    chunk({"content": " there"}),
    chunk({}, "tool_calls"),
    json.dumps({**HEAD, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}}),
]


class Source:
    """A source as the proxy's looks to the hub: raw chunks, then an end or a failure."""

    chunk_format = "openai"

    def __init__(self, chunks: list[str], fail: BaseException | None = None, hold: bool = False) -> None:
        self.chunks = chunks
        self.fail = fail
        self.hold = hold
        self.finish_reason = "tool_calls"
        self.usage = {"completion_tokens": 4}
        self.closed = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._items()

    async def _items(self) -> AsyncIterator[str]:
        for c in self.chunks:
            yield c
        if self.hold:
            await asyncio.sleep(3600)
        if self.fail is not None:
            raise self.fail

    async def aclose(self) -> None:
        self.closed = True


async def started(hub: Hub, source: Source) -> TokenStream:
    """``source``'s stream, once it has ended (or, for a source that holds, sent every chunk)."""
    stream = hub.start(source)
    stream.label("format", RAW_CHUNKS)  # as Endpoints does, before the first frame
    there = asyncio.Event()

    def check() -> None:
        if not stream.is_open or (source.hold and stream.last_seq >= len(source.chunks)):
            there.set()

    stream.attach(check)
    async with asyncio.timeout(5):
        await there.wait()
    stream.detach(check)
    return stream


async def test_native_readers_get_each_chunks_content_as_a_token() -> None:
    async with Hub() as hub:
        stream = await started(hub, Source(CHUNKS))
        assert is_raw_chunks(stream)
        contents = ["", "Hé", "", "", " there", "", ""]
        expected = _core.Ring(stream.id_prefix)
        for c in contents:
            expected.append(c)
        expected.append('{"reason":"tool_calls","usage":{"completion_tokens":4}}', _core.FRAME_DONE)
        wires: list[tuple[Wire, int]] = [("sse", _core.WIRE_SSE), ("binary", _core.WIRE_BINARY)]
        for wire, code in wires:
            assert stream.cursor(0, wire).poll()[0] == expected.since(0, code)
            assert stream.cursor(3, wire).poll()[0] == expected.since(3, code)  # a resume mid-way
        async with hub.subscribe(stream.id, wire="sse") as sub:
            assert b"".join([b async for b in sub]) == expected.since(0)
        frames = stream.cursor(0, None).frames()  # frames themselves stay the raw chunks
        assert [f.text for f in frames if f.kind is FrameKind.TOKEN] == CHUNKS


async def test_the_openai_rendering_is_the_chunks_verbatim() -> None:
    async with Hub() as hub:
        stream = await started(hub, Source(CHUNKS))
        plan = plan_openai_chunks(hub, stream, 2)
        assert plan.intro == b"" and plan.retry is False
        assert ("Location", f"/v1/streams/{stream.id}/events?format=openai") in plan.head
        assert plan.render is not None
        data = stream.cursor(plan.after, "sse", plan.render).poll()[0]
        events, _ = parse(data)
        assert [e.data for e in events] == [*CHUNKS[2:], "[DONE]"]
        assert [e.last_event_id for e in events] == [f"{stream.id_prefix}{s}" for s in range(3, 9)]


async def test_a_non_streaming_request_collects_one_completion() -> None:
    async with Hub() as hub:
        stream = await started(hub, Source(CHUNKS))
        status, answer = await collect_chunks(hub, stream)
    assert status == 200
    assert answer["id"] == "chatcmpl-x" and answer["model"] == "m"
    message = answer["choices"][0]["message"]
    assert message["content"] == "Hé there"
    assert message["tool_calls"] == [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    assert answer["usage"]["total_tokens"] == 5


async def test_an_upstream_failure_ends_the_stream_with_its_code() -> None:
    async with Hub() as hub:
        source = Source(CHUNKS[:3], fail=UpstreamError("upstream_timeout", "the upstream sent no chunk within 1 s"))
        stream = await started(hub, source)
        frames = stream.cursor(0, None).frames()
        assert frames[-1].kind is FrameKind.ERROR
        assert frames[-1].json() == {"code": "upstream_timeout", "message": "the upstream sent no chunk within 1 s"}
        assert source.closed
        status, body = await collect_chunks(hub, stream)
        assert status == 502 and body["error"]["code"] == "upstream_timeout"
        events, _ = parse(stream.cursor(3, "sse", plan_openai_chunks(hub, stream, 3).render).poll()[0])
        assert json.loads(events[0].data)["error"]["code"] == "upstream_timeout"
        assert events[0].last_event_id.endswith(":4:error") and events[1].data == "[DONE]"
        # a resume from the error chunk gets only [DONE]
        resumed = plan_openai_chunks(hub, stream, 3, end_part="error")
        events, _ = parse(stream.cursor(3, "sse", resumed.render).poll()[0])
        assert [e.data for e in events] == ["[DONE]"]


async def test_a_cancel_closes_the_source_and_collects_what_came() -> None:
    async with Hub() as hub:
        source = Source(CHUNKS[:2], hold=True)
        stream = await started(hub, source)
        collecting = asyncio.ensure_future(collect_chunks(hub, stream))
        await asyncio.sleep(0.01)
        hub.cancel(stream.id)
        status, answer = await collecting
        await asyncio.sleep(0.01)
        assert source.closed
    assert status == 200
    assert answer["choices"][0]["message"]["content"] == "Hé"
    assert answer["choices"][0]["finish_reason"] == "cancelled"


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({"role": "user", "content": "plain"}, "plain"),
        ({"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}, ""),
        ({"role": "tool", "tool_call_id": "c"}, ""),
        ({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]}, "ab"),
    ],
)  # fmt: skip
def test_chat_messages_take_openai_content_shapes(message: dict[str, Any], text: str) -> None:
    assert message_text(message, 0) == text


@pytest.mark.parametrize(
    "message", ["text", {"content": 5}, {"content": [1]}, {"content": [{"type": "text", "text": 2}]}, {"content": {}}]
)
def test_other_chat_messages_are_refused(message: Any) -> None:
    with pytest.raises(InvalidBody) as refused:
        message_text(message, 3)
    assert refused.value.field.startswith("messages[3]")
