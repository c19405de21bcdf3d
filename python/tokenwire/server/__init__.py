"""asyncio/uvloop adapters: sockets in, protocol objects and the hub in between, bytes out."""

from tokenwire.server.config import ServerConfig
from tokenwire.server.sse import SseServer

__all__ = ["ServerConfig", "SseServer"]
