"""The ASGI peers of ``benches/sse_compare.py`` (``tokenwire-asgi``, ``starlette-streaming``) in both producer
shapes: started as the bench starts them, each serves exact streams to ``tokenwire loadtest``; and the in-process
ASGI work bench (``benches/asgi_work.py``) in its four shapes."""

from __future__ import annotations

import json
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import Popen

import pytest

from benches import asgi_work
from benches.sse_compare import SERVERS, server_command, spawn_server, stop_server
from tokenwire.loadtest.runner import LoadTestConfig, run_loadtest

PEERS = ("tokenwire-asgi", "starlette-streaming")
PRODUCERS = ("engine", "per-stream")


def _url(line: str) -> str | None:
    return line.split(" on ", 1)[1].split()[0] if "listening on http://" in line else None


def _start(peer: str, producer: str) -> tuple[Popen[str], str]:
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    return spawn_server(peer, server_command(peer, 0, 50, producer), cores, _url)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (server CPU sampling)")
def test_asgi_peers_stream_exactly_in_both_producer_shapes() -> None:
    points = [(peer, producer) for peer in PEERS for producer in PRODUCERS]
    with ThreadPoolExecutor(len(points)) as pool:
        started = list(pool.map(lambda point: _start(*point), points))
    try:
        for (peer, producer), (proc, url) in zip(points, started, strict=True):
            cfg = LoadTestConfig(
                url=url, streams=3, max_tokens=5, tokens_per_s=100, server_pid=proc.pid,
                resumable=SERVERS[peer]["resume"], stream_timeout=20, quiet=True,
            )  # fmt: skip
            report = run_loadtest(cfg)
            assert report["streams"]["ok"] == 3, (peer, producer, report["streams"])
            assert report["tokens"]["total"] == 15
            assert report["correctness"]["lost"] == report["correctness"]["duplicated"] == 0
            assert report["delivery_lag_s"]["count"] == 15  # every token carried its production stamp
            if peer == "starlette-streaming":  # the shared engine exists, and runs, only in engine mode
                with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:  # noqa: S310 - our own server
                    steps = json.load(resp).get("steps", 0)
                assert (steps > 0) == (producer == "engine"), (producer, steps)
    finally:
        for proc, _ in started:
            stop_server(proc)


def test_asgi_work_runs_every_shape() -> None:
    shapes = asgi_work.SHAPES + asgi_work.PARTS
    per_token = asgi_work.main(["--shapes", ",".join(shapes), "--streams", "20", "--steps", "5", "--repeats", "1"])
    assert sorted(per_token) == sorted(shapes)
    assert all(seconds > 0 for seconds in per_token.values())
