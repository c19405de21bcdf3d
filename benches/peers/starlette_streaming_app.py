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

from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.responses import StreamingResponse

from benches.peers.common import done_data, encode_event, event_id, parse_args
from benches.peers.uvicorn_serve import Tokens, serve, starlette_app

__all__ = ["create_app", "encoded_events", "main"]

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def encoded_events(tokens: Tokens, max_tokens: int) -> AsyncIterator[bytes]:
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


def _respond(tokens: Tokens, max_tokens: int) -> StreamingResponse:
    return StreamingResponse(encoded_events(tokens, max_tokens), media_type="text/event-stream", headers=_HEADERS)


def create_app(steps_per_s: float = 20.0, producer: str = "engine") -> Starlette:
    """``producer="per-stream"``: no shared engine; each request runs its own generation."""
    return starlette_app(_respond, steps_per_s, producer)


def main() -> int:
    args = parse_args("python -m benches.peers.starlette_streaming_app", "Starlette StreamingResponse on uvicorn.")
    serve(create_app(args.steps_per_s, args.producer), args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
