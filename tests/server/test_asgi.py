"""tokenwire.asgi under real ASGI servers (uvicorn and hypercorn), with httpx, raw sockets and the openai SDK."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Header
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import Response

import tokenwire.asgi
from tests.server.test_sse_server import BAD_REQUESTS
from tests.support.asgi_servers import SERVERS, ServerFactory
from tests.support.chunked import dechunk, split_response
from tests.support.openai_sdk import check_chat_completions
from tests.support.servers import sse_server
from tests.support.sse_spec_parser import Event, SpecParser
from tokenwire import FakeModel, Hub, MemoryStorage, ServerOptions, StreamState
from tokenwire.asgi import EventStreamResponse, TokenwireASGI, stream_response
from tokenwire.server import ServerConfig

pytestmark = pytest.mark.usefixtures("no_leaks")

README = Path(__file__).parent.parent.parent / "README.md"


@pytest.fixture(params=sorted(SERVERS))
def serve(request: pytest.FixtureRequest) -> ServerFactory:
    return SERVERS[request.param]


def events(body: bytes) -> list[Event]:
    return SpecParser().feed(body)


def tokens(evs: list[Event]) -> list[str]:
    return [e.data for e in evs if e.type == "token"]


async def read_until(resp: httpx.Response, n_tokens: int) -> tuple[list[Event], bytes]:
    """Events of ``resp`` until ``n_tokens`` tokens have arrived (then the caller drops the connection)."""
    parser = SpecParser()
    got: list[Event] = []
    raw = b""
    async for chunk in resp.aiter_bytes():
        raw += chunk
        got += parser.feed(chunk)
        if len(tokens(got)) >= n_tokens:
            break
    return got, raw


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def test_stream_drop_resume_exactly_once_and_204(serve: ServerFactory) -> None:
    model = FakeModel(seed=5)
    app = TokenwireASGI(None, ServerOptions(generator=model))
    expected = model.tokens("resume me", 60)
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as client:
        body = {"prompt": "resume me", "max_tokens": 60, "tokens_per_s": 400}
        async with client.stream("POST", "/v1/streams", json=body) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert resp.headers["cache-control"] == "no-cache"
            assert resp.headers["x-accel-buffering"] == "no"
            stream_id = resp.headers["x-tokenwire-stream-id"]
            assert resp.headers["x-tokenwire-epoch"] == app.hub.epoch
            assert resp.headers["location"] == f"/v1/streams/{stream_id}/events"
            first, raw = await read_until(resp, 10)  # then the connection drops mid-answer
        assert raw.startswith(b"retry: 1000\n\n")
        assert first[0].type == "stream"
        assert json.loads(first[0].data) == {
            "stream_id": stream_id,
            "epoch": app.hub.epoch,
            "events_url": f"/v1/streams/{stream_id}/events",
            "after": 0,
        }
        stream = app.hub.get(stream_id)
        await wait_for(lambda: stream.subscribers == 0)  # detached on http.disconnect ...
        assert stream.is_open  # ... and generation goes on
        assert app.metrics.disconnects_total == 1
        last_id = first[-1].last_event_id
        r = await client.get(f"/v1/streams/{stream_id}/events", headers={"Last-Event-ID": last_id})
        assert r.status_code == 200
        again = events(r.content)
        assert again[0].type == "stream" and again[0].last_event_id == last_id
        assert tokens(first) + tokens(again) == expected
        assert json.loads(again[-1].data)["reason"] == "length"
        assert model.calls == 1
        assert app.metrics.resumes_total == 1

        # The query parameter resumes too; the header wins over it; 204 once nothing is left.
        prefix = f"{stream_id}:{app.hub.epoch}:"
        r = await client.get(f"/v1/streams/{stream_id}/events", params={"last_event_id": f"{prefix}59"})
        assert tokens(events(r.content)) == expected[-1:]
        r = await client.get(
            f"/v1/streams/{stream_id}/events?last_event_id={prefix}0", headers={"Last-Event-ID": f"{prefix}60"}
        )
        assert tokens(events(r.content)) == [] and events(r.content)[-1].type == "done"
        r = await client.get(f"/v1/streams/{stream_id}/events", headers={"Last-Event-ID": f"{prefix}61"})
        assert r.status_code == 204 and r.content == b""


def _normalized(r: httpx.Response, epoch: str) -> tuple[int, Any]:
    text = r.text.replace(epoch, "EPOCH")
    return r.status_code, json.loads(text) if text else None


async def test_status_codes_and_error_bodies_match_the_sse_server(serve: ServerFactory) -> None:
    """Every error answer, byte for byte in its JSON, as ``tokenwire serve`` gives it."""

    def hub() -> Hub:
        h = Hub(MemoryStorage(max_frames_per_stream=5))
        s = h.create_stream("t2")
        s.send_many([f"t{i}" for i in range(12)])
        h.create_stream("done").finish()
        return h

    asgi_hub, sse_hub = hub(), hub()
    app = TokenwireASGI(asgi_hub, ServerConfig(max_tokens_limit=1000))
    resume = [
        ("GET", "/v1/streams/t2/events", {"last-event-id": f"t2:{{epoch}}:{seq}"}, b"", status)
        for seq, status in ((2, 410), (99, 400), (9, 200))
    ]
    requests = [
        *BAD_REQUESTS,
        *resume,
        ("GET", "/v1/streams/t2/events", {"last-event-id": "t2:OtherEpc:3"}, b"", 409),
        ("GET", "/v1/streams/t2/events", {"last-event-id": "other:{epoch}:3"}, b"", 400),
        ("GET", "/v1/streams/t2/events?format=openai", {"last-event-id": "t2:{epoch}:8"}, b"", 400),
        ("GET", "/v1/streams/t2/events?format=xml", {"last-event-id": "t2:{epoch}:8"}, b"", 400),
        ("GET", "/v1/streams/done/events", {"last-event-id": "done:{epoch}:1"}, b"", 204),
        ("DELETE", "/v1/streams/nope", {}, b"", 404),
        ("DELETE", "/v1/streams/t2/events", {}, b"", 405),
        ("POST", "/v1/streams", {"content-type": "application/json"}, b'{"prompt": "x", "max_tokens": 5000}', 400),
        ("POST", "/v1/streams", {"content-type": "application/json"}, b'{"prompt": "x", "ttft": "soon"}', 400),
        ("POST", "/v1/streams", {"content-type": "application/json"}, b'{"prompt": "x", "stream_id": "t2"}', 409),
        ("POST", "/v1/chat/completions", {"content-type": "application/json"}, b'{"messages": [{"content": 3}]}', 400),
        ("POST", "/v1/streams", {"content-type": "application/json"}, b"x" * (1 << 20 | 1), 413),
    ]
    async with (
        serve(app) as base,
        sse_server(sse_hub, max_tokens_limit=1000) as server,
        httpx.AsyncClient() as client,
    ):
        for method, path, headers, content, status in requests:
            answers = []
            for url, h in ((base, asgi_hub), (f"http://127.0.0.1:{server.port}", sse_hub)):
                hdrs = {k: v.replace("{epoch}", h.epoch) for k, v in headers.items()}
                if status == 200:  # an open stream: read its head only
                    async with client.stream(method, url + path, headers=hdrs, content=content) as r:
                        answers.append((r.status_code, r.headers["content-type"], r.headers["location"]))
                    continue
                r = await client.request(method, url + path, headers=hdrs, content=content)
                answers.append(_normalized(r, h.epoch))
            assert answers[0] == answers[1], (method, path, headers)
            assert answers[0][0] == status, (method, path, answers[0])
        assert app.metrics.bad_requests_total == len([r for r in requests if r[-1] >= 400])
        asgi_hub.get("t2").finish()
        sse_hub.get("t2").finish()


async def test_openai_sdk_streams_completes_and_resumes(serve: ServerFactory) -> None:
    model = FakeModel(seed=5, tokens_per_s=1000)
    app = TokenwireASGI(None, ServerOptions(generator=model))
    async with serve(app) as base:
        await check_chat_completions(f"{base}/v1", model)

        # The same chat stream, resumed through ?format=openai from the 6th event on.
        async with httpx.AsyncClient(base_url=base) as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True, "max_tokens": 20}
            r = await http.post("/v1/chat/completions", json={**body, "tokens_per_s": 5000})
            first = events(r.content)
            assert first[-1].data == "[DONE]"
            assert not r.content.startswith(b"retry:")  # the OpenAI SDK's reader takes it for an event
            stream_id = r.headers["x-tokenwire-stream-id"]
            assert r.headers["location"] == f"/v1/streams/{stream_id}/events?format=openai"
            chunks = [json.loads(e.data) for e in first[:-1]]
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            r2 = await http.get(
                f"/v1/streams/{stream_id}/events?format=openai", headers={"Last-Event-ID": first[5].last_event_id}
            )
            assert [e.data for e in events(r2.content)] == [e.data for e in first[6:]]
        assert model.calls == 3


async def test_openai_chunks_are_the_sse_servers_bytes(serve: ServerFactory) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "same"}],
        "stream": True,
        "max_tokens": 25,
        "tokens_per_s": 0,
        "stream_id": "chat1",
        "stream_options": {"include_usage": True},
    }
    app = TokenwireASGI(None, ServerOptions(generator=FakeModel(seed=5)))
    async with serve(app) as base, sse_server(model=FakeModel(seed=5)) as server, httpx.AsyncClient() as client:
        ours = await client.post(f"{base}/v1/chat/completions", json=body)
        theirs = await client.post(f"http://127.0.0.1:{server.port}/v1/chat/completions", json=body)

    def normalized(r: httpx.Response, epoch: str) -> bytes:
        return re.sub(rb'"created": \d+', b'"created": 0', r.content.replace(epoch.encode(), b"EPOCH"))

    assert normalized(ours, app.hub.epoch) == normalized(theirs, server.hub.epoch)
    assert re.search(rb"data: \[DONE\]\nid: [^\n]+\n\n\Z", ours.content), ours.content[-200:]


async def test_heartbeats_cancel_metrics_and_lifespan(serve: ServerFactory) -> None:
    app = TokenwireASGI(None, ServerOptions(ServerConfig(heartbeat_interval=0.05), FakeModel(seed=5)))
    hub = app.hub
    async with serve(app) as base:
        assert hub._janitor is not None and not hub._janitor.done()  # lifespan startup ran
        async with httpx.AsyncClient(base_url=base) as client:
            quiet = hub.create_stream()
            async with client.stream("GET", f"/v1/streams/{quiet.id}/events") as resp:
                chunks = resp.aiter_bytes()
                raw = b""
                while raw.count(b":\n") < 2:
                    raw += await anext(chunks)
                parser = SpecParser()
                parser.feed(raw)
                assert parser.comments[:2] == ["", ""]  # heartbeats: bare ":" lines, between events
                assert (await client.delete(f"/v1/streams/{quiet.id}")).status_code == 204
                raw += b"".join([c async for c in chunks])
            evs = events(raw)
            assert evs[-1].type == "done" and json.loads(evs[-1].data) == {"reason": "cancelled"}
            assert app.metrics.heartbeats_total >= 2

            r = await client.post("/v1/streams", json={"prompt": "m", "max_tokens": 5, "tokens_per_s": 0})
            assert tokens(events(r.content)) == FakeModel(seed=5).tokens("m", 5)
            assert (await client.get("/healthz")).json() == {"status": "ok", "epoch": hub.epoch, "pid": os.getpid()}
            r = await client.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain")
            samples = {
                (s.name, s.labels.get("le")): s.value
                for fam in text_string_to_metric_families(r.text)
                for s in fam.samples
            }
            assert samples[("tokenwire_tokens_sent_total", None)] == 7  # 5 tokens + done, and the cancel's done
            assert samples[("tokenwire_streams_started_total", None)] == 1
            assert samples[("tokenwire_time_to_first_token_seconds_count", None)] == 2
            assert ("tokenwire_stream_connections", None) in samples
            # A generation nobody watches is still running when the server stops.
            running = (await app.endpoints.create({"prompt": "later", "max_tokens": 10_000, "tokens_per_s": 10})).stream
    assert running.state is StreamState.CANCELLED and running.end_reason == "shutdown"  # lifespan shutdown
    assert hub._janitor is None


async def test_slow_reader_is_closed_and_resumes_losslessly(serve: ServerFactory) -> None:
    model = FakeModel(seed=5)
    app = TokenwireASGI(None, ServerOptions(ServerConfig(stall_timeout=0.3), model))
    async with serve(app, sndbuf=16 * 1024) as base:
        port = int(base.rsplit(":", 1)[1])
        n = 10_000  # ~600 kB of events: more than the server's buffers and the kernel's between us hold
        expected = model.tokens("big", n)
        body = json.dumps({"prompt": "big", "max_tokens": n, "tokens_per_s": 0}).encode()
        req = (
            b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        await asyncio.get_running_loop().sock_sendall(sock, req)
        # The client reads nothing: the server's send waits, then the stall timeout closes the response.
        await wait_for(lambda: app.metrics.backpressure_closes_total == 1 and not app.streaming)
        received = b""
        loop = asyncio.get_running_loop()
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
                received += chunk
        except ConnectionResetError:
            pass
        sock.close()
        _status, headers, chunked = split_response(received)
        assert headers["transfer-encoding"] == "chunked"
        body, complete = dechunk(chunked)
        assert not complete  # cut by the stall timeout: no last chunk, the client sees an incomplete body
        evs = events(body)
        got = tokens(evs)
        assert len(got) < n, len(got)
        stream_id = json.loads(evs[0].data)["stream_id"]
        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.get(f"/v1/streams/{stream_id}/events", headers={"Last-Event-ID": evs[-1].last_event_id})
        got += tokens(events(r.content))
        assert got == expected
        assert model.calls == 1


def _fastapi_app(hub: Hub, model: FakeModel, tw: TokenwireASGI) -> FastAPI:
    app = FastAPI(lifespan=tw.lifespan)
    app.mount("/tw", tw)

    @app.post("/ask")
    async def ask(prompt: str) -> Response:
        stream = hub.start(model.generate(prompt, max_tokens=60, tokens_per_s=400))
        return stream_response(hub, stream.id, events_url=f"/answers/{stream.id}", headers={"x-app": "mine"})

    @app.get("/answers/{stream_id}")
    async def answer(stream_id: str, last_event_id: Annotated[str | None, Header()] = None) -> Response:
        return stream_response(hub, stream_id, last_event_id)

    return app


async def test_fastapi_app_mounts_tokenwire_under_a_prefix_and_streams_from_its_own_route(
    serve: ServerFactory,
) -> None:
    hub = Hub()
    model = FakeModel(seed=5)
    tw = TokenwireASGI(hub, ServerOptions(generator=model))
    async with serve(_fastapi_app(hub, model, tw)) as base, httpx.AsyncClient(base_url=base) as client:
        assert hub._janitor is not None  # the outer app's lifespan ran tw's startup
        assert (await client.get("/tw/healthz")).json()["epoch"] == hub.epoch
        r = await client.post("/tw/v1/streams", json={"prompt": "p", "max_tokens": 8, "tokens_per_s": 0})
        stream_id = r.headers["x-tokenwire-stream-id"]
        assert r.headers["location"] == f"/tw/v1/streams/{stream_id}/events"
        evs = events(r.content)
        assert json.loads(evs[0].data)["events_url"] == f"/tw/v1/streams/{stream_id}/events"
        assert tokens(evs) == model.tokens("p", 8)
        r = await client.get(f"/tw/v1/streams/{stream_id}/events", headers={"Last-Event-ID": evs[4].last_event_id})
        assert tokens(events(r.content)) == model.tokens("p", 8)[4:]
        assert (await client.get("/tw/v1/nothing")).status_code == 404

        # The app's own route: a stream from the shared hub, dropped, then resumed at another route.
        expected = model.tokens("mine", 60)
        async with client.stream("POST", "/ask", params={"prompt": "mine"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert resp.headers["x-app"] == "mine"
            location = resp.headers["location"]
            first, _ = await read_until(resp, 10)
        assert json.loads(first[0].data)["events_url"] == location
        r = await client.get(location, headers={"Last-Event-ID": first[-1].last_event_id})
        assert r.status_code == 200
        again = events(r.content)
        assert tokens(first) + tokens(again) == expected
        assert model.calls == 2  # "p" and "mine", each once
        r = await client.get(location, headers={"Last-Event-ID": again[-1].last_event_id})
        assert r.status_code == 204
        r = await client.get("/answers/unknown")
        assert r.status_code == 404 and r.json()["error"]["type"] == "StreamNotFound"
        r = await client.get(location, headers={"Last-Event-ID": "garbage"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "RemoteProtocolError"
    assert hub._janitor is None  # and its shutdown


def test_stream_response_checks_the_resume_point_at_once() -> None:
    hub = Hub()
    s = hub.create_stream("s1")
    s.send_many(["a", "b"])
    ok = stream_response(hub, "s1", f"s1:{hub.epoch}:1")
    assert isinstance(ok, Response) and isinstance(ok, EventStreamResponse)
    assert ok.status_code == 200 and ok.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert "location" not in ok.headers
    assert stream_response(hub, "s1", "s1:elsewhere:1").status_code == 409
    assert stream_response(hub, "s1", f"s1:{hub.epoch}:9").status_code == 400
    assert stream_response(hub, "zz").status_code == 404
    s.finish()
    assert stream_response(hub, "s1", f"s1:{hub.epoch}:3").status_code == 204
    assert hub.counters["resumes"] == 1


def _example(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "tokenwire_example"}
    exec(compile(source, "<example>", "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


async def test_readme_fastapi_example_runs(serve: ServerFactory) -> None:
    section = README.read_text().split("## ASGI (FastAPI / Starlette)", 1)[1].split("\n## ", 1)[0]
    (source,) = re.findall(r"```py\n(.*?)```", section, flags=re.DOTALL)
    ns = _example(source)
    hub: Hub = ns["hub"]
    async with serve(ns["app"]) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/ask", params={"prompt": "hi"})
        evs = events(r.content)
        assert tokens(evs) == ns["model"].tokens("hi", 64) and evs[-1].type == "done"
        stream_id = json.loads(evs[0].data)["stream_id"]
        r = await client.get(f"/answers/{stream_id}", headers={"Last-Event-ID": evs[-3].last_event_id})
        assert len(tokens(events(r.content))) == 1
        r = await client.post("/tw/v1/streams", json={"prompt": "x", "max_tokens": 3})
        assert r.status_code == 200 and r.headers["location"].startswith("/tw/v1/streams/")
    assert hub._janitor is None


async def test_module_docstring_starlette_example_runs(serve: ServerFactory) -> None:
    doc = tokenwire.asgi.__doc__ or ""
    block = doc.split("Example (``uvicorn example:app``)::\n", 1)[1].split("\nHow a stream is served", 1)[0]
    ns = _example("\n".join(line.removeprefix("    ") for line in block.splitlines()))
    async with serve(ns["app"]) as base, httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/ask", json={"prompt": "doc"})
        evs = events(r.content)
        assert tokens(evs) == ns["model"].tokens("doc", 64)
        assert r.headers["location"] == f"/answers/{json.loads(evs[0].data)['stream_id']}"
        r = await client.get(r.headers["location"], headers={"Last-Event-ID": evs[-1].last_event_id})
        assert r.status_code == 204
        assert (await client.get("/tw/healthz")).status_code == 200


def test_stream_response_is_a_plain_asgi_app_without_starlette() -> None:
    code = """
import asyncio, sys
sys.modules["starlette"] = None  # any import of starlette fails

from tokenwire import Hub
from tokenwire.asgi import stream_response


async def main() -> None:
    hub = Hub()
    s = hub.create_stream("s")
    s.send_many(["a", "b"])
    s.finish()
    resp = stream_response(hub, "s", f"s:{hub.epoch}:1")
    assert [c.__module__ for c in type(resp).__mro__[1:-1]] == ["tokenwire.asgi"]
    sent = []

    async def receive():
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    await resp({"type": "http"}, receive, send)
    assert sent[0]["status"] == 200 and sent[-1]["more_body"] is False
    body = b"".join(m["body"] for m in sent[1:])
    assert b"data: b" in body and b"event: done" in body and b"data: a" not in body, body
    print("ok")


asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
