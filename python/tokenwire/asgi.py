"""tokenwire as an ASGI 3 app, and a streaming response for your own routes (FastAPI, Starlette).

:class:`TokenwireASGI` serves the endpoints of ``tokenwire serve`` (docs/protocol.md §7): ``POST
/v1/streams``, ``GET /v1/streams/{id}/events`` (resume with ``Last-Event-ID`` or ``?last_event_id=``;
``?format=openai``), ``DELETE /v1/streams/{id}``, ``POST /v1/chat/completions`` (OpenAI-compatible),
``GET /healthz``, ``GET /metrics``, the browser client ``GET /v1/client.js`` and its demo page ``GET /``,
with the same status codes, bodies and event bytes, and the same opt-in CORS (``ServerConfig.allow_origins``).
It runs under any ASGI 3 server (the tests use uvicorn and hypercorn) and mounts under a prefix
(``Mount("/tw", app=tw)``).

:func:`stream_response` streams one stream of a :class:`~tokenwire.hub.Hub` from a route of your own, and
resumes it from a ``Last-Event-ID``. With Starlette installed it is a Starlette ``Response``, so a FastAPI
path operation can return it.

Example (``uvicorn example:app``)::

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Mount, Route

    from tokenwire import FakeModel, Hub, ServerOptions
    from tokenwire.asgi import TokenwireASGI, stream_response

    hub = Hub()
    model = FakeModel(seed=1, tokens_per_s=200)
    tw = TokenwireASGI(hub, ServerOptions(generator=model))  # the /v1/... endpoints, sharing the hub


    async def ask(request: Request) -> object:
        body = await request.json()
        stream = hub.start(model.generate(body["prompt"], max_tokens=64))
        return stream_response(hub, stream.id, events_url=f"/answers/{stream.id}")


    async def answer(request: Request) -> object:
        last_event_id = request.headers.get("last-event-id")
        return stream_response(hub, request.path_params["stream_id"], last_event_id)


    app = Starlette(
        routes=[
            Route("/ask", ask, methods=["POST"]),
            Route("/answers/{stream_id}", answer),
            Mount("/tw", app=tw),  # POST /tw/v1/streams, GET /tw/v1/streams/{id}/events, ...
        ],
        lifespan=tw.lifespan,  # mounted apps get no lifespan events of their own
    )

How a stream is served: the response attaches a listener to the :class:`~tokenwire.hub.TokenStream`; a
``send`` or the stream's end wakes it; it then reads everything new through its
:class:`~tokenwire.hub.Cursor` (one ``Storage.poll`` call: SSE bytes rendered in Rust) and sends it as one ``http.response.body`` message.
Tokens sent in one loop iteration thus go out in one message. The server's flow control applies: while
the client does not read, ``send`` waits and the ring is the buffer. A reader that falls behind the ring,
or stays stalled for ``stall_timeout``, has its connection closed (the server logs a response that did
not complete); it resumes from its ``Last-Event-ID``. A disconnect (``http.disconnect``) detaches the
listener and never stops generation. An idle stream gets a ``:`` comment every ``heartbeat_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tokenwire import _core
from tokenwire.errors import GenerationRefused, ResumeExpired, StreamNotFound, TokenwireError, status_of
from tokenwire.hub import Hub
from tokenwire.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tokenwire.metrics import ServerMetrics, WriteMeter
from tokenwire.protocol.http1 import HttpError, check_body_size, parse_query
from tokenwire.server.base import HubHost
from tokenwire.server.config import ServerConfig, ServerOptions
from tokenwire.server.endpoints import (
    SHUTDOWN_HINT,
    SSE_HEADERS,
    Endpoints,
    StreamPlan,
    collect_completion,
    cors_headers,
    count_resume,
    last_event_id_of,
    left_early,
    match_route,
    nothing_left,
    parse_json_body,
    plain_answer,
    plan_sse,
    resolve_resume,
    stream_to_find,
)
from tokenwire.server.sse import error_body

if TYPE_CHECKING:
    from starlette.responses import Response as _ResponseBase
else:
    try:
        from starlette.responses import Response as _ResponseBase
    except ImportError:  # Starlette is optional: without it the response is a plain ASGI app.

        class _ResponseBase:
            pass


__all__ = ["EventStreamResponse", "TokenwireASGI", "stream_response"]

log = logging.getLogger("tokenwire.asgi")

# The ASGI callables' types, as Starlette spells them.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_STATE_OPEN = _core.STATE_OPEN


def _raw(headers: Iterable[tuple[str, str]]) -> Headers:
    """Headers as ASGI carries them: lower-case names, latin-1 bytes."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


