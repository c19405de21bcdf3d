"""``@microsoft/fetch-event-source`` (npm) as a real SSE client, behind a TCP proxy that cuts connections.

- :func:`install` puts the package in a directory (``npm install``); ``None`` when npm or the registry is not
  available (the caller skips with the reason).
- :class:`CuttingProxy` forwards a TCP connection to the server and ends the ``k``-th one after ``cut(k)``
  bytes of its response *body* (counted after the response head), with a FIN as a network cut that lets
  the last bytes through would: the client sees its response end early and retries.
- :func:`run_client` drives the package in Node as an application would: ``openWhenHidden``, a retry after
  every early end (``onclose`` throws, ``onerror`` returns a 1 ms delay), a stop on 204 or on the final
  event, and reports every message it dispatched and how many requests it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

__all__ = ["DRIVER", "CuttingProxy", "install", "run_client"]

PACKAGE = "@microsoft/fetch-event-source@2.0.1"

#: The Node driver: argv[2] is a JSON config {url, method, headers, body}; prints one JSON line.
DRIVER = r"""
globalThis.window = globalThis;
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };
const { fetchEventSource } = require('@microsoft/fetch-event-source');
const cfg = JSON.parse(process.argv[2]);
class Stop extends Error {}
const messages = [];
let opens = 0, finished = false, status = 0;
fetchEventSource(cfg.url, {
  method: cfg.method, headers: cfg.headers, body: cfg.body, openWhenHidden: true,
  async onopen(response) {
    opens += 1; status = response.status;
    if (response.status === 204) { finished = true; throw new Stop('204'); }
    if (!response.ok) throw new Stop('status ' + response.status);
  },
  onmessage(m) {
    messages.push({ event: m.event, data: m.data, id: m.id });
    if (m.event === 'done' || m.event === 'error' || m.data === '[DONE]') finished = true;
  },
  onclose() { if (!finished) throw new Error('cut'); },
  onerror(err) { if (err instanceof Stop || opens > cfg.max_opens) throw err; return 1; },
}).then(
  () => console.log(JSON.stringify({ messages, opens, finished, status })),
  (err) => console.log(JSON.stringify({ messages, opens, finished, status, error: String(err) })),
);
"""


def install(directory: Path) -> str | None:
    """Install the package into ``directory``; the reason it could not be, or ``None`` when it is there."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return "npm/node are not installed"
    proc = subprocess.run(  # noqa: S603 - npm with fixed arguments
        [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(directory), PACKAGE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        return f"npm install {PACKAGE} failed (registry unreachable?): {proc.stderr.strip()[-300:]}"
    (directory / "driver.js").write_text(DRIVER)
    return None


async def run_client(
    directory: Path,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: Any = None,
    max_opens: int = 10_000,
) -> dict[str, Any]:
    """Run the driver once: ``{messages: [{event, data, id}], opens, finished, status, error?}``."""
    node = shutil.which("node")
    assert node is not None
    cfg = {
        "url": url,
        "method": method,
        "headers": headers or {},
        "body": None if body is None else json.dumps(body),
        "max_opens": max_opens,
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(directory / "driver.js"),
        json.dumps(cfg),
        cwd=directory,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:  # the caller's timeout
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


class CuttingProxy:
    """TCP proxy to ``upstream`` that ends connection ``k`` (0, 1, ...) after ``cut(k)`` response-body bytes
    (``None``: never). ``cuts`` records where each connection was cut."""

    def __init__(self, upstream: tuple[str, int], cut: Callable[[int], int | None]) -> None:
        self.upstream = upstream
        self.cut = cut
        self.connections = 0
        self.cuts: list[int] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        k = self.connections
        self.connections += 1
        budget = self.cut(k)
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        upload = asyncio.create_task(self._pipe(client_r, up_w))
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await up_r.read(65536)
                if not chunk:
                    break
                head += chunk
            head, sep, body = head.partition(b"\r\n\r\n")
            client_w.write(head + sep)
            sent = 0
            while True:
                if budget is not None and sent + len(body) >= budget:
                    client_w.write(body[: budget - sent])
                    self.cuts.append(budget)
                    break
                client_w.write(body)
                sent += len(body)
                await client_w.drain()
                body = await up_r.read(65536)
                if not body:
                    break
            await client_w.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            upload.cancel()
            with contextlib.suppress(BaseException):
                await upload
            up_w.close()
            client_w.close()  # a FIN: the client's response ends early
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
