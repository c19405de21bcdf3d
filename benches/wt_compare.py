"""Side-by-side WebTransport benchmark (issue 4): tokenwire WebTransport vs tokenwire SSE vs plain aioquic.

Each server runs pinned to one core (``taskset -c 0``) with an engine-style producer (20 steps/s: one token
for every active stream per step); the load generator (``tokenwire loadtest``) runs pinned to the other
core(s). Server CPU and memory come from /proc of the server process. Points are ``STREAMS`` (one session
per stream) or ``STREAMSxSESSIONS`` (streams multiplexed over that many WebTransport sessions; the SSE row
of such a point is plain ``STREAMS`` connections).

    .venv/bin/python -m benches.wt_compare --points 100,200,500,1000,1000x10 --duration 10 --out /tmp/wt.json

Prints a markdown table (the one in BENCHMARKS.md) and writes every full report as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from benches.sse_compare import (
    PY,
    TOKENWIRE,
    add_run_arguments,
    ms,
    run_loadtest,
    spawn_server,
    start_hogs,
    stop_hogs,
    stop_server,
)

SERVERS: dict[str, list[str]] = {
    "tokenwire-wt": [
        *TOKENWIRE,
        "serve",
        "--engine-steps-per-s",
        "{steps}",
        "--port",
        "{port}",
        "--wt-engine",
        "aioquic",
    ],
    "tokenwire-wt-native": [
        *TOKENWIRE,
        "serve",
        "--engine-steps-per-s",
        "{steps}",
        "--port",
        "{port}",
        "--wt-engine",
        "native",
    ],
    "tokenwire-sse": [*TOKENWIRE, "serve", "--engine-steps-per-s", "{steps}", "--port", "{port}", "--no-webtransport"],
    "aioquic-plain": [PY, "-m", "benches.peers.aioquic_wt_app", "--steps-per-s", "{steps}", "--port", "{port}"],
}


_CERT_HASH = re.compile(r"sha-?256 ([0-9a-f]{64})")


def start_server(
    name: str, port: int, steps: float, cores: str, command: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """The server process and the certificate hash it printed ('' for SSE). ``command``: instead of
    ``SERVERS[name]`` (same ``{port}``/``{steps}`` placeholders; it must print the hash like the others)."""
    cmd = [c.format(port=port, steps=steps) for c in (command or SERVERS[name])]

    def ready(line: str) -> str | None:
        if name == "tokenwire-sse" and "serving SSE on" in line:
            return ""
        found = _CERT_HASH.search(line)
        return found[1] if found and ("listening on" in line or "WebTransport on" in line) else None

    return spawn_server(name, cmd, cores, ready)


def parse_point(point: str) -> tuple[int, int]:
    """``STREAMS`` (one session per stream: 0) or ``STREAMSxSESSIONS``."""
    streams, _, sessions = point.partition("x")
    return int(streams), int(sessions or 0)


def run_point(
    name: str,
    streams: int,
    sessions: int,
    args: argparse.Namespace,
    port: int,
    *,
    command: list[str] | None = None,
    client_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One load-generator run against a fresh server; ``client_args`` go to ``tokenwire loadtest``."""
    proc, cert = start_server(name, port, args.steps, args.server_cores, command)
    try:
        max_tokens = max(1, round(args.duration * args.steps))
        loadtest_args = ["--streams", str(streams), "--max-tokens", str(max_tokens), "--tokens-per-s", str(args.steps)]
        if name == "tokenwire-sse":
            loadtest_args += ["--url", f"http://127.0.0.1:{port}"]
        else:
            url = f"https://127.0.0.1:{port}/v1/webtransport"
            loadtest_args += ["--protocol", "webtransport", "--url", url, "--wt-cert-hash", cert]
            loadtest_args += ["--sessions", str(sessions), "--wt-engine", getattr(args, "wt_client_engine", "aioquic")]
        return run_loadtest(args, proc, [*loadtest_args, *client_args])
    finally:
        stop_server(proc)


