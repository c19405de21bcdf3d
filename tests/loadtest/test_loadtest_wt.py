"""``tokenwire loadtest --protocol webtransport`` against a real ``tokenwire serve`` process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_LOADTEST = [sys.executable, "-m", "tokenwire", "loadtest", "--protocol", "webtransport"]


def test_webtransport_streams_over_two_sessions_lose_nothing(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "tokenwire", "serve", "--port", "0", "--engine-steps-per-s", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    try:
        line = server.stdout.readline()
        assert "serving SSE on http://127.0.0.1:" in line, line
        url = line.split(" on ")[1].split(" ")[0]
        report_path = tmp_path / "report.json"
        # The certificate hash comes from GET {url}/v1/webtransport/certificate (no --wt-cert-hash).
        proc = subprocess.run(  # noqa: S603 - our own CLI
            [
                *_LOADTEST,
                *f"--url {url} --streams 20 --sessions 2 --max-tokens 30 --tokens-per-s 50".split(),
                *["--server-pid", str(server.pid), "--json", str(report_path)],
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "-> PASS" in proc.stderr
        report = json.loads(report_path.read_text())
        assert report["streams"] == {"total": 20, "ok": 20, "failed": 0, "errors": {}}
        assert report["tokens"]["total"] == 20 * 30
        assert report["correctness"] == {"lost": 0, "duplicated": 0, "content_mismatches": 0, "incomplete": 0}
        assert report["delivery_lag_s"]["count"] == 20 * 30
        assert report["server"]["cpu_seconds"] > 0
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()


def test_webtransport_rejects_forced_disconnects() -> None:
    proc = subprocess.run(  # noqa: S603 - our own CLI
        [
            *_LOADTEST,
            *["--url", "https://127.0.0.1:9/v1/webtransport", "--streams", "2", "--disconnect-rate", "1"],
            *["--wt-cert-hash", "00" * 32],
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0
    assert "disconnect-rate is not supported" in proc.stderr
