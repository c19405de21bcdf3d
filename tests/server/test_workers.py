"""``tokenwire serve --workers N``: N real server processes on one port (SO_REUSEPORT) under a supervisor,
over a storage they share (a real redis-server); refused over in-memory storage."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from tokenwire import FakeModel
from tokenwire.client import SseClient
from tokenwire.client.webtransport import WebTransportClient
from tokenwire.workers import reserve_port

needs_redis_storage = pytest.mark.skipif(
    importlib.util.find_spec("tokenwire.redis_storage") is None,
    reason="tokenwire.redis_storage is not there yet: workers need a shared storage (--storage redis://)",
)


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "tokenwire", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("storage", [[], ["--storage", "memory://"]], ids=["default", "memory"])
def test_workers_over_in_memory_storage_are_refused(storage: list[str]) -> None:
    proc = serve("--workers", "2", *storage)
    assert proc.returncode == 2
    assert proc.stdout == ""  # nothing started
    assert "--workers 2 needs a storage that every worker shares" in proc.stderr
    assert "a resume would land on another worker, which does not hold the stream" in proc.stderr
    assert "--storage redis://HOST:PORT/DB" in proc.stderr


def test_unknown_storage_is_a_usage_error() -> None:
    proc = serve("--storage", "ftp://nowhere")
    assert proc.returncode == 2
    assert "unknown storage URL 'ftp://nowhere'" in proc.stderr


def test_the_supervisor_reserves_one_port_number_for_tcp_and_udp() -> None:
    port, reservation = reserve_port("127.0.0.1", 0, udp=True)
    joined = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert port > 0
        assert [(s.type, s.getsockname()) for s in reservation] == [
            (socket.SOCK_STREAM, ("127.0.0.1", port)),
            (socket.SOCK_DGRAM, ("127.0.0.1", port)),
        ]
        joined.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        joined.bind(("127.0.0.1", port))  # a worker joins the group
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # anyone else is kept out
    finally:
        for sock in [*reservation, joined, plain]:
            sock.close()


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts: an orphan's new parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def _wait_gone(pid: int) -> None:
    async with asyncio.timeout(30):
        while not _gone(pid):  # noqa: ASYNC110 - another process's end, polled
            await asyncio.sleep(0.02)


class Workers:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, pids: list[int], lines: list[str]) -> None:
        self.proc, self.port, self.pids, self.lines = proc, port, pids, lines
        self.base = f"http://127.0.0.1:{port}"

    async def pinned_clients(self) -> dict[int, httpx.AsyncClient]:
        """A keep-alive client per worker (a connection stays with the worker the kernel gave it): new
        connections until every worker has answered one."""
        clients: dict[int, httpx.AsyncClient] = {}
        for _ in range(64):  # each new connection has a new source port: a new draw of the kernel's hash
            client = httpx.AsyncClient(base_url=self.base)
            pid = (await client.get("/healthz")).json()["pid"]
            if pid in clients:
                await client.aclose()
                continue
            clients[pid] = client
            if len(clients) == len(self.pids):
                break
        return clients


@contextlib.asynccontextmanager
async def workers(redis_url: str, *args: str, n: int = 2) -> AsyncIterator[Workers]:
    """``tokenwire serve --workers N --port 0 --storage REDIS ARGS``: its port and worker pids, read from what
    it prints; it must stop every worker and exit 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenwire", "serve", "--workers", str(n), "--port", "0", "--tokens-per-s", "0",
        "--drain-timeout", "1", "--storage", redis_url, *args,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    pids: list[int] = []
    try:
        async with asyncio.timeout(60):
            while not lines or " workers serving " not in lines[-1]:
                line = (await proc.stdout.readline()).decode()
                assert line, f"tokenwire serve exited: {lines}"
                lines.append(line)
        summary = re.search(r"(\d+) workers serving .* on http://127\.0\.0\.1:(\d+) .*; pids ([\d, ]+)$", lines[-1])
        assert summary, lines
        pids = [int(p) for p in summary[3].split(", ")]
        assert int(summary[1]) == n == len(pids) == len(set(pids))
        port = int(summary[2])
        for index, pid in enumerate(pids):  # one line per worker, with its pid, on the one port
            assert any(
                f"worker {index} (pid {pid}): " in line and f"http://127.0.0.1:{port} " in line for line in lines
            )
        yield Workers(proc, port, pids, lines)
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
            assert all(_gone(pid) for pid in pids)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in pids:  # nothing left behind, whatever failed
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        # The workers held the supervisor's stdout too: read it to its end, so the pipe's transport is closed
        # before the loop is (uvloop cannot close a loop with a handle still reading: EBUSY).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await proc.stdout.read()


