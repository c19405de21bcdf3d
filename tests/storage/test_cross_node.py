"""Resume on any node: real ``tokenwire serve`` processes (each on its own port) sharing one real
``redis-server``, driven over HTTP by httpx; one node killed with SIGKILL; the ASGI app under ``uvicorn
--workers 2``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.redis_server import RedisProcess
from tokenwire import FakeModel, StreamNotFound, _core
from tokenwire.client.webtransport import WebTransportClient

pytestmark = pytest.mark.timeout(120)


class Node:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, line: str) -> None:
        self.proc, self.port, self.line = proc, port, line
        self.base = f"http://127.0.0.1:{port}"

    async def metric(self, client: httpx.AsyncClient, name: str) -> float:
        text = (await client.get(f"{self.base}/metrics")).text
        return sum(float(m[1]) for m in re.finditer(rf"^tokenwire_{name}{{[^}}]*}} (\S+)$", text, re.MULTILINE))


@contextlib.asynccontextmanager
async def nodes(redis_url: str, n: int, *args: str, same_epoch: bool = True) -> AsyncIterator[list[Node]]:
    """``n`` separate ``tokenwire serve`` processes on one Redis (as on ``n`` machines); stopped with SIGTERM."""
    started: list[Node] = []
    try:
        for _ in range(n):
            webtransport = [] if "--webtransport" in args else ["--no-webtransport"]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tokenwire", "serve", "--port", "0", *webtransport,
                "--storage", redis_url, "--drain-timeout", "1", *args,
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                line = (await proc.stdout.readline()).decode()
            found = re.search(r"http://127\.0\.0\.1:(\d+) ", line)
            assert found, line
            started.append(Node(proc, int(found[1]), line))
        if same_epoch:
            async with httpx.AsyncClient() as client:
                epochs = {(await client.get(f"{n.base}/healthz")).json()["epoch"] for n in started}
            assert len(epochs) == 1 and "-" not in epochs  # one store, one epoch
        yield started
    finally:
        for node in started:
            if node.proc.returncode is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in started:
            try:
                async with asyncio.timeout(15):
                    await node.proc.wait()
            except TimeoutError:
                node.proc.kill()
                await node.proc.wait()
            with contextlib.suppress(Exception):  # the pipe's end, before the loop closes (uvloop: EBUSY)
                async with asyncio.timeout(10):
                    await node.proc.stdout.read()  # type: ignore[union-attr]


async def events(
    client: httpx.AsyncClient, method: str, url: str, *, limit: int | None = None, **kw: object
) -> tuple[int, list[tuple[str, str, str]]]:
    """(status, events) of one request, reading at most ``limit`` events and then dropping the connection."""
    decoder = _core.SseDecoder()
    got: list[tuple[str, str, str]] = []
    async with client.stream(method, url, **kw) as response:  # type: ignore[arg-type]
        if response.status_code != 200:
            await response.aread()
            return response.status_code, [("", "status", response.text)]
        async for chunk in response.aiter_bytes():
            got += decoder.feed(chunk)
            if limit is not None and len(got) >= limit:
                break
            if got and got[-1][1] in ("done", "error"):
                break
    return 200, got[:limit] if limit is not None else got


async def test_streams_resume_exactly_once_on_random_nodes_and_the_model_runs_once(redis_url: str) -> None:
    rng = random.Random(3)
    async with nodes(redis_url, 3, "--tokens-per-s", "200") as cluster, httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> int:
            prompt, n = f"prompt {i}", 60
            home = rng.choice(cluster)
            status, got = await events(
                client, "POST", f"{home.base}/v1/streams", json={"prompt": prompt, "max_tokens": n},
                limit=rng.randrange(1, 20),
            )  # fmt: skip
            assert status == 200
            cuts = 0
            while got[-1][1] not in ("done", "error"):
                node = rng.choice([c for c in cluster if c is not home] or cluster)
                last_id = got[-1][0]
                stream_id = last_id.split(":")[0]
                status, more = await events(
                    client, "GET", f"{node.base}/v1/streams/{stream_id}/events",
                    headers={"Last-Event-ID": last_id}, limit=rng.choice([5, 15, None]),
                )  # fmt: skip
                assert status == 200, more
                got += more
                cuts += 1
            tokens = [data for _, kind, data in got if kind == "token"]
            assert got[-1][1] == "done", got[-1]
            seqs = [int(i.rsplit(":", 1)[1]) for i, kind, _ in got if kind == "token"]
            assert seqs == list(range(1, n + 1))  # none lost, none twice, across nodes
            assert "".join(tokens) == "".join(FakeModel(seed=0).tokens(prompt, n))
            return cuts

        cuts = await asyncio.gather(*(one(i) for i in range(12)))
        assert sum(cuts) >= 12
        started = [await node.metric(client, "streams_started_total") for node in cluster]
        assert sum(started) == 12  # the model ran once per prompt, whichever node served the resumes
        restored = sum([await node.metric(client, "storage_redis_restores") for node in cluster])
        assert restored >= 1


async def test_cancel_on_another_node_stops_the_generation(redis_url: str) -> None:
    async with nodes(redis_url, 2, "--tokens-per-s", "50") as (a, b), httpx.AsyncClient(timeout=30) as client:
        status, got = await events(
            client, "POST", f"{a.base}/v1/streams", json={"prompt": "p", "max_tokens": 5000}, limit=2
        )
        assert status == 200
        stream_id = got[-1][0].split(":")[0]
        assert (await client.delete(f"{b.base}/v1/streams/{stream_id}")).status_code == 204
        status, rest = await events(
            client, "GET", f"{a.base}/v1/streams/{stream_id}/events", headers={"Last-Event-ID": got[-1][0]}
        )
        assert rest[-1][1] == "done" and json.loads(rest[-1][2])["reason"] == "cancelled"
        assert len(rest) < 200  # stopped long before its 5,000 tokens
        assert (await client.delete(f"{b.base}/v1/streams/never-made")).status_code == 404


async def test_a_killed_producer_node_ends_its_streams_with_producer_lost(redis_url: str) -> None:
    async with nodes(redis_url, 2, "--tokens-per-s", "20") as (a, b), httpx.AsyncClient(timeout=60) as client:
        status, got = await events(
            client, "POST", f"{a.base}/v1/streams", json={"prompt": "p", "max_tokens": 5000}, limit=3
        )
        stream_id = got[-1][0].split(":")[0]
        reader = asyncio.ensure_future(
            events(client, "GET", f"{b.base}/v1/streams/{stream_id}/events", headers={"Last-Event-ID": got[-1][0]})
        )
        await asyncio.sleep(0.5)
        os.kill(a.proc.pid, signal.SIGKILL)  # no drain, no last ship: the node is gone
        status, rest = await asyncio.wait_for(reader, 30)  # the lease (3 s) lapses, a lease more, then the end
        assert status == 200
        last = rest[-1]
        assert last[1] == "error" and json.loads(last[2])["code"] == "producer_lost"
        seqs = [int(i.rsplit(":", 1)[1]) for i, kind, _ in [*got, *rest] if kind == "token"]
        assert seqs == list(range(1, len(seqs) + 1))  # everything shipped before the kill, once
        # Everything produced before is still resumable, on the node that is left.
        status, again = await events(client, "GET", f"{b.base}/v1/streams/{stream_id}/events")
        assert [e for e in again if e[1] == "token"] == [e for e in [*got, *rest] if e[1] == "token"]


APP = textwrap.dedent(
    """
    import os
    from tokenwire import Hub
    from tokenwire.asgi import TokenwireASGI
    from tokenwire.redis_storage import RedisStorage

    def make():
        return TokenwireASGI(Hub(RedisStorage(os.environ["TW_REDIS"])))
    """
)


async def test_asgi_app_under_uvicorn_workers_resumes_on_any_worker(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "twapp.py").write_text(APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "TW_REDIS": redis_url,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "twapp:make", "--factory", "--workers", "2", "--port", str(port),
        "--log-level", "warning", env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"{base}/healthz")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
            pids: set[int] = set()
            for i in range(6):
                # A new connection per request: the workers share the listening socket, any may answer.
                async with httpx.AsyncClient(timeout=30) as fresh:
                    status, got = await events(
                        fresh, "POST", f"{base}/v1/streams", json={"prompt": f"u{i}", "max_tokens": 30}, limit=5
                    )
                    assert status == 200
                while got[-1][1] != "done":
                    async with httpx.AsyncClient(timeout=30) as fresh:
                        pids.add((await fresh.get(f"{base}/healthz")).json().get("pid", 0))
                        stream_id = got[-1][0].split(":")[0]
                        status, more = await events(
                            fresh, "GET", f"{base}/v1/streams/{stream_id}/events",
                            headers={"Last-Event-ID": got[-1][0]}, limit=7,
                        )  # fmt: skip
                        assert status == 200, more
                        got += more
                seqs = [int(e[0].rsplit(":", 1)[1]) for e in got if e[1] == "token"]
                assert seqs == list(range(1, 31))
                assert "".join(e[2] for e in got if e[1] == "token") == "".join(FakeModel(seed=0).tokens(f"u{i}", 30))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_an_openai_chat_stream_resumes_on_another_node(redis_url: str) -> None:
    """The chat completion's metadata (id, model, created) travels with the stream: the OpenAI chunks resumed on
    node B carry the same id and model as those node A sent."""
    async with nodes(redis_url, 2, "--tokens-per-s", "100") as (a, b), httpx.AsyncClient(timeout=30) as client:
        body = {"model": "m-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "stream": True}
        status, first = await events(client, "POST", f"{a.base}/v1/chat/completions", json=body, limit=4)
        assert status == 200
        last_id = first[-1][0]
        status, rest = await events(
            client, "GET", f"{b.base}/v1/streams/{last_id.split(':')[0]}/events?format=openai",
            headers={"Last-Event-ID": last_id},
        )  # fmt: skip
        assert status == 200, rest
        chunks = [json.loads(data) for _, _, data in [*first, *rest] if data.startswith("{")]
        assert {c["id"] for c in chunks} == {f"chatcmpl-{last_id.split(':')[0]}"}
        assert {c["model"] for c in chunks} == {"m-1"} and len({c["created"] for c in chunks}) == 1
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "".join(FakeModel(seed=0).tokens("hi", 30))
        assert rest[-1][2] == "[DONE]"


async def test_a_stream_started_over_sse_resumes_over_webtransport_on_another_node(redis_url: str) -> None:
    async with (
        nodes(redis_url, 2, "--tokens-per-s", "100", "--webtransport") as (a, b),
        httpx.AsyncClient(timeout=30) as client,
    ):
        status, got = await events(
            client, "POST", f"{a.base}/v1/streams", json={"prompt": "wt", "max_tokens": 40}, limit=6
        )
        assert status == 200
        last_id = got[-1][0]
        stream_id = last_id.split(":")[0]
        cert = (await client.get(f"{b.base}/v1/webtransport/certificate")).json()
        async with WebTransportClient(cert["url"], server_certificate_hashes=[bytes.fromhex(cert["sha256"])]) as wt:
            reader = await wt.attach(stream_id, last_event_id=last_id)
            rest = await reader.text()
        sse_tokens = "".join(data for _, kind, data in got if kind == "token")
        assert sse_tokens + rest == "".join(FakeModel(seed=0).tokens("wt", 40))


async def test_a_node_without_redis_serves_and_answers_503_until_redis_is_back(redis_server: RedisProcess) -> None:
    redis_server.stop()
    async with nodes(redis_server.url, 1, same_epoch=False) as (node,), httpx.AsyncClient(timeout=30) as client:
        assert "NOT REACHABLE" in node.line, node.line  # it says so, and serves anyway
        r = await client.post(f"{node.base}/v1/streams", json={"prompt": "p", "max_tokens": 3})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "unreachable" in r.json()["error"]["message"]
        assert (await client.get(f"{node.base}/healthz")).json()["storage_up"] is False
        redis_server.start()
        for _ in range(200):  # the node's heartbeat finds it within a second
            if (await client.get(f"{node.base}/healthz")).json()["storage_up"]:
                break
            await asyncio.sleep(0.05)
        status, got = await events(client, "POST", f"{node.base}/v1/streams", json={"prompt": "p", "max_tokens": 3})
        assert status == 200 and got[-1][1] == "done"


async def test_a_post_retried_with_last_event_id_on_another_node_resumes_the_same_generation(redis_url: str) -> None:
    """What ``@microsoft/fetch-event-source`` does after a cut: the same POST again, with ``Last-Event-ID``;
    landing on another node, it still gets the rest of the one generation."""
    async with nodes(redis_url, 2, "--tokens-per-s", "100") as (a, b), httpx.AsyncClient(timeout=30) as client:
        body = {"prompt": "retry", "max_tokens": 25}
        status, got = await events(client, "POST", f"{a.base}/v1/streams", json=body, limit=5)
        assert status == 200
        status, rest = await events(
            client, "POST", f"{b.base}/v1/streams", json=body, headers={"Last-Event-ID": got[-1][0]}
        )
        assert status == 200, rest
        seqs = [int(i.rsplit(":", 1)[1]) for i, kind, _ in [*got, *rest] if kind == "token"]
        assert seqs == list(range(1, 26))
        assert [await n.metric(client, "streams_started_total") for n in (a, b)] == [1, 0]


async def test_a_stream_is_its_starters_alone_on_every_node(redis_url: str, tmp_path: Path) -> None:
    """``--api-key``: the principal a stream is labelled with before its first frame reaches the shared storage
    with it, so another node refuses another key's resume and cancel (404, over SSE and WebTransport) and serves
    the starter's."""
    alice, bob = "alice-key-0123456789", "bob-key-9876543210"
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{alice}\n{bob}\n")
    async with (
        nodes(redis_url, 2, "--tokens-per-s", "50", "--webtransport", "--api-key-file", str(keys)) as (a, b),
        httpx.AsyncClient(timeout=30) as client,
    ):
        as_alice, as_bob = {"authorization": f"Bearer {alice}"}, {"authorization": f"Bearer {bob}"}
        body = {"prompt": "owned", "max_tokens": 5000}
        status, got = await events(client, "POST", f"{a.base}/v1/streams", json=body, headers=as_alice, limit=4)
        assert status == 200
        last_id = got[-1][0]
        stream_id = last_id.split(":")[0]
        url = f"{b.base}/v1/streams/{stream_id}/events"
        status, refused = await events(client, "GET", url, headers={**as_bob, "last-event-id": last_id})
        assert status == 404 and json.loads(refused[0][2])["error"]["type"] == "StreamNotFound"
        assert (await client.delete(f"{b.base}/v1/streams/{stream_id}", headers=as_bob)).status_code == 404
        assert (await client.get(url)).status_code == 401
        cert = (await client.get(f"{b.base}/v1/webtransport/certificate", headers=as_alice)).json()
        pins = [bytes.fromhex(cert["sha256"])]
        async with WebTransportClient(cert["url"], server_certificate_hashes=pins, access_token=bob) as wt:
            with pytest.raises(StreamNotFound):
                await wt.attach(stream_id, last_event_id=last_id)
        async with WebTransportClient(cert["url"], server_certificate_hashes=pins, access_token=alice) as wt:
            reader = await wt.attach(stream_id, last_event_id=last_id)
            first = await reader.__anext__()
            await reader.aclose()
        sent = [data for _, kind, data in got if kind == "token"]
        assert [*sent, first] == FakeModel(seed=0).tokens("owned", len(sent) + 1)
        assert (await client.delete(f"{b.base}/v1/streams/{stream_id}", headers=as_alice)).status_code == 204
        status, rest = await events(client, "GET", url, headers={**as_alice, "last-event-id": last_id})
        assert rest[-1][1] == "done" and json.loads(rest[-1][2])["reason"] == "cancelled"
