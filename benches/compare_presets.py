"""SSE vs WebTransport, the comparison table: every ``tokenwire loadtest --preset`` run side by side.

For each preset (:mod:`tokenwire.loadtest.presets`) and repeat: a fresh ``tokenwire serve`` pinned to
``--server-cores`` (0), then ``tokenwire loadtest --preset NAME --server-pid ...`` pinned to ``--client-cores``
(1; the relay process it starts inherits that pinning), which runs the preset over SSE and then over
WebTransport through the same impaired network and writes its JSON and HTML report into ``--out``. The table
gives, per preset, the metrics that answer its question plus the server's CPU per 100k tokens, each as the
SSE and WebTransport values and their ratio; with ``--repeats`` > 1 each cell is the median and the range.
A preset whose runs lost, duplicated or left a stream incomplete is marked FAIL.

    python -m benches.compare_presets --repeats 3
    python -m benches.compare_presets --presets latency,hol --scale 0.3   # a quick look
    python -m benches.compare_presets --presets migration --loadtest-args "--wt-keepalive 0.25"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benches.sse_compare import TASKSET, TOKENWIRE, spawn_server, stop_server
from tokenwire.loadtest.presets import PRESETS, Preset

_ALWAYS = ("server CPU-s per 100k tokens",)
_URL = re.compile(r"serving SSE on (http://[0-9.]+:[0-9]+)")


def _value(report: dict[str, Any], metric: str, protocol: str) -> float | None:
    for row in report["summary"]:
        if row["metric"] == metric:
            value = row.get(protocol)
            return None if value is None else float(value)
    raise KeyError(metric)


def run_preset(preset: Preset, repeat: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run of ``preset``: a fresh server, the load test's comparison report."""
    ready = lambda line: found[1] if (found := _URL.search(line)) else None
    serve = [*TOKENWIRE, "serve", "--port", "0", "--wt-engine", args.wt_engine]
    server, url = spawn_server("tokenwire serve", serve, args.server_cores, ready)
    stem = Path(args.out) / f"{preset.name}-{repeat}"
    cmd = [TASKSET, "-c", args.client_cores, *TOKENWIRE, "loadtest", "--preset", preset.name]
    cmd += ["--url", url, "--server-pid", str(server.pid), "--quiet", "--wt-engine", args.wt_client_engine]
    cmd += ["--json", f"{stem}.json", "--report", f"{stem}.html", "--seed", str(repeat)]
    cmd += shlex.split(args.loadtest_args)
    if args.scale != 1.0:
        cmd += ["--streams", str(max(2, round(preset.streams * args.scale)))]
        cmd += ["--duration", f"{max(1.0, preset.duration * args.scale):g}"]
    Path(f"{stem}.json").unlink(missing_ok=True)  # an earlier run's must not stand in for this one's
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)  # noqa: S603
    finally:
        stop_server(server)
    if not Path(f"{stem}.json").exists():
        raise RuntimeError(
            f"{preset.name}: the load test wrote no report (rc {done.returncode}): {done.stderr[-2000:]}"
        )
    report: dict[str, Any] = json.loads(Path(f"{stem}.json").read_text())
    return report


def _cell(values: list[float | None], unit: str) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "n/a"
    scale, suffix = (1e3, " ms") if unit == "s" else (1.0, "")
    fmt = lambda v: f"{v * scale:,.1f}" if scale != 1.0 or v < 1000 else f"{v:,.0f}"
    mid = statistics.median(got)
    if len(got) == 1:
        return f"{fmt(mid)}{suffix}"
    return f"{fmt(mid)}{suffix} ({fmt(min(got))}-{fmt(max(got))})"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| preset (row) | metric | SSE | WebTransport | WT / SSE |",
        "|---|---|---:|---:|---:|",
    ]
    for name, reports in results.items():
        preset = PRESETS[name]
        verdict = "" if all(r["passed"] for r in reports) else " **FAIL**"
        units = {row["metric"]: row["unit"] for row in reports[0]["summary"]}
        for i, metric in enumerate((*preset.metrics, *_ALWAYS)):
            sse = [_value(r, metric, "sse") for r in reports]
            wt = [_value(r, metric, "webtransport") for r in reports]
            ratios = [w / s for s, w in zip(sse, wt, strict=True) if s and w is not None]
            ratio = f"{statistics.median(ratios):.2f}" if ratios else "n/a"
            label = f"`{name}` ({preset.row}){verdict}" if i == 0 else ""
            lines.append(f"| {label} | {metric} | {_cell(sse, units[metric])} | {_cell(wt, units[metric])} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names (default: all)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--wt-engine",
        choices=("aioquic", "native"),
        default="aioquic",
        help="the server's WebTransport engine (BENCHMARKS.md's issue-12 table was recorded on aioquic)",
    )
    p.add_argument(
        "--wt-client-engine",
        choices=("aioquic", "native"),
        default="aioquic",
        help="the load generator's WebTransport engine (aioquic too in that table)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiply each preset's streams and duration")
    p.add_argument("--server-cores", default="0")
    p.add_argument("--client-cores", default="1" if (os.cpu_count() or 1) > 1 else "0")
    p.add_argument("--out", default="bench-out/presets", help="JSON and HTML reports, and the table (presets.md)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per load test")
    p.add_argument("--loadtest-args", default="", help="more tokenwire loadtest options, e.g. '--wt-keepalive 0.25'")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        p.error(f"unknown presets {unknown}; the presets are {', '.join(PRESETS)}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        for repeat in range(args.repeats):
            print(f"[{name} {repeat + 1}/{args.repeats}] {PRESETS[name].question}", file=sys.stderr, flush=True)
            report = run_preset(PRESETS[name], repeat, args)
            results.setdefault(name, []).append(report)
            print(f"  {'PASS' if report['passed'] else 'FAIL'}", file=sys.stderr, flush=True)
    out = table(results)
    (Path(args.out) / "presets.md").write_text(out + "\n")
    print(out)
    return 0 if all(r["passed"] for reports in results.values() for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
