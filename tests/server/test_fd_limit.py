"""At the file-descriptor limit the SSE server answers new connections 503 with Retry-After, logs it, and
counts it in /metrics (server/accept.py). The server runs in a child process with a low RLIMIT_NOFILE, on
the same event loop as the test (asyncio or uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.usefixtures("no_leaks")

LIMIT = 64

CHILD = """
import asyncio, logging, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
import uvloop
from tokenwire.server import ServerConfig, SseServer

async def main():
    server = SseServer(None, ServerConfig(host="127.0.0.1", port=0))
    await server.start()
    print(server.port, flush=True)
    await server.serve_forever()

logging.basicConfig(level=logging.WARNING)
(uvloop.run if sys.argv[2] == "uvloop" else asyncio.run)(main())
"""

GET = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"


async def request(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: bytes = b"/healthz"
) -> tuple[int, bytes]:
    reader, writer = conn
    writer.write(GET % path)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return int(head.split()[1]), head + await asyncio.wait_for(reader.readexactly(length), 5)


async def test_connections_past_the_descriptor_limit_get_503_and_are_counted() -> None:
    kind = "uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(LIMIT), kind, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        assert child.stdout is not None and child.stderr is not None
        port = int(await asyncio.wait_for(child.stdout.readline(), 20))
        statuses: list[int] = []
        refusal = b""
        # Kept-alive connections hold a descriptor each in the server, until it has none left.
        for _ in range(3 * LIMIT):
            conn = await asyncio.open_connection("127.0.0.1", port)
            status, raw = await request(conn)
            statuses.append(status)
            if status == 200:
                conns.append(conn)
                continue
            refusal = raw
            conn[1].close()
            if statuses.count(503) == 3:
                break
        accepted = statuses.count(200)
        assert 0 < accepted < LIMIT and statuses == [200] * accepted + [503] * 3, statuses
        assert b"Retry-After: 1\r\n" in refusal and b"Connection: close\r\n" in refusal
        assert b'"status": 503' in refusal
        # Once connections are freed the server accepts again, and /metrics counts the refusals.
        for _, writer in conns:
            writer.close()
        conns.clear()
        await asyncio.sleep(0.2)
        conn = await asyncio.open_connection("127.0.0.1", port)
        conns.append(conn)
        status, raw = await request(conn, b"/metrics")
        assert status == 200
        text = raw.split(b"\r\n\r\n", 1)[1].decode()
        counts = {
            s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if "fd_limit" in s.name
        }
        assert counts == {"tokenwire_fd_limit_refusals_total": 3.0}, counts
    finally:
        for _, writer in conns:
            writer.close()
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        _, err = await child.communicate()
    # Logged once (rate-limited), with what to do about it.
    assert err.decode().count("out of file descriptors") == 1, err.decode()
