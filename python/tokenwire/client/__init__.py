"""Clients for tokenwire servers: exactly-once token delivery across reconnects."""

from tokenwire.client.sse import ConnectionFailed, SseClient, TokenStreamReader
from tokenwire.client.webtransport import (
    PreviewCallback,
    SessionTicketStore,
    WebTransportClient,
    WebTransportStreamReader,
)

__all__ = [
    "ConnectionFailed",
    "PreviewCallback",
    "SessionTicketStore",
    "SseClient",
    "TokenStreamReader",
    "WebTransportClient",
    "WebTransportStreamReader",
]