@needs_redis_storage
async def test_two_workers_answer_on_one_port_and_stream(redis_url: str) -> None:
    async with workers(redis_url, "--no-webtransport") as w:
        clients = await w.pinned_clients()
        try:
            assert set(clients) == set(w.pids)  # two distinct processes behind the one port
        finally:
            for client in clients.values():
                await client.aclose()
        async with SseClient(w.base) as client:
            reader = await client.generate("workers", max_tokens=20)
            assert "".join([token async for token in reader]) == "".join(FakeModel(seed=0).tokens("workers", 20))


@needs_redis_storage
async def test_webtransport_on_every_worker_with_one_certificate(redis_url: str, wt_engine: str) -> None:
    async with workers(redis_url, "--wt-engine", wt_engine) as w:
        assert sum(f"serving WebTransport on https://127.0.0.1:{w.port}/" in line for line in w.lines) == 2
        assert sum(f"{wt_engine} engine" in line for line in w.lines) == 2  # native: SO_REUSEPORT in the engine
        clients = await w.pinned_clients()
        try:
            assert set(clients) == set(w.pids)
            hashes = {(await c.get("/v1/webtransport/certificate")).json()["sha256"] for c in clients.values()}
        finally:
            for client in clients.values():
                await client.aclose()
        assert len(hashes) == 1  # one pinned hash is good whichever worker a client's packets reach
        url = f"https://127.0.0.1:{w.port}/v1/webtransport"
        pinned = bytes.fromhex(hashes.pop())
        expected = "".join(FakeModel(seed=0).tokens("wt", 12))
        for _ in range(6):  # a client each: a new UDP source port, a new draw of the kernel's hash
            async with WebTransportClient(url, server_certificate_hashes=[pinned]) as client:
                reader = await client.generate("wt", max_tokens=12)
                assert await reader.text() == expected


@needs_redis_storage
async def test_a_worker_that_dies_stops_the_others(redis_url: str) -> None:
    async with workers(redis_url, "--no-webtransport") as w:
        os.kill(w.pids[0], signal.SIGKILL)
        async with asyncio.timeout(30):
            assert await w.proc.wait() == 1  # the supervisor exits, with an error
        await _wait_gone(w.pids[1])


@needs_redis_storage
async def test_workers_stop_when_their_supervisor_is_killed(redis_url: str) -> None:
    async with workers(redis_url, "--no-webtransport") as w:
        w.proc.kill()  # no chance to forward anything: the workers' lifeline pipe ends
        await w.proc.wait()
        for pid in w.pids:
            await _wait_gone(pid)


@needs_redis_storage
async def test_webtransport_migration_to_another_worker_ends_in_a_resume(redis_url: str, wt_engine: str) -> None:
    """A client that changes its address (connection migration, NAT rebinding) may be hashed to another worker,
    which does not know its QUIC connection and drops its packets: the client's connection times out, it
    reconnects (to any worker) and resumes the stream from the shared storage, every token exactly once
    (docs/scaling.md, "Workers and WebTransport")."""
    async with workers(redis_url, "--wt-engine", wt_engine) as w:
        async with httpx.AsyncClient(base_url=w.base) as http:
            pinned = bytes.fromhex((await http.get("/v1/webtransport/certificate")).json()["sha256"])
        url = f"https://127.0.0.1:{w.port}/v1/webtransport"
        expected = FakeModel(seed=0).tokens("moves", 60)
        for _ in range(3):  # each rebind draws a worker again: the same one (migration) or the other (resume)
            client = WebTransportClient(url, server_certificate_hashes=[pinned], idle_timeout=1.0, backoff_initial=0.01)
            await moves(client, "moves", expected)


async def moves(client: WebTransportClient, prompt: str, expected: list[str]) -> int:
    """``client`` reads ``prompt``'s answer and moves to a new socket after 10 tokens (the kernel hashes it to a
    worker again): every token exactly once. Returns the reader's reconnects."""
    async with client:
        reader = await client.generate(prompt, max_tokens=len(expected), tokens_per_s=100)
        got: list[str] = []
        async for token in reader:
            got.append(token)
            if len(got) == 10:
                await client.rebind()
        assert got == expected
        return reader.reconnects
