"""OpenAI Chat Completions chunks, sans-I/O: what a raw ``chat.completion.chunk`` carries, and the whole
``chat.completion`` a stream of them adds up to.

A proxied stream keeps every upstream chunk as the JSON text it arrived as (docs/proxy.md); these helpers read
them where tokenwire needs a value: the text of a token for the native renderings (:func:`chunk_content`),
the end of the stream (:func:`chunk_finish_reason`, :func:`chunk_usage`, :func:`chunk_error`), and the answer
to a ``stream: false`` request (:class:`CompletionBuilder`, :func:`assemble_completion`), and the renderings of
such a stream's frames (:func:`openai_chunks_render`, :func:`native_render`).

Chunks are taken as text (parsed here) or as already-parsed objects. Members a chunk lacks, or holds with the
wrong type, count as absent: an upstream's oddities never raise here, except text that is not a JSON object
(:func:`parse_chunk`: ``RemoteProtocolError``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tokenwire import _core
from tokenwire.errors import RemoteProtocolError

__all__ = [
    "Chunk",
    "CompletionBuilder",
    "assemble_completion",
    "chunk_content",
    "chunk_error",
    "chunk_finish_reason",
    "chunk_usage",
    "error_chunk",
    "may_end",
    "native_render",
    "openai_chunks_render",
    "parse_chunk",
]

#: A chunk as received (JSON text) or parsed.
Chunk = str | Mapping[str, Any]

# What a chunk that ends something looks like before it is parsed: a finish reason that is a string, a usage
# object, an error member. A chunk without any of them (most of a stream) need not be parsed to find its end.
_END_HINT = re.compile(r'"(?:finish_reason"\s*:\s*"|usage"\s*:\s*\{|error"\s*:)')


def parse_chunk(chunk: Chunk) -> Mapping[str, Any]:
    """The object of ``chunk``; ``RemoteProtocolError`` when its text is not a JSON object."""
    if not isinstance(chunk, str):
        return chunk
    try:
        parsed = json.loads(chunk)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"an upstream chunk is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise RemoteProtocolError(f"an upstream chunk is not a JSON object: {chunk[:80]!r}")
    return parsed


def may_end(text: str) -> bool:
    """Whether the chunk text ``text`` may carry a finish reason, usage or an error: False means it carries none
    for sure (a cheap test before :func:`parse_chunk`)."""
    return _END_HINT.search(text) is not None


def _choices(chunk: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return []
    return [c for c in choices if isinstance(c, Mapping)]


def _delta(choice: Mapping[str, Any]) -> Mapping[str, Any]:
    delta = choice.get("delta")
    return delta if isinstance(delta, Mapping) else {}


def chunk_content(chunk: Chunk) -> str:
    """The text the chunk adds: every choice's ``delta.content`` in order, ``""`` when none (a role chunk, a
    tool-call delta, a finish or usage chunk)."""
    parts = [c for choice in _choices(parse_chunk(chunk)) if isinstance(c := _delta(choice).get("content"), str)]
    return parts[0] if len(parts) == 1 else "".join(parts)


def chunk_finish_reason(chunk: Chunk) -> str | None:
    """The first ``finish_reason`` of the chunk's choices that is a string (``None``: none finished here)."""
    for choice in _choices(parse_chunk(chunk)):
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            return reason
    return None


def chunk_usage(chunk: Chunk) -> dict[str, Any] | None:
    """The chunk's ``usage`` object (``None`` when it has none, or ``null``)."""
    usage = parse_chunk(chunk).get("usage")
    return dict(usage) if isinstance(usage, Mapping) else None


def chunk_error(chunk: Chunk) -> dict[str, Any] | None:
    """The ``error`` object of an error payload sent in the middle of a stream (vLLM and others send
    ``data: {"error": {...}}``); ``None`` for a chunk. A bare string error becomes ``{"message": ...}``."""
    error = parse_chunk(chunk).get("error")
    if isinstance(error, Mapping):
        return dict(error)
    if isinstance(error, str):
        return {"message": error}
    return None


