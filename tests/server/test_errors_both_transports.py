"""The same client mistake gets the same answer on SSE and on WebTransport: the status, and an error type
that names the client's fault (docs/protocol.md §4.2, §4.4, §7)."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import httpx
import pytest

from tests.support.servers import sse_server, wt_client, wt_server
from tokenwire import DuplicateStreamId, Hub, RemoteProtocolError
from tokenwire.client import SseClient
from tokenwire.client.webtransport import WebTransportClient
from tokenwire.protocol.webtransport import (
    AttachRequested,
    Request,
    RequestFailed,
    StartRequested,
    WtCode,
    encode_request,
)

pytestmark = pytest.mark.usefixtures("no_leaks", "wt_engine")

#: Epochs that are not 1-64 characters of [A-Za-z0-9_-]: a malformed resume point (400), not another
#: history (409).
BAD_EPOCHS = ["a b", "a:b", "é", "x" * 65]


async def wt_error(client: WebTransportClient, request: Request) -> RequestFailed:
    """The error reply to ``request`` as it is on the wire (type, status, code)."""
    conn = await client._session()
    stream = conn.open_stream(encode_request(request))
    async with asyncio.timeout(10):
        reply = await stream.reply
    assert isinstance(reply, RequestFailed), reply
    return reply


async def test_a_malformed_epoch_is_400_on_both_transports() -> None:
    hub = Hub()
    async with sse_server(hub) as sse, wt_server(hub) as wt, wt_client(wt) as client, httpx.AsyncClient() as http:
        stream = hub.create_stream("s1")
        stream.send_many(["a", "b", "c", "d"])
        for epoch in BAD_EPOCHS:
            point = quote(f"s1:{epoch}:3", safe="")
            r = await http.get(f"http://127.0.0.1:{sse.port}/v1/streams/s1/events?last_event_id={point}")
            assert (r.status_code, r.json()["error"]["type"]) == (400, "RemoteProtocolError"), epoch
            reply = await wt_error(client, AttachRequested("s1", epoch, 3))
            assert (reply.status, reply.type, reply.code) == (400, "RemoteProtocolError", WtCode.BAD_REQUEST), epoch
            with pytest.raises(RemoteProtocolError, match="epoch") as raised:
                await client.attach("s1", epoch=epoch, after=3)
            assert raised.value.status_hint == 400
        # A well-formed epoch of another history is still 409 on both.
        r = await http.get(f"http://127.0.0.1:{sse.port}/v1/streams/s1/events?last_event_id=s1:other:3")
        assert (r.status_code, r.json()["error"]["type"]) == (409, "EpochMismatch")
        reply = await wt_error(client, AttachRequested("s1", "other", 3))
        assert (reply.status, reply.type) == (409, "EpochMismatch")
        stream.finish()


async def test_start_request_mistakes_name_the_clients_fault_on_both_transports() -> None:
    hub = Hub()
    async with sse_server(hub) as sse, wt_server(hub) as wt, wt_client(wt) as client, httpx.AsyncClient() as http:
        taken = hub.create_stream("taken")
        create = f"http://127.0.0.1:{sse.port}/v1/streams"
        cases = [
            ("bad id", 400, "InvalidBody", WtCode.BAD_REQUEST),  # a RemoteProtocolError naming its field
            ("x" * 129, 400, "InvalidBody", WtCode.BAD_REQUEST),
            ("taken", 409, "DuplicateStreamId", WtCode.STREAM_EXISTS),
        ]
        for stream_id, status, kind, code in cases:
            r = await http.post(create, json={"prompt": "p", "max_tokens": 3, "stream_id": stream_id})
            assert (r.status_code, r.json()["error"]["type"]) == (status, kind), stream_id
            reply = await wt_error(client, StartRequested("p", 3, {"stream_id": stream_id}))
            assert (reply.status, reply.type, reply.code) == (status, kind, code), stream_id

        # The clients raise the typed error.
        with pytest.raises(DuplicateStreamId):
            await client.generate("p", max_tokens=3, stream_id="taken")
        async with SseClient(f"http://127.0.0.1:{sse.port}") as sse_client:
            with pytest.raises(DuplicateStreamId):
                await sse_client.generate("p", max_tokens=3, stream_id="taken")
        assert "taken" in hub and hub.stats()["streams_started"] == 1  # nothing started by the refusals
        taken.finish()
