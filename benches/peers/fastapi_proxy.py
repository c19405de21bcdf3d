"""A plain OpenAI Chat Completions proxy in FastAPI, written as users write one: the request body forwarded with
httpx's ``AsyncClient`` (one client, a bounded pool), the upstream's bytes streamed back through a
``StreamingResponse``; under uvicorn with uvloop and httptools. No parsing, no resume: the peer of
``tokenwire serve --upstream`` in ``benches/proxy_overhead.py``.

    python -m benches.peers.fastapi_proxy --upstream http://127.0.0.1:9000/v1 --port 0 --max-connections 1000
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from benches.peers.uvicorn_serve import serve


def proxy_app(upstream: str, max_connections: int) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        timeout = httpx.Timeout(connect=10.0, read=60.0, write=10.0, pool=60.0)
        async with httpx.AsyncClient(base_url=upstream, limits=limits, timeout=timeout) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        headers = {"content-type": "application/json"}
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        upstream_request = client.build_request(
            "POST", "/chat/completions", content=await request.body(), headers=headers
        )
        response = await client.send(upstream_request, stream=True)
        content_type = response.headers.get("content-type", "application/json")
        if response.status_code != 200 or not content_type.startswith("text/event-stream"):
            body = await response.aread()
            await response.aclose()
            return Response(body, status_code=response.status_code, media_type=content_type)
        return StreamingResponse(
            response.aiter_bytes(), media_type="text/event-stream", background=BackgroundTask(response.aclose)
        )

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--upstream", required=True, help="the upstream's base URL, as an OpenAI SDK takes it")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (the ready line names it)")
    p.add_argument("--max-connections", type=int, default=100, help="httpx pool bound (httpx's default: 100)")
    args = p.parse_args()
    serve(proxy_app(args.upstream, args.max_connections), args.host, args.port)


if __name__ == "__main__":
    main()
