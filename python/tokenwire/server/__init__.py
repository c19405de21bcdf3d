"""asyncio/uvloop adapters: sockets in, protocol objects and the hub in between, bytes out."""

from tokenwire.server.config import ServerConfig, WebTransportLimits
from tokenwire.server.sse import SseServer
from tokenwire.server.webtransport import WebTransportServer

__all__ = ["ServerConfig", "SseServer", "WebTransportLimits", "WebTransportServer"]
