"""``tokenwire loadtest --compare`` against a real ``tokenwire serve`` process (SSE and WebTransport), as a user
runs it: exactly-once on every run, and the comparison report's figures checked against each other."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import serve_cli as serve

STREAMS, TOKENS = 20, 100


def compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "tokenwire", "loadtest", *args], capture_output=True, text=True, timeout=90, check=False
    )


def check_run(run: dict[str, Any], *, streams: int, tokens: int, relay: bool = False) -> None:
    """One protocol's run: exactly once, and every figure of the comparison consistent with the others."""
    assert run["streams"] == {"total": streams, "ok": streams, "failed": 0, "errors": {}}
    assert run["correctness"] == {"lost": 0, "duplicated": 0, "content_mismatches": 0, "incomplete": 0}
    assert run["tokens"]["total"] == streams * tokens
    assert run["passed"]
    total = run["tokens"]["total"]

    series = run["series"]
    n = len(series["t"])
    assert n >= 2
    assert all(len(series[k]) == n for k in ("tokens", "tokens_per_s", "lag_p50_s", "lag_p99_s", "lag_max_s", "active"))
    assert series["t"] == [pytest.approx(k * series["interval_s"]) for k in range(n)]
    assert sum(series["tokens"]) == total
    assert sum(x * series["interval_s"] for x in series["tokens_per_s"]) == pytest.approx(total)
    assert max(series["active"]) <= streams and max(series["active"]) > 0
    lag_max = [x for x in series["lag_max_s"] if x is not None]
    assert max(lag_max) == pytest.approx(run["delivery_lag_s"]["max"])
    for p50, p99, top in zip(series["lag_p50_s"], series["lag_p99_s"], series["lag_max_s"], strict=True):
        assert (p50 is None) == (top is None)
        assert p50 is None or p50 <= p99 <= top

    timeline = run["timeline"]
    assert [t["stream"] for t in timeline] == list(range(streams))
    for t in timeline:
        assert t["ok"]
        assert 0 <= t["start_s"] <= t["first_token_s"] <= t["end_s"] <= run["elapsed_s"]
    d = run["disconnects"]
    cuts = d["forced"] + d["unexpected"]
    assert sum(t["cuts"] for t in timeline) == cuts > 0

    kinds = [e["kind"] for e in run["events"]]
    assert run["events_dropped"] == 0
    assert kinds.count("forced_cut") == d["forced"]
    assert kinds.count("cut") == d["unexpected"]
    assert kinds.count("reconnect") == d["resumes"] > 0
    # A recovery per cut that a resumed token followed (a cut right before the final frame has none).
    assert kinds.count("resumed") == len(run["recovery_samples"]) > 0
    assert [e["t"] for e in run["events"]] == sorted(e["t"] for e in run["events"])
    assert all(0 < x < 5 for x in run["recovery_samples"])
    assert run["recovery_s"]["max"] == max(run["recovery_samples"])

    wire = run["wire"]
    assert wire["measured_at"] == "client"
    assert wire["bytes_down"] > total * 10  # a token event carries its text, id and stamp
    assert wire["bytes_up"] > 0
    assert wire["bytes_per_token"] == pytest.approx(wire["bytes_down"] / total)
    assert run["client"]["cpu_seconds"] > 0
    assert run["client"]["cpu_seconds_per_100k_tokens"] == pytest.approx(run["client"]["cpu_seconds"] / total * 1e5)
    assert run["server"]["cpu_seconds"] > 0

    assert len(run["quantiles"]) == len(run["lag_cdf"]["lag_s"]) == len(run["lag_cdf"]["lateness_s"]) == 200
    assert run["quantiles"][-1] == 1.0
    for curve in run["lag_cdf"].values():
        assert curve == sorted(curve)
    assert run["lag_cdf"]["lag_s"][-1] == run["delivery_lag_s"]["max"]
    assert (run["relay"] is not None) == relay


