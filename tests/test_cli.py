"""The ``tokenwire`` command, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.support.servers import serve_process
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
    async with serve_process("--retry-ms", "250") as base, httpx.AsyncClient(base_url=base) as http:
        r = await http.post("/v1/streams", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 200
    assert r.text.startswith("retry: 250\n\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--retry-ms", "-1"])
    assert exit_info.value.code == 2
