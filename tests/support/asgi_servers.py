"""Real ASGI servers for tests, in the test's own loop: uvicorn and hypercorn on 127.0.0.1, a free port.

Each context manager yields the base URL (``http://127.0.0.1:PORT``), runs the app's lifespan, and shuts
the server down gracefully at the end (streams still open then are cut after a short grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

ServerFactory = Callable[[Any], contextlib.AbstractAsyncContextManager[str]]


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its signal handlers: the test runner keeps Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def _listening_socket(sndbuf: int | None) -> socket.socket:
    """A socket listening on 127.0.0.1 and a free port; connections queue until the server accepts them.

    ``sndbuf``: the kernel send buffer of every accepted connection (Linux copies it from the listener), so
    a test can fill the path to a client that does not read with little data.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.asynccontextmanager
async def uvicorn_server(app: Any, *, sndbuf: int | None = None, **options: Any) -> AsyncIterator[str]:
    config = uvicorn.Config(
        app,
        loop="uvloop",  # ignored by Server.serve(): the test's loop (asyncio or uvloop) runs it
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
        **options,
    )
    sock = _listening_socket(sndbuf)
    port = sock.getsockname()[1]
    server = _Uvicorn(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))  # uvicorn closes it at shutdown
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()  # raises what stopped it
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def hypercorn_server(app: Any, *, sndbuf: int | None = None, **options: Any) -> AsyncIterator[str]:
    sock = _listening_socket(sndbuf)
    port = sock.getsockname()[1]
    config = HypercornConfig()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the socket from here
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = None
    for name, value in options.items():
        setattr(config, name, value)
    stop = asyncio.Event()
    started = asyncio.Event()

    async def observed(scope: Any, receive: Any, send: Any) -> None:
        """The app, telling us when its lifespan startup is complete."""
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)

        async def send_and_observe(message: Any) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                started.set()

        return await app(scope, receive, send_and_observe)

    task = asyncio.create_task(hypercorn_serve(observed, config, shutdown_trigger=stop.wait))
    try:
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait([task, waiter], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # raises what stopped it
        assert started.is_set(), "hypercorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await task


SERVERS: dict[str, ServerFactory] = {"uvicorn": uvicorn_server, "hypercorn": hypercorn_server}
