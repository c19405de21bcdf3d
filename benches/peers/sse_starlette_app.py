"""Peer 1: sse-starlette's ``EventSourceResponse`` on Starlette, served by uvicorn (uvloop + httptools).

Written the way a FastAPI/Starlette app in front of an inference engine usually is: the handler submits
the request to the shared engine loop and returns an ``EventSourceResponse`` over an async generator that
drains the request's queue, one event per token, then a ``done`` event. sse-starlette's defaults are kept
(``\\r\\n`` line ends, a ping comment every 15 s, a task watching for disconnects and one for shutdown).

    python -m benches.peers.sse_starlette_app --host 127.0.0.1 --port 8101 --steps-per-s 20
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from benches.peers.common import done_data, event_id, parse_args, parse_request, per_stream_generation
from benches.peers.engine import QueueEngine
from benches.peers.uvicorn_serve import serve
from tokenwire.fake_model import FakeCompletion

__all__ = ["create_app", "main"]


async def _events(
    engine: QueueEngine, queue: asyncio.Queue[str | None], max_tokens: int
) -> AsyncIterator[dict[str, str]]:
    seq = 0
    try:
        while (token := await queue.get()) is not None:
            seq += 1
            yield {"id": event_id(seq), "event": "token", "data": token}
        yield {"id": event_id(seq + 1), "event": "done", "data": done_data(seq, max_tokens)}
    finally:
        engine.abort(queue)  # the client went away mid-stream: stop generating for it


async def _generated_events(completion: FakeCompletion, max_tokens: int) -> AsyncIterator[dict[str, str]]:
    """One producer per request: the generation itself, one event per token as it comes."""
    seq = 0
    async for item in completion:
        for token in (item,) if type(item) is str else item:
            seq += 1
            yield {"id": event_id(seq), "event": "token", "data": token}
    yield {"id": event_id(seq + 1), "event": "done", "data": done_data(seq, max_tokens)}


def create_app(steps_per_s: float = 20.0, producer: str = "engine") -> Starlette:
    """``producer="per-stream"``: no shared engine; each request runs its own generation."""
    engine = QueueEngine(steps_per_s) if producer == "engine" else None

    async def streams(request: Request) -> Response:
        try:
            body = await request.json()
            prompt, max_tokens, stamp = parse_request(body)
        except ValueError as exc:  # BadRequest, or the body is not JSON
            return JSONResponse({"error": {"type": "BadRequest", "message": str(exc)}}, status_code=400)
        if engine is None:
            completion = per_stream_generation(body, prompt, max_tokens, stamp)
            return EventSourceResponse(_generated_events(completion, max_tokens))
        queue = engine.submit(max_tokens, stamp=stamp, prompt=prompt)
        return EventSourceResponse(_events(engine, queue, max_tokens))

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


def main() -> int:
    args = parse_args("python -m benches.peers.sse_starlette_app", "sse-starlette on uvicorn (uvloop + httptools).")
    serve(create_app(args.steps_per_s, args.producer), args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
