"""Endpoints of the SSE server (docs/protocol.md §7). No I/O here beyond what the connection offers."""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any

from tokenwire import _core
from tokenwire.errors import RemoteProtocolError, StreamNotFound
from tokenwire.hub import FrameKind, TokenStream
from tokenwire.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tokenwire.protocol.http1 import HttpError, Request
from tokenwire.protocol.resume import format_id_prefix, validate_stream_id

if TYPE_CHECKING:
    from tokenwire.server.sse import SseConnection, SseServer

__all__ = ["ChatMeta", "Router"]

_STREAMS = "/v1/streams"


class ChatMeta:
    """What every OpenAI chunk of one chat completion repeats."""

    __slots__ = ("created", "id", "include_usage", "model")

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self.id = completion_id
        self.model = model
        self.created = created
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            **extra,
        }


def _json_body(req: Request) -> dict[str, Any]:
    ctype = req.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HttpError(415, f"expected Content-Type application/json, got {ctype!r}")
    try:
        body = json.loads(req.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body


def _int_field(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise HttpError(400, f"{name!r} must be an integer from {lo} to {hi}")
    return value


def _float_field(body: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HttpError(400, f"{name!r} must be a number")
    if not lo <= value <= hi:
        raise HttpError(400, f"{name!r} must be from {lo} to {hi}")
    return float(value)


class Router:
    def __init__(self, server: SseServer) -> None:
        self.server = server
        self.chats: dict[str, ChatMeta] = {}

    def handle(self, conn: SseConnection, req: Request) -> None:
        path = req.path
        if path.startswith(_STREAMS + "/"):
            rest = path[len(_STREAMS) + 1 :]
            stream_id, _, tail = rest.partition("/")
            if tail == "events":
                self._allow(req, "GET")
                return self.attach(conn, req, stream_id)
            if tail == "":
                self._allow(req, "DELETE")
                return self.cancel(conn, req, stream_id)
        elif path == _STREAMS:
            self._allow(req, "POST")
            return self.create(conn, req)
        elif path == "/v1/chat/completions":
            self._allow(req, "POST")
            return self.chat(conn, req)
        elif path == "/healthz":
            self._allow(req, "GET", "HEAD")
            return conn.respond_json(200, {"status": "ok", "epoch": self.server.hub.epoch}, req.keep_alive)
        elif path == "/metrics":
            self._allow(req, "GET")
            return conn.respond(200, self.server.render_metrics(), METRICS_CONTENT_TYPE, req.keep_alive)
        raise HttpError(404, f"no route for {path}")

    @staticmethod
    def _allow(req: Request, *methods: str) -> None:
        if req.method not in methods:
            raise HttpError(405, f"{req.method} is not allowed here; use {', '.join(methods)}")

    # -- generation --------------------------------------------------------------------------------

    def _start_generation(self, body: dict[str, Any], prompt: str, max_tokens: int) -> TokenStream:
        server = self.server
        stream_id = body.get("stream_id")
        if stream_id is not None:
            if not isinstance(stream_id, str):
                raise HttpError(400, "'stream_id' must be a string")
            validate_stream_id(stream_id)
        ttft = _float_field(body, "ttft", 0.0, 600.0)
        rate = _float_field(body, "tokens_per_s", 0.0, 1e9)
        stamp = body.get("stamp", False)
        if not isinstance(stamp, bool):
            raise HttpError(400, "'stamp' must be a boolean")
        server.metrics.streams_started_total += 1
        if server.engine is not None:
            return server.engine.submit(prompt, max_tokens, stream_id=stream_id, stamp=stamp)
        source = server.model.generate(prompt, max_tokens, ttft=ttft, tokens_per_s=rate, stamp=stamp)
        return server.hub.start(source, stream_id=stream_id)

    def create(self, conn: SseConnection, req: Request) -> None:
        body = _json_body(req)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise HttpError(400, "'prompt' (string) is required")
        max_tokens = _int_field(body, "max_tokens", 64, 1, self.server.config.max_tokens_limit)
        stream = self._start_generation(body, prompt, max_tokens)
        self._stream_sse(conn, stream, 0)

    def cancel(self, conn: SseConnection, req: Request, stream_id: str) -> None:
        self.server.hub.cancel(stream_id)
        conn.respond(204, b"", "application/json", req.keep_alive)

    # -- attach / resume ---------------------------------------------------------------------------

    def attach(self, conn: SseConnection, req: Request, stream_id: str) -> None:
        hub = self.server.hub
        raw = req.headers.get("last-event-id", "").strip() or req.query.get("last_event_id", "").strip()
        after = 0
        if raw:
            point = hub.parse_resume(raw)
            if point.stream_id != stream_id:
                raise RemoteProtocolError(
                    f"Last-Event-ID names stream {point.stream_id!r} but the path names {stream_id!r}"
                )
            after = point.seq
        stream = hub.check_resume(stream_id, after)
        if not stream.is_open and after >= stream.last_seq:
            # Nothing left: 204 also tells EventSource to stop reconnecting.
            return conn.respond(204, b"", "text/event-stream", req.keep_alive)
        if raw:
            hub.counters["resumes"] += 1
            self.server.metrics.resumes_total += 1
            self.server.metrics.replayed_frames_total += stream.last_seq - after
        fmt = req.query.get("format", "sse")
        if fmt == "openai":
            meta = self.chats.get(stream_id)
            if meta is None:
                raise RemoteProtocolError(
                    f"stream {stream_id} is not a chat completion; format=openai is not available"
                )
            return self._stream_openai(conn, stream, after, meta)
        if fmt != "sse":
            raise RemoteProtocolError(f"unknown format {fmt!r} (sse, openai)")
        self._stream_sse(conn, stream, after)

    def _stream_sse(self, conn: SseConnection, stream: TokenStream, after: int) -> None:
        hub = self.server.hub
        events_url = f"{_STREAMS}/{stream.id}/events"
        intro = _core.sse_event(
            json.dumps({"stream_id": stream.id, "epoch": hub.epoch, "events_url": events_url, "after": after}),
            id=f"{format_id_prefix(stream.id, hub.epoch)}{after}",
            event="stream",
        )
        since = hub.storage.since

        def render(handle: int, pos: int) -> bytes:
            return since(handle, pos, _core.WIRE_SSE)

        head = [("Location", events_url), ("X-Tokenwire-Stream-Id", stream.id), ("X-Tokenwire-Epoch", hub.epoch)]
        conn.start_stream(stream, after, head, intro, render)

    # -- OpenAI-compatible chat completions ----------------------------------------------------------

    def chat(self, conn: SseConnection, req: Request) -> None:
        body = _json_body(req)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HttpError(400, "'messages' must be a non-empty array")
        parts: list[str] = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content", ""), str):
                raise HttpError(400, "each message must be an object with a string 'content'")
            parts.append(m.get("content", ""))
        model = body.get("model", "tokenwire-fake")
        if not isinstance(model, str):
            raise HttpError(400, "'model' must be a string")
        limit = self.server.config.max_tokens_limit
        max_tokens = _int_field(body, "max_completion_tokens", 0, 0, limit) or _int_field(
            body, "max_tokens", 64, 1, limit
        )
        options = body.get("stream_options") or {}
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        stream = self._start_generation(body, "\n".join(parts), max_tokens)
        meta = ChatMeta(f"chatcmpl-{stream.id}", model, int(time.time()), include_usage)
        self.chats[stream.id] = meta
        if body.get("stream"):
            self._stream_openai(conn, stream, 0, meta)
        else:
            self._complete_openai(conn, req, stream, meta)

    def _stream_openai(self, conn: SseConnection, stream: TokenStream, after: int, meta: ChatMeta) -> None:
        hub = self.server.hub
        storage = hub.storage
        prefix = format_id_prefix(stream.id, hub.epoch)
        dumps = json.dumps

        def render(handle: int, pos: int) -> bytes:
            out: list[bytes] = []
            for kind, seq, text in storage.frames_since(handle, pos):
                if kind == FrameKind.TOKEN:
                    chunk = meta.chunk({"content": text}, None)
                elif kind == FrameKind.DONE:
                    done = json.loads(text)
                    reason = done.get("reason", "stop")
                    chunk = meta.chunk({}, reason if reason in ("stop", "length") else "stop")
                    if meta.include_usage and "usage" in done:
                        out.append(_core.sse_event(dumps(chunk), id=f"{prefix}{seq}"))
                        chunk = {**meta.chunk({}, None), "choices": [], "usage": done["usage"]}
                else:
                    err = json.loads(text)
                    chunk = {"error": {"message": err.get("message", ""), "type": err.get("code", "error")}}
                out.append(_core.sse_event(dumps(chunk, ensure_ascii=False), id=f"{prefix}{seq}"))
            return b"".join(out)

        intro = b""
        if after == 0:
            intro = _core.sse_event(dumps(meta.chunk({"role": "assistant", "content": ""}, None)), id=f"{prefix}0")
        head = [
            ("X-Tokenwire-Stream-Id", stream.id),
            ("X-Tokenwire-Epoch", hub.epoch),
            ("Location", f"{_STREAMS}/{stream.id}/events?format=openai"),
        ]
        conn.start_stream(stream, after, head, intro, render, trailer=b"data: [DONE]\n\n", retry=False)

    def _complete_openai(self, conn: SseConnection, req: Request, stream: TokenStream, meta: ChatMeta) -> None:
        """Non-streaming chat completion: collect the whole answer, then one JSON response."""
        hub = self.server.hub

        async def collect() -> None:
            text: list[str] = []
            done: dict[str, Any] = {}
            try:
                async with hub.subscribe(stream.id) as sub:
                    async for frames in sub:
                        for f in frames:
                            if f.kind is FrameKind.TOKEN:
                                text.append(f.text)
                            else:
                                done = f.json()
            except StreamNotFound:
                done = {"reason": "cancelled"}
            if "code" in done:
                conn.respond_json(500, {"error": {"message": done.get("message"), "type": done["code"]}}, False)
                return
            reason = done.get("reason", "stop")
            conn.respond_json(
                200,
                {
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(text)},
                            "finish_reason": reason if reason in ("stop", "length") else "stop",
                        }
                    ],
                    "usage": done.get("usage", {}),
                },
                req.keep_alive,
            )

        conn.hold()
        task = self.server.loop.create_task(collect())
        self.server.background.add(task)
        task.add_done_callback(self.server.background.discard)
