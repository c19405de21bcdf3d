"""Clients for tokenwire servers: exactly-once token delivery across reconnects."""

from tokenwire.client.sse import ConnectionFailed, SseClient, TokenStreamReader
from tokenwire.client.webtransport import SessionTicketStore, WebTransportClient, WebTransportStreamReader

__all__ = [
    "ConnectionFailed",
    "SessionTicketStore",
    "SseClient",
    "TokenStreamReader",
    "WebTransportClient",
    "WebTransportStreamReader",
]
