"""Peer 1: sse-starlette's ``EventSourceResponse`` on Starlette, served by uvicorn (uvloop + httptools).

Written the way a FastAPI/Starlette app in front of an inference engine usually is: the handler submits
the request to the shared engine loop and returns an ``EventSourceResponse`` over an async generator that
drains the request's queue, one event per token, then a ``done`` event. sse-starlette's defaults are kept
(``\\r\\n`` line ends, a ping comment every 15 s, a task watching for disconnects and one for shutdown).

    python -m benches.peers.sse_starlette_app --host 127.0.0.1 --port 8101 --steps-per-s 20
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette

from benches.peers.common import done_data, event_id, parse_args
from benches.peers.uvicorn_serve import Tokens, serve, starlette_app

__all__ = ["create_app", "main"]


async def _events(tokens: Tokens, max_tokens: int) -> AsyncIterator[dict[str, str]]:
    """One event per token as it comes, then ``done``."""
    seq = 0
    async for item in tokens:
        for token in (item,) if isinstance(item, str) else item:
            seq += 1
            yield {"id": event_id(seq), "event": "token", "data": token}
    yield {"id": event_id(seq + 1), "event": "done", "data": done_data(seq, max_tokens)}


def _respond(tokens: Tokens, max_tokens: int) -> EventSourceResponse:
    return EventSourceResponse(_events(tokens, max_tokens))


def create_app(steps_per_s: float = 20.0, producer: str = "engine") -> Starlette:
    """``producer="per-stream"``: no shared engine; each request runs its own generation."""
    return starlette_app(_respond, steps_per_s, producer)


def main() -> int:
    args = parse_args("python -m benches.peers.sse_starlette_app", "sse-starlette on uvicorn (uvloop + httptools).")
    serve(create_app(args.steps_per_s, args.producer), args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
