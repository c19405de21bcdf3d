"""The SSE server's shutdown and keep-alive timers, over raw sockets (docs/protocol.md §7): 503 with
``Retry-After`` while it drains, nothing written onto idle keep-alive connections, and a request that starts
on a kept-alive connection held to the header timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from tests.support.servers import sse_server
from tokenwire import FakeModel, ServerOptions
from tokenwire.server import ServerConfig, SseServer

pytestmark = pytest.mark.usefixtures("no_leaks")

GET_HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return status, headers, body


async def connect(server: SseServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def test_draining_answers_503_to_new_connections_and_requests_then_stops_listening() -> None:
    model = FakeModel(seed=5, tokens_per_s=5)
    cfg = ServerConfig(host="127.0.0.1", port=0, drain_timeout=30.0)
    server = SseServer(None, ServerOptions(cfg, model))
    await server.start()
    port = server.port
    # A stream that is still running keeps the server draining; a kept-alive idle connection beside it.
    sr, sw = await connect(server)
    body = json.dumps({"prompt": "long", "max_tokens": 1000}).encode()
    sw.write(b"POST /v1/streams HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n")
    sw.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    head = (await asyncio.wait_for(sr.readuntil(b"event: stream"), 5)).decode()
    stream_id = head.split("X-Tokenwire-Stream-Id: ")[1].split("\r\n")[0]
    ir, iw = await connect(server)
    iw.write(GET_HEALTH)
    assert (await read_response(ir))[0] == 200
    shutdown = asyncio.create_task(server.shutdown())
    await asyncio.sleep(0.1)
    assert not shutdown.done()
    # A new connection is accepted and its request answered 503 with Retry-After.
    nr, nw = await connect(server)
    nw.write(GET_HEALTH)
    status, headers, err = await read_response(nr)
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert json.loads(err)["error"]["status"] == 503
    assert await nr.read() == b""
    await close(nw)
    # So is a new request on a kept-alive connection.
    iw.write(GET_HEALTH)
    status, headers, _ = await read_response(ir)
    assert status == 503 and headers["retry-after"] == "1"
    await close(iw)
    # The stream ends (here: cancelled); the drain ends, the listener closes, the stream got the hint.
    server.hub.cancel(stream_id)
    await asyncio.wait_for(shutdown, 10)
    rest = await asyncio.wait_for(sr.read(), 5)
    assert b"event: done" in rest
    await close(sw)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_shutdown_writes_the_hint_only_inside_stream_responses() -> None:
    async with sse_server(model=FakeModel(seed=5, tokens_per_s=5)) as server:
        ir, iw = await connect(server)
        iw.write(GET_HEALTH)
        assert (await read_response(ir))[0] == 200
        pr, pw = await connect(server)
        pw.write(b"GET /healthz HTTP/1.1\r\nHost:")  # a request not complete yet
        sr, sw = await connect(server)
        body = b'{"prompt": "p", "max_tokens": 9}'
        sw.write(b"POST /v1/streams HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await asyncio.wait_for(sr.readuntil(b"event: stream"), 5)
        await server.shutdown(drain_timeout=0)
        # The idle keep-alive connection and the half-sent request: closed, not one byte written.
        assert await asyncio.wait_for(ir.read(), 5) == b""
        assert await asyncio.wait_for(pr.read(), 5) == b""
        # The streaming response: the reconnect hint (a comment and a retry field), then the close.
        tail = await asyncio.wait_for(sr.read(), 5)
        hint = b": server shutting down, reconnect to resume\nretry: 250\n\n"
        assert tail.endswith(b"%x\r\n%s\r\n" % (len(hint), hint))  # one chunk, and no last chunk: incomplete
        for w in (iw, pw, sw):
            await close(w)


async def test_a_request_started_on_a_kept_alive_connection_must_complete_within_the_header_timeout() -> None:
    async with sse_server(header_timeout=0.2, idle_timeout=30.0) as server:
        r, w = await connect(server)
        w.write(GET_HEALTH)
        assert (await read_response(r))[0] == 200
        # Idle longer than the header timeout: fine, the idle timeout applies while nothing arrives.
        await asyncio.sleep(0.4)
        w.write(GET_HEALTH)
        assert (await read_response(r))[0] == 200
        # A second request that trickles: 408 at the header timeout, not at the idle timeout (30 s).
        w.write(b"GET /healthz HTTP/1.1\r\n")

        async def trickle() -> None:
            for _ in range(200):
                await asyncio.sleep(0.05)
                w.write(b"X")  # one byte of a header name at a time, for up to 10 s

        trickler = asyncio.create_task(trickle())
        try:
            status, _, _ = await asyncio.wait_for(read_response(r), 10)
        finally:
            trickler.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await trickler
        assert status == 408
        await close(w)


async def test_an_idle_kept_alive_connection_is_closed_without_a_byte_also_after_a_held_answer() -> None:
    async with sse_server(idle_timeout=0.2, model=FakeModel(seed=5, tokens_per_s=2000)) as server:
        r, w = await connect(server)
        w.write(GET_HEALTH)
        assert (await read_response(r))[0] == 200
        assert await asyncio.wait_for(r.read(), 5) == b""  # idle timeout: closed, no 408 written
        await close(w)
        # A non-streaming chat completion is answered later (the connection is held meanwhile); then the
        # idle timeout runs as after any answer.
        r, w = await connect(server)
        body = json.dumps({"messages": [{"role": "user", "content": "q"}], "max_tokens": 3}).encode()
        w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n")
        w.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        status, headers, answer = await read_response(r)
        assert status == 200 and headers["connection"] == "keep-alive"
        assert json.loads(answer)["object"] == "chat.completion"
        assert await asyncio.wait_for(r.read(), 5) == b""
        await close(w)


async def test_a_non_streaming_chat_completion_in_progress_gets_503_when_the_drain_ends() -> None:
    server = SseServer(None, ServerOptions(ServerConfig(host="127.0.0.1", port=0), FakeModel(seed=5)))
    await server.start()
    reader, writer = await connect(server)
    try:
        body = json.dumps(
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "tokens_per_s": 20}
        ).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await asyncio.sleep(0.2)  # the answer is being collected (held, not streaming)
        shutdown = asyncio.create_task(server.shutdown(drain_timeout=0.3))
        status, headers, answer = await read_response(reader)
        await shutdown
        assert status == 503  # an answer, never a silent close (the client retries elsewhere)
        assert headers["retry-after"] == "1"
        assert json.loads(answer)["error"]["status"] == 503
    finally:
        await close(writer)


async def test_a_request_pipelined_behind_a_held_answer_closes_the_connection_instead_of_hanging() -> None:
    async with sse_server(model=FakeModel(seed=5, tokens_per_s=200)) as server:
        reader, writer = await connect(server)
        try:
            body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).encode()
            chat = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            writer.write(chat)
            await asyncio.sleep(0.005)  # the chat is held (collecting its answer) when the next bytes arrive
            writer.write(GET_HEALTH)
            status, headers, _ = await read_response(reader)
            assert status == 200
            assert headers["connection"] == "close"  # the health request was never parsed: say so, and close
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            await close(writer)