class _Choice:
    __slots__ = ("content", "finish_reason", "logprobs", "refusal", "role", "tool_calls")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None

    def add(self, choice: Mapping[str, Any]) -> None:
        delta = _delta(choice)
        if isinstance(role := delta.get("role"), str) and role:
            self.role = role
        if isinstance(content := delta.get("content"), str):
            self.content.append(content)
        if isinstance(refusal := delta.get("refusal"), str):
            if self.refusal is None:
                self.refusal = []
            self.refusal.append(refusal)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, Mapping):
                    self._add_call(call)
        if isinstance(reason := choice.get("finish_reason"), str):
            self.finish_reason = reason
        if isinstance(logprobs := choice.get("logprobs"), Mapping):
            self._add_logprobs(logprobs)

    def _add_logprobs(self, logprobs: Mapping[str, Any]) -> None:
        for key in ("content", "refusal"):
            if isinstance(items := logprobs.get(key), list):
                self.logprobs = self.logprobs or {}
                self.logprobs.setdefault(key, []).extend(items)

    def _add_call(self, call: Mapping[str, Any]) -> None:
        index = call.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = len(self.tool_calls)  # no index: each delta is a call of its own (a whole one, usually)
        merged = self.tool_calls.get(index)
        if merged is None:
            merged = self.tool_calls[index] = {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        if isinstance(call_id := call.get("id"), str) and call_id and not merged["id"]:
            merged["id"] = call_id  # the first id given (servers that repeat it in every delta repeat it whole)
        if isinstance(kind := call.get("type"), str) and kind:
            merged["type"] = kind
        function = call.get("function")
        if isinstance(function, Mapping):
            for key in ("name", "arguments"):
                if isinstance(piece := function.get(key), str):
                    merged["function"][key] += piece

    def completion_choice(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role}
        content = "".join(self.content)
        # A tool-call answer without text has content null, as OpenAI answers (a role chunk's "" is no text).
        message["content"] = None if self.tool_calls and not content else content
        if self.refusal is not None:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {"index": index, "message": message, "logprobs": self.logprobs, "finish_reason": self.finish_reason}


class CompletionBuilder:
    """The ``chat.completion`` a stream of chunks adds up to, built one chunk at a time (the chunks are not
    kept): ``id``, ``created``, ``model``, ``system_fingerprint`` and ``service_tier`` from the first chunk
    that has them; per choice (by ``index``): the role, the content and refusal joined, tool calls merged by
    their ``index`` (the first ``id``, the ``type``, ``function.name`` and ``function.arguments`` joined in
    order), logprobs concatenated, the last ``finish_reason``; the last ``usage`` given."""

    _HEAD = ("id", "created", "model", "system_fingerprint", "service_tier")

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None
        self.chunks = 0

    def add(self, chunk: Chunk) -> None:
        """Take one chunk (text or object); ``RemoteProtocolError`` if its text is not a JSON object."""
        parsed = parse_chunk(chunk)
        self.chunks += 1
        for key in self._HEAD:
            if key not in self._head and (value := parsed.get(key)) is not None:
                self._head[key] = value
        for choice in _choices(parsed):
            index = choice.get("index", 0)
            if not isinstance(index, int) or isinstance(index, bool):
                index = 0
            self._choices.setdefault(index, _Choice()).add(choice)
        if (usage := chunk_usage(parsed)) is not None:
            self._usage = usage

    @property
    def finish_reason(self) -> str | None:
        """The first choice's finish reason so far."""
        first = self._choices.get(min(self._choices, default=0))
        return first.finish_reason if first is not None else None

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage

    def completion(self) -> dict[str, Any]:
        """The ``chat.completion`` object (a stream with no choice at all gives one empty choice)."""
        choices = self._choices or {0: _Choice()}
        head = self._head
        answer: dict[str, Any] = {
            "id": head.get("id", ""),
            "object": "chat.completion",
            "created": head.get("created", 0),
            "model": head.get("model", ""),
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in head:
                answer[key] = head[key]
        answer["choices"] = [choices[i].completion_choice(i) for i in sorted(choices)]
        if self._usage is not None:
            answer["usage"] = self._usage
        return answer


def assemble_completion(chunks: Iterable[Chunk]) -> dict[str, Any]:
    """The ``chat.completion`` of a whole stream of chunks (:class:`CompletionBuilder`)."""
    builder = CompletionBuilder()
    for chunk in chunks:
        builder.add(chunk)
    return builder.completion()


# -- renderings of a stream whose frames are raw chunks (label format=openai-chunks) ---------------------------

#: ``(kind, seq, text)`` frames of one read, in seq order, to the bytes to write (as ``tokenwire.hub.Render``).
FrameRender = Callable[[list[tuple[int, int, str]]], bytes]

_EVENT_NAMES = {_core.FRAME_TOKEN: "token", _core.FRAME_DONE: "done", _core.FRAME_ERROR: "error"}


def _content_or_empty(text: str) -> str:
    try:
        return chunk_content(text)
    except RemoteProtocolError:
        return ""  # not a chunk: it adds no text (the frame keeps its seq)


def _token_runs(frames: list[tuple[int, int, str]]) -> Iterable[tuple[int, int, list[str]]]:
    """``(kind, first seq, texts)``: runs of consecutive token frames, and each other frame alone."""
    run: list[str] = []
    first = 0
    for kind, seq, text in frames:
        if kind == _core.FRAME_TOKEN:
            if not run:
                first = seq
            run.append(text)
            continue
        if run:
            yield _core.FRAME_TOKEN, first, run
            run = []
        yield kind, seq, [text]
    if run:
        yield _core.FRAME_TOKEN, first, run


def native_render(id_prefix: str, wire: int) -> FrameRender:
    """The native rendering (``wire``: ``_core.WIRE_SSE`` token/done/error events, or ``_core.WIRE_BINARY``
    frames) of raw-chunk frames: a token frame carries its chunk's text (:func:`chunk_content`, ``""`` for a
    chunk without any), so seqs stay consecutive; final frames as they are. Bytes identical to the core's
    rendering of a stream whose tokens were those texts."""
    binary = wire == _core.WIRE_BINARY

    def render(frames: list[tuple[int, int, str]]) -> bytes:
        out: list[bytes] = []
        for kind, first, texts in _token_runs(frames):
            if kind == _core.FRAME_TOKEN:
                texts = [_content_or_empty(t) for t in texts]
                if binary:
                    out.append(_core.encode_frames(kind, first, texts))
                else:
                    out.append(_core.sse_batch(texts, id_prefix=id_prefix, first_seq=first))
            elif binary:
                out.append(_core.encode_frame(kind, first, texts[0]))
            else:
                out.append(_core.sse_event(texts[0], id=f"{id_prefix}{first}", event=_EVENT_NAMES.get(kind)))
        return b"".join(out)

    return render


def error_chunk(final: str) -> dict[str, Any]:
    """The OpenAI error object a tokenwire ``error`` frame (``{"code", "message"}``) becomes in a chunk stream."""
    try:
        body = json.loads(final)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code", "error"))
    return {"error": {"message": str(body.get("message", "")), "type": code, "code": code}}


def openai_chunks_render(id_prefix: str, skip_error_of: int = 0) -> FrameRender:
    """The OpenAI rendering of raw-chunk frames: each token frame's text verbatim as ``data:`` (id
    ``{id_prefix}{seq}``); a ``done`` frame becomes ``data: [DONE]`` (its own id); an ``error`` frame an error
    chunk (id ``…{seq}:error``) then ``[DONE]``. Nothing else is added (no role, finish or usage chunk: the
    upstream's own are among the frames). ``skip_error_of``: the seq of an error frame whose error chunk the
    client holds (a resume from ``…{seq}:error``): only its ``[DONE]`` is written."""

    def render(frames: list[tuple[int, int, str]]) -> bytes:
        out: list[bytes] = []
        for kind, first, texts in _token_runs(frames):
            if kind == _core.FRAME_TOKEN:
                out.append(_core.sse_batch(texts, id_prefix=id_prefix, first_seq=first, event=None))
                continue
            if kind == _core.FRAME_ERROR and first != skip_error_of:
                error = json.dumps(error_chunk(texts[0]), ensure_ascii=False)
                out.append(_core.sse_event(error, id=f"{id_prefix}{first}:error"))
            out.append(_core.sse_event("[DONE]", id=f"{id_prefix}{first}"))
        return b"".join(out)

    return render
