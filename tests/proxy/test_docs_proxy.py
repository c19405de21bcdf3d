"""docs/proxy.md runs as written: its servers as the test starts them, its shell and Python blocks against them
(the documented ports swapped for the ones the processes got)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.proxy.conftest import ROOT, Serve
from tests.support.upstream import Upstream

DOC = ROOT / "docs" / "proxy.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Upstream, Serve]]:
    start = blocks("bash")[0]
    assert ".venv/bin/python -m tests.support.upstream --port 9000 --tokens-per-s 20 &" in start
    assert ".venv/bin/tokenwire serve --upstream http://127.0.0.1:9000/v1" in start
    with Upstream("--tokens-per-s", "20") as upstream, Serve("--upstream", upstream.url, webtransport=False) as serve:
        yield upstream, serve


def as_run(text: str, upstream: Upstream, serve: Serve, tmp_path: Path) -> str:
    return (
        text.replace("http://127.0.0.1:8000", serve.base)
        .replace("http://127.0.0.1:9000", upstream.origin)
        .replace("/tmp/", f"{tmp_path}/")  # noqa: S108 - the doc's paths, moved to the test's own folder
    )


@pytest.mark.timeout(60)
def test_the_curl_session_cuts_resumes_and_calls_once(servers: tuple[Upstream, Serve], tmp_path: Path) -> None:
    upstream, serve = servers
    script = as_run(blocks("bash")[1], upstream, serve, tmp_path)
    out = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, timeout=30, check=True)  # noqa: S603, S607
    assert "data: [DONE]" in out.stdout
    assert '"calls": 1' in out.stdout
    first = (tmp_path / "first.txt").read_text()
    assert "data: {" in first and "[DONE]" not in first  # the first request was cut mid-answer


@pytest.mark.timeout(60)
def test_the_python_blocks_run(servers: tuple[Upstream, Serve], tmp_path: Path) -> None:
    upstream, serve = servers
    sdk, api = blocks("python")
    out = subprocess.run(  # noqa: S603
        [sys.executable, "-c", as_run(sdk, upstream, serve, tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "usage: " in out.stdout and out.stdout.strip().endswith(("length", "stop"))
    subprocess.run([sys.executable, "-c", api], capture_output=True, text=True, timeout=30, check=True)  # noqa: S603


@pytest.mark.timeout(60)
def test_the_metrics_block_shows_the_upstream_requests(servers: tuple[Upstream, Serve], tmp_path: Path) -> None:
    upstream, serve = servers
    script = as_run(blocks("bash")[2], upstream, serve, tmp_path)
    assert "/metrics" in script
    out = subprocess.run(  # noqa: S603
        ["bash", "-e", "-o", "pipefail", "-c", script],  # noqa: S607
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    shown = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines())
    assert set(shown) == {
        'tokenwire_upstream_requests_total{outcome="streamed"}',
        'tokenwire_upstream_requests_total{outcome="completed"}',
        "tokenwire_upstream_open_requests",
    }
    # The upstream's own count: every stream the proxy started ran to its end (the tests before ran some).
    calls = httpx.get(upstream.origin + "/calls", timeout=10).json()
    assert float(shown['tokenwire_upstream_requests_total{outcome="completed"}']) == calls["completed"]
    assert float(shown['tokenwire_upstream_requests_total{outcome="streamed"}']) == calls["calls"]
