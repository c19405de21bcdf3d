"""tokenwire's servers for the browser-client tests, as ``tokenwire serve --webtransport`` runs them: one hub,
SSE (TCP) and WebTransport (UDP), a model whose generations a test can hold and watch, what the server saw
of the client, and clean replays to compare the client's text with.

Each test gets servers of its own (new ports, so a new origin: nothing a page kept in ``localStorage`` or
``sessionStorage`` for an earlier test's origin is seen there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.drivers import PageDriver
from tests.support.servers import sse_server, wt_server
from tests.support.sse_spec_parser import parse
from tokenwire import FakeModel, GenerationRequest, Hub
from tokenwire.protocol.http1 import Request
from tokenwire.server import SseServer
from tokenwire.server.routes import Router
from tokenwire.server.sse import SseConnection
from tokenwire.server.webtransport import WebTransportServer
from tokenwire.storage import MemoryStorage

__all__ = ["Rig", "ScriptedModel", "Seen", "closed_udp_port", "install", "rig", "silent_udp_port", "twt", "until"]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS_JS = (ROOT / "tests" / "browser" / "client_scenarios.js").read_text()


# -- the model ---------------------------------------------------------------------------------------


class Generation:
    """One generation of :class:`ScriptedModel`: the FakeModel's tokens, paced, that can be held at a token;
    it records how far it got and whether it was stopped (the hub cancels its task on a cancel)."""

    def __init__(self, model: ScriptedModel, prompt: str, tokens: list[str], tokens_per_s: float) -> None:
        self._model = model
        self._prompt = prompt
        self._tokens = tokens
        self._interval = 1 / tokens_per_s
        self.produced = 0
        self.cancelled = False
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> str:
        i = self.produced
        if i >= len(self._tokens):
            self.finish_reason = "length"
            self.usage = {"completion_tokens": i}
            raise StopAsyncIteration
        try:
            hold = self._model.holds.get(self._prompt)
            if hold is not None and i == hold[0]:
                await hold[1].wait()
            await asyncio.sleep(self._interval)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.produced = i + 1
        return self._tokens[i]


class ScriptedModel(FakeModel):
    """The FakeModel's answers; a test may hold a prompt's generation after ``n`` tokens (:meth:`hold`) to act
    at a known point mid-answer. :attr:`generations` lists each prompt's generations: how many times the
    model ran for it, how far each got, whether it was stopped."""

    def __init__(self) -> None:
        super().__init__(seed=5)
        self.holds: dict[str, tuple[int, asyncio.Event]] = {}
        self.generations: defaultdict[str, list[Generation]] = defaultdict(list)

    def hold(self, prompt: str, after: int) -> asyncio.Event:
        """Hold ``prompt``'s generations after ``after`` tokens until the event returned is set."""
        gate = asyncio.Event()
        self.holds[prompt] = (after, gate)
        return gate

    def generate(  # type: ignore[override]
        self, prompt: str | GenerationRequest, max_tokens: int = 64, *, tokens_per_s: float | None = None, **_: Any
    ) -> Generation:
        if isinstance(prompt, GenerationRequest):  # as the servers call it
            tokens_per_s = prompt.body.get("tokens_per_s")
            prompt, max_tokens = prompt.prompt, prompt.max_tokens
        self.calls += 1
        run = Generation(self, prompt, self.tokens(prompt, max_tokens), tokens_per_s or 500.0)
        self.generations[prompt].append(run)
        return run

    def text(self, prompt: str, max_tokens: int) -> str:
        """The whole answer to ``prompt``."""
        return "".join(self.tokens(prompt, max_tokens))


# -- the servers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """A request the SSE server received."""

    method: str
    path: str
    last_event_id: str


class RecordingRouter(Router):
    """The SSE server's router, recording every request it routes: what the server saw of the client."""

    def __init__(self, server: SseServer) -> None:
        super().__init__(server)
        self.seen: list[Seen] = []

    def handle(self, conn: SseConnection, req: Request) -> None:
        self.seen.append(Seen(req.method, req.path, req.headers.get("last-event-id", "")))
        super().handle(conn, req)

    def attaches(self, stream_id: str) -> list[Seen]:
        return [s for s in self.seen if s.path == f"/v1/streams/{stream_id}/events"]


