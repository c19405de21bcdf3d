"""The ``tokenwire`` command, run as a user would run it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import httpx
import pytest

from tokenwire.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-m", "tokenwire", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_demo_drops_resumes_and_verifies() -> None:
    proc = run("demo", "--rate", "2000", "--ttft", "0", "--max-tokens", "300", "--drop-after", "50", "--away", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert "connection dropped at seq" in proc.stdout
    assert "tokens received 300/300, in order and exactly once: True; model runs: 1" in proc.stdout


def test_version_and_usage_errors() -> None:
    assert run("--version").stdout.startswith("tokenwire ")
    bad = run("no-such-command")
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr


async def test_serve_retry_ms_sets_the_retry_of_every_sse_answer() -> None:
    """``tokenwire serve --retry-ms 250``: an SSE answer opens with ``retry: 250`` (what the browser client and
    EventSource wait, about, before they reconnect); a negative value is a usage error."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tokenwire", "serve", "--port", "0", "--no-webtransport", "--retry-ms", "250",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        port = re.search(r"http://127\.0\.0\.1:(\d+) ", line)
        assert port, line
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port[1]}") as http:
            r = await http.post("/v1/streams", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 200
        assert r.text.startswith("retry: 250\n\n")
    finally:
        proc.terminate()
        await proc.stdout.read()
        assert await proc.wait() == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--retry-ms", "-1"])
    assert exit_info.value.code == 2
