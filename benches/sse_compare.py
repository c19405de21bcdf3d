"""Side-by-side SSE load benchmark: tokenwire vs sse-starlette (uvicorn) vs aiohttp, same generator.

Each server runs pinned to one core (``taskset -c 0``) with an engine-style producer (one loop, one token for
every active stream per step, 20 steps/s); the load generator (``tokenwire loadtest``) runs pinned to the
other core. Server CPU and memory come from /proc of the server process.

    .venv/bin/python -m benches.sse_compare --points 1000,3000 --duration 10 --out /tmp/sse_compare.json

Prints a markdown table (the one in BENCHMARKS.md) and writes every full report as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benches.server_metrics import flush_wait

PY = sys.executable
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"
TOKENWIRE = [PY, "-m", "tokenwire"]

_TW_ENGINE = [*TOKENWIRE, "serve", "--engine-steps-per-s", "{steps}", "--port", "{port}"]

SERVERS: dict[str, dict[str, Any]] = {
    "tokenwire": {"cmd": [*TOKENWIRE, "serve", "--engine-steps-per-s", "{steps}", "--port", "{port}"], "resume": True},
    "tokenwire-delay100": {
        "cmd": [*TOKENWIRE, "serve", "--engine-steps-per-s", "{steps}", "--port", "{port}", "--max-delay-ms", "100"],
        "resume": True,
    },
    # The flush bound (docs/protocol.md, "Write coalescing"): issue 3's flusher (next loop iteration only), and
    # other bounds than the default (0.05 ms) that `tokenwire` above runs. BENCHMARKS.md, issue 8.
    "tokenwire-nowait": {"cmd": [*_TW_ENGINE, "--flush-max-wait-ms", "0"], "resume": True},
    "tokenwire-wait10us": {"cmd": [*_TW_ENGINE, "--flush-max-wait-ms", "0.01"], "resume": True},
    "tokenwire-wait200us": {"cmd": [*_TW_ENGINE, "--flush-max-wait-ms", "0.2"], "resume": True},
    "sse-starlette": {
        "cmd": [PY, "-m", "benches.peers.sse_starlette_app", "--steps-per-s", "{steps}", "--port", "{port}"],
        "resume": False,
    },
    "aiohttp": {
        "cmd": [PY, "-m", "benches.peers.aiohttp_app", "--steps-per-s", "{steps}", "--port", "{port}"],
        "resume": False,
    },
    "tokenwire-asgi": {  # TokenwireASGI under uvicorn (uvloop + httptools), as a FastAPI user meets it
        "cmd": [PY, "-m", "benches.peers.tokenwire_asgi_app", "--steps-per-s", "{steps}", "--port", "{port}"],
        "resume": True,
    },
    "starlette-streaming": {  # a plain Starlette StreamingResponse of SSE events under the same uvicorn
        "cmd": [PY, "-m", "benches.peers.starlette_streaming_app", "--steps-per-s", "{steps}", "--port", "{port}"],
        "resume": False,
    },
}


def spawn_server(
    name: str, cmd: list[str], cores: str, ready: Callable[[str], str | None], timeout: float = 30.0
) -> tuple[subprocess.Popen[str], str]:
    """Start ``cmd`` pinned to ``cores``; wait for the output line ``ready`` accepts (it returns what the
    caller needs from that line, ``None`` for any other line)."""
    proc = subprocess.Popen(  # noqa: S603 - our own commands
        [TASKSET, "-c", cores, *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = ready(line)
        if found is not None:
            return proc, found
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{name} did not start")


def server_command(name: str, port: int, steps: float, producer: str = "engine") -> list[str]:
    """The command of server ``name``; ``producer="per-stream"``: no shared engine, each request iterates its
    own generation (tokenwire: ``serve`` without ``--engine-steps-per-s``, paced by the request)."""
    cmd = [c.format(port=port, steps=steps) for c in SERVERS[name]["cmd"]]
    if cmd[:4] == [*TOKENWIRE, "serve"]:
        cmd += ["--max-tokens-limit", "10000000"]  # the unthrottled point asks for more than the default limit
    if producer == "per-stream":
        if "--engine-steps-per-s" in cmd:
            i = cmd.index("--engine-steps-per-s")
            del cmd[i : i + 2]
        else:
            cmd += ["--producer", "per-stream"]
    return cmd


def start_server(name: str, port: int, steps: float, cores: str, producer: str = "engine") -> subprocess.Popen[str]:
    cmd = server_command(name, port, steps, producer)
    ready = lambda line: "" if "listening on" in line or "serving SSE on" in line else None
    return spawn_server(name, cmd, cores, ready, timeout=20)[0]


def run_loadtest(args: argparse.Namespace, server: subprocess.Popen[str], loadtest_args: list[str]) -> dict[str, Any]:
    """``tokenwire loadtest`` pinned to ``args.client_cores`` against ``server`` (its CPU measured); its report."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        report_path = f.name
    cmd = [
        TASKSET, "-c", args.client_cores, *TOKENWIRE, "loadtest", *loadtest_args,
        "--ramp", str(args.ramp), "--server-pid", str(server.pid), "--json", report_path, "--quiet",
        "--procs", str(args.procs), "--stream-timeout", str(args.stream_timeout),
    ]  # fmt: skip
    subprocess.run(cmd, check=False, timeout=args.timeout)  # noqa: S603
    report: dict[str, Any] = json.loads(Path(report_path).read_text())
    os.unlink(report_path)
    return report


