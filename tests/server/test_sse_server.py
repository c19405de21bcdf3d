"""The SSE server end to end, with clients nobody here wrote: curl, httpx, the openai SDK."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.chunked import dechunk, split_response
from tests.support.openai_sdk import check_chat_completions
from tests.support.servers import sse_server
from tests.support.sse_spec_parser import Event, SpecParser
from tokenwire import FakeModel, Hub, MemoryStorage
from tokenwire.server import SseServer
from tokenwire.server.endpoints import left_early

pytestmark = pytest.mark.usefixtures("no_leaks")

CURL = shutil.which("curl")


def url(server: SseServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def curl(*args: str) -> tuple[int, str]:
    assert CURL, "curl is installed by the test command"
    proc = await asyncio.create_subprocess_exec(
        CURL, "-sN", "--max-time", "20", "-w", "\n%{http_code}", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


def events(body: str | bytes) -> list[Event]:
    return SpecParser().feed(body.encode() if isinstance(body, str) else body)


def tokens(evs: list[Event]) -> list[str]:
    return [e.data for e in evs if e.type == "token"]


def post_stream(server: SseServer, **body: object) -> tuple[str, ...]:
    return ("-X", "POST", "-H", "content-type: application/json", "-d", json.dumps(body), url(server, "/v1/streams"))


async def test_curl_streams_a_whole_answer() -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server:
        code, body = await curl(*post_stream(server, prompt="hello", max_tokens=40, tokens_per_s=2000))
        assert code == 200
        evs = events(body)
        assert evs[0].type == "stream"
        intro = json.loads(evs[0].data)
        assert evs[0].last_event_id == f"{intro['stream_id']}:{server.hub.epoch}:0"
        # newline-free tokens compare exactly; SSE turns CR into LF (none in the vocabulary)
        assert tokens(evs) == model.tokens("hello", 40)
        assert evs[-1].type == "done"
        assert json.loads(evs[-1].data)["reason"] == "length"
        assert [e.last_event_id.rsplit(":", 1)[1] for e in evs[1:]] == [str(i) for i in range(1, 42)]


async def test_curl_resumes_with_last_event_id_and_the_model_runs_once() -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server:
        expected = model.tokens("resume me", 60)
        got: list[str] = []
        async with (
            httpx.AsyncClient() as client,
            client.stream(
                "POST",
                url(server, "/v1/streams"),
                json={"prompt": "resume me", "max_tokens": 60, "tokens_per_s": 400},
            ) as resp,
        ):
            stream_id = resp.headers["x-tokenwire-stream-id"]
            parser = SpecParser()
            last_id = ""
            async for chunk in resp.aiter_bytes():
                for e in parser.feed(chunk):
                    last_id = e.last_event_id
                    if e.type == "token":
                        got.append(e.data)
                if len(got) >= 10:
                    break  # the connection drops mid-answer
        await asyncio.sleep(0.05)
        code, body = await curl("-H", f"Last-Event-ID: {last_id}", url(server, f"/v1/streams/{stream_id}/events"))
        assert code == 200
        evs = events(body)
        assert evs[0].type == "stream" and evs[0].last_event_id == last_id
        got += tokens(evs)
        assert got == expected
        assert model.calls == 1
        assert server.metrics.resumes_total == 1


async def test_httpx_attach_with_query_resume_point_and_204_when_nothing_is_left() -> None:
    async with sse_server() as server, httpx.AsyncClient() as client:
        stream = server.hub.create_stream()
        stream.send_many(["a", "b", "c"])
        stream.finish()
        prefix = f"{stream.id}:{server.hub.epoch}:"
        r = await client.get(url(server, f"/v1/streams/{stream.id}/events"), params={"last_event_id": f"{prefix}1"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        assert r.text.startswith("retry: 1000\n\n")
        evs = events(r.content)
        assert tokens(evs) == ["b", "c"] and evs[-1].type == "done"
        # The header wins over the query parameter (EventSource reconnects keep the URL).
        r = await client.get(
            url(server, f"/v1/streams/{stream.id}/events?last_event_id={prefix}0"),
            headers={"Last-Event-ID": f"{prefix}3"},
        )
        assert tokens(events(r.content)) == []
        assert events(r.content)[-1].type == "done"
        r = await client.get(url(server, f"/v1/streams/{stream.id}/events"), headers={"Last-Event-ID": f"{prefix}4"})
        assert r.status_code == 204


async def test_openai_sdk_streams_and_completes() -> None:
    model = FakeModel(seed=5, tokens_per_s=1000)
    async with sse_server(model=model) as server:
        await check_chat_completions(url(server, "/v1"), model)


async def test_chat_completion_stream_is_resumable() -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server, httpx.AsyncClient() as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True, "max_tokens": 20}
        r = await client.post(url(server, "/v1/chat/completions"), json={**body, "tokens_per_s": 5000})
        first = events(r.content)
        assert first[-1].data == "[DONE]"
        chunks = [json.loads(e.data) for e in first[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        stream_id = r.headers["x-tokenwire-stream-id"]
        resume_from = first[5].last_event_id
        r2 = await client.get(
            url(server, f"/v1/streams/{stream_id}/events?format=openai"), headers={"Last-Event-ID": resume_from}
        )
        again = events(r2.content)
        assert [e.data for e in again] == [e.data for e in first[6:]]
        assert model.calls == 1


async def test_cancel_ends_the_stream_for_every_watcher() -> None:
    async with sse_server() as server, httpx.AsyncClient() as client:
        async with client.stream(
            "POST", url(server, "/v1/streams"), json={"prompt": "x", "max_tokens": 10_000, "tokens_per_s": 50}
        ) as resp:
            stream_id = resp.headers["x-tokenwire-stream-id"]
            assert (await client.delete(url(server, f"/v1/streams/{stream_id}"))).status_code == 204
            body = b"".join([c async for c in resp.aiter_bytes()])
        evs = events(body)
        done_seq = int(evs[-1].last_event_id.rsplit(":", 1)[1])
        assert evs[-1].type == "done"
        assert json.loads(evs[-1].data) == {"reason": "cancelled", "usage": {"completion_tokens": done_seq - 1}}
        assert (await client.delete(url(server, "/v1/streams/nope"))).status_code == 404


async def test_metrics_and_health() -> None:
    async with sse_server() as server, httpx.AsyncClient() as client:
        await client.post(url(server, "/v1/streams"), json={"prompt": "m", "max_tokens": 5, "tokens_per_s": 0})
        health = (await client.get(url(server, "/healthz"))).json()
        assert health == {"status": "ok", "epoch": server.hub.epoch, "pid": os.getpid()}
        r = await client.get(url(server, "/metrics"))
        assert r.headers["content-type"].startswith("text/plain")
        samples = {
            (s.name, s.labels.get("le")): s.value for fam in text_string_to_metric_families(r.text) for s in fam.samples
        }
        assert samples[("tokenwire_tokens_sent_total", None)] == 6
        assert samples[("tokenwire_streams_started_total", None)] == 1
        assert samples[("tokenwire_time_to_first_token_seconds_count", None)] == 1
        assert ("tokenwire_connections", None) in samples


async def test_write_metrics_count_what_each_cursor_read_once() -> None:
    """The connection's cursor accounts each write through its meter: the first read of a request feeds the
    time-to-first-token (from seq 0) or the resume histogram; frames and bytes are counted once."""
    async with sse_server() as server, httpx.AsyncClient() as client:
        hub = server.hub
        stream = hub.create_stream()
        stream.send_many(["a", "b", "c"])
        stream.finish()
        whole = hub.subscribe(stream.id, wire="sse").read_ready()
        tail = hub.subscribe(stream.id, after=2, wire="sse").read_ready()
        assert whole is not None and tail is not None
        events_url = url(server, f"/v1/streams/{stream.id}/events")
        assert tokens(events((await client.get(events_url)).content)) == ["a", "b", "c"]
        resumed = await client.get(events_url, headers={"last-event-id": f"{stream.id}:{hub.epoch}:2"})
        assert tokens(events(resumed.content)) == ["c"]
        m = server.metrics
        assert (m.ttft.count, m.resume_latency.count) == (1, 1)
        assert m.tokens_sent_total == 4 + 2
        assert m.bytes_sent_total == len(whole) + len(tail)


JSON = {"content-type": "application/json"}
BAD_REQUESTS = [
    # (method, path, headers, body, status)
    ("POST", "/v1/streams", {"content-type": "application/json"}, b"{not json", 400),
    ("POST", "/v1/streams", {"content-type": "application/json"}, b"[]", 400),
    ("POST", "/v1/streams", {"content-type": "application/json"}, b'{"max_tokens": 3}', 400),
    ("POST", "/v1/streams", {"content-type": "application/json"}, b'{"prompt": "x", "max_tokens": 0}', 400),
    ("POST", "/v1/streams", {"content-type": "application/json"}, b'{"prompt": "x", "max_tokens": true}', 400),
    ("POST", "/v1/streams", {"content-type": "application/json"}, b'{"prompt": "x", "stream_id": "a:b"}', 400),
    ("POST", "/v1/streams", {"content-type": "text/plain"}, b'{"prompt": "x"}', 415),
    ("POST", "/v1/chat/completions", {"content-type": "application/json"}, b'{"messages": []}', 400),
    # Hostile bodies (tests/server/test_hostile_input.py has the fuzz): each 400 InvalidBody naming its field.
    (
        "POST",
        "/v1/chat/completions",
        JSON,
        b'{"model": "\\ud800", "messages": [{"content": "x"}], "stream": true}',
        400,
    ),
    ("POST", "/v1/chat/completions", JSON, b'{"messages": [{"content": "x"}], "stream": "no"}', 400),
    ("POST", "/v1/streams", JSON, b'{"prompt": "x\\udfff"}', 400),
    ("POST", "/v1/streams", JSON, b'{"prompt": "x\xed\xa0\x80"}', 400),
    ("POST", "/v1/streams", JSON, b'{"prompt": "x", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
    ("GET", "/v1/streams", {}, b"", 405),
    ("GET", "/nowhere", {}, b"", 404),
    ("GET", "/v1/streams/unknown/events", {}, b"", 404),
    ("GET", "/v1/streams/x/events", {"last-event-id": "garbage"}, b"", 400),
]


async def test_bad_requests_get_precise_errors_and_disturb_no_other_stream() -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model) as server, httpx.AsyncClient() as client:
        async with client.stream(
            "POST", url(server, "/v1/streams"), json={"prompt": "bystander", "max_tokens": 80, "tokens_per_s": 400}
        ) as bystander:
            for method, path, headers, body, status in BAD_REQUESTS:
                r = await client.request(method, url(server, path), headers=headers, content=body)
                assert r.status_code == status, (method, path, body, r.text)
                err = r.json()["error"]
                assert err["status"] == status and err["message"]
            got = tokens(events(b"".join([c async for c in bystander.aiter_bytes()])))
        assert got == model.tokens("bystander", 80)


async def test_resume_errors_over_http() -> None:
    hub = Hub(MemoryStorage(max_frames_per_stream=5))
    async with sse_server(hub) as server, httpx.AsyncClient() as client:
        s = hub.create_stream()
        s.send_many([f"t{i}" for i in range(12)])
        path = url(server, f"/v1/streams/{s.id}/events")
        prefix = f"{s.id}:{hub.epoch}:"

        async def status(last_event_id: str) -> tuple[int, dict[str, object]]:
            r = await client.get(path, headers={"Last-Event-ID": last_event_id})
            return r.status_code, r.json()["error"]

        code, err = await status(f"{prefix}2")
        assert (code, err["type"], err["oldest_seq"]) == (410, "ResumeExpired", 8)
        code, err = await status(f"{prefix}99")
        assert (code, err["type"], err["last_seq"]) == (400, "ResumeFromFuture", 12)
        code, err = await status(f"{s.id}:OtherEpc:3")
        assert (code, err["type"], err["epoch"]) == (409, "EpochMismatch", hub.epoch)
        code, err = await status(f"someoneelse:{hub.epoch}:3")
        assert (code, err["type"]) == (400, "RemoteProtocolError")
        s.finish()


def _raw(server: SseServer, data: bytes, *, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_limits_oversized_body_headers_and_slowloris() -> None:
    async with sse_server(header_timeout=0.3) as server:
        big = b"POST /v1/streams HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
        out = await asyncio.to_thread(_raw, server, big)
        assert out.startswith(b"HTTP/1.1 413 ")
        many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(100)) + b"\r\n"
        out = await asyncio.to_thread(_raw, server, many)
        assert out.startswith(b"HTTP/1.1 431 ")
        garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n"
        out = await asyncio.to_thread(_raw, server, garbage)
        assert out.startswith(b"HTTP/1.1 400 ")
        # Slowloris: half a request, then nothing. The server answers 408 and closes.
        out = await asyncio.to_thread(_raw, server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert out.startswith(b"HTTP/1.1 408 ")


async def test_connection_cap_answers_503() -> None:
    async with sse_server(max_connections=2) as server, httpx.AsyncClient() as client:
        opened = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            await asyncio.sleep(0.05)
            r = await client.get(url(server, "/healthz"))
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
        finally:
            for s in opened:
                s.close()


async def test_slow_reader_is_closed_with_bounded_memory_and_resumes_losslessly() -> None:
    model = FakeModel(seed=5)
    async with sse_server(model=model, write_buffer_high=16 * 1024, stall_timeout=0.5) as server:
        n = 50_000  # ~3 MB of events: more than the kernel buffers between us hold
        expected = model.tokens("big", n)
        body = json.dumps({"prompt": "big", "max_tokens": n, "tokens_per_s": 0}).encode()
        req = b"POST /v1/streams HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(req)
        sock.setblocking(False)
        await asyncio.sleep(0.1)  # the client reads nothing: the server pauses, then gives up on it
        peak = max((c.transport.get_write_buffer_size() for c in server.streaming if c.transport), default=0)
        assert peak <= 16 * 1024 + 64 * 1024
        for _ in range(100):
            if server.metrics.backpressure_closes_total:
                break
            await asyncio.sleep(0.05)
        assert server.metrics.backpressure_closes_total == 1
        # The client reads what it got before the close and resumes from the last complete event.
        sock.setblocking(True)
        sock.settimeout(5)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        sock.close()
        _status, headers, chunked = split_response(received)
        assert headers["transfer-encoding"] == "chunked"
        stream_bytes, complete = dechunk(chunked)
        assert not complete  # aborted: no last chunk, so no client takes the cut for the end
        parser = SpecParser()
        evs = parser.feed(stream_bytes)
        got = tokens(evs)
        assert len(got) < n
        stream_id = json.loads(evs[0].data)["stream_id"]
        async with httpx.AsyncClient() as client:
            r = await client.get(
                # The id of the last *dispatched* event: a cut may leave a later id line without its event.
                url(server, f"/v1/streams/{stream_id}/events"),
                headers={"Last-Event-ID": evs[-1].last_event_id},
            )
        got += tokens(events(r.content))
        assert got == expected
        assert model.calls == 1


async def test_shutdown_while_streaming_tells_clients_to_reconnect() -> None:
    server_cm = sse_server()
    server = await server_cm.__aenter__()
    health = url(server, "/healthz")
    try:
        async with (
            httpx.AsyncClient() as client,
            client.stream(
                "POST", url(server, "/v1/streams"), json={"prompt": "x", "max_tokens": 10_000, "tokens_per_s": 100}
            ) as resp,
        ):
            it = resp.aiter_bytes()
            await it.__anext__()
            await server.shutdown(drain_timeout=0.1)
            rest = b""
            # The hint is a chunk, not the end of the body: the client sees the cut as one.
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                async for c in it:
                    rest += c
        assert b"server shutting down, reconnect to resume" in rest
        assert b"retry: 250" in rest
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(health)
    finally:
        await server_cm.__aexit__(None, None, None)


async def test_left_early_is_false_once_the_stream_is_gone() -> None:
    """A reader cut after the janitor removed its ended stream left nothing behind; the check answers
    instead of raising StreamNotFound inside a flush or connection_lost."""
    storage = MemoryStorage()
    hub = Hub(storage)
    stream = hub.create_stream()
    stream.send("x")
    assert left_early(stream, 0)
    stream.finish()
    assert left_early(stream, 1) and not left_early(stream, 2)
    handle = storage.lookup(stream.id)
    assert handle is not None
    storage.remove(handle)
    assert not left_early(stream, 0)
    await hub.aclose()
