"""``tokenwire loadtest --protocol webtransport`` against a real ``tokenwire serve`` process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import serve_cli as serve

_LOADTEST = [sys.executable, "-m", "tokenwire", "loadtest", "--protocol", "webtransport"]


def loadtest(report_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run(  # noqa: S603 - our own CLI
        [*_LOADTEST, *args, "--json", str(report_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(report_path.read_text())


ENGINES = pytest.mark.parametrize("engine", ["aioquic", "native"])


@ENGINES
def test_webtransport_streams_over_two_sessions_lose_nothing(tmp_path: Path, engine: str) -> None:
    with serve("--engine-steps-per-s", "50") as (url, pid):
        # The certificate hash comes from GET {url}/v1/webtransport/certificate (no --wt-cert-hash).
        proc, report = loadtest(
            tmp_path / "report.json",
            *f"--url {url} --streams 20 --sessions 2 --max-tokens 30 --tokens-per-s 50 --server-pid {pid}".split(),
            *["--wt-engine", engine],
        )
        assert "-> PASS" in proc.stderr
        assert report["streams"] == {"total": 20, "ok": 20, "failed": 0, "errors": {}}
        assert report["tokens"]["total"] == 20 * 30
        assert report["correctness"] == {"lost": 0, "duplicated": 0, "content_mismatches": 0, "incomplete": 0}
        assert report["delivery_lag_s"]["count"] == 20 * 30
        assert report["server"]["cpu_seconds"] > 0


@pytest.mark.parametrize(
    ("engine", "server_engine"), [("aioquic", "aioquic"), ("native", "aioquic"), ("native", "native")]
)
def test_webtransport_forced_disconnects_resume_exactly_once(tmp_path: Path, engine: str, server_engine: str) -> None:
    """Forced cuts both ways: streams alone on their session lose their QUIC connection (a reconnect, with a
    session ticket on aioquic), streams sharing a session lose their request stream; every stream resumes and
    ends with exactly the model's tokens. The native generator against either server engine."""
    with serve("--tokens-per-s", "100", "--wt-engine", server_engine) as (url, _):
        for sessions in ("0", "2"):  # one session per stream; 12 streams over 2 sessions
            _, report = loadtest(
                tmp_path / f"report-{sessions}.json",
                *f"--url {url} --streams 12 --sessions {sessions} --max-tokens 150 --tokens-per-s 100".split(),
                *["--disconnect-rate", "2", "--seed", "3", "--wt-engine", engine],
            )
            assert report["streams"]["ok"] == 12, report["streams"]
            assert report["correctness"] == {"lost": 0, "duplicated": 0, "content_mismatches": 0, "incomplete": 0}
            assert report["tokens"]["total"] == 12 * 150
            assert report["disconnects"]["forced"] >= 12  # ~1.5 s per stream at 2 cuts/s
            assert report["resume_s"]["max"] < 5.0  # every cut resumed (a sample per resume)


def test_wt_keepalive_reaches_the_clients() -> None:
    """``--wt-keepalive``: each worker's clients PING after that much silence (what lets the server find a client
    after a NAT rebinding); 0 turns it off."""
    from tokenwire.cli import _parser
    from tokenwire.loadtest.runner import LoadTestConfig, _wt_configs

    assert _parser().parse_args(["loadtest", "--wt-keepalive", "0.25"]).wt_keepalive == 0.25
    for given, expected in ((0.25, 0.25), (0.0, None)):
        cfg = LoadTestConfig(protocol="webtransport", streams=2, wt_cert_hash="00" * 32, wt_keepalive=given)
        assert [getattr(c, "keepalive", "?") for c in _wt_configs(cfg, 1, 0.0)] == [expected]


def test_native_generator_through_a_lossy_reordering_duplicating_relay(tmp_path: Path) -> None:
    """``--wt-engine native --impair``: the native generator's one engine behind the UDP relay (loss, jitter,
    reordering, duplicates) and forced cuts, against the native server: exactly-once, every cut resumed, and the
    engine's byte counters agree with what the relay forwarded to it."""
    with serve("--tokens-per-s", "50", "--wt-engine", "native") as (url, _):
        _, report = loadtest(
            tmp_path / "impair.json",
            *f"--url {url} --wt-engine native --streams 12 --max-tokens 100 --tokens-per-s 50".split(),
            *["--disconnect-rate", "1", "--seed", "2", "--impair", "loss=3%,delay=5ms,jitter=2ms,reorder=5%,dup=2%"],
        )
    run = report["runs"]["webtransport"]
    assert report["passed"] and run["streams"]["ok"] == 12, run["streams"]
    assert run["correctness"] == {"lost": 0, "duplicated": 0, "content_mismatches": 0, "incomplete": 0}
    assert run["tokens"]["total"] == 12 * 100
    assert run["disconnects"]["forced"] >= 6 and run["disconnects"]["resumes"] >= run["disconnects"]["forced"]
    udp = run["relay"]["udp"]
    assert udp["dropped_up"] + udp["dropped_down"] > 0 and udp["duplicated"] > 0 and udp["reordered"] > 0
    # What the generator's engine read is what the relay sent it (give or take the last packets of a close).
    assert 0.9 * udp["bytes_forwarded_down"] <= run["wire"]["bytes_down"] <= udp["bytes_forwarded_down"]