def add_run_arguments(p: argparse.ArgumentParser, *, duration: float, out: str) -> None:
    """What :func:`run_loadtest` and the drivers' ``run_point`` read from ``args``, and ``--out``."""
    p.add_argument("--duration", type=float, default=duration, help="seconds of tokens per stream")
    p.add_argument("--steps", type=float, default=20.0, help="engine steps (tokens per stream) per second")
    p.add_argument("--ramp", type=float, default=1000.0)
    p.add_argument("--procs", type=int, default=1, help="load-generator processes")
    p.add_argument("--server-cores", default="0")
    p.add_argument("--client-cores", default="1")
    p.add_argument("--timeout", type=float, default=600, help="seconds for one point's load generator")
    p.add_argument("--stream-timeout", type=float, default=120, help="a stream slower than this counts as failed")
    p.add_argument("--out", default=out)
    p.add_argument(
        "--producer",
        choices=("engine", "per-stream"),
        default="engine",
        help="engine: one loop feeds every stream per step; per-stream: one producer task per stream "
        "(async for token in model.generate(...))",
    )
    p.add_argument("--repeats", type=int, default=1, help="run each point this many times (one row each)")
    p.add_argument(
        "--hog",
        action="store_true",
        help="competing load: one CPU-burning process pinned to the server's cores and one to the client's",
    )
    p.add_argument(
        "--hog-cores",
        choices=("both", "client", "server"),
        default="both",
        help="with --hog: where the competing load runs (client: on the other core than the server's only)",
    )


def ms(d: dict[str, Any], k: str) -> str:
    """A report's percentile ``k`` (seconds) in whole milliseconds."""
    return f"{d[k] * 1e3:.0f}" if k in d else "n/a"


def fw(r: dict[str, Any]) -> str:
    """The server's flush wait p50 / p99 in ms (bucket upper bounds), tokenwire only."""
    w = r.get("server_flush_wait_s") or {}
    return f"≤{w['p50'] * 1e3:g} / ≤{w['p99'] * 1e3:g}" if "p99" in w else "n/a"


def ms3(d: dict[str, Any], k: str) -> str:
    """A report's percentile ``k`` (seconds) in milliseconds with three decimals (sub-millisecond lags)."""
    return f"{d[k] * 1e3:.3f}" if k in d else "n/a"


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


_HOG = "while True: pass"