def test_compare_sse_and_webtransport_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "compare.json"
    with serve("--tokens-per-s", "50") as (url, pid):
        proc = compare(
            "--url", url, "--compare", "sse,webtransport", "--streams", str(STREAMS), "--max-tokens", str(TOKENS),
            "--tokens-per-s", "50", "--disconnect-rate", "1", "--seed", "2", "--server-pid", str(pid),
            "--json", str(path),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    err = proc.stderr
    assert err.index("== sse:") < err.index("sse          [") < err.index("== webtransport:")  # live status
    assert "webtransport [" in err
    assert "exactly-once: sse PASS, webtransport PASS -> PASS" in err
    table = err[err.index("comparison; network impairment: none") :].splitlines()
    assert table[1].split() == ["metric", "unit", "sse", "webtransport"]
    assert table[-2].split() == ["duplicated", "tokens", "0", "0"]

    report = json.loads(path.read_text())
    assert report["kind"] == "tokenwire-loadtest-compare" and report["version"] == 1
    assert report["protocols"] == ["sse", "webtransport"] == list(report["runs"])
    assert report["impairment"] is None and report["impairment_text"] == "none"
    assert report["scenario"] == {
        "streams": STREAMS, "sessions": 0, "tokens_per_s": 50.0, "max_tokens": TOKENS, "disconnect_rate": 1.0,
        "ramp": 1000.0, "procs": 1, "seed": 2, "url": url, "preset": None,
    }  # fmt: skip
    assert set(report["machine"]) == {
        "hostname", "platform", "python", "cpu_model", "cpus", "tokenwire_version", "started_at",
    }  # fmt: skip
    assert report["passed"]
    for protocol, run in report["runs"].items():
        assert run["config"]["protocol"] == protocol
        check_run(run, streams=STREAMS, tokens=TOKENS)
    sse, wt = report["runs"]["sse"], report["runs"]["webtransport"]
    assert sse["started_at"] + sse["elapsed_s"] <= wt["started_at"]  # one after the other

    rows = {row["metric"]: row for row in report["summary"]}
    for metric in ("lost", "duplicated"):
        assert rows[metric] == {"metric": metric, "unit": "tokens", "sse": 0, "webtransport": 0}
    for protocol, run in report["runs"].items():
        assert rows["streams completed"][protocol] == STREAMS
        assert rows["TTFT p99"][protocol] == run["ttft_s"]["p99"]
        assert rows["recovery p50"][protocol] == run["recovery_s"]["p50"]
        assert rows["bytes per token"][protocol] == run["wire"]["bytes_per_token"]
        assert rows["reconnects"][protocol] == run["disconnects"]["resumes"]
        assert rows["server CPU-s per 100k tokens"][protocol] == run["server"]["cpu_seconds_per_100k_tokens"]


def test_several_client_processes_merge_into_one_run(tmp_path: Path) -> None:
    """Two worker processes: sums add up, the timeline holds every stream, the percentiles say they are upper
    bounds."""
    path = tmp_path / "compare.json"
    with serve("--tokens-per-s", "50") as (url, _):
        proc = compare(
            "--url", url, "--compare", "sse", "--streams", "12", "--max-tokens", "60", "--tokens-per-s", "50",
            "--disconnect-rate", "2", "--procs", "2", "--json", str(path),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(path.read_text())
    run = report["runs"]["sse"]
    assert report["protocols"] == ["sse"]
    assert run["client"]["processes"] == 2
    assert sum(run["series"]["tokens"]) == run["tokens"]["total"] == 12 * 60
    assert [t["stream"] for t in run["timeline"]] == list(range(12))
    assert "upper bound" in run["series"]["note"] and "upper bound" in run["lag_cdf"]["note"]
    assert "lag percentiles are the maximum over processes" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compare", "sse,quic"], "--compare takes a comma-separated list of sse, webtransport"),
        (["--compare", "sse,sse"], "--compare names a protocol twice"),
    ],
)
def test_bad_protocol_lists_are_refused(args: list[str], message: str) -> None:
    proc = compare("--url", "http://127.0.0.1:9", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_through_impairing_relays(tmp_path: Path) -> None:
    """``--impair``: each run goes through a fresh relay process (SSE its TCP relay, WebTransport its UDP one)
    with 2 % loss and 10 ms delay each way; both stay exactly-once and both show the delay."""
    path = tmp_path / "compare.json"
    with serve("--tokens-per-s", "20") as (url, pid):
        proc = compare(
            "--url", url, "--compare", "sse,webtransport", "--impair", "loss=2%,delay=10ms", "--streams", "10",
            "--max-tokens", "40", "--tokens-per-s", "20", "--disconnect-rate", "0.5", "--seed", "1",
            "--server-pid", str(pid), "--json", str(path),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "network: loss 2%, delay 10 ms" in proc.stderr
    report = json.loads(path.read_text())
    assert report["impairment"]["loss"] == 0.02 and report["impairment"]["delay"] == 0.01
    assert report["impairment_text"].startswith("loss 2%, delay 10 ms")
    assert report["passed"]
    for protocol, run in report["runs"].items():
        check_run(run, streams=10, tokens=40, relay=True)
        assert run["delivery_lag_s"]["p50"] >= 0.009, protocol  # the relay's one-way delay is on the path
    sse, wt = (report["runs"][p] for p in ("sse", "webtransport"))
    tcp, udp = sse["relay"]["tcp"], wt["relay"]["udp"]
    assert sse["config"]["url"] != url and sse["relay"]["udp"]["datagrams_up"] == 0  # SSE went through TCP only
    assert tcp["connections"] >= 10 + sse["disconnects"]["resumes"]
    assert tcp["stalls"] > 0  # TCP "loss": stalls
    assert 0 < sse["wire"]["bytes_down"] <= tcp["bytes_down"]
    assert wt["relay"]["tcp"]["connections"] == 0 and udp["datagrams_down"] > 0  # WebTransport through UDP only
    assert udp["dropped_up"] + udp["dropped_down"] > 0
    assert 0 < wt["wire"]["bytes_down"] <= udp["bytes_down"]


def test_rebinding_relay_events_in_both_runs(tmp_path: Path) -> None:
    """``rebind``: the UDP relay changes the client's address (QUIC migrates), the TCP relay resets every
    connection (SSE resumes); each address change is an event of the run, and nothing is lost."""
    path = tmp_path / "compare.json"
    with serve("--tokens-per-s", "20") as (url, _):
        proc = compare(
            "--url", url, "--compare", "webtransport,sse", "--impair", "rebind=1s", "--streams", "6",
            "--max-tokens", "50", "--tokens-per-s", "20", "--json", str(path),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(path.read_text())
    assert report["protocols"] == ["webtransport", "sse"]
    for protocol, run in report["runs"].items():
        assert run["correctness"] == {"lost": 0, "duplicated": 0, "content_mismatches": 0, "incomplete": 0}
        side = run["relay"]["udp" if protocol == "webtransport" else "tcp"]
        rebinds = [e for e in run["events"] if e["kind"] == "rebind"]
        assert len(rebinds) == len(side["rebinds"]) >= 1, protocol
        assert all(e["stream"] is None and 0 < e["t"] < run["elapsed_s"] for e in rebinds)
    # A reset connection is an unexpected cut for SSE, which resumes it.
    assert report["runs"]["sse"]["disconnects"]["unexpected"] > 0


def test_bad_impairment_is_refused_before_anything_runs() -> None:
    proc = compare("--url", "http://127.0.0.1:9", "--compare", "sse", "--impair", "loss=5%,wobble=3")
    assert proc.returncode == 2
    assert "wobble" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_server_is_said_plainly() -> None:
    proc = compare("--url", "http://127.0.0.1:9", "--compare", "sse,webtransport", "--streams", "2")
    assert proc.returncode == 1
    assert "tokenwire loadtest: URLError" in proc.stderr and "Connection refused" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_impair_on_a_single_protocol_run_writes_the_comparison_shape(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    with serve("--tokens-per-s", "20") as (url, _):
        proc = compare(
            "--url", url, "--protocol", "webtransport", "--impair", "delay=5ms", "--streams", "4",
            "--max-tokens", "20", "--tokens-per-s", "20", "--json", str(path),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(path.read_text())
    assert report["kind"] == "tokenwire-loadtest-compare"
    assert report["protocols"] == ["webtransport"] == list(report["runs"])
    run = report["runs"]["webtransport"]
    assert run["correctness"]["lost"] == run["correctness"]["duplicated"] == 0
    assert run["relay"]["udp"]["datagrams_down"] > 0
    assert [row["metric"] for row in report["summary"]][:2] == ["TTFT p50", "TTFT p99"]
    assert all(set(row) == {"metric", "unit", "webtransport"} for row in report["summary"])
