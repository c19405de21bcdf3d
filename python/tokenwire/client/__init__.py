"""Clients for tokenwire servers: exactly-once token delivery across reconnects."""

from tokenwire.client.sse import SseClient, TokenStreamReader

__all__ = ["SseClient", "TokenStreamReader"]
