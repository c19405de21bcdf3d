"""asyncio/uvloop adapters: sockets in, protocol objects and the hub in between, bytes out."""

from typing import TYPE_CHECKING, Any

from tokenwire.server.config import ServerConfig, ServerOptions, WebTransportLimits
from tokenwire.server.sse import SseServer

if TYPE_CHECKING:
    from tokenwire.server.webtransport import WebTransportServer

__all__ = ["ServerConfig", "ServerOptions", "SseServer", "WebTransportLimits", "WebTransportServer"]


def __getattr__(name: str) -> Any:
    # The WebTransport server pulls in aioquic and its TLS stack: loaded on first use only, so that
    # ``tokenwire.asgi`` and SSE-only servers do not pay for it at import (PEP 562).
    if name == "WebTransportServer":
        from tokenwire.server.webtransport import WebTransportServer

        return WebTransportServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