def start_hogs(args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    """``--hog``: one busy-looping process on the server's cores and one on the client's (competing load), or on
    one side only (``--hog-cores``)."""
    if not getattr(args, "hog", False):
        return []
    where = getattr(args, "hog_cores", "both")
    cores = {"both": (args.server_cores, args.client_cores), "client": (args.client_cores,)}.get(where)
    return hogs_on(cores or (args.server_cores,))


def hogs_on(cores: Sequence[str]) -> list[subprocess.Popen[bytes]]:
    """One busy-looping process pinned to each of ``cores`` (competing load); stop them with :func:`stop_hogs`."""
    return [subprocess.Popen([TASKSET, "-c", c, PY, "-c", _HOG]) for c in cores]  # noqa: S603 - our own command


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait()


def run_point(name: str, streams: int, args: argparse.Namespace, port: int) -> dict[str, Any]:
    unthrottled = streams == 1 and args.unthrottled_tokens
    steps = 0 if unthrottled else args.steps  # 0: per-request pacing with tokens_per_s=0, i.e. unthrottled
    proc = start_server(name, port, steps, args.server_cores, args.producer)
    hogs = start_hogs(args)
    try:
        max_tokens = args.unthrottled_tokens if unthrottled else max(1, round(args.duration * args.steps))
        loadtest_args = [
            "--url", f"http://127.0.0.1:{port}", "--streams", str(streams),
            "--max-tokens", str(max_tokens), "--tokens-per-s", "0" if unthrottled else str(args.steps),
        ]  # fmt: skip
        if not SERVERS[name]["resume"]:
            loadtest_args.append("--no-resume")
        report = run_loadtest(args, proc, loadtest_args)
        report["server_flush_wait_s"] = flush_wait(port)  # tokenwire's own view: mark -> write, per flush
        return report
    finally:
        stop_hogs(hogs)
        stop_server(proc)


def row(name: str, streams: int, r: dict[str, Any]) -> str:
    sv = r.get("server", {})
    mem_per_1k = (sv.get("peak_rss_bytes", 0) - sv.get("rss_before_bytes", 0)) / max(streams, 1) * 1000 / 2**20
    per100k = sv.get("cpu_seconds_per_100k_tokens")
    c = r["correctness"]
    return (
        f"| {name} | {streams:,} | {r['tokens']['per_s']:,.0f} | {per100k:.2f} | {sv.get('cpu_utilisation', 0) * 100:.0f}% "
        f"| {mem_per_1k:.1f} | {ms(r['ttft_s'], 'p99')} | {ms3(r['delivery_lag_s'], 'p50')} "
        f"| {ms(r['delivery_lag_s'], 'p99')} "
        f"| {ms(r['schedule_lateness_s'], 'p99')} | {fw(r)} | {r['streams']['ok']}/{r['streams']['total']} "
        f"| {c['lost']}/{c['duplicated']} |"
        if per100k is not None
        else f"| {name} | {streams:,} | no tokens | | | | | | | | | {r['streams']['ok']}/{r['streams']['total']} | |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", default="1000,3000,5000,10000", help="concurrent streams per point")
    p.add_argument("--servers", default="tokenwire,sse-starlette,aiohttp", help=f"from {', '.join(SERVERS)}")
    p.add_argument("--unthrottled-tokens", type=int, default=0, help="also run 1 unthrottled stream of N tokens")
    p.add_argument("--base-port", type=int, default=18100, help="servers listen on the ports after this one")
    add_run_arguments(p, duration=10.0, out="sse_compare.json")
    args = p.parse_args()
    points = [int(x) for x in args.points.split(",") if x]
    if args.unthrottled_tokens:
        points.append(1)
    results = []
    print(
        f"producer: {args.producer}; competing load: {('on ' + args.hog_cores + ' cores') if args.hog else 'no'}; repeats: {args.repeats}"
    )
    print("| server | streams | tokens/s | server CPU-s per 100k tokens | server CPU | MB per 1,000 streams "
          "| TTFT p99 ms | lag p50 ms | lag p99 ms | lateness p99 ms | server flush wait p50/p99 ms | streams ok "
          "| lost/dup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    port = args.base_port
    for streams in points:
        for _ in range(args.repeats):
            for name in args.servers.split(","):
                port += 1
                report = run_point(name, streams, args, port)
                results.append({"server": name, "streams": streams, "producer": args.producer, "report": report})
                print(row(name, streams, report), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
