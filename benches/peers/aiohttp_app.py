"""Peer 2: a plain aiohttp ``web.StreamResponse`` on uvloop, SSE encoded by hand.

The handler submits the request to the shared engine loop, prepares a ``text/event-stream`` response and
``await resp.write(...)``s one hand-encoded event per token as it drains the request's queue, then a
``done`` event. Same fields as the sse-starlette peer, with ``\\n`` line ends (as tokenwire writes them).

    python -m benches.peers.aiohttp_app --host 127.0.0.1 --port 8102 --steps-per-s 20
"""

from __future__ import annotations

import asyncio
import signal

import uvloop
from aiohttp import web

from benches.peers.common import (
    done_data,
    encode_event,
    event_id,
    parse_args,
    parse_request,
    per_stream_generation,
    ready,
)
from benches.peers.engine import QueueEngine

__all__ = ["create_app", "encode_event", "main"]

_ENGINE = web.AppKey("engine", QueueEngine | None)


async def streams(request: web.Request) -> web.StreamResponse:
    engine = request.app[_ENGINE]
    try:
        body = await request.json()
        prompt, max_tokens, stamp = parse_request(body)
    except ValueError as exc:  # BadRequest, or the body is not JSON
        return web.json_response({"error": {"type": "BadRequest", "message": str(exc)}}, status=400)
    resp = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    resp.content_type = "text/event-stream"
    resp.charset = "utf-8"
    if engine is None:  # one producer per request: iterate the generation, write each token as it comes
        completion = per_stream_generation(body, prompt, max_tokens, stamp)
        try:
            await resp.prepare(request)
            seq = 0
            async for item in completion:
                for token in (item,) if type(item) is str else item:
                    seq += 1
                    await resp.write(encode_event(event_id(seq), "token", token))
            await resp.write(encode_event(event_id(seq + 1), "done", done_data(seq, max_tokens)))
            await resp.write_eof()
        except ConnectionResetError:  # the client went away: the generation ends with the handler
            pass
        return resp
    queue = engine.submit(max_tokens, stamp=stamp, prompt=prompt)
    try:
        await resp.prepare(request)
        seq = 0
        while (token := await queue.get()) is not None:
            seq += 1
            await resp.write(encode_event(event_id(seq), "token", token))
        await resp.write(encode_event(event_id(seq + 1), "done", done_data(seq, max_tokens)))
        await resp.write_eof()
    except ConnectionResetError:  # the client went away (aiohttp's ClientConnectionResetError)
        pass
    finally:
        engine.abort(queue)  # the client went away mid-stream: stop generating for it
    return resp


async def healthz(request: web.Request) -> web.Response:
    engine = request.app[_ENGINE]
    if engine is None:
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "ok", "active": engine.active, "steps": engine.steps})


def create_app(steps_per_s: float = 20.0, producer: str = "engine") -> web.Application:
    """``producer="per-stream"``: no shared engine; each request runs its own generation."""
    engine = QueueEngine(steps_per_s) if producer == "engine" else None
    app = web.Application()
    app[_ENGINE] = engine
    app.router.add_post("/v1/streams", streams)
    app.router.add_get("/healthz", healthz)

    async def close_engine(app: web.Application) -> None:
        if engine is not None:
            await engine.aclose()

    app.on_shutdown.append(close_engine)  # ends open streams with done {"reason":"shutdown"}
    return app


async def _serve(host: str, port: int, steps_per_s: float, producer: str) -> None:
    runner = web.AppRunner(
        create_app(steps_per_s, producer), access_log=None, handle_signals=False, shutdown_timeout=2.0
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # backlog as uvicorn's default (aiohttp's is 128), so a burst of connects is not dropped
        site = web.TCPSite(runner, host, port, backlog=2048)
        await site.start()
        ready(host, runner.addresses[0][1])  # the bound port, also for --port 0
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    args = parse_args("python -m benches.peers.aiohttp_app", "plain aiohttp StreamResponse on uvloop.")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(args.host, args.port, args.steps_per_s, args.producer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
