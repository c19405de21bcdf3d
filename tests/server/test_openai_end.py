"""The end of an OpenAI-format stream is resumable event by event (docs/protocol.md §2.6), and a cancel says so.

A chat completion with 5 tokens and usage ends: finish chunk ``S:E:6:finish``, usage chunk ``S:E:6:usage``,
``data: [DONE]`` with ``S:E:6`` (the done frame's own id). A client cut after any of them resumes with that id
(as EventSource's Last-Event-ID rule has it) and gets exactly the rest, or 204 after ``[DONE]``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest

from tests.server.test_sse_server import events
from tests.support.asgi_servers import uvicorn_server
from tests.support.servers import sse_server
from tests.support.sse_spec_parser import Event
from tokenwire import FakeModel, Hub, ServerOptions
from tokenwire.asgi import TokenwireASGI
from tokenwire.server.endpoints import ChatMeta, Endpoints

pytestmark = pytest.mark.usefixtures("no_leaks")

CHAT = {
    "model": "m",
    "messages": [{"role": "user", "content": "q"}],
    "stream": True,
    "max_tokens": 5,
    "stream_options": {"include_usage": True},
    "tokens_per_s": 5000,
}


@contextlib.asynccontextmanager
async def _sse(hub: Hub, model: FakeModel) -> AsyncIterator[tuple[str, Endpoints]]:
    async with sse_server(hub, model=model) as server:
        yield f"http://127.0.0.1:{server.port}", server.router


@contextlib.asynccontextmanager
async def _uvicorn(hub: Hub, model: FakeModel) -> AsyncIterator[tuple[str, Endpoints]]:
    app = TokenwireASGI(hub, ServerOptions(generator=model))
    async with uvicorn_server(app) as base:
        yield base, app.endpoints


Serve = Callable[[Hub, FakeModel], contextlib.AbstractAsyncContextManager[tuple[str, Endpoints]]]


@pytest.fixture(params=["sse", "uvicorn"])
def serve(request: pytest.FixtureRequest) -> Serve:
    return _sse if request.param == "sse" else _uvicorn


async def _resume(client: httpx.AsyncClient, base: str, stream_id: str, last_event_id: str) -> httpx.Response:
    return await client.get(
        f"{base}/v1/streams/{stream_id}/events?format=openai", headers={"Last-Event-ID": last_event_id}
    )


def _pairs(evs: list[Event]) -> list[tuple[str, str]]:
    return [(e.last_event_id, e.data) for e in evs]


async def test_every_event_of_the_openai_end_is_a_resume_point(serve: Serve) -> None:
    model = FakeModel(seed=5)
    async with serve(Hub(), model) as (base, _), httpx.AsyncClient() as client:
        r = await client.post(f"{base}/v1/chat/completions", json=CHAT)
        first = events(r.content)
        stream_id = r.headers["x-tokenwire-stream-id"]
        prefix = f"{stream_id}:{r.headers['x-tokenwire-epoch']}:"
        assert [e.last_event_id for e in first] == [
            *(f"{prefix}{seq}" for seq in range(6)),
            f"{prefix}6:finish",
            f"{prefix}6:usage",
            f"{prefix}6",
        ]
        finish, usage, done = (json.loads(first[6].data), json.loads(first[7].data), first[8].data)
        assert finish["choices"][0]["finish_reason"] == "length"
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
        assert done == "[DONE]"
        # A client cut after any event resumes with its id and gets exactly the rest (no second role chunk).
        for i, event in enumerate(first[:-1]):
            again = await _resume(client, base, stream_id, event.last_event_id)
            assert again.status_code == 200, (event.last_event_id, again.text)
            assert _pairs(events(again.content)) == _pairs(first[i + 1 :]), event.last_event_id
        assert (await _resume(client, base, stream_id, first[-1].last_event_id)).status_code == 204
        # End parts exist only for the final frame, and only in the OpenAI format.
        for bad in (f"{prefix}6:error", f"{prefix}3:finish", f"{prefix}6:later"):
            assert (await _resume(client, base, stream_id, bad)).status_code == 400, bad
        sse = await client.get(f"{base}/v1/streams/{stream_id}/events", headers={"Last-Event-ID": f"{prefix}6:usage"})
        assert sse.status_code == 400
        assert model.calls == 1


async def test_an_error_end_is_resumable_too(serve: Serve) -> None:
    hub = Hub()
    async with serve(hub, FakeModel(seed=5)) as (base, _endpoints), httpx.AsyncClient() as client:
        stream = hub.create_stream()
        ChatMeta(f"chatcmpl-{stream.id}", "m", 0, include_usage=True).remember(stream)
        stream.send_many(["a", "b"])
        stream.fail("the model fell over", code="model_error")
        prefix = stream.id_prefix
        r = await client.get(f"{base}/v1/streams/{stream.id}/events?format=openai")
        evs = events(r.content)
        assert [e.last_event_id for e in evs] == [f"{prefix}{i}" for i in range(3)] + [f"{prefix}3:error", f"{prefix}3"]
        assert json.loads(evs[3].data) == {"error": {"message": "the model fell over", "type": "model_error"}}
        after_error = await _resume(client, base, stream.id, f"{prefix}3:error")
        assert _pairs(events(after_error.content)) == [(f"{prefix}3", "[DONE]")]
        assert (await _resume(client, base, stream.id, f"{prefix}3")).status_code == 204
        assert (await _resume(client, base, stream.id, f"{prefix}3:finish")).status_code == 400


async def test_a_cancelled_chat_stream_says_cancelled_and_reports_usage(serve: Serve) -> None:
    """Through the openai SDK: finish_reason ``cancelled`` (tokenwire's own value, §2.6) and the usage of
    the tokens produced before the cancel; the same in a resume after the finish chunk."""
    model = FakeModel(seed=5)
    async with serve(Hub(), model) as (base, _), httpx.AsyncClient() as client:
        sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        messages: Any = CHAT["messages"]
        stream = await sdk.chat.completions.create(
            model="m",
            messages=messages,
            stream=True,
            max_tokens=10_000,
            stream_options={"include_usage": True},
            extra_body={"tokens_per_s": 200},
        )
        pieces: list[str] = []
        finish = usage = None
        async for chunk in stream:
            if chunk.choices:
                if chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                finish = chunk.choices[0].finish_reason or finish
                if len(pieces) == 3 and finish is None:
                    stream_id = chunk.id.removeprefix("chatcmpl-")
                    assert (await client.delete(f"{base}/v1/streams/{stream_id}")).status_code == 204
            else:
                usage = chunk.usage
        await sdk.close()
        assert finish == "cancelled"
        assert usage is not None and usage.completion_tokens == len(pieces) >= 3
        assert "".join(pieces) == "".join(model.tokens("q", len(pieces)))
        prefix = f"{stream_id}:"
        r = await client.get(f"{base}/v1/streams/{stream_id}/events?format=openai")
        end = [e for e in events(r.content) if ":finish" in e.last_event_id or ":usage" in e.last_event_id]
        assert end[0].last_event_id.startswith(prefix)
        assert json.loads(end[1].data)["usage"] == {"completion_tokens": len(pieces)}
        after_finish = await _resume(client, base, stream_id, end[0].last_event_id)
        assert [e.data for e in events(after_finish.content)] == [end[1].data, "[DONE]"]
