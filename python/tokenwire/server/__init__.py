"""asyncio/uvloop adapters: sockets in, protocol objects and the hub in between, bytes out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenwire.server.config import ServerConfig, ServerOptions, WebTransportLimits
from tokenwire.server.sse import SseServer

if TYPE_CHECKING:
    from tokenwire.hub import Hub
    from tokenwire.server.certs import Certificate
    from tokenwire.server.native import NativeWebTransportServer
    from tokenwire.server.webtransport import WebTransportServer

__all__ = [
    "NativeWebTransportServer",
    "ServerConfig",
    "ServerOptions",
    "SseServer",
    "WebTransportLimits",
    "WebTransportServer",
    "webtransport_server",
]


def webtransport_server(
    hub: Hub | None = None,
    options: ServerOptions | ServerConfig | None = None,
    *,
    certificate: Certificate | None = None,
) -> WebTransportServer | NativeWebTransportServer:
    """The WebTransport server of ``options``' ``config.wt_engine``: aioquic's
    (:class:`~tokenwire.server.webtransport.WebTransportServer`) or the native engine's
    (:class:`~tokenwire.server.native.NativeWebTransportServer`); both take the same arguments and do the same."""
    if ServerOptions.of(options).config.wt_engine == "native":
        from tokenwire.server.native import NativeWebTransportServer

        return NativeWebTransportServer(hub, options, certificate=certificate)
    from tokenwire.server.webtransport import WebTransportServer

    return WebTransportServer(hub, options, certificate=certificate)


def __getattr__(name: str) -> Any:
    # The WebTransport servers pull in aioquic (and its TLS stack) or the QUIC engine: loaded on first use only,
    # so that ``tokenwire.asgi`` and SSE-only servers do not pay for it at import (PEP 562).
    if name == "WebTransportServer":
        from tokenwire.server.webtransport import WebTransportServer

        return WebTransportServer
    if name == "NativeWebTransportServer":
        from tokenwire.server.native import NativeWebTransportServer

        return NativeWebTransportServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