def _sse_headers(head: list[tuple[str, str]]) -> Headers:
    return _raw((*SSE_HEADERS, *head))


class _Answer:
    """A plain (non-streaming) response."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, content_type: str, extra: Headers | None = None) -> None:
        self.status = status
        self.body = body
        headers: Headers = [(b"content-type", content_type.encode("latin-1"))] if content_type else []
        if status not in (204, 304):  # neither carries a body, nor Content-Length (RFC 9110 §8.6)
            headers.append((b"content-length", str(len(body)).encode("latin-1")))
        if extra:
            headers.extend(extra)
        self.headers = headers

    @classmethod
    def json(cls, status: int, obj: object, extra: Headers | None = None) -> _Answer:
        return cls(status, json.dumps(obj).encode(), "application/json", extra)

    @classmethod
    def error(cls, exc: BaseException, status: int | None = None) -> _Answer:
        if isinstance(exc, GenerationRefused):  # the generator's own answer (an upstream's), as it is
            return cls(exc.status, exc.body, exc.content_type)
        if status is None:
            status = status_of(exc)
        extra = [(b"retry-after", b"1")] if status == 503 else None
        return cls.json(status, error_body(exc, status), extra)

    async def send_to(self, send: Send, head_only: bool = False) -> None:
        """Send the answer (``head_only``: to a HEAD request, without the body)."""
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if head_only else self.body, "more_body": False})


class _Disconnected(Exception):
    """The client went away before its request was complete."""


class _Streamer:
    """One streaming response: a listener on the stream, one ``http.response.body`` per wake-up."""

    __slots__ = (
        "_dirty",
        "_disconnected",
        "_heartbeat_due",
        "_last_write",
        "_loop",
        "_requested_at",
        "_sending_since",
        "_shutdown",
        "_stalled",
        "_task",
        "_timer",
        "_waiter",
        "cursor",
        "headers",
        "heartbeat_interval",
        "hub",
        "metrics",
        "plan",
        "retry_ms",
        "stall_timeout",
    )

    def __init__(
        self,
        hub: Hub,
        plan: StreamPlan,
        headers: Headers,
        config: ServerConfig,
        metrics: ServerMetrics | None = None,
        requested_at: float = 0.0,
    ) -> None:
        self.hub = hub
        self.plan = plan
        self.headers = headers
        self.retry_ms = config.retry_ms
        self.heartbeat_interval = config.heartbeat_interval
        self.stall_timeout = config.stall_timeout
        self.metrics = metrics
        self._requested_at = requested_at
        self._waiter: asyncio.Future[None] | None = None
        #: Where this response reads its stream: the reader that producer backpressure compares.
        self.cursor = plan.stream.cursor(plan.after, "sse", plan.render)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_write = 0.0
        self._sending_since = 0.0
        self._disconnected = False
        #: Woken since the last look: a send that waited may have let new frames (or a reason) arrive.
        self._dirty = False
        self._heartbeat_due = False
        self._stalled = False
        self._shutdown = False

    def wake(self) -> None:
        """The stream's listener (new frames, or its end), and every other reason to look again."""
        self._dirty = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close_for_shutdown(self) -> None:
        """Tell the client to come back soon, then end the response (it resumes with its Last-Event-ID)."""
        self._shutdown = True
        self.wake()

    async def _watch_disconnect(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server that cannot receive any more has lost the client too
            log.debug("receive failed while streaming", exc_info=True)
        self._disconnected = True
        self.wake()

    def _tick(self) -> None:
        """Heartbeat when idle for ``heartbeat_interval``; give up on a send stalled for ``stall_timeout``."""
        loop = self._loop
        assert loop is not None  # noqa: S101 - set before the timer is armed
        now = loop.time()
        if self._sending_since:
            if now - self._sending_since >= self.stall_timeout - 0.001:
                self._timer = None
                self._stalled = True
                if self._task is not None:
                    self._task.cancel()
                return
            when = self._sending_since + self.stall_timeout
        else:
            when = self._last_write + self.heartbeat_interval
            if now >= when - 0.001:
                self._heartbeat_due = True
                self.wake()
                when = now + self.heartbeat_interval
            # A send that starts after this is seen stalled within 2 * stall_timeout, without a timer per send.
            when = min(when, now + self.stall_timeout)
        self._timer = loop.call_at(when, self._tick)

    async def run(self, receive: Receive, send: Send) -> None:  # noqa: C901 - one loop, read in one place
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._task = asyncio.current_task()
        plan = self.plan
        stream = plan.stream
        cursor = self.cursor
        read = cursor.poll
        m = self.metrics
        meter = None
        if m is not None:  # write accounting: the meter's observe is the cursor's hook
            meter = WriteMeter(m, loop.time)
            meter.requested_at = self._requested_at
            cursor.on_read = meter.observe
        completed = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        except OSError:
            return
        pending = (_core.sse_retry(self.retry_ms) if plan.retry else b"") + plan.intro
        cut = False  # end without the body's end (the shutdown hint): the client must take it for a cut
        stream.attach(self.wake)
        watcher = loop.create_task(self._watch_disconnect(receive))
        self._last_write = loop.time()
        if meter is not None:
            meter.last_write = self._last_write
        self._timer = loop.call_at(self._last_write + min(self.heartbeat_interval, self.stall_timeout), self._tick)
        try:
            while not self._disconnected:
                self._dirty = False
                data, _, ended = read()  # the cursor's hook (the meter) accounts the frames it took
                now = loop.time()
                if data:
                    pending = pending + data if pending else data
                if ended:
                    pending += plan.trailer
                elif self._shutdown:
                    pending += SHUTDOWN_HINT
                    ended = cut = True
                elif not pending and self._heartbeat_due:
                    pending = b":\n"
                    if m is not None:
                        m.heartbeats_total += 1
                if pending or ended:
                    self._heartbeat_due = False
                    self._sending_since = now
                    # While the server has not taken the bytes (its transport is full), this reader is paused:
                    # a producer the hub drives waits if it falls far behind (docs/protocol.md §7).
                    stream.reader_paused(cursor)
                    await send({"type": "http.response.body", "body": pending, "more_body": not ended or cut})
                    stream.reader_resumed(cursor)
                    self._sending_since = 0.0
                    self._last_write = now  # when the bytes were handed over: the heartbeat clock
                    if meter is not None:
                        meter.last_write = now  # and the inter-token one (a heartbeat counts)
                    pending = b""
                    if ended:
                        completed = True  # a cut (shutdown) stays incomplete: the server closes it, no last chunk
                        return
                    if self._dirty:
                        continue  # woken while the send waited: look again before sleeping
                waiter = loop.create_future()
                self._waiter = waiter
                try:
                    await waiter
                finally:
                    self._waiter = None
        except ResumeExpired:
            # The client read so slowly that the ring moved past it: close; its resume gets 410.
            if m is not None:
                m.backpressure_closes_total += 1
        except StreamNotFound:
            pass  # evicted while we replayed it: close; the resume gets 404
        except OSError:
            self._disconnected = True  # ASGI 2.4 servers raise on a send to a closed connection
        except asyncio.CancelledError:
            task = self._task
            if not self._stalled or task is None or task.uncancel() > 0:
                raise
            # Our own stall timeout: the client stopped reading. Close; it resumes later.
            if m is not None:
                m.backpressure_closes_total += 1
        finally:
            stream.detach(self.wake)
            stream.reader_resumed(cursor)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if not completed and m is not None and left_early(stream, cursor.position):
                m.disconnects_total += 1


def _route_path(scope: Scope) -> str:
    """The request path below the mount point (``root_path``), as Starlette computes it."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def _query(scope: Scope) -> dict[str, str]:
    return parse_query(scope.get("query_string", b""))


async def _read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    check_body_size(headers.get("content-length"), 0, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        check_body_size(None, size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class TokenwireASGI(HubHost):
    """The tokenwire endpoints as an ASGI 3 app over one :class:`~tokenwire.hub.Hub`.

    ``options`` (:class:`~tokenwire.server.ServerOptions`, or a bare :class:`~tokenwire.server.ServerConfig`):
    its ``generator`` drives the generations that ``POST /v1/streams`` and ``POST /v1/chat/completions``
    start, as in ``tokenwire serve``; its ``config`` supplies ``retry_ms``, ``heartbeat_interval``, ``stall_timeout``, ``max_tokens_limit`` and ``http.max_body_bytes``; the
    connection limits and timeouts of :class:`~tokenwire.server.ServerConfig` are the ASGI server's.

    Lifespan: ``startup`` starts the hub's janitor; ``shutdown`` tells open stream responses to reconnect
    and closes the hub (``Hub.aclose``), then answers 503. Mounted apps get no lifespan
    events in Starlette or FastAPI: pass ``lifespan=tw.lifespan`` to the outer app (or call
    :meth:`startup` / :meth:`shutdown` yourself); without it the janitor starts with the first request.
    ASGI servers run the lifespan shutdown only once open responses have ended, and a stream response
    ends with its stream: bound the wait with the server's graceful-shutdown timeout (uvicorn
    ``--timeout-graceful-shutdown``, hypercorn ``--graceful-timeout``); cut clients resume from their
    ``Last-Event-ID``.
    """

    def __init__(self, hub: Hub | None = None, options: ServerOptions | ServerConfig | None = None) -> None:
        super().__init__(hub, options, ServerMetrics("sse"))
        self.endpoints = Endpoints(self)
        self.streaming: set[_Streamer] = set()
        self._started = False
        self.metrics.gauges["stream_connections"] = lambda: len(self.streaming)

    # -- lifespan ------------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        self._start_generation()
        self._started = True

    async def startup(self) -> None:
        """Start the hub's janitor. Needs the running loop."""
        self.draining = False
        self._ensure_started()

    async def shutdown(self) -> None:
        """Tell open stream responses to reconnect, close the hub (its streams end: an engine stops sending)."""
        self.draining = True
        for streamer in list(self.streaming):
            streamer.close_for_shutdown()
        await self.hub.aclose()
        self._started = False

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Starlette/FastAPI ``lifespan=``: :meth:`startup`, the app's life, :meth:`shutdown`."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("tokenwire startup failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    log.exception("tokenwire shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "no WebSocket endpoint here"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        requested_at = asyncio.get_running_loop().time()
        self.metrics.requests_total += 1
        answer: _Answer | StreamPlan
        try:
            if self.draining:
                raise HttpError(503, "server is shutting down")
            if not self._started:
                self._ensure_started()  # mounted without a lifespan: start with the first request
            answer = await self._dispatch(scope, receive)
        except _Disconnected:
            return
        except TokenwireError as exc:
            self.metrics.bad_requests_total += 1
            answer = _Answer.error(exc)
        except Exception as exc:
            log.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            self.metrics.bad_requests_total += 1
            answer = _Answer.error(exc, 500)
        cors = _raw(cors_headers(self.config.allow_origins, _headers(scope).get("origin")))
        if isinstance(answer, _Answer):
            answer.headers += cors
            await answer.send_to(send, head_only=scope["method"] == "HEAD")
            return
        headers = _sse_headers(answer.head) + cors
        streamer = _Streamer(self.hub, answer, headers, self.config, self.metrics, requested_at)
        self.streaming.add(streamer)
        try:
            await streamer.run(receive, send)
        finally:
            self.streaming.discard(streamer)

    async def _dispatch(self, scope: Scope, receive: Receive) -> _Answer | StreamPlan:
        route, stream_id = match_route(scope["method"], _route_path(scope))
        plain = plain_answer(route, scope["method"], _headers(scope), self.config)
        if plain is not None:  # a preflight, or a browser file
            return _Answer(plain.status, plain.body, plain.content_type, _raw(plain.headers))
        endpoints = self.endpoints
        base = quote(scope.get("root_path", ""))
        find = stream_to_find(route, stream_id, _headers(scope), _query(scope))
        if find.stream_id and self.hub.needs_restore(find.stream_id, find.after):
            await self.hub.find(*find)  # another node's stream, maybe: copy it from the shared storage
        if route == "attach":
            query = _query(scope)
            plan = endpoints.attach(stream_id, last_event_id_of(_headers(scope), query), query, base)
            return _Answer(204, b"", "text/event-stream") if plan is None else plan
        if route == "cancel":
            endpoints.cancel(stream_id)
            return _Answer(204, b"", "application/json")
        if route == "create":
            plan = await endpoints.create(await self._json(scope, receive), base, _headers(scope))
            return _Answer(204, b"", "text/event-stream") if plan is None else plan
        if route == "chat":
            chat = await endpoints.chat(await self._json(scope, receive), _headers(scope))
            if chat.streaming:
                plan = endpoints.chat_plan(chat, base)
                return _Answer(204, b"", "text/event-stream") if plan is None else plan
            status, body = await collect_completion(self.hub, chat.stream, chat.meta)
            return _Answer.json(status, body)
        if route == "health":
            return _Answer.json(200, endpoints.health())
        if route == "webtransport":
            return _Answer.json(200, endpoints.webtransport())  # 404 unless a WebTransport server is set
        return _Answer(200, self.render_metrics(), METRICS_CONTENT_TYPE)

    async def _json(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        headers = _headers(scope)
        body = await _read_body(receive, headers, self.config.http.max_body_bytes)
        return parse_json_body(headers.get("content-type"), body)


class EventStreamResponse(_ResponseBase):
    """SSE response of one stream of ``hub``, from ``last_event_id`` on (or from the start), for your routes.

    A Starlette ``Response`` when Starlette is installed (return it from a Starlette or FastAPI route);
    otherwise a plain ASGI app. The resume point is checked at once: an unusable one makes this the JSON
    error response of docs/protocol.md §4.2 (400, 404, 409, 410; see ``status_code``), and a stream that
    has ended with nothing left to send makes it a 204. The body is the same as ``GET
    /v1/streams/{id}/events``: a ``retry:`` block, a ``stream`` event whose id is the resume point, the
    frames, heartbeat comments while idle.

    ``events_url``: where clients come back to resume (the ``Location`` header and the intro event's
    ``events_url``); left out when ``None``. ``config``: ``retry_ms``, ``heartbeat_interval`` and
    ``stall_timeout``. ``headers`` are added to the response; ``background`` runs after it (Starlette's
    ``BackgroundTask``).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: Hub,
        stream_id: str,
        last_event_id: str | None = None,
        *,
        events_url: str | None = None,
        config: ServerConfig | None = None,
        headers: Mapping[str, str] | None = None,
        background: Any = None,
    ) -> None:
        self.hub = hub
        self.config = config or ServerConfig()
        self.background = background
        self.plan: StreamPlan | None = None
        self._answer: _Answer | None = None
        raw = (last_event_id or "").strip()
        try:
            stream, after = resolve_resume(hub, stream_id, raw)
        except TokenwireError as exc:
            answer = self._answer = _Answer.error(exc)
            self.status_code = answer.status
            raw_headers = answer.headers
        else:
            if nothing_left(stream, after):
                answer = self._answer = _Answer(204, b"", "text/event-stream")
                self.status_code = 204
                raw_headers = answer.headers
            else:
                if raw:
                    count_resume(hub, None, stream, after)
                self.plan = plan_sse(hub, stream, after, events_url)
                self.status_code = 200
                raw_headers = _sse_headers(self.plan.head)
        if headers:
            raw_headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        self.raw_headers = raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.plan is None:
            assert self._answer is not None  # noqa: S101 - one of the two is set in __init__
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self._answer.body, "more_body": False})
        else:
            await _Streamer(self.hub, self.plan, self.raw_headers, self.config).run(receive, send)
        if self.background is not None:
            await self.background()


def stream_response(
    hub: Hub,
    stream_id: str,
    last_event_id: str | None = None,
    *,
    events_url: str | None = None,
    config: ServerConfig | None = None,
    headers: Mapping[str, str] | None = None,
    background: Any = None,
) -> EventStreamResponse:
    """An :class:`EventStreamResponse`: stream ``stream_id`` of ``hub`` after ``last_event_id``.

    Return it from a Starlette or FastAPI route; pass the request's ``Last-Event-ID`` header so that
    reconnecting clients get exactly what they missed.
    """
    return EventStreamResponse(
        hub,
        stream_id,
        last_event_id,
        events_url=events_url,
        config=config,
        headers=headers,
        background=background,
    )
