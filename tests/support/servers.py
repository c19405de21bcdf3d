"""Real servers for tests: started on 127.0.0.1 with a free port, stopped at the end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tokenwire import FakeModel, Hub
from tokenwire.server import ServerConfig, SseServer


@contextlib.asynccontextmanager
async def sse_server(
    hub: Hub | None = None,
    *,
    model: FakeModel | None = None,
    engine_steps_per_s: float | None = None,
    **config: Any,
) -> AsyncIterator[SseServer]:
    cfg = ServerConfig(host="127.0.0.1", port=0, **config)
    server = SseServer(hub, cfg, model=model or FakeModel(seed=5), engine_steps_per_s=engine_steps_per_s)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(drain_timeout=0)
