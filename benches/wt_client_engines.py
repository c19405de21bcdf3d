"""The load generator's WebTransport client engines side by side (issue 13): aioquic vs tokenwire's native engine.

Every row is a fresh ``tokenwire serve --engine-steps-per-s STEPS`` pinned to the server core and ``tokenwire
loadtest --protocol webtransport --wt-engine ENGINE`` (one process) pinned to the client core, one session per
stream (``STREAMS``) or ``STREAMSxSESSIONS``. The generator's CPU is what the kernel accounted to its
process (and any worker it waited for), from ``wait4``; what it received is its report's tokens. The target:
one native generator process receives >= 20k tokens/s across 1,000 sessions at 20 tokens/s (the server must
keep up for that: ``--server-args "--wt-engine native"`` once the native server exists).

    .venv/bin/python -m benches.wt_client_engines --points 200,1000 --duration 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benches.sse_compare import TASKSET, TOKENWIRE, add_run_arguments, ms, stop_server
from benches.wt_compare import SERVERS, parse_point, start_server


def run_generator(args: argparse.Namespace, loadtest_args: list[str]) -> tuple[dict[str, Any], float]:
    """``tokenwire loadtest`` pinned to ``args.client_cores``: its report and its CPU seconds (user + system)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        report_path = f.name
    cmd = [
        TASKSET, "-c", args.client_cores, *TOKENWIRE, "loadtest", *loadtest_args, "--json", report_path,
        "--quiet", "--ramp", str(args.ramp), "--stream-timeout", str(args.stream_timeout),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd)  # noqa: S603 - our own CLI
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped here
    report: dict[str, Any] = json.loads(Path(report_path).read_text())
    os.unlink(report_path)
    return report, usage.ru_utime + usage.ru_stime


def run_row(engine: str, point: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh server on ``port`` and one generator run with client ``engine`` at ``point``."""
    streams, sessions = parse_point(point)
    command = [*SERVERS["tokenwire-wt"], "--max-tokens-limit", "10000000", *args.server_args.split()]
    server, cert = start_server("tokenwire-wt", port, args.steps, args.server_cores, command)
    try:
        report, cpu = run_generator(
            args,
            [
                "--protocol", "webtransport", "--url", f"https://127.0.0.1:{port}/v1/webtransport",
                "--wt-cert-hash", cert, "--wt-engine", engine, "--streams", str(streams),
                "--sessions", str(sessions), "--max-tokens", str(max(1, round(args.duration * args.steps))),
                "--tokens-per-s", str(args.steps), "--server-pid", str(server.pid),
            ],
        )  # fmt: skip
    finally:
        stop_server(server)
    return {"engine": engine, "point": point, "generator_cpu_s": cpu, "report": report}


def table_row(row: dict[str, Any]) -> str:
    report, cpu = row["report"], row["generator_cpu_s"]
    tokens, elapsed = report["tokens"]["total"], report["elapsed_s"]
    running = report["client"]["cpu_seconds"]  # while the streams ran (no startup)
    per_token = f"{running / tokens * 1e6:.1f}" if tokens else "n/a"
    server_cpu = (report.get("server", {}).get("cpu_utilisation") or 0) * 100
    c = report["correctness"]
    cells = [
        row["engine"], row["point"], f"{report['tokens']['per_s']:,.0f}", f"{cpu:.2f}", f"{running:.2f}",
        f"{running / elapsed * 100:.0f}%",
        per_token, f"{server_cpu:.0f}%", ms(report["delivery_lag_s"], "p99"),
        f"{report['streams']['ok']}/{report['streams']['total']}", f"{c['lost']}/{c['duplicated']}",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", default="200,1000", help="STREAMS or STREAMSxSESSIONS, comma-separated")
    p.add_argument("--engines", default="aioquic,native", help="client engines, comma-separated")
    p.add_argument("--server-args", default="", help="more `tokenwire serve` arguments (e.g. '--wt-engine native')")
    add_run_arguments(p, duration=10.0, out="wt_client_engines.json")
    args = p.parse_args()
    header = "client engine|sessions|tokens/s received|generator CPU-s (process)|generator CPU-s (streams)"
    header += "|generator CPU (streams)|CPU-µs per token (streams)|server CPU"
    header += "|lag p99 ms|streams ok|lost/dup"
    print(f"| {header.replace('|', ' | ')} |\n" + "|---" * (header.count("|") + 1) + "|")
    points = [x for x in args.points.split(",") if x]
    engines = [x for x in args.engines.split(",") if x]
    rows = []
    for n, (point, engine) in enumerate(itertools.product(points, engines)):
        rows.append(run_row(engine, point, 18900 + n, args))
        print(table_row(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
