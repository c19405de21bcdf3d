"""How the uvicorn peers are served: uvloop + httptools, no access log, the readiness line once listening; and
the Starlette app both Starlette peers share (they differ only in the response they make of a request's tokens).
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from benches.peers.common import parse_request, per_stream_generation, ready
from benches.peers.engine import QueueEngine

__all__ = ["Tokens", "serve", "starlette_app"]

#: A request's tokens: one per item from the engine; one, or a list when unthrottled, from a per-stream generation.
Tokens = AsyncIterator[str | list[str]]


class _Server(uvicorn.Server):
    """uvicorn's server, printing the readiness line once it listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            port = self.servers[0].sockets[0].getsockname()[1]
            ready(self.config.host, port)


def _after_shutdown(signum: int, frame: Any) -> None:
    """uvicorn re-raises the signal that stopped it once it has shut down; by then there is nothing to do."""


def serve(app: Any, host: str, port: int) -> None:
    """Run ``app`` under uvicorn (uvloop, httptools, lifespan on) until SIGTERM/SIGINT."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _after_shutdown)
    _Server(config).run()


def starlette_app(
    respond: Callable[[Tokens, int], Response], steps_per_s: float = 20.0, producer: str = "engine"
) -> Starlette:
    """``POST /v1/streams`` answered with ``respond(tokens, max_tokens)``, and ``GET /healthz``.

    ``producer="engine"``: the tokens come from the shared :class:`~benches.peers.engine.QueueEngine`;
    ``"per-stream"``: each request iterates its own generation (:func:`~benches.peers.common.per_stream_generation`).
    """
    engine = QueueEngine(steps_per_s) if producer == "engine" else None

    async def streams(request: Request) -> Response:
        try:
            body = await request.json()
            prompt, max_tokens, stamp = parse_request(body)
        except ValueError as exc:  # BadRequest, or the body is not JSON
            return JSONResponse({"error": {"type": "BadRequest", "message": str(exc)}}, status_code=400)
        tokens: Tokens
        if engine is not None:
            tokens = engine.drain(max_tokens, stamp=stamp, prompt=prompt)
        else:
            tokens = per_stream_generation(body, prompt, max_tokens, stamp)
        return respond(tokens, max_tokens)

    async def healthz(request: Request) -> Response:
        if engine is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "ok", "active": engine.active, "steps": engine.steps})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if engine is not None:
            await engine.aclose()

    app = Starlette(
        routes=[Route("/v1/streams", streams, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])],
        lifespan=lifespan,
    )
    app.state.engine = engine
    return app
