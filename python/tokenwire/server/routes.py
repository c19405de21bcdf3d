"""Endpoints of the SSE server (docs/protocol.md §7). No I/O here beyond what the connection offers.

What each endpoint decides lives in :mod:`tokenwire.server.endpoints`, shared with the ASGI app; this
module feeds it parsed requests and hands its answers to the connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tokenwire.errors import TokenwireError
from tokenwire.hub import TokenStream
from tokenwire.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tokenwire.protocol.http1 import Request
from tokenwire.server.endpoints import (
    ChatMeta,
    Endpoints,
    StreamPlan,
    StreamToFind,
    collect_completion,
    last_event_id_of,
    match_route,
    parse_json_body,
    plain_answer,
    stream_to_find,
)

if TYPE_CHECKING:
    from tokenwire.server.sse import SseConnection, SseServer

__all__ = ["ChatMeta", "Router"]

log = logging.getLogger("tokenwire.server")


class Router(Endpoints):
    def __init__(self, server: SseServer) -> None:
        super().__init__(server)
        self.server = server

    def handle(self, conn: SseConnection, req: Request) -> None:
        route, stream_id = match_route(req.method, req.path)
        plain = plain_answer(route, req.method, req.headers, self.server.config)
        if plain is not None:  # a preflight, or a browser file
            conn.respond(plain.status, plain.body, plain.content_type, req.keep_alive, plain.headers)
            return
        find = stream_to_find(route, stream_id, req.headers, req.query)
        if find.stream_id and self.server.hub.needs_restore(find.stream_id, find.after):
            # Another node's stream, maybe: copy it from the shared storage, then answer as for our own.
            conn.hold()
            self.server.spawn(self._restore_then_handle(conn, req, find))
        elif route == "attach":
            self._serve(conn, req, self.attach(stream_id, last_event_id_of(req.headers, req.query), req.query))
        elif route == "cancel":
            self.cancel(stream_id)
            conn.respond(204, b"", "application/json", req.keep_alive)
        elif route in ("create", "chat"):
            # A start may wait on its generator (a source's open(): an upstream's answer): answered later.
            body = parse_json_body(req.headers.get("content-type"), req.body)
            conn.hold()
            self.server.spawn(self._start(conn, req, route, body))
        elif route == "health":
            conn.respond_json(200, self.health(), req.keep_alive)
        elif route == "webtransport":
            conn.respond_json(200, self.webtransport(), req.keep_alive)
        else:  # metrics
            conn.respond(200, self.server.render_metrics(), METRICS_CONTENT_TYPE, req.keep_alive)

    async def _start(self, conn: SseConnection, req: Request, route: str, body: dict[str, Any]) -> None:
        try:
            if route == "create":
                self._serve(conn, req, await self.create(body, "", req.headers))
                return
            chat = await self.chat(body, req.headers)
            if chat.streaming:
                self._serve(conn, req, self.chat_plan(chat))
            else:
                await self._complete_openai(conn, req, chat.stream, chat.meta)
        except TokenwireError as exc:
            conn.answer_error(exc, req.keep_alive)
        except Exception as exc:
            log.exception("request %s %s failed", req.method, req.path)
            conn.answer_error(exc, False)

    async def _restore_then_handle(self, conn: SseConnection, req: Request, find: StreamToFind) -> None:
        try:
            await self.server.hub.find(*find)
        except TokenwireError as exc:  # 404 on no node, 503 storage unreachable
            conn.answer_error(exc, req.keep_alive)
            return
        conn.dispatch(req)

    def _serve(self, conn: SseConnection, req: Request, plan: StreamPlan | None) -> None:
        """Stream ``plan``; ``None``: 204, the stream has ended and the client holds its final frame."""
        if plan is None:
            conn.respond(204, b"", "text/event-stream", req.keep_alive)
        else:
            conn.start_stream(plan, req.http_version != "1.0", req.keep_alive)  # chunked bodies are HTTP/1.1

    async def _complete_openai(self, conn: SseConnection, req: Request, stream: TokenStream, meta: ChatMeta) -> None:
        """Non-streaming chat completion: collect the whole answer, then one JSON response."""
        status, body = await collect_completion(self.server.hub, stream, meta)
        conn.respond_json(status, body, req.keep_alive and status < 500)