def row(name: str, point: str, r: dict[str, Any]) -> str:
    sv = r.get("server", {})
    per100k = sv.get("cpu_seconds_per_100k_tokens")
    c = r["correctness"]
    ok = f"{r['streams']['ok']}/{r['streams']['total']}"
    if per100k is None:
        return f"| {name} | {point} | no tokens | | | | | {ok} | |"
    return (
        f"| {name} | {point} | {r['tokens']['per_s']:,.0f} | {per100k:.2f} | {sv.get('cpu_utilisation', 0) * 100:.0f}% "
        f"| {ms(r['delivery_lag_s'], 'p99')} | {ms(r['schedule_lateness_s'], 'p99')} | {ok} | {c['lost']}/{c['duplicated']} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", default="100,200,500,1000,1000x10", help="STREAMS or STREAMSxSESSIONS, comma-separated")
    p.add_argument("--servers", default="tokenwire-wt,tokenwire-sse,aioquic-plain", help=f"from {', '.join(SERVERS)}")
    p.add_argument(
        "--wt-client-engine",
        choices=("aioquic", "native"),
        default="aioquic",
        help="the load generator's WebTransport engine (native: one Rust QUIC engine carries every session)",
    )
    add_run_arguments(p, duration=10.0, out="wt_compare.json")
    args = p.parse_args()
    results: list[dict[str, Any]] = []
    print(f"client engine: {args.wt_client_engine}; competing load: "
          f"{('on ' + args.hog_cores + ' cores') if args.hog else 'no'}; repeats: {args.repeats}")  # fmt: skip
    print("| server | streams (x sessions) | tokens/s | server CPU-s per 100k tokens | server CPU "
          "| lag p99 ms | lateness p99 ms | streams ok | lost/dup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    port = 18300
    hogs = start_hogs(args)
    try:
        for repeat in range(1, args.repeats + 1):
            for point in [x for x in args.points.split(",") if x]:
                streams, sessions = parse_point(point)
                for name in args.servers.split(","):
                    port += 1
                    report = run_point(name, streams, sessions, args, port)
                    results.append(
                        {"server": name, "streams": streams, "sessions": sessions, "repeat": repeat, "report": report}
                    )
                    label = f"{streams:,}" + (f" x {sessions}" if sessions and name != "tokenwire-sse" else "")
                    print(row(name, label, report), flush=True)
    finally:
        stop_hogs(hogs)
    Path(args.out).write_text(json.dumps(results, indent=2))
    summarize(results)
    return 0


def summarize(results: list[dict[str, Any]]) -> None:
    """Per point: each server's CPU-s per 100k tokens (best / worst over the repeats), its worst lag p99 and
    lateness p99, and the same-run ratios against the native engine (each repeat's own ratio: worst shown)."""
    points: dict[tuple[int, int], dict[str, list[dict[str, Any]]]] = {}
    for r in results:
        points.setdefault((r["streams"], r["sessions"]), {}).setdefault(r["server"], []).append(r)
    print("\n| point | server | CPU-s per 100k (best / worst) | worst lag p99 ms | worst lateness p99 ms "
          "| streams ok (all repeats) | same-run ratio to native (worst) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for (streams, sessions), by_server in points.items():
        native = {r["repeat"]: c for r in by_server.get("tokenwire-wt-native", []) if (c := _per100k(r))}
        for name, runs in by_server.items():
            cpu = [c for c in (_per100k(r) for r in runs) if c is not None]
            lag = max((r["report"]["delivery_lag_s"].get("p99", 0) for r in runs), default=0)
            late = max((r["report"]["schedule_lateness_s"].get("p99", 0) for r in runs), default=0)
            ok = sum(r["report"]["streams"]["ok"] for r in runs)
            total = sum(r["report"]["streams"]["total"] for r in runs)
            ratios = [c / native[r["repeat"]] for r in runs if (c := _per100k(r)) and r["repeat"] in native]
            worst = ""
            if ratios and name != "tokenwire-wt-native":
                worst = (
                    f"{min(ratios):.2f}x"
                    if name == "tokenwire-wt"
                    else f"{max(1 / x for x in ratios):.2f}x (native / SSE)"
                )
            label = f"{streams:,}" + (f" x {sessions}" if sessions else "")
            spread = f"{min(cpu):.2f} / {max(cpu):.2f}" if cpu else "n/a"
            print(f"| {label} | {name} | {spread} | {lag * 1e3:.0f} | {late * 1e3:.0f} | {ok}/{total} | {worst} |")


def _per100k(r: dict[str, Any]) -> float | None:
    value = r["report"].get("server", {}).get("cpu_seconds_per_100k_tokens")
    return float(value) if value else None


if __name__ == "__main__":
    raise SystemExit(main())
