"""What every front end of a hub shares (the SSE and WebTransport servers and the ASGI app): options, hub,
generator, metrics; and what the socket servers add: the loop and the flusher."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from typing import Any

from tokenwire.fake_model import FakeModel
from tokenwire.generation import Engine, Generator
from tokenwire.hub import Hub
from tokenwire.metrics import ServerMetrics
from tokenwire.server.config import ServerConfig, ServerOptions
from tokenwire.server.flusher import Flusher

__all__ = ["HubHost", "ServerBase"]


class HubHost:
    """A front end of one :class:`~tokenwire.hub.Hub`: its options (generator, limits, auth) and its metrics."""

    def __init__(self, hub: Hub | None, options: ServerOptions | ServerConfig | None, metrics: ServerMetrics) -> None:
        self.options = ServerOptions.of(options)
        self.config = self.options.config
        self.hub = hub if hub is not None else Hub()
        #: What generates the streams' tokens (``options.generator``, else a FakeModel with its defaults).
        self.generator: Generator | Engine = self.options.generator or FakeModel()
        self.metrics = metrics
        self.draining = False
        metrics.gauges["open_streams"] = lambda: self.hub.stats()["open_streams"]
        metrics.gauges["hub_memory_bytes"] = lambda: self.hub.storage.memory_bytes
        for name in self.hub.storage.stats():  # a shared storage's own (tokenwire_storage_redis_*)
            metrics.gauges[f"storage_{name}"] = functools.partial(self._storage_stat, name)
        self._registry = metrics.registry()  # reads the gauges when scraped: subclasses may add more

    def _storage_stat(self, name: str) -> float:
        return self.hub.storage.stats()[name]

    def render_metrics(self) -> bytes:
        return self.metrics.render(self._registry)

    def _start_generation(self) -> None:
        """On the running loop: the hub's janitor."""
        self.hub._ensure_janitor()


class ServerBase(HubHost):
    """A socket server of a hub: adds the running loop and the flusher (one write per connection per loop
    iteration)."""

    def __init__(self, hub: Hub | None, options: ServerOptions | ServerConfig | None, metrics: ServerMetrics) -> None:
        super().__init__(hub, options, metrics)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: Flusher | None = None
        self._tick: asyncio.TimerHandle | None = None
        #: Tasks answering a request later (a completion collected, a stream copied from a shared storage).
        self.background: set[asyncio.Task[None]] = set()
        metrics.gauges["flusher_runs"] = lambda: self.flusher.runs

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("server not started")
        return self._loop

    @property
    def flusher(self) -> Flusher:
        if self._flusher is None:
            raise RuntimeError("server not started")
        return self._flusher

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a background task of this server (kept referenced until it is done)."""
        task = self.loop.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _start_common(self) -> asyncio.AbstractEventLoop:
        """Bind to the running loop: the flusher, the hub's janitor."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._flusher = Flusher(
            loop, self.config.max_delay_ms, self.config.flush_max_wait_ms, wait_histogram=self.metrics.flush_wait
        )
        self._start_generation()
        return loop
