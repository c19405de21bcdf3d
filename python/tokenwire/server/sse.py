"""The SSE server: an asyncio Protocol per connection on uvloop (or the default loop), sharing one Hub.

Data path of a stream connection: ``TokenStream.send`` -> ring append (Rust) -> this connection's listener
marks it dirty -> :class:`~tokenwire.server.flusher.Flusher` runs once per loop iteration -> the connection's
:class:`~tokenwire.hub.Cursor` renders everything new as SSE bytes (one ``Storage.poll``, Rust) -> one
``transport.write``.

A client that stops reading makes the transport pause: the connection stops pulling from the ring (the ring
is the buffer, bounded), and after ``stall_timeout`` the connection is closed. The client resumes later
from its ``Last-Event-ID`` and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from typing import Any, cast

from tokenwire import _core
from tokenwire.errors import GenerationRefused, ResumeExpired, StreamNotFound, TokenwireError, error_fields, status_of
from tokenwire.hub import Cursor, Hub, TokenStream
from tokenwire.metrics import ServerMetrics, WriteMeter
from tokenwire.protocol.http1 import LAST_CHUNK, HttpError, Request, RequestParser, chunk, render_head, render_response
from tokenwire.server.accept import Listener, listening_sockets
from tokenwire.server.base import ServerBase
from tokenwire.server.config import ServerConfig, ServerOptions
from tokenwire.server.endpoints import SHUTDOWN_HINT, SSE_HEADERS, Render, StreamPlan, cors_headers, left_early

__all__ = ["SseConnection", "SseServer", "StreamRender"]

log = logging.getLogger("tokenwire.server")

#: The name this module exported before ``endpoints.Render`` (see there).
StreamRender = Render


def error_body(exc: BaseException, status: int) -> dict[str, Any]:
    """The JSON error body of docs/protocol.md §4.2."""
    err: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc), "status": status}
    return {"error": err | error_fields(exc)}


class SseConnection(asyncio.Protocol):
    """One client connection: requests until it turns into a stream, then the stream until it ends."""

    __slots__ = (
        "_chunked",
        "_closing",
        "_cors",
        "_cursor",
        "_dirty",
        "_head_only",
        "_held",
        "_idle",
        "_keep_alive",
        "_meter",
        "_paused",
        "_paused_at",
        "_read",
        "_timer",
        "_trailer",
        "_unparsed",
        "parser",
        "server",
        "stream",
        "transport",
    )

    def __init__(self, server: SseServer) -> None:
        self.server = server
        self.parser = RequestParser(server.config.http)
        self.transport: asyncio.Transport | None = None
        self.stream: TokenStream | None = None
        #: Where this connection reads its stream; the reader that producer backpressure sees.
        self._cursor: Cursor | None = None
        self._read = _nothing_to_read
        self._trailer = b""
        self._chunked = False
        self._keep_alive = False
        self._unparsed = False
        self._dirty = False
        self._held = False
        #: The current request is a HEAD: its answer has no body.
        self._head_only = False
        #: The CORS headers of every answer to the current request (ServerConfig.allow_origins).
        self._cors: list[tuple[str, str]] = []
        #: Kept alive between requests: the idle timer runs until the next request's first byte.
        self._idle = False
        self._paused = False
        self._paused_at = 0.0
        self._closing = False
        #: Write accounting (its ``observe`` is the cursor's hook) and the heartbeat clock (``last_write``).
        self._meter = WriteMeter(server.metrics, server.loop.time)
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport = transport
        server = self.server
        server.metrics.connections_total += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=server.config.write_buffer_high)
        if len(server.connections) >= server.config.max_connections:
            self._respond_error(HttpError(503, "server is at its connection limit"), False)
            return
        server.connections.add(self)
        self._arm_timer(server.config.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.stream is not None or self._closing or self._held:
            # Bytes nobody parses (a request pipelined behind a stream or a held answer): the connection cannot
            # take a request after them, so it closes after the current answer instead of leaving one unanswered.
            self._keep_alive = False
            self._unparsed = True
            return  # a stream connection (or one awaiting its answer) takes no more requests
        parser = self.parser
        try:
            requests = parser.feed(data)
        except HttpError as exc:
            self._refuse_incomplete(exc)
            return
        for i, req in enumerate(requests):
            self._cancel_timer()
            self._idle = False
            self.server.metrics.requests_total += 1
            self._meter.requested_at = self.server.loop.time()
            self.dispatch(req)
            if self.stream is not None or self._closing or self._held:
                if i + 1 < len(requests):
                    # Requests pipelined behind a stream or a held answer: its end closes the connection.
                    self._keep_alive = False
                    self._unparsed = True
                return
            # Kept alive: the next request may start within the idle timeout.
            self._idle = True
            self._arm_timer(self.server.config.idle_timeout)
        if self._idle and parser.busy:
            # A request has started arriving: it must be complete within the header timeout, as the first one.
            self._idle = False
            self._arm_timer(self.server.config.header_timeout)

    def dispatch(self, req: Request) -> None:
        """Route ``req`` and answer it (now, or later: held), errors as their status."""
        self._held = False
        self._head_only = req.method == "HEAD"
        self._cors = cors_headers(self.server.config.allow_origins, req.headers.get("origin"))
        try:
            if self.server.draining:
                raise HttpError(503, "server is shutting down")
            self.server.router.handle(self, req)
        except TokenwireError as exc:
            self._respond_error(exc, req.keep_alive)
        except Exception as exc:
            log.exception("request %s %s failed", req.method, req.path)
            self._respond_error(exc, False, status=500)

    def answer_error(self, exc: BaseException, keep_alive: bool) -> None:
        """The error answer to a held request."""
        self._respond_error(exc, keep_alive)

    def hold(self) -> None:
        """The answer to the current request comes later (``respond`` releases the connection)."""
        self._held = True

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        server = self.server
        server.connections.discard(self)
        stream = self.stream
        if stream is not None:
            self._release_stream(stream)
            if left_early(stream, self.position):
                server.metrics.disconnects_total += 1

    def pause_writing(self) -> None:
        self._paused = True
        self._paused_at = self.server.loop.time()
        cursor = self._cursor
        if cursor is not None:
            cursor.stream.reader_paused(cursor)  # a producer the hub drives waits if this reader falls far behind

    def resume_writing(self) -> None:
        self._paused = False
        cursor = self._cursor
        if cursor is not None:
            cursor.stream.reader_resumed(cursor)
            self._on_frames()

    # -- timers --------------------------------------------------------------------------------------

    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.server.loop.call_later(delay, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        if self.stream is None and not self._closing:
            if self._idle and not self.parser.busy:
                # Idle between requests: close without a byte (a 408 here would be an unsolicited response).
                self._closing = True
                if self.transport is not None:
                    self.transport.close()
                return
            self._refuse_incomplete(HttpError(408, "no complete request in time"))

    def _refuse_incomplete(self, exc: HttpError) -> None:
        """The error answer to a request refused before it was complete (malformed, 413, 414, 431, 408); it
        carries the CORS headers of the Origin it named, if that header has arrived, as every answer does."""
        self._cors = cors_headers(self.server.config.allow_origins, self.parser.partial_headers.get("origin"))
        self._respond_error(exc, False)

    # -- plain responses -----------------------------------------------------------------------------

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: str,
        keep_alive: bool,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        transport = self.transport
        self._held = False
        if transport is None or self._closing:
            return
        keep_alive = keep_alive and not self.server.draining and not self._unparsed
        if self._cors:
            extra = [*(extra or ()), *self._cors]
        transport.write(
            render_response(
                status, body, content_type, keep_alive=keep_alive, extra=extra, send_body=not self._head_only
            )
        )
        self._head_only = False  # answered: what comes next (a 408 on the next request) is no HEAD's
        self._cors = []
        if not keep_alive:
            self._closing = True
            transport.close()
        elif self._timer is None:  # an answer that came later (held): the idle timer starts now
            self._idle = True
            self._arm_timer(self.server.config.idle_timeout)

    def respond_json(
        self, status: int, obj: object, keep_alive: bool, extra: list[tuple[str, str]] | None = None
    ) -> None:
        self.respond(status, json.dumps(obj).encode(), "application/json", keep_alive, extra)

    def _respond_error(self, exc: BaseException, keep_alive: bool, status: int | None = None) -> None:
        if isinstance(exc, GenerationRefused):  # the generator's own answer (an upstream's), as it is
            self.respond(exc.status, exc.body, exc.content_type, keep_alive and exc.status < 500)
            return
        if status is None:
            status = status_of(exc)
        self.server.metrics.bad_requests_total += 1
        extra = [("Retry-After", "1")] if status == 503 else None
        if status >= 500 or status in (408, 413, 414, 431):
            keep_alive = False
        self.respond_json(status, error_body(exc, status), keep_alive, extra)

    # -- streaming -----------------------------------------------------------------------------------

    def start_stream(self, plan: StreamPlan, chunked: bool = True, keep_alive: bool = False) -> None:
        """Turn this connection into the stream of ``plan`` after its seq ``after``: replay, then live.

        The connection reads through a :class:`~tokenwire.hub.Cursor`: frames rendered by the core as SSE (one
        ``Storage.poll`` per flush), or by ``plan.render`` for other formats (the OpenAI chunks).
        ``plan.retry=False`` leaves out the ``retry:`` block (the OpenAI SDK's SSE reader takes a field-only block
        for an event with empty data).

        The body is chunked (``chunked=False`` for an HTTP/1.0 client: then only the close ends it): every write
        is one chunk, and only a normal end writes the last chunk, so a client sees any cut as an error. A
        chunked response does not say ``Connection: close`` (Node's fetch takes a close for the end of such a
        response, cut or not): with ``keep_alive`` the connection takes the next request after the stream's end.
        """
        transport = self.transport
        self._held = False
        if transport is None or self._closing:
            return
        stream = plan.stream
        self.stream = stream
        self._cursor = cursor = stream.cursor(plan.after, "sse", plan.render)
        cursor.on_read = self._meter.observe
        self._read = cursor.poll
        self._trailer = plan.trailer
        self._chunked = chunked
        self._keep_alive = chunked and keep_alive and not self.server.draining
        headers = [
            *SSE_HEADERS,
            ("Connection", "keep-alive" if self._keep_alive else "close"),
            *plan.head,
            *self._cors,
        ]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        retry_block = _core.sse_retry(self.server.config.retry_ms) if plan.retry else b""
        transport.write(render_head(200, headers) + self._body(retry_block + plan.intro))
        self._meter.last_write = self.server.loop.time()
        self.server.streaming.add(self)
        stream.attach(self._on_frames)
        try:
            self.flush()
        except Exception as exc:  # as the flusher does: this connection only, never a 500 inside the body
            log.exception("first flush of stream %s failed; closing that connection only", stream.id)
            self.flush_failed(exc)

    def _on_frames(self) -> None:
        """The stream's listener: new frames or its end. Queue one flush for this loop iteration."""
        if not self._dirty:
            self._dirty = True
            self.server.flusher.add(self)

    def flush(self) -> None:
        """Write everything new since ``position`` in one ``transport.write``; end the response at the end."""
        self._dirty = False
        transport = self.transport
        if self._paused or self._closing or transport is None or self.stream is None:
            return
        try:
            data, _, ended = self._read()  # the cursor's poll; its hook (the meter) accounts the frames it took
        except ResumeExpired:
            # The client read so slowly that the ring moved past it: close; its resume gets 410.
            self.server.metrics.backpressure_closes_total += 1
            self._abort()
            return
        except StreamNotFound:
            self._abort()
            return
        if ended:  # every frame up to the final one goes out now, with the end of the body: one write
            self._finish_stream(data)
        elif data:
            transport.write(chunk(data) if self._chunked else data)  # self._body(data), inlined: once per token

    @property
    def position(self) -> int:
        """Seq of the last frame this connection has taken from its stream (0 before a stream)."""
        return 0 if self._cursor is None else self._cursor.position

    def flush_failed(self, exc: Exception) -> None:
        """``flush`` raised (the flusher logged it): close this connection only; its client resumes."""
        self._abort()

    def write_heartbeat(self, now: float) -> None:
        if self.transport is not None and not self._paused and not self._closing:
            self.transport.write(self._body(b":\n"))
            self._meter.last_write = now
            self.server.metrics.heartbeats_total += 1

    def _body(self, data: bytes) -> bytes:
        """``data`` framed for the body of this stream's response: one chunk (none for no data)."""
        return chunk(data) if self._chunked else data

    def _finish_stream(self, data: bytes = b"") -> None:
        """The normal end: ``data``, the trailer and the last chunk in one write; then the next request
        (keep-alive) or the close."""
        transport = self.transport
        self._closing = True
        if transport is not None:
            end = data + self._trailer
            transport.write(chunk(end) + LAST_CHUNK if self._chunked else end)
            if self._keep_alive and not self.server.draining:
                self._next_request()
            else:
                transport.close()

    def _next_request(self) -> None:
        """The stream's response is complete and the client keeps the connection: it takes requests again."""
        if self.stream is not None:
            self._release_stream(self.stream)
        self.stream = None
        self._cursor = None
        self._read = _nothing_to_read
        self._trailer = b""
        self._chunked = False
        self._closing = False
        self._cors = []
        self._idle = True  # the next request's first byte starts its header timer
        self._arm_timer(self.server.config.idle_timeout)

    def _release_stream(self, stream: TokenStream) -> None:
        """This connection no longer reads ``stream``: it neither listens nor holds its producer back."""
        stream.detach(self._on_frames)
        if self._cursor is not None:
            stream.reader_resumed(self._cursor)
        self.server.streaming.discard(self)

    def _abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def close_for_shutdown(self) -> None:
        """A streaming response gets the hint to come back soon (it resumes with its Last-Event-ID), then the
        connection closes. Any other connection (idle keep-alive, a request not complete) is closed as it
        is: a byte outside a response would be an unsolicited response to its client."""
        if self.transport is not None and not self._closing:
            if self._held:  # a request still waiting for its answer (a non-streaming chat completion) gets one
                self._respond_error(HttpError(503, "server shutting down before the answer was complete"), False)
                return
            self._closing = True
            if self.stream is not None:  # an idle kept-alive connection gets no bytes outside a response
                self.transport.write(self._body(SHUTDOWN_HINT))  # a chunk, not the end: the body stays incomplete
            self.transport.close()


