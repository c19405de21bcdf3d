"""The ASGI path's own work per token, in process: ``TokenwireASGI``'s streamer vs a Starlette ``StreamingResponse``.

No server and no socket: each response's ``send`` frames the body as uvicorn's chunked encoding does and
drops the bytes, so what is measured is the app's work between a token being produced and the ``send`` call
(plus that framing), which is what differs between the two under the same uvicorn. Four shapes:

- ``tokenwire-engine``: one loop sends a token to every stream per step (``TokenStream.send``, as
  ``FakeEngine``); each stream's ``_Streamer`` is woken, polls the ring (SSE rendered in Rust), sends.
- ``starlette-engine``: the same loop puts the token into each request's ``asyncio.Queue`` (the peers'
  ``QueueEngine``); ``StreamingResponse`` drains an async generator that encodes one event per token.
- ``tokenwire-per-stream``: one producer task per stream (``Hub.start``), released once per step as a
  per-request timer would release it, then as ``tokenwire-engine``.
- ``starlette-per-stream``: the generator itself awaits the same release (``async for token in
  model.generate(...)`` inside the response).

``generation-per-stream`` and ``hub-per-stream`` measure the parts of the per-stream shape (the generation
alone; the generation and ``Hub.start``'s producer task, no response), so that the responses' own work is
the difference.

Tokens are stamped as the load generator asks. The result is CPU time per token (``process_time``), the
minimum over ``--repeats``; on a shared machine the instruction count is steadier: run one shape twice
under valgrind with different ``--steps`` and divide the difference by streams x steps::

    .venv/bin/python -m benches.asgi_work
    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python -m benches.asgi_work \\
        --shapes tokenwire-per-stream --streams 200 --steps 60 --repeats 1   # and --steps 10
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvloop
from starlette.responses import StreamingResponse

from benches.peers.starlette_streaming_app import encoded_events
from tokenwire import ServerOptions
from tokenwire.asgi import TokenwireASGI, _sse_headers, _Streamer
from tokenwire.fake_model import FakeModel, stamp
from tokenwire.hub import Hub
from tokenwire.server.endpoints import plan_sse

SHAPES = ("tokenwire-engine", "starlette-engine", "tokenwire-per-stream", "starlette-per-stream")
#: The per-stream shape's parts, for subtracting: the generation alone (drained by a bare task), and the
#: generation sent to a hub stream by ``Hub.start``'s producer task with no response attached.
PARTS = ("generation-per-stream", "hub-per-stream")

Send = Callable[[dict[str, Any]], Awaitable[None]]


def chunked_send() -> Send:
    """An ASGI ``send`` that frames each body as uvicorn's chunked encoding does, then drops the bytes."""

    async def send(message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body":
            return
        body = message.get("body", b"")
        content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
        if not message.get("more_body", False):
            content.append(b"0\r\n\r\n")
        b"".join(content)

    return send


class Releases:
    """Per-stream producers: each awaits its own future, released once per step (its timer firing)."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []

    async def generate(self, tokens: list[str]) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        for token in tokens:
            due: asyncio.Future[None] = loop.create_future()
            self.waiting.append(due)
            await due
            yield stamp(token)

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for due in waiting:
            due.set_result(None)


async def _drain(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (token := await queue.get()) is not None:
        yield token


async def _consume(source: AsyncIterator[str]) -> None:
    async for _ in source:
        pass


async def run_shape(shape: str, streams: int, steps: int) -> float:  # noqa: C901 - four shapes side by side
    """CPU seconds per token of ``shape`` (setup and teardown excluded)."""
    kind, producer = shape.split("-", 1)
    model = FakeModel(seed=0, tokens_per_s=None)
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()

    async def receive() -> dict[str, Any]:
        await never  # the client never disconnects
        return {"type": "http.disconnect"}

    releases = Releases()
    hub_streams: list[tuple[Any, list[str]]] = []
    queues: list[tuple[asyncio.Queue[str | None], list[str]]] = []
    tasks: list[asyncio.Task[Any]] = []
    app = TokenwireASGI(Hub(), ServerOptions(generator=model))
    hub = app.hub
    for i in range(streams):
        tokens = model.tokens(f"prompt {i}", steps)
        if kind == "generation":
            tasks.append(loop.create_task(_consume(releases.generate(tokens))))
        elif kind == "hub":
            stream = hub.start(releases.generate(tokens))
            assert stream._producer is not None  # Hub.start sets it
            tasks.append(stream._producer)
        elif kind == "tokenwire":
            if producer == "engine":
                stream = hub.create_stream()
                hub_streams.append((stream, tokens))
            else:
                stream = hub.start(releases.generate(tokens))
            plan = plan_sse(hub, stream, 0, None)
            streamer = _Streamer(hub, plan, _sse_headers(plan.head), app.config, app.metrics)
            tasks.append(loop.create_task(streamer.run(receive, chunked_send())))
        else:
            source: AsyncIterator[str]
            if producer == "engine":
                queue: asyncio.Queue[str | None] = asyncio.Queue()
                queues.append((queue, tokens))
                source = _drain(queue)
            else:
                source = releases.generate(tokens)
            response = StreamingResponse(encoded_events(source, steps), media_type="text/event-stream")
            tasks.append(loop.create_task(response.stream_response(chunked_send())))
    for _ in range(3):
        await asyncio.sleep(0)
    started = time.process_time()
    for k in range(steps):
        if producer == "per-stream":
            releases.release()
        for stream, tokens in hub_streams:
            stream.send(stamp(tokens[k]))
        for queue, tokens in queues:
            queue.put_nowait(stamp(tokens[k]))
        for _ in range(3):  # producers, then responses, then their sends
            await asyncio.sleep(0)
    elapsed = time.process_time() - started
    for stream, _ in hub_streams:
        stream.finish()
    for queue, _ in queues:
        queue.put_nowait(None)
    releases.release()
    await asyncio.gather(*tasks)
    await hub.aclose()
    return elapsed / (streams * steps)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"from {', '.join(SHAPES + PARTS)}")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50, help="tokens per stream")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    best: dict[str, float] = {}
    for shape in args.shapes.split(","):
        runs = [uvloop.run(run_shape(shape, args.streams, args.steps)) for _ in range(args.repeats)]
        best[shape] = min(runs)
        print(f"{shape:22} {best[shape] * 1e6:6.2f} µs per token (min of {args.repeats})", flush=True)
    return best


if __name__ == "__main__":
    main()
