"""What the endpoints decide, without I/O: shared by the asyncio-Protocol server and the ASGI app.

Request validation, route matching, resume-point resolution, and the plan of a stream (its headers, its
intro event, and how its frames are rendered: by the core, or by a custom ``render`` function). The SSE
server's :class:`~tokenwire.server.routes.Router` and :class:`tokenwire.asgi.TokenwireASGI` only move
bytes; everything a client can observe besides timing is decided here, so the two answer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
import weakref
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, cast

from tokenwire import _core
from tokenwire.auth import AuthRequest, check
from tokenwire.errors import DuplicateStreamId, InvalidBody, RemoteProtocolError, StreamNotFound
from tokenwire.generation import Engine, GenerationRequest, Generator, aiter_source, is_engine
from tokenwire.hub import RAW_CHUNKS, FrameKind, Hub, Render, StreamState, TokenStream, is_raw_chunks
from tokenwire.metrics import ServerMetrics
from tokenwire.protocol.http1 import HttpError
from tokenwire.protocol.json_body import bool_field, float_field, int_field, loads_object
from tokenwire.protocol.openai import CompletionBuilder, error_chunk, openai_chunks_render
from tokenwire.protocol.resume import (
    MAX_STREAM_ID_LEN,
    format_id_prefix,
    is_stream_id,
    new_stream_id,
    parse_resume_point,
)
from tokenwire.protocol.webtransport import origin_allowed
from tokenwire.server.assets import ASSETS, asset, not_modified
from tokenwire.server.config import ServerConfig, ServerOptions

__all__ = [
    "CLIENT_PATH",
    "ROUTE_METHODS",
    "STREAMS_PATH",
    "ChatMeta",
    "Endpoints",
    "Host",
    "Plain",
    "Render",
    "StreamPlan",
    "collect_chunks",
    "collect_completion",
    "cors_headers",
    "float_field",
    "idempotency_key_of",
    "int_field",
    "is_raw_chunks",
    "last_event_id_of",
    "match_route",
    "message_text",
    "parse_json_body",
    "plain_answer",
    "plan_openai",
    "plan_openai_chunks",
    "plan_sse",
    "preflight_headers",
    "resolve_resume",
]

STREAMS_PATH = "/v1/streams"
#: Where a browser page learns the WebTransport URL and the certificate hash to pin.
WT_CERTIFICATE_PATH = "/v1/webtransport/certificate"
#: The browser client, an ES module (docs/client.md); the demo page on it is served at ``/``.
CLIENT_PATH = "/v1/client.js"

#: The events of the OpenAI rendering of a final frame before ``data: [DONE]``, in order (docs/protocol.md §2.6):
#: each has the id ``{stream_id}:{epoch}:{seq}:{part}``, and ``[DONE]`` has the final frame's own id.
OPENAI_END_PARTS = ("finish", "usage", "error")


@dataclass(slots=True)
class StreamPlan:
    """Everything a connection needs to serve one stream: replay after ``after``, then live."""

    stream: TokenStream
    after: int
    #: Response headers besides Content-Type, Cache-Control and X-Accel-Buffering.
    head: list[tuple[str, str]]
    #: Written after the ``retry:`` block, before the first frame.
    intro: bytes
    #: ``None``: the core renders SSE events (one ``Storage.poll`` per flush). Else a custom rendering of the
    #: frames each read takes (:data:`tokenwire.hub.Render`); the connection's cursor reads them.
    render: Render | None = None
    #: Written after the final frame, just before the response ends.
    trailer: bytes = b""
    #: Whether the body starts with a ``retry:`` block (the OpenAI SDK's reader takes a field-only block
    #: for an event with empty data, so OpenAI streams leave it out).
    retry: bool = True


class Host(Protocol):
    """What the endpoints need from a server: the hub, the generator, limits, and counters."""

    @property
    def hub(self) -> Hub: ...
    @property
    def generator(self) -> Generator | Engine: ...
    @property
    def metrics(self) -> ServerMetrics: ...
    @property
    def config(self) -> ServerConfig: ...
    @property
    def options(self) -> ServerOptions: ...


class ChatMeta:
    """What every OpenAI chunk of one chat completion repeats."""

    __slots__ = ("created", "id", "include_usage", "model")

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self.id = completion_id
        self.model = model
        self.created = created
        self.include_usage = include_usage

    def remember(self, stream: TokenStream) -> None:
        """Keep this with the stream (its ``chat`` label), for ``format=openai`` resumes on any node."""
        fields = {"id": self.id, "model": self.model, "created": self.created, "include_usage": self.include_usage}
        stream.label("chat", json.dumps(fields, separators=(",", ":")))

    @classmethod
    def of(cls, stream: TokenStream) -> ChatMeta | None:
        """The chat completion ``stream`` carries (``None``: it is not one)."""
        label = stream.labels.get("chat")
        if label is None:
            return None
        f = json.loads(label)
        return cls(str(f["id"]), str(f["model"]), int(f["created"]), bool(f["include_usage"]))

    def chunk(self, delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            **extra,
        }


# -- request validation ------------------------------------------------------------------------------


def parse_json_body(content_type: str | None, body: bytes) -> dict[str, Any]:
    """The JSON object of a request body; 415 for another content type. 400 ``InvalidBody`` (naming the member
    at fault) for anything but a UTF-8 JSON object of Unicode strings nested at most 64 deep
    (:func:`tokenwire.protocol.json_body.loads_object`, which WebTransport requests go through too)."""
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HttpError(415, f"expected Content-Type application/json, got {ctype!r}")
    return loads_object(body)


#: The methods each route takes (``OPTIONS`` besides, on every route: :func:`preflight_headers`).
ROUTE_METHODS: dict[str, tuple[str, ...]] = {
    "attach": ("GET",),
    "cancel": ("DELETE",),
    "create": ("POST",),
    "chat": ("POST",),
    "health": ("GET", "HEAD"),
    "metrics": ("GET",),
    "webtransport": ("GET",),
    "client": ("GET", "HEAD"),
    "demo": ("GET", "HEAD"),
}
#: Paths of the routes that take no stream id.
_PATHS = {
    STREAMS_PATH: "create",
    "/v1/chat/completions": "chat",
    "/healthz": "health",
    "/metrics": "metrics",
    WT_CERTIFICATE_PATH: "webtransport",
    CLIENT_PATH: "client",
    "/": "demo",
}


def match_route(method: str, path: str) -> tuple[str, str]:
    """``(route, stream_id)`` for a request; 404 for an unknown path, 405 for a method it does not take.

    Routes: ``attach``, ``cancel`` (both with a stream id), ``create``, ``chat``, ``health``, ``metrics``,
    ``webtransport`` (where the WebTransport server is and the certificate hash a browser pins), ``client``
    (the browser client module) and ``demo`` (the demo page). ``OPTIONS`` is taken on every route (the caller
    answers it: :func:`preflight_headers`).
    """
    route = _PATHS.get(path)
    stream_id = ""
    if route is None and path.startswith(STREAMS_PATH + "/"):
        stream_id, _, tail = path[len(STREAMS_PATH) + 1 :].partition("/")
        route = {"events": "attach", "": "cancel"}.get(tail)
    if route is None:
        raise HttpError(404, f"no route for {path}")
    methods = ROUTE_METHODS[route]
    if method not in methods and method != "OPTIONS":
        raise HttpError(405, f"{method} is not allowed here; use {', '.join(methods)}")
    return route, stream_id


# -- CORS (opt-in: ServerConfig.allow_origins) ---------------------------------------------------------

#: What a page on an allowed origin may send (preflight answers) and read (every answer).
CORS_ALLOW_METHODS = "GET, POST, DELETE"
CORS_ALLOW_HEADERS = "content-type, last-event-id, idempotency-key, authorization"
CORS_EXPOSE_HEADERS = "X-Tokenwire-Stream-Id, X-Tokenwire-Epoch, Location"
#: Seconds a browser may reuse a preflight answer (Chromium caps it at 7,200, Firefox at 86,400).
CORS_MAX_AGE = 600


def cors_headers(allow_origins: tuple[str, ...], origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers of every answer to a request from ``origin`` (its ``Origin`` header): the grant for an
    allowed origin; ``Vary: Origin`` alone for another (caches must tell them apart); none when CORS is off.
    With ``*`` every answer carries the same grant, ``Origin`` or not, so a cache may serve any of them to any
    page (a request without ``Origin`` getting no grant would need ``Vary: Origin``)."""
    if not allow_origins:
        return []
    if "*" in allow_origins:
        return [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS)]
    vary = [("Vary", "Origin")]
    if not origin_allowed(allow_origins, origin):
        return vary
    return [
        ("Access-Control-Allow-Origin", str(origin)),
        *vary,
        ("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS),
    ]


def preflight_headers(route: str, allow_origins: tuple[str, ...], origin: str | None) -> list[tuple[str, str]]:
    """The headers of the 204 that answers ``OPTIONS`` on ``route``: ``Allow``, and for an allowed ``origin`` what
    it may send and how long the browser may keep this answer (:func:`cors_headers`, which every answer carries,
    adds the grant itself)."""
    headers = [("Allow", ", ".join((*ROUTE_METHODS[route], "OPTIONS")))]
    if origin_allowed(allow_origins, origin):
        headers += [
            ("Access-Control-Allow-Methods", CORS_ALLOW_METHODS),
            ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
            ("Access-Control-Max-Age", str(CORS_MAX_AGE)),
        ]
    return headers


# -- auth (opt-in: ServerOptions.auth) -----------------------------------------------------------------

#: Routes anyone may call when auth is on: liveness, metrics and the browser files. Preflights (``OPTIONS``),
#: answered before any route, never need credentials either: a browser sends none with them.
PUBLIC_ROUTES = frozenset({"health", "metrics", "client", "demo"})
#: The label of a stream started with auth on: the principal that started it (kept in a shared storage with
#: the stream, so every node knows whose it is).
PRINCIPAL_LABEL = "principal"


def check_owner(stream: TokenStream, principal: str | None) -> TokenStream:
    """``stream``, when ``principal`` may read or cancel it: auth is off (``None``), or it is the principal that
    started the stream. Else ``StreamNotFound``, worded as for a stream that does not exist: with auth on a stream
    id grants nothing, nor tells whether the stream is there (docs/protocol.md §8)."""
    if principal is not None and stream.labels.get(PRINCIPAL_LABEL) != principal:
        raise StreamNotFound(f"no stream {stream.id!r} (never created, or expired)")
    return stream


class Plain(NamedTuple):
    """A complete answer that needs neither the hub nor the request body."""

    status: int
    body: bytes
    content_type: str
    headers: list[tuple[str, str]]


def plain_answer(route: str, method: str, headers: Mapping[str, str], config: ServerConfig) -> Plain | None:
    """The answer to a preflight (``OPTIONS``) or to a request for a browser file (``client``, ``demo``: 304
    when ``If-None-Match`` names the current one); ``None`` for every other request. ``headers`` has lower-case
    names."""
    if method == "OPTIONS":
        return Plain(204, b"", "", preflight_headers(route, config.allow_origins, headers.get("origin")))
    if route not in ASSETS:
        return None
    file = asset(route)
    if not_modified(headers.get("if-none-match"), file.etag):
        return Plain(304, b"", "", file.headers)
    return Plain(200, file.body, file.content_type, file.headers)


def last_event_id_of(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The resume point of an attach: the ``Last-Event-ID`` header, else ``?last_event_id=``, else ``""``.

    ``headers`` has lower-case names. An empty header counts as absent (docs/protocol.md §4.1).
    """
    return headers.get("last-event-id", "").strip() or query.get("last_event_id", "").strip()


#: The longest ``Idempotency-Key`` taken (a UUID is 36 characters); a longer one is 400.
MAX_IDEMPOTENCY_KEY = 255


def idempotency_key_of(headers: Mapping[str, str]) -> str | None:
    """The ``Idempotency-Key`` of a start request (``None`` when absent or empty); 400 when malformed.

    The value is a structured-field string (``"..."``) or, as most clients send it, the bare token: 1 to
    255 visible ASCII characters (docs/protocol.md §7.2).
    """
    key = headers.get("idempotency-key", "").strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key:
        return None
    if len(key) > MAX_IDEMPOTENCY_KEY or not all("!" <= c <= "~" for c in key):
        raise HttpError(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters")
    return key


def scoped_key(headers: Mapping[str, str] | None, principal: str | None) -> str | None:
    """The ``Idempotency-Key`` of a start request as the hub's table holds it: with auth on, each principal's keys
    are its own (another's same key neither repeats its start nor blocks this one)."""
    key = None if headers is None else idempotency_key_of(headers)
    if key is None or principal is None:
        return key
    return f"{principal}\n{key}"  # a key has no newline (visible ASCII): the last one separates the two


def _fingerprint(route: str, body: dict[str, Any]) -> str:
    """What a repeated start must match: the route and the request's JSON (key order and spacing aside)."""
    canonical = json.dumps([route, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


# -- resume and stream plans ---------------------------------------------------------------------------


def message_text(message: object, index: int) -> str:
    """The text of ``messages[index]`` of a chat request: its ``content`` string, the ``text`` of its content
    parts (an array, as OpenAI takes them), or ``""`` for ``null`` or none (an assistant message with tool
    calls). ``InvalidBody`` for anything else."""
    field = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidBody(f"{field} must be an object", field)
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type") == "text"]
        if all(isinstance(t, str) for t in texts):
            return "".join(t for t in texts if isinstance(t, str))
    raise InvalidBody(f"{field}.content must be a string, null, or an array of content parts", f"{field}.content")


def resolve_resume(
    hub: Hub, stream_id: str, last_event_id: str, principal: str | None = None
) -> tuple[TokenStream, int]:
    """The stream and the seq to replay after, for an attach to ``stream_id`` with ``last_event_id`` by
    ``principal`` (``None``: auth is off).

    Raises as docs/protocol.md §4.2 says: ``RemoteProtocolError`` (malformed, or another stream's id),
    ``EpochMismatch``, ``StreamNotFound`` (also another principal's stream: :func:`check_owner`, checked where an
    unknown stream is), ``ResumeFromFuture``, ``ResumeExpired``.
    """
    after = 0
    if last_event_id:
        point = hub.parse_resume(last_event_id)
        if point.stream_id != stream_id:
            raise RemoteProtocolError(
                f"Last-Event-ID names stream {point.stream_id!r} but the path names {stream_id!r}"
            )
        after = point.seq
    return resolve_point(hub, stream_id, after, principal), after


def resolve_point(hub: Hub, stream_id: str, after: int, principal: str | None = None) -> TokenStream:
    """The stream to serve after seq ``after`` (its epoch checked already) to ``principal``: ``StreamNotFound``
    (also another principal's stream), ``ResumeFromFuture``, ``ResumeExpired``."""
    check_owner(hub.get(stream_id), principal)
    return hub.check_resume(stream_id, after)


def nothing_left(stream: TokenStream, after: int) -> bool:
    """True when the stream has ended and the client holds its final frame: answer 204."""
    return not stream.is_open and after >= stream.last_seq


#: The response headers of every SSE stream (both servers; the socket server adds ``Connection`` and
#: ``Transfer-Encoding: chunked``, docs/protocol.md §2.1).
SSE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)
#: Written to every open stream at shutdown: clients come back soon and resume.
SHUTDOWN_HINT = b": server shutting down, reconnect to resume\nretry: 250\n\n"
#: The same to a stream without ``retry:`` blocks (``StreamPlan.retry`` false: the OpenAI formats): the comment
#: line alone, no blank line (as a heartbeat): the openai SDK's reader takes any blank line after an event with an
#: id, or a field, for an event with empty data, which it fails to parse as JSON.
SHUTDOWN_NOTE = b": server shutting down, reconnect to resume\n"


def shutdown_hint(plan: StreamPlan) -> bytes:
    """What a stream response of ``plan`` gets at shutdown, before its connection closes."""
    return SHUTDOWN_HINT if plan.retry else SHUTDOWN_NOTE


def left_early(stream: TokenStream, position: int) -> bool:
    """A reader that stops at ``position`` leaves something behind: the stream is open, or holds frames after
    it. False once the stream itself is gone (swept): nothing is left to miss."""
    try:
        return stream.is_open or position < stream.last_seq
    except StreamNotFound:
        return False


def count_resume(hub: Hub, metrics: ServerMetrics | None, stream: TokenStream, after: int) -> None:
    hub.counters["resumes"] += 1
    if metrics is not None:
        metrics.resumes_total += 1
        metrics.replayed_frames_total += stream.last_seq - after


def plan_sse(hub: Hub, stream: TokenStream, after: int, events_url: str | None) -> StreamPlan:
    """Plan of an SSE stream: a ``stream`` intro event (its id is the resume point ``after``), then frames."""
    intro_body: dict[str, Any] = {"stream_id": stream.id, "epoch": hub.epoch}
    if events_url is not None:
        intro_body["events_url"] = events_url
    intro_body["after"] = after
    intro = _core.sse_event(
        json.dumps(intro_body), id=f"{format_id_prefix(stream.id, hub.epoch)}{after}", event="stream"
    )
    head = [("X-Tokenwire-Stream-Id", stream.id), ("X-Tokenwire-Epoch", hub.epoch)]
    if events_url is not None:
        head.insert(0, ("Location", events_url))
    return StreamPlan(stream, after, head, intro)


def split_end_part(last_event_id: str) -> tuple[str, str]:
    """``(resume point, end part)`` of a ``format=openai`` Last-Event-ID: ``S:E:7:usage`` gives ``("S:E:7",
    "usage")``; an id without a known part gives ``(last_event_id, "")``."""
    point, sep, part = last_event_id.rpartition(":")
    if sep and part in OPENAI_END_PARTS and point.count(":") == 2:
        return point, part
    return last_event_id, ""


class StreamToFind(NamedTuple):
    """The stream a request reads or cancels, the seq it resumes after, and its resume point's epoch."""

    stream_id: str
    after: int = 0
    epoch: str = ""


def stream_to_find(route: str, stream_id: str, headers: Mapping[str, str], query: Mapping[str, str]) -> StreamToFind:
    """What a server with a shared storage finds (``Hub.find``: a copy of another node's stream, far enough)
    before it handles a request: the path's stream for an attach or a cancel, the ``Last-Event-ID``'s for a
    start retried with one (``create``, ``chat``); ``stream_id`` ``""``: none, or a malformed id (the request
    itself answers that). The epoch tells a stream no node has from another history (409, not 404)."""
    if route == "cancel":
        return StreamToFind(stream_id)
    if route not in ("attach", "create", "chat"):
        return StreamToFind("")
    last_event_id = last_event_id_of(headers, query if route == "attach" else {})
    point = None
    if last_event_id:
        with contextlib.suppress(ValueError):
            point = parse_resume_point(split_end_part(last_event_id)[0])
    if route == "attach":
        if point is None or point.stream_id != stream_id:
            return StreamToFind(stream_id)
        return StreamToFind(stream_id, point.seq, point.epoch)
    return StreamToFind(point.stream_id, point.seq, point.epoch) if point is not None else StreamToFind("")


def resolve_end_part(stream: TokenStream, seq: int, part: str) -> int:
    """The seq to replay after for a resume point inside the OpenAI end of ``stream`` (``seq``: its final frame,
    ``part``: the last end event the client holds). 400 unless ``seq`` is the final frame and ``part`` one of
    its events."""
    parts = ("error",) if stream.state is StreamState.FAILED else ("finish", "usage")
    if stream.is_open or seq != stream.last_seq or part not in parts:
        raise RemoteProtocolError(
            f"resume point {seq}:{part} names no event of this stream's end (its final frame is seq "
            f"{stream.last_seq}{'' if not stream.is_open else ', still open'})"
        )
    return seq - 1


def openai_finish_reason(done: Mapping[str, Any]) -> str:
    """The ``finish_reason`` of a ``done`` frame: its reason as it is (``stop``, ``length``, a source's own such
    as ``tool_calls``, or tokenwire's ``cancelled``, ``abandoned``, ``shutdown``: docs/protocol.md §2.6)."""
    reason = done.get("reason")
    return reason if isinstance(reason, str) and reason else "stop"


def plan_openai(
    hub: Hub,
    stream: TokenStream,
    after: int,
    meta: ChatMeta,
    base: str = "",
    *,
    resumed: bool = False,
    end_part: str = "",
) -> StreamPlan:
    """Plan of an OpenAI chat-completion chunk stream, ending with ``data: [DONE]``.

    Every event has its own id, so a client resumes after any of them: tokens have their frame's id; the
    final frame becomes a finish chunk (id ``…:{seq}:finish``), a usage chunk if asked for (``…:{seq}:usage``)
    or an error chunk (``…:{seq}:error``), then ``[DONE]`` with the final frame's own id ``…:{seq}``.
    ``end_part``: the client holds the final frame's events up to this one (``after`` is the seq before it).
    The role chunk (id ``…:0``) starts a stream that is not ``resumed``.
    """
    prefix = format_id_prefix(stream.id, hub.epoch)
    dumps = json.dumps
    skip_seq = after + 1 if end_part else 0

    def render(frames: list[tuple[int, int, str]]) -> bytes:
        out: list[bytes] = []
        for kind, seq, text in frames:
            if kind == FrameKind.TOKEN:
                out.append(
                    _core.sse_event(dumps(meta.chunk({"content": text}, None), ensure_ascii=False), id=f"{prefix}{seq}")
                )
                continue
            end: list[tuple[str, dict[str, Any]]] = []
            body = json.loads(text)
            if kind == FrameKind.DONE:
                end.append(("finish", meta.chunk({}, openai_finish_reason(body))))
                if meta.include_usage and "usage" in body:
                    end.append(("usage", {**meta.chunk({}, None), "choices": [], "usage": body["usage"]}))
            else:
                error = {"message": body.get("message", ""), "type": body.get("code", "error")}
                end.append(("error", {"error": error}))
            if seq == skip_seq:  # a resume inside this end: leave out what the client holds
                names = [name for name, _ in end]
                end = end[names.index(end_part) + 1 :] if end_part in names else []
            for name, chunk in end:
                out.append(_core.sse_event(dumps(chunk, ensure_ascii=False), id=f"{prefix}{seq}:{name}"))
            out.append(_core.sse_event("[DONE]", id=f"{prefix}{seq}"))
        return b"".join(out)

    intro = b""
    if after == 0 and not resumed:
        intro = _core.sse_event(dumps(meta.chunk({"role": "assistant", "content": ""}, None)), id=f"{prefix}0")
    return StreamPlan(stream, after, _openai_head(hub, stream, base), intro, render, retry=False)


def _openai_head(hub: Hub, stream: TokenStream, base: str) -> list[tuple[str, str]]:
    return [
        ("X-Tokenwire-Stream-Id", stream.id),
        ("X-Tokenwire-Epoch", hub.epoch),
        ("Location", f"{base}{STREAMS_PATH}/{stream.id}/events?format=openai"),
    ]


def plan_openai_chunks(hub: Hub, stream: TokenStream, after: int, base: str = "", *, end_part: str = "") -> StreamPlan:
    """Plan of the OpenAI rendering of a raw-chunk stream (:func:`is_raw_chunks`): every chunk as it came from the
    upstream (id ``…:{seq}``), then ``data: [DONE]``, or an error chunk (``…:{seq}:error``) and ``[DONE]``
    (:func:`tokenwire.protocol.openai.openai_chunks_render`). Nothing is added: the upstream's own role, finish
    and usage chunks are among the frames. ``end_part`` ``error``: the client holds the error chunk."""
    prefix = format_id_prefix(stream.id, hub.epoch)
    render = openai_chunks_render(prefix, after + 1 if end_part == "error" else 0)
    return StreamPlan(stream, after, _openai_head(hub, stream, base), b"", render, retry=False)


async def collect_completion(hub: Hub, stream: TokenStream, meta: ChatMeta) -> tuple[int, dict[str, Any]]:
    """Non-streaming chat completion: wait for the whole answer; ``(status, JSON body)``."""
    if is_raw_chunks(stream):
        return await collect_chunks(hub, stream)
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
        return 500, {"error": {"message": done.get("message"), "type": done["code"]}}
    return 200, {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(text)},
                "finish_reason": openai_finish_reason(done),
            }
        ],
        "usage": done.get("usage", {}),
    }


async def collect_chunks(hub: Hub, stream: TokenStream) -> tuple[int, dict[str, Any]]:
    """The ``chat.completion`` a raw-chunk stream adds up to (:class:`~tokenwire.protocol.openai.CompletionBuilder`:
    the upstream's id, model, content, tool calls merged, finish reason, usage); a failed stream is its error
    (502 for an upstream's failure)."""
    builder = CompletionBuilder()
    done: dict[str, Any] = {"reason": "cancelled"}
    try:
        async with hub.subscribe(stream.id) as sub:
            async for frames in sub:
                for f in frames:
                    if f.kind is FrameKind.TOKEN:
                        with contextlib.suppress(RemoteProtocolError):  # not a chunk: it adds nothing
                            builder.add(f.text)
                    elif f.kind is FrameKind.ERROR:
                        error = error_chunk(f.text)
                        return (502 if error["error"]["code"].startswith("upstream_") else 500), error
                    else:
                        done = f.json()
    except StreamNotFound:
        pass
    answer = builder.completion()
    for choice in answer["choices"]:
        if choice["finish_reason"] is None:  # ended by tokenwire (cancelled, abandoned, shutdown)
            choice["finish_reason"] = openai_finish_reason(done)
    if "usage" not in answer and isinstance(done.get("usage"), dict):
        answer["usage"] = done["usage"]
    return 200, answer


def _label_principal(stream: TokenStream, principal: str | None) -> None:
    """Remember who started ``stream`` (auth on), before its first frame: a copy on another node carries it."""
    if principal is not None:
        stream.label(PRINCIPAL_LABEL, principal)


@dataclass(slots=True)
class ChatRequest:
    """A validated ``POST /v1/chat/completions``: its stream has started (or was started by the request this
    one repeats: ``repeat`` holds that request's ``Last-Event-ID``, ``""`` when it has none)."""

    stream: TokenStream
    meta: ChatMeta
    streaming: bool
    repeat: str | None = None


#: The idempotency keys of each hub (:attr:`Endpoints.idempotency`); a hub's go with it.
_KEYS: weakref.WeakKeyDictionary[Hub, dict[str, tuple[str, str]]] = weakref.WeakKeyDictionary()


class _Opening:
    """The starts of one hub whose source is still opening (``open()``: an upstream's answer), shared by every
    server on the hub as its idempotency keys are: their ``Idempotency-Key`` (set when the start has ended, well
    or not) and their stream ids. A repeat of such a start waits for it instead of starting a second generation;
    another start with its stream id is refused at once."""

    __slots__ = ("ids", "keys")

    def __init__(self) -> None:
        self.keys: dict[str, asyncio.Event] = {}
        self.ids: set[str] = set()


_OPENING: weakref.WeakKeyDictionary[Hub, _Opening] = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class Endpoints:
    """The endpoints of docs/protocol.md §7 over a :class:`Host`; callers move the bytes.

    ``base`` arguments are the path prefix the app is mounted under (ASGI ``root_path``), for the URLs
    the answers carry.
    """

    host: Host

    @property
    def idempotency(self) -> dict[str, tuple[str, str]]:
        """``Idempotency-Key`` -> (stream id, fingerprint of the start request), oldest first: one table per
        hub, so every server on it (``tokenwire serve``'s SSE and WebTransport, an ASGI app beside them)
        answers a key alike (docs/protocol.md §7.2). A key lives at most as long as its stream is in the hub,
        and at most ``config.max_idempotency_keys`` are kept (the oldest go)."""
        return _KEYS.setdefault(self.host.hub, {})

    @property
    def _opening(self) -> _Opening:
        opening = _OPENING.get(self.host.hub)
        if opening is None:
            opening = _OPENING[self.host.hub] = _Opening()
        return opening

    async def _after_opening(self, headers: Mapping[str, str] | None, principal: str | None) -> str | None:
        """The ``Idempotency-Key`` of a start request (``None``: none; :func:`scoped_key`), once no start with that
        key is opening (returns at once, without yielding, when none is): a repeat then finds the stream that start
        made."""
        key = scoped_key(headers, principal)
        keys = self._opening.keys
        while key is not None and (opening := keys.get(key)) is not None:
            await opening.wait()
        return key

    @contextlib.contextmanager
    def _keyed_start(self, key: str | None) -> Iterator[None]:
        """While a start with ``key`` runs (it may wait on its source's ``open()``): repeats wait for it."""
        if key is None:
            yield
            return
        keys = self._opening.keys
        done = keys[key] = asyncio.Event()
        try:
            yield
        finally:
            if keys.get(key) is done:
                del keys[key]
            done.set()

    # -- auth --------------------------------------------------------------------------------------

    def authorize(
        self,
        route: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        path: str = "",
        transport: Literal["http", "webtransport"] = "http",
    ) -> str | Awaitable[str] | None:
        """Who sends a request on ``route``: ``None`` when nobody needs to be known (auth is off, or the route is
        public: :data:`PUBLIC_ROUTES`); else the principal (``Unauthorized`` when refused), or an awaitable of it
        from an async authenticator (:func:`tokenwire.auth.check`)."""
        auth = self.host.options.auth
        if auth is None or route in PUBLIC_ROUTES:
            return None
        return check(auth, AuthRequest(headers, query, transport, path))

    # -- generation --------------------------------------------------------------------------------

    async def start(
        self,
        route: Literal["create", "chat", "webtransport"],
        body: dict[str, Any],
        prompt: str,
        max_tokens: int,
        headers: Mapping[str, str] | None = None,
        principal: str | None = None,
    ) -> TokenStream:
        """A generation of ``prompt`` by the host's generator: the stream it sends to.

        The request's ``stream_id`` (optional) is checked first; a source's ``open()`` is awaited before the
        stream exists (:class:`~tokenwire.errors.GenerationRefused` then answers the request as the source says).
        ``principal`` (auth on): who asked; the stream is labelled with it before its first frame.
        """
        host = self.host
        hub = host.hub
        stream_id = body.get("stream_id")
        if stream_id is not None:
            if not (isinstance(stream_id, str) and is_stream_id(stream_id)):  # the client's fault: 400
                raise InvalidBody(f"'stream_id' must be 1-{MAX_STREAM_ID_LEN} characters of [A-Za-z0-9_-]", "stream_id")
            if stream_id in hub or stream_id in self._opening.ids:
                raise DuplicateStreamId(f"stream {stream_id!r} exists already; choose another id, or attach to it")
        request = GenerationRequest(
            route, prompt, max_tokens, body, stream_id or new_stream_id(), headers or {}, principal
        )
        generator = host.generator
        # The hub's cap is charged for what the stream will hold when the generator says how big an item gets:
        # HubFull (503) now, not half-way, when it does not fit.
        token_bytes_of = getattr(generator, "token_bytes", None)
        token_bytes = token_bytes_of(request) if token_bytes_of is not None else 0
        length = max_tokens if token_bytes else 0
        if is_engine(generator):
            stream = hub.create_stream(request.stream_id, abandonable=True, length=length, token_bytes=token_bytes)
            _label_principal(stream, principal)
            generator.enqueue(request, stream)
        else:
            stream = await self._start_source(cast(Generator, generator), request, length, token_bytes)
        host.metrics.streams_started_total += 1  # counted once it has started (HubFull and the like did not)
        return stream

    async def _start_source(
        self, generator: Generator, request: GenerationRequest, length: int, token_bytes: int
    ) -> TokenStream:
        source = generator.generate(request)
        hub = self.host.hub
        opened = getattr(source, "open", None)
        stream_id = request.stream_id
        try:
            if opened is not None:
                ids = self._opening.ids
                ids.add(stream_id)  # no other start takes this id meanwhile
                try:
                    await opened()
                finally:
                    ids.discard(stream_id)
                if stream_id in hub:  # taken while the source opened (by a producer outside the endpoints)
                    raise DuplicateStreamId(f"stream {stream_id!r} exists already; choose another id")
            stream = hub.start(aiter_source(source), stream_id=stream_id, length=length, token_bytes=token_bytes)
        except BaseException:  # refused, cancelled, or the hub cannot take it (HubFull): no stream, source closed
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            raise
        _label_principal(stream, request.principal)  # before its first frame (its task waits)
        if getattr(source, "chunk_format", None) == "openai":  # labelled before its first frame (its task waits)
            stream.label("format", RAW_CHUNKS)
        return stream

    async def create(
        self,
        body: dict[str, Any],
        base: str = "",
        headers: Mapping[str, str] | None = None,
        principal: str | None = None,
    ) -> StreamPlan | None:
        """``POST /v1/streams``: start a generation and stream it from the start.

        A repeat of a start (``Idempotency-Key``) or a retry that carries ``Last-Event-ID`` serves the stream
        that is already there instead (see :meth:`previous_start`); ``None``: 204, nothing left to send.
        """
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidBody("'prompt' (string) is required", "prompt")
        started = await self._start_once("create", body, prompt, headers, principal)
        if isinstance(started, str):
            return self.attach(started, last_event_id_of(headers or {}, {}), {}, base, principal)
        return self.plan_sse(started, 0, base)

    async def start_keyed(
        self,
        body: dict[str, Any],
        prompt: str,
        headers: Mapping[str, str] | None = None,
        principal: str | None = None,
    ) -> TokenStream:
        """A WebTransport start request: its ``idempotency_key`` member (optional) works as the
        ``Idempotency-Key`` header of ``POST /v1/streams`` (same keys, same rules): a repeat gets the stream
        already started, from seq 0, and starts no generation."""
        key = body.pop("idempotency_key", None)
        if key is not None and not isinstance(key, str):
            raise InvalidBody("'idempotency_key' must be a string", "idempotency_key")
        keyed = {k: v for k, v in (headers or {}).items() if k not in ("idempotency-key", "last-event-id")}
        if key is not None:
            keyed["idempotency-key"] = key
        started = await self._start_once("webtransport", body, prompt, keyed, principal)
        return self.host.hub.check_resume(started, 0) if isinstance(started, str) else started

    async def _start_once(
        self,
        route: Literal["create", "webtransport"],
        body: dict[str, Any],
        prompt: str,
        headers: Mapping[str, str] | None,
        principal: str | None,
    ) -> str | TokenStream:
        """A start of ``POST /v1/streams`` or a WebTransport start: the id of the stream it repeats
        (:meth:`previous_start`), else the stream it starts (its ``Idempotency-Key`` remembered)."""
        key = await self._after_opening(headers, principal)
        repeated = self.previous_start("create", body, headers, principal)
        if repeated is not None:
            return repeated
        max_tokens = int_field(body, "max_tokens", 64, 1, self.host.config.max_tokens_limit)
        with self._keyed_start(key):
            stream = await self.start(route, body, prompt, max_tokens, headers, principal)
            self._remember_key("create", body, headers, stream)
        return stream

    def previous_start(
        self, route: str, body: dict[str, Any], headers: Mapping[str, str] | None, principal: str | None = None
    ) -> str | None:
        """The id of the stream a start request repeats; ``None``: start a new generation.

        - An ``Idempotency-Key`` this principal sent before (its stream still in the hub) names that stream (each
          principal has keys of its own: :func:`scoped_key`). The same key with another request body is 422.
        - Else a ``Last-Event-ID`` (a client's SSE retry of the POST) names it (400 malformed, 409 another
          epoch). The caller serves it as ``GET /v1/streams/{id}/events`` with that ``Last-Event-ID`` would
          (:meth:`attach`: 400, 404, 409, 410; 204 when nothing is left).
        """
        if headers is None:
            return None
        key = scoped_key(headers, principal)
        hub = self.host.hub
        if key is not None and (entry := self.idempotency.get(key)) is not None:
            held = entry[0] in hub
            if entry[1] != _fingerprint(route, body):
                raise HttpError(422, "Idempotency-Key was used for a different request; use a new key")
            if held:
                return entry[0]
            del self.idempotency[key]  # its stream is gone: the key starts a new one
        last_event_id = last_event_id_of(headers, {})
        if not last_event_id:
            return None
        point = split_end_part(last_event_id)[0] if route == "chat" else last_event_id
        return hub.parse_resume(point).stream_id

    def _remember_key(
        self, route: str, body: dict[str, Any], headers: Mapping[str, str] | None, stream: TokenStream
    ) -> None:
        key = scoped_key(headers, stream.labels.get(PRINCIPAL_LABEL))
        if key is None:
            return
        keys = self.idempotency
        keys.pop(key, None)  # a key that starts anew becomes the newest
        keys[key] = (stream.id, _fingerprint(route, body))
        while len(keys) > self.host.config.max_idempotency_keys:
            del keys[next(iter(keys))]  # the oldest go (keys of swept streams are dropped when looked up)

    def cancel(self, stream_id: str, principal: str | None = None) -> None:
        """``DELETE /v1/streams/{id}`` (or a WebTransport cancel) by ``principal``: 204 after this returns;
        ``StreamNotFound`` (also another principal's stream) is a 404."""
        check_owner(self.host.hub.get(stream_id), principal).cancel()

    def attach(
        self,
        stream_id: str,
        last_event_id: str,
        query: Mapping[str, str],
        base: str = "",
        principal: str | None = None,
    ) -> StreamPlan | None:
        """``GET /v1/streams/{id}/events`` by ``principal``: the plan, or ``None`` for 204 (ended, nothing left)."""
        host = self.host
        fmt = query.get("format", "sse")
        if fmt not in ("sse", "openai"):
            raise RemoteProtocolError(f"unknown format {fmt!r} (sse, openai)")
        point, part = split_end_part(last_event_id) if fmt == "openai" else (last_event_id, "")
        stream, after = resolve_resume(host.hub, stream_id, point, principal)
        if part:
            after = resolve_end_part(stream, after, part)
        if nothing_left(stream, after):
            return None  # 204 also tells EventSource to stop reconnecting.
        if last_event_id:
            count_resume(host.hub, host.metrics, stream, after)
        if fmt == "openai" and is_raw_chunks(stream):
            return plan_openai_chunks(host.hub, stream, after, base, end_part=part)
        if fmt == "openai":
            meta = ChatMeta.of(stream)
            if meta is None:
                raise RemoteProtocolError(
                    f"stream {stream_id} is not a chat completion; format=openai is not available"
                )
            return plan_openai(host.hub, stream, after, meta, base, resumed=bool(last_event_id), end_part=part)
        return self.plan_sse(stream, after, base)

    def attach_stream(self, stream_id: str, after: int, epoch: str = "", principal: str | None = None) -> TokenStream:
        """A WebTransport attach request by ``principal`` (docs/protocol.md §4.4): the stream to serve after seq
        ``after``, checked as :meth:`attach` checks a ``Last-Event-ID`` (``EpochMismatch`` for another ``epoch``,
        ``StreamNotFound``, ``ResumeFromFuture``, ``ResumeExpired``); a resume (``after`` > 0) is counted."""
        hub = self.host.hub
        if epoch:
            hub.check_epoch(epoch)
        stream = resolve_point(hub, stream_id, after, principal)
        if after:
            count_resume(hub, self.host.metrics, stream, after)
        return stream

    def plan_sse(self, stream: TokenStream, after: int, base: str = "") -> StreamPlan:
        return plan_sse(self.host.hub, stream, after, f"{base}{STREAMS_PATH}/{stream.id}/events")

    async def chat(
        self, body: dict[str, Any], headers: Mapping[str, str] | None = None, principal: str | None = None
    ) -> ChatRequest:
        """``POST /v1/chat/completions``: validate, start the generation, remember its chunk metadata.

        A repeat (``Idempotency-Key``) or a retry with ``Last-Event-ID`` serves the stream already there, in
        the OpenAI format (see :meth:`previous_start`); :meth:`chat_plan` says 204 when nothing is left."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidBody("'messages' must be a non-empty array", "messages")
        parts = [message_text(m, i) for i, m in enumerate(messages)]
        model = body.get("model", "tokenwire-fake")
        if not isinstance(model, str):
            raise InvalidBody("'model' must be a string", "model")
        limit = self.host.config.max_tokens_limit
        max_tokens = int_field(body, "max_completion_tokens", 0, 0, limit) or int_field(
            body, "max_tokens", 64, 1, limit
        )
        streaming = bool_field(body, "stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidBody("'stream_options' must be an object", "stream_options")
        include_usage = (options or {}).get("include_usage")
        if include_usage is None:
            include_usage = False
        elif not isinstance(include_usage, bool):
            raise InvalidBody("'stream_options.include_usage' must be a boolean", "stream_options.include_usage")
        key = await self._after_opening(headers, principal)
        repeated = self.previous_start("chat", body, headers, principal)
        if repeated is not None:
            return self._chat_repeat(repeated, streaming, last_event_id_of(headers or {}, {}), principal)
        with self._keyed_start(key):
            stream = await self.start("chat", body, "\n".join(parts), max_tokens, headers, principal)
            meta = ChatMeta(f"chatcmpl-{stream.id}", model, int(time.time()), include_usage)
            meta.remember(stream)
            self._remember_key("chat", body, headers, stream)
        return ChatRequest(stream, meta, streaming)

    def _chat_repeat(self, stream_id: str, streaming: bool, last_event_id: str, principal: str | None) -> ChatRequest:
        known = ChatMeta.of(check_owner(self.host.hub.get(stream_id), principal))
        if known is None:
            raise RemoteProtocolError(f"stream {stream_id} is not a chat completion; it cannot resume here")
        if not streaming:
            self.host.hub.check_resume(stream_id, 0)  # the whole answer is collected again: 410 if gone
        return ChatRequest(self.host.hub.get(stream_id), known, streaming, last_event_id)

    def chat_plan(self, chat: ChatRequest, base: str = "") -> StreamPlan | None:
        """The OpenAI chunk stream of a streaming chat request; a repeat is served as ``GET
        .../events?format=openai`` with its ``Last-Event-ID`` (``None``: 204, nothing left)."""
        if chat.repeat is None and is_raw_chunks(chat.stream):
            return plan_openai_chunks(self.host.hub, chat.stream, 0, base)
        if chat.repeat is None:
            return plan_openai(self.host.hub, chat.stream, 0, chat.meta, base)
        return self.attach(chat.stream.id, chat.repeat, {"format": "openai"}, base)

    def webtransport(self) -> dict[str, Any]:
        """``GET /v1/webtransport/certificate``: ``{url, sha256, algorithm}``; 404 when WebTransport is off."""
        wt = getattr(self.host, "webtransport", None)
        if wt is None:
            raise HttpError(404, "WebTransport is not served here")
        info: dict[str, Any] = wt.certificate_info()
        return info

    def health(self) -> dict[str, Any]:
        """``GET /health``: the epoch, this process's pid (it tells apart the workers that share a port, ``tokenwire
        serve --workers``), and a shared storage's reachability (``storage_up``)."""
        storage = self.host.hub.storage
        body: dict[str, Any] = {"status": "ok", "epoch": self.host.hub.epoch, "pid": os.getpid()}
        if storage.shared:
            body["storage"] = type(storage).__name__
            body["storage_up"] = bool(storage.stats().get("redis_up", 0))
        return body
