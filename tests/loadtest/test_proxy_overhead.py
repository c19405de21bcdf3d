"""``benches/proxy_overhead.py`` end to end at a tiny point (every arm's processes, the load generator, the
checks), and the load generator's exactness check against a real upstream: a stream that is not what the upstream
said fails."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benches import openai_load, proxy_overhead
from tests.support.sessions import run_module
from tests.support.upstream import Upstream

ARMS = ("upstream", "fastapi", "tokenwire")


def _core() -> str:
    return str(min(os.sched_getaffinity(0)))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (CPU sampling)")
def test_every_arm_streams_exactly_and_is_measured(tmp_path: Path) -> None:
    out = tmp_path / "proxy.json"
    core = _core()
    proc, stdout, stderr = run_module(
        [
            "benches.proxy_overhead", "--arms", ",".join(ARMS), "--streams", "6", "--tokens", "8",
            "--tokens-per-s", "40", "--rounds", "2", "--repeats", "2", "--warmup", "2",
            "--proxy-cores", core, "--upstream-cores", core, "--client-cores", core, "--out", str(out),
        ],
        timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, stdout + stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["repeat"], r["arm"]) for r in rows] == [(k, arm) for k in (1, 2) for arm in ARMS]
    for row in rows:
        report = row["report"]
        assert row["exact"], row["problems"]
        assert report["streams_ok"] == report["streams_total"] == 12
        assert row["upstream_calls"]["calls"] == 12 + 2  # each request reached the upstream once, warm-up included
        assert report["window"]["kind"] == "steady" and report["tokens"] > 0
        assert report["cpu_s_per_100k_tokens"]["upstream"] is not None
        assert ("proxy" in report["cpu_s"]) == (row["arm"] != "upstream")
        if row["arm"] != "upstream":  # against the upstream alone in the same repeat
            base = next(r for r in rows if (r["repeat"], r["arm"]) == (row["repeat"], "upstream"))["report"]
            for p in ("p50", "p99"):
                assert row[f"added_{p}"] == pytest.approx(report["ttft_s"][p] - base["ttft_s"][p])
    assert stdout.count(", yes |") == len(rows)  # one table row each, every stream exact


def test_the_content_check_fails_a_stream_that_is_not_the_upstreams() -> None:
    with Upstream("--length", "6", "--tokens-per-s", "0") as upstream:
        report = openai_load.run_load(openai_load.LoadConfig(url=upstream.url, streams=4, tokens=6, tokens_per_s=0))
    assert report["streams_ok"] == 4
    assert proxy_overhead.check(report, proxy_overhead.expected(4, 6), 6) == []
    # What the upstream would have said with one token more: every stream differs (a lost token).
    assert len(proxy_overhead.check(report, proxy_overhead.expected(4, 7), 7)) == 4
    # One stream's content changed in flight (a duplicated or altered chunk): that stream, and only it, fails.
    report["streams"][2]["content_hash"] ^= 1
    problems = proxy_overhead.check(report, proxy_overhead.expected(4, 6), 6)
    assert len(problems) == 1 and problems[0].startswith("stream 2:")
