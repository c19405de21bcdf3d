"""Peer 3: a plain Starlette ``StreamingResponse`` of hand-encoded SSE events, served by uvicorn.

What a FastAPI/Starlette user writes without an SSE library: the route returns
``StreamingResponse(events(), media_type="text/event-stream")`` over an async generator that yields one
encoded event per token (the aiohttp peer's bytes: ``\\n`` line ends), then a ``done`` event. Starlette
sends each yielded chunk as one ``http.response.body`` message and, under uvicorn (ASGI spec 2.3), watches
for the disconnect in a second task of its own.

Two producer shapes (``--producer``):

- ``engine``: the shared :class:`~benches.peers.engine.QueueEngine` steps every stream together; the
  generator drains the request's queue.
- ``per-stream``: the generator iterates the request's own generation
  (:func:`~benches.peers.common.per_stream_generation`: ``FakeModel.generate`` at the request's
  ``tokens_per_s``, on its own absolute schedule), as ``async for token in model.generate(...)`` servers do.

    python -m benches.peers.starlette_streaming_app --port 8103 --steps-per-s 20 --producer per-stream
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from benches.peers.common import done_data, encode_event, event_id, parse_args, parse_request, per_stream_generation
from benches.peers.engine import QueueEngine
from benches.peers.uvicorn_serve import serve

__all__ = ["create_app", "encoded_events", "main"]

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def encoded_events(tokens: AsyncIterator[str | list[str]], max_tokens: int) -> AsyncIterator[bytes]:
    """One SSE event per token (a list of tokens, from an unthrottled generation, goes out as one chunk)."""
    seq = 0
    async for item in tokens:
        if isinstance(item, str):
            seq += 1
            yield encode_event(event_id(seq), "token", item)
        else:
            yield b"".join(encode_event(event_id(seq + i), "token", t) for i, t in enumerate(item, 1))
            seq += len(item)
    yield encode_event(event_id(seq + 1), "done", done_data(seq, max_tokens))


async def _drain(engine: QueueEngine, max_tokens: int, stamp: bool, prompt: str) -> AsyncIterator[str]:
    queue = engine.submit(max_tokens, stamp=stamp, prompt=prompt)
    try:
        while (token := await queue.get()) is not None:
            yield token
    finally:
        engine.abort(queue)  # the client went away mid-stream: stop generating for it


def create_app(steps_per_s: float = 20.0, producer: str = "engine") -> Starlette:
    """``producer="per-stream"``: no shared engine; each request runs its own generation."""
    engine = QueueEngine(steps_per_s) if producer == "engine" else None

    async def streams(request: Request) -> Response:
        try:
            body = await request.json()
            prompt, max_tokens, stamp = parse_request(body)
        except ValueError as exc:  # BadRequest, or the body is not JSON
            return JSONResponse({"error": {"type": "BadRequest", "message": str(exc)}}, status_code=400)
        tokens: AsyncIterator[str | list[str]]
        if engine is not None:
            tokens = _drain(engine, max_tokens, stamp, prompt)
        else:
            tokens = per_stream_generation(body, prompt, max_tokens, stamp)
        return StreamingResponse(encoded_events(tokens, max_tokens), media_type="text/event-stream", headers=_HEADERS)

    async def healthz(request: Request) -> Response:
        if engine is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "ok", "active": engine.active, "steps": engine.steps})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if engine is not None:
            await engine.aclose()

    return Starlette(
        routes=[Route("/v1/streams", streams, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])],
        lifespan=lifespan,
    )


def main() -> int:
    args = parse_args("python -m benches.peers.starlette_streaming_app", "Starlette StreamingResponse on uvicorn.")
    serve(create_app(args.steps_per_s, args.producer), args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
