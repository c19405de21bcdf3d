"""How the uvicorn peers are served: uvloop + httptools, no access log, the readiness line once listening."""

from __future__ import annotations

import signal
import socket
from typing import Any

import uvicorn

from benches.peers.common import ready

__all__ = ["serve"]


class _Server(uvicorn.Server):
    """uvicorn's server, printing the readiness line once it listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            port = self.servers[0].sockets[0].getsockname()[1]
            ready(self.config.host, port)


def _after_shutdown(signum: int, frame: Any) -> None:
    """uvicorn re-raises the signal that stopped it once it has shut down; by then there is nothing to do."""


def serve(app: Any, host: str, port: int) -> None:
    """Run ``app`` under uvicorn (uvloop, httptools, lifespan on) until SIGTERM/SIGINT."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _after_shutdown)
    _Server(config).run()