def _nothing_to_read() -> tuple[bytes, int, bool]:
    raise RuntimeError("this connection has no stream to read")  # flush() checks for a stream first


class SseServer(ServerBase):
    """``tokenwire serve``'s SSE side: one listening socket, one Hub, one flusher."""

    def __init__(self, hub: Hub | None = None, options: ServerOptions | ServerConfig | None = None) -> None:
        from tokenwire.server.routes import Router

        super().__init__(hub, options, ServerMetrics("sse"))
        self.connections: set[SseConnection] = set()
        self.streaming: set[SseConnection] = set()
        #: The WebTransport server beside this one (``tokenwire serve`` sets it): its URL and certificate hash are
        #: served at ``/v1/webtransport/certificate``. No ``Alt-Svc``: HTTP/3 serves only the WebTransport CONNECT.
        self.webtransport: Any = None
        self.router = Router(self)
        self._listeners: list[Listener] = []
        self.metrics.gauges["connections"] = lambda: len(self.connections)
        self.metrics.gauges["stream_connections"] = lambda: len(self.streaming)

    @property
    def port(self) -> int:
        sockets = self._listeners[0].sockets if self._listeners else []
        if not sockets:
            raise RuntimeError("server not started")
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = self._start_common()
        # Our own accept path (server/accept.py): at the descriptor limit new connections get a 503.
        refusal = render_response(
            503,
            json.dumps(error_body(HttpError(503, "server is out of file descriptors"), 503)).encode(),
            "application/json",
            keep_alive=False,
            extra=[("Retry-After", "1")],
        )

        def refused() -> None:
            self.metrics.fd_limit_refusals_total += 1

        cfg = self.config
        for sock in await listening_sockets(loop, cfg.host, cfg.port, reuse_port=cfg.reuse_port):
            listener = Listener(loop, sock, lambda: SseConnection(self), refusal, refused)
            listener.start()
            self._listeners.append(listener)
        self._schedule_tick()
        log.info("SSE server listening on %s:%d (epoch %s)", self.config.host, self.port, self.hub.epoch)

    def _schedule_tick(self) -> None:
        self._tick = self.loop.call_later(1.0, self._on_tick)

    def _on_tick(self) -> None:
        """Once a second: heartbeats on quiet streams, close stalled readers."""
        now = self.loop.time()
        cfg = self.config
        for conn in list(self.streaming):
            if conn._paused:
                if now - conn._paused_at >= cfg.stall_timeout:
                    self.metrics.backpressure_closes_total += 1
                    conn._abort()
            elif now - conn._meter.last_write >= cfg.heartbeat_interval:
                conn.write_heartbeat(now)
        self._schedule_tick()

    async def serve_forever(self) -> None:
        if not self._listeners:
            raise RuntimeError("server not started")
        await asyncio.gather(*(listener.serve_forever() for listener in self._listeners))

    def _draining_work(self) -> bool:
        """Open stream responses, or requests whose answer is still being made (non-streaming chat)."""
        return bool(self.streaming) or any(c._held for c in self.connections)

    async def shutdown(self, drain_timeout: float | None = None) -> None:
        """Let open streams finish for up to ``drain_timeout`` while new connections and requests get 503 with
        ``Retry-After``; then stop listening, close streaming connections with a reconnect hint and the others
        as they are; stop generations; close the hub."""
        drain = self.config.drain_timeout if drain_timeout is None else drain_timeout
        self.draining = True
        deadline = self.loop.time() + drain
        while self._draining_work() and self.loop.time() < deadline:  # noqa: ASYNC110 - a deadline, polled
            await asyncio.sleep(0.05)
        for listener in self._listeners:
            listener.close()
        for conn in list(self.connections):
            conn.close_for_shutdown()
        if self._tick is not None:
            self._tick.cancel()
        await self.hub.aclose()
        for listener in self._listeners:
            await listener.wait_closed()
        log.info("SSE server stopped")
