"""The ``tokenwire`` command, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys


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
