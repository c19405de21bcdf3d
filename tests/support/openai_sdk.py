"""The ``openai`` SDK against a tokenwire server (the Protocol server or the ASGI app): one check, both tests."""

from __future__ import annotations

from typing import Any

from openai import AsyncOpenAI
from openai.types import CompletionUsage

from tokenwire import FakeModel


async def stream_chat(client: AsyncOpenAI, **params: Any) -> tuple[str, str | None, CompletionUsage | None]:
    """A streamed chat completion with usage, read whole: ``(text, finish_reason, usage)``."""
    stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **params)
    pieces: list[str] = []
    finish = usage = None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    return "".join(pieces), finish, usage


async def check_chat_completions(base_url: str, model: FakeModel) -> None:
    """A streamed chat completion (with usage) and a whole one, through the SDK, equal the model's tokens."""
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "Say hi"}]
    text, finish, usage = await stream_chat(client, model="fake", messages=messages, max_tokens=30)
    assert text == "".join(model.tokens("Say hi", 30))
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 30
    whole = await client.chat.completions.create(model="fake", messages=messages, max_tokens=12)
    assert whole.choices[0].message.content == "".join(model.tokens("Say hi", 12))
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    await client.close()
