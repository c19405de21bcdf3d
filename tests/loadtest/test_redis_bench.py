"""``benches/redis_storage.py`` end to end at a tiny point: its own redis-server, every benchmark's servers and
load tests, exact streams in every row, and nothing of its own left running."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.sessions import run_module


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (make system-deps)")
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (CPU sampling)")
def test_every_benchmark_row_streams_exactly(tmp_path: Path) -> None:
    out = tmp_path / "redis.json"
    proc, stdout, stderr = run_module(
        [
            "benches.redis_storage", "--repeats", "1", "--streams", "8", "--duration", "1",
            "--disconnect-rate", "3", "--sat-streams", "4", "--sat-tokens", "2000",
            "--server-cores", "0", "--client-cores", "0", "--redis-cores", "0", "--node-cores", "0:0",
            "--out", str(out),
        ],
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, stdout + stderr
    rows = json.loads(out.read_text())
    assert [(r["bench"], r.get("storage") or r.get("workers")) for r in rows] == [
        ("cpu", "memory"), ("cpu", "redis"), ("resume", "redis"), ("workers", 1), ("workers", 2),
    ]  # fmt: skip
    for row in rows:
        report = row["report"]
        assert report["passed"], (row["bench"], report["streams"], report["correctness"])
    cpu_redis = rows[1]
    assert cpu_redis["redis_commands_per_token"] > 0 and cpu_redis["ship_calls"] > 0  # it did ship to Redis
    assert rows[0]["redis_commands_per_token"] < cpu_redis["redis_commands_per_token"]
    assert rows[2]["cross_node_resumes"] > 0 and "p99" in rows[2]["cross_node"]  # resumed on the other node
    assert stdout.count(" PASS |") == len(rows)  # one table row each
    # Nothing it started is left: no process of its session (redis-server, servers, generators) outlives it by
    # more than a moment (a load test's multiprocessing helper exits once its parent has gone).
    deadline = time.monotonic() + 10
    while (left := _session_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left


def _session_processes(sid: int) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "sid=,pid=,args="], capture_output=True, text=True, check=True)  # noqa: S607
    return [line for line in ps.stdout.splitlines() if line.split(maxsplit=1)[0] == str(sid)]
