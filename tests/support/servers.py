"""Real servers for tests: started on 127.0.0.1 with a free port, stopped at the end."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

from tokenwire import Engine, FakeEngine, FakeModel, Generator, Hub
from tokenwire.auth import Authenticator
from tokenwire.client.webtransport import WebTransportClient, WebTransportStreamReader
from tokenwire.protocol.webtransport import WT_PATH
from tokenwire.server import ServerConfig, ServerOptions, SseServer, webtransport_server
from tokenwire.server.certs import Certificate
from tokenwire.server.config import WebTransportLimits, WtEngine
from tokenwire.server.native import NativeWebTransportServer
from tokenwire.server.webtransport import WebTransportServer

#: A WebTransport server of either engine.
AnyWtServer = WebTransportServer | NativeWebTransportServer


def options(
    config: ServerConfig, model: Generator | Engine | None, engine_steps_per_s: float | None, **more: Any
) -> ServerOptions:
    """The servers' options for a test: ``model`` (a FakeModel with seed 5 by default), stepped by a FakeEngine of
    its own when ``engine_steps_per_s`` is set (one token per stream a step)."""
    generator = model or FakeModel(seed=5)
    if engine_steps_per_s:
        assert isinstance(generator, FakeModel)
        generator = FakeEngine(generator, steps_per_s=engine_steps_per_s)
    return ServerOptions(config, generator, **more)


@contextlib.asynccontextmanager
async def sse_server(
    hub: Hub | None = None,
    *,
    model: Generator | Engine | None = None,
    engine_steps_per_s: float | None = None,
    auth: Authenticator | None = None,
    **config: Any,
) -> AsyncIterator[SseServer]:
    cfg = ServerConfig(host="127.0.0.1", port=0, **config)
    server = SseServer(hub, options(cfg, model, engine_steps_per_s, auth=auth))
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(drain_timeout=0)


class _WtEngine:
    """The engine :func:`wt_server` (and what else starts a WebTransport server for a test) uses unless told:
    the ``wt_engine`` fixture (tests/conftest.py) sets it for each test it parametrizes."""

    current: WtEngine = "native"


wt_engine = _WtEngine()


@contextlib.asynccontextmanager
async def wt_server(
    hub: Hub | None = None,
    *,
    model: Generator | Engine | None = None,
    limits: WebTransportLimits | None = None,
    engine_steps_per_s: float | None = None,
    certificate: Certificate | None = None,
    auth: Authenticator | None = None,
    **config: Any,
) -> AsyncIterator[AnyWtServer]:
    """A WebTransport server on 127.0.0.1, UDP, a free port, with ``certificate`` or a development certificate
    made here (``engine_steps_per_s``: generations run in the batching FakeEngine, one token per stream a step)."""
    config.setdefault("wt_engine", wt_engine.current)
    cfg = ServerConfig(host="127.0.0.1", port=0, webtransport=limits or WebTransportLimits(), **config)
    server = webtransport_server(hub, options(cfg, model, engine_steps_per_s, auth=auth), certificate=certificate)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(drain_timeout=0)


@contextlib.asynccontextmanager
async def serve_pair(
    hub: Hub, model: Generator | Engine, *, limits: WebTransportLimits | None = None, **config: Any
) -> AsyncIterator[tuple[SseServer, AnyWtServer]]:
    """``tokenwire serve --webtransport`` in miniature: one hub, SSE (TCP) and WebTransport (UDP) on ports of their
    own. The pages a test opens come from the SSE server's origin, another origin than the WebTransport server's
    (``tokenwire serve`` uses one port number for both), so the WebTransport server allows that origin as
    ``--cors-origin`` would."""
    async with sse_server(hub, model=model, **config) as sse:
        origin = f"http://127.0.0.1:{sse.port}"
        async with wt_server(hub, model=model, limits=limits, allow_origins=(origin,)) as wt:
            sse.webtransport = wt  # serves the certificate hash at /v1/webtransport/certificate
            yield sse, wt


def wt_client(server: AnyWtServer, *, via: tuple[str, int] | None = None, **options: Any) -> WebTransportClient:
    """A client that trusts ``server``'s certificate by its SHA-256, as a browser page would; ``via``: send to
    this address instead (a :class:`~tests.support.udp_relay.UdpRelay` in front of the server)."""
    options.setdefault("server_certificate_hashes", [server.certificate.sha256])
    options.setdefault("backoff_initial", 0.01)
    url = server.url if via is None else f"https://{via[0]}:{via[1]}{WT_PATH}"
    return WebTransportClient(url, **options)


async def generates(client: WebTransportClient, model: FakeModel, prompt: str, max_tokens: int = 20) -> None:
    """``client`` starts ``prompt`` and reads the whole answer: exactly the model's tokens."""
    reader = await client.generate(prompt, max_tokens=max_tokens, tokens_per_s=4000)
    assert await reader.text() == "".join(model.tokens(prompt, max_tokens))


async def read_n(reader: WebTransportStreamReader, n: int) -> list[str]:
    """The next ``n`` tokens of ``reader`` (fewer if the stream ends first)."""
    got: list[str] = []
    async for token in reader:
        got.append(token)
        if len(got) >= n:
            break
    return got


@contextlib.contextmanager
def serve_cli(*args: str) -> Iterator[tuple[str, int]]:
    """``tokenwire serve --port 0 ARGS`` in a subprocess, SSE and WebTransport on one port number:
    ``(its SSE base URL, its pid)``; blocking, for tests that run the CLI's other commands against it."""
    server = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "tokenwire", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    try:
        line = server.stdout.readline()
        assert "serving SSE on http://127.0.0.1:" in line, line
        yield line.split(" on ")[1].split(" ")[0], server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()


@contextlib.asynccontextmanager
async def serve_process(*args: str, cwd: str | None = None) -> AsyncIterator[str]:
    """``tokenwire serve --port 0 --no-webtransport ARGS`` in a subprocess (in ``cwd``), as a user runs it: its base
    URL (``http://127.0.0.1:PORT``); it must exit cleanly on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenwire", "serve", "--port", "0", "--no-webtransport", *args,
        stdout=asyncio.subprocess.PIPE, cwd=cwd,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        port = re.search(r"http://127\.0\.0\.1:(\d+) ", line)
        assert port, line
        yield f"http://127.0.0.1:{port[1]}"
    finally:
        proc.terminate()
        await proc.stdout.read()  # to its end: uvloop will not close a loop with a pipe still being read
        assert await proc.wait() == 0
