"""``tokenwire loadtest`` against a real ``tokenwire serve`` process, as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    yield from _serve()


@pytest.fixture(scope="module")
def other_server() -> Iterator[tuple[str, int]]:
    """A second in-memory server: it does not hold the first one's streams."""
    yield from _serve()


def _serve() -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenwire", "serve", "--port", "0", "--engine-steps-per-s", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving SSE on http://127.0.0.1:" in line, line
    url = line.split(" on ")[1].split(" ")[0]
    try:
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "tokenwire", "loadtest", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_many_streams_with_forced_disconnects_lose_nothing(server: tuple[str, int], tmp_path: Path) -> None:
    url, pid = server
    report_path = tmp_path / "report.json"
    started = time.monotonic()
    proc = loadtest(
        "--url", url, "--streams", "200", "--ramp", "2000", "--max-tokens", "60", "--tokens-per-s", "50",
        "--disconnect-rate", "1.0", "--server-pid", str(pid), "--json", str(report_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
    assert "streams active" in proc.stderr  # live progress
    assert "-> PASS" in proc.stderr
    report = json.loads(report_path.read_text())
    assert report["passed"]
    assert report["streams"] == {"total": 200, "ok": 200, "failed": 0, "errors": {}}
    assert report["tokens"]["total"] == 200 * 60
    assert report["correctness"] == {"lost": 0, "duplicated": 0, "content_mismatches": 0, "incomplete": 0}
    assert report["disconnects"]["forced"] > 50
    assert report["resume_s"]["p50"] > 0
    assert report["delivery_lag_s"]["count"] == 200 * 60
    assert 0 < report["ttft_s"]["p50"] < 5
    assert report["server"]["cpu_seconds"] > 0


def test_several_client_processes(server: tuple[str, int]) -> None:
    url, _ = server
    proc = loadtest("--url", url, "--streams", "40", "--max-tokens", "30", "--tokens-per-s", "50", "--procs", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "streams   40/40 ok" in proc.stderr
    assert "maximum over worker processes" not in proc.stderr  # the summary stays readable


def test_unreachable_server_fails_loudly() -> None:
    proc = loadtest("--url", "http://127.0.0.1:9", "--streams", "3", "--max-tokens", "5")
    assert proc.returncode == 1
    assert "0/3 ok" in proc.stderr
    assert "connection error" in proc.stderr


def _started(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # noqa: S310 - our test server
        text = resp.read().decode()
    found = re.search(r'^tokenwire_streams_started_total\{protocol="sse"\} (\d+)', text, re.MULTILINE)
    assert found, text
    return int(found[1])


def test_several_urls_resume_on_another_node_in_memory_ones_answer_errors(
    server: tuple[str, int], other_server: tuple[str, int], tmp_path: Path
) -> None:
    """Streams start round robin; a cut stream resumes on the other url. Two in-memory servers share nothing,
    so each cross-node resume is answered 404 or 409: reported as stream errors, not a crash."""
    (a, _), (b, _) = server, other_server
    before = _started(a), _started(b)
    report_path = tmp_path / "report.json"
    proc = loadtest(
        "--url", a, "--url", b, "--streams", "20", "--max-tokens", "60", "--tokens-per-s", "50",
        "--disconnect-rate", "3", "--json", str(report_path),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (_started(a) - before[0], _started(b) - before[1]) == (10, 10)  # round robin
    report = json.loads(report_path.read_text())
    assert report["config"]["urls"] == [a, b]
    d = report["disconnects"]
    assert d["resumes"] > 0
    assert d["cross_node_resumes"] == d["resumes"]  # with two urls, a resume always goes to the other one
    errors = report["streams"]["errors"]
    assert set(errors) <= {"HTTP 404", "HTTP 409"}
    assert sum(errors.values()) == report["streams"]["failed"] == d["resumes"]
    assert report["resume_cross_node_s"] == {}  # no cross-node resume got a byte of its stream
    assert f"nodes     2 urls; {d['resumes']} of {d['resumes']} resumes on another node" in proc.stderr
