"""``@microsoft/fetch-event-source`` (npm) as a real SSE client, behind a TCP proxy that cuts connections.

- :func:`install` puts the package in a directory (``npm install``); ``None`` when npm or the registry is not
  available (the caller skips with the reason).
- The connections are cut by ``tests.support.cut_proxy.cut_proxy(port, cut, body_only=True)``: the ``k``-th
  ends after ``cut(k)`` bytes of its response *body*, with a FIN as a network cut that lets the last bytes
  through would: the client sees its response end early and retries.
- :func:`run_client` drives the package in Node as an application would: ``openWhenHidden``, a retry after
  every early end (``onclose`` throws, ``onerror`` returns a 1 ms delay), a stop on 204 or on the final
  event, and reports every message it dispatched and how many requests it made.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["DRIVER", "install", "run_client"]

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