@dataclass
class Rig:
    """``tokenwire serve --webtransport`` in miniature: one hub, its SSE server (TCP) and WebTransport server
    (UDP), one model; :attr:`origin` serves the pages."""

    hub: Hub
    sse: SseServer
    wt: WebTransportServer | None
    model: ScriptedModel
    router: RecordingRouter

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.sse.port}"

    async def open_page(self, driver: PageDriver, *, webtransport: bool = True) -> dict[str, Any]:
        """``driver``'s page at this origin (a document of the server's own: a secure context, same origin for
        ``fetch``) with the scenarios installed."""
        await driver.goto(f"{self.origin}/healthz")
        return await install(driver, webtransport=webtransport)

    async def replay(self, stream_id: str) -> tuple[list[str], dict[str, Any]]:
        """A clean replay of an ended stream from seq 0, read by a client of its own (httpx, no Last-Event-ID,
        parsed by the test suite's WHATWG parser): its tokens and its final event's JSON."""
        async with httpx.AsyncClient(base_url=self.origin, timeout=10) as http:
            response = await http.get(f"/v1/streams/{stream_id}/events")
        assert response.status_code == 200, response.text
        events, _ = parse(response.content)
        assert events[0].type == "stream" and events[-1].type in ("done", "error"), events[-1:]
        tokens = [e.data for e in events if e.type == "token"]
        prefix = f"{stream_id}:{self.hub.epoch}:"
        ids = [e.last_event_id for e in events[1:]]
        assert ids == [f"{prefix}{seq}" for seq in range(1, len(tokens) + 2)]  # every seq once, in order
        return tokens, json.loads(events[-1].data)

    def kill_webtransport(self) -> int:
        """Close every QUIC connection of the WebTransport server, as a dying path or server would end it for
        the browser; the number of WebTransport sessions they carried. (Firefox keeps a second connection
        without a session beside the one of its session.)"""
        assert self.wt is not None
        conns = list(self.wt.connections)
        sessions = sum(len(conn.sessions) for conn in conns)
        for conn in conns:
            conn.close(error_code=0x0, reason_phrase="closed by the test")
        return sessions


async def install(driver: PageDriver, *, webtransport: bool = True) -> dict[str, Any]:
    """The scenarios (client_scenarios.js) in ``driver``'s page, which imports the client: ``twt``.
    ``webtransport=False``: the page's ``WebTransport`` is deleted first (a browser without it)."""
    result: dict[str, Any] = await driver.run(SCENARIOS_JS, {"webTransport": webtransport})
    return result


async def twt(driver: PageDriver, method: str, *args: Any) -> Any:
    """``twt.method(...args)`` in the page: a scenario step, its JSON answer."""
    return await driver.run(f"(args) => twt.{method}(...args)", list(args))


async def until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Wait until ``condition()`` holds (polled); fails naming ``what`` after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while not condition():  # noqa: ASYNC110 - polls state that has no event (counters, lists)
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds} s waiting for {what}") from None


@contextlib.asynccontextmanager
async def rig(
    *, webtransport: bool = True, storage: MemoryStorage | None = None, certificate_info: dict[str, Any] | None = None
) -> AsyncIterator[Rig]:
    """Servers for one test. ``certificate_info``: what ``/v1/webtransport/certificate`` answers instead of
    the real server's (a WebTransport URL nobody answers at)."""
    hub = Hub(storage)
    model = ScriptedModel()
    async with contextlib.AsyncExitStack() as stack:
        sse = await stack.enter_async_context(sse_server(hub, model=model, retry_ms=200))
        router = RecordingRouter(sse)
        sse.router = router
        wt = None
        if webtransport:
            wt = await stack.enter_async_context(wt_server(hub, model=model))
            sse.webtransport = wt
        if certificate_info is not None:
            sse.webtransport = _Elsewhere(certificate_info)
        yield Rig(hub, sse, wt, model, router)


class _Elsewhere:
    """Stands for a WebTransport server at another address (``/v1/webtransport/certificate``'s answer)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self._info = info

    def certificate_info(self) -> dict[str, Any]:
        return self._info


@contextlib.contextmanager
def silent_udp_port() -> Iterator[tuple[int, Callable[[], int]]]:
    """A UDP port on 127.0.0.1 that takes datagrams and never answers (a network that drops QUIC); yields
    ``(port, count)`` where ``count()`` drains and counts the datagrams that arrived so far."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    received = 0

    def count() -> int:
        nonlocal received
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.recv(65536)
                received += 1
        return received

    try:
        yield sock.getsockname()[1], count
    finally:
        sock.close()


def closed_udp_port() -> int:
    """A UDP port on 127.0.0.1 with nobody bound to it (datagrams get ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
