"""Loss recovery of the two WebTransport server engines, side by side (issue 13).

Each row: a fresh ``tokenwire serve --wt-engine ENGINE`` pinned to one core, ``tokenwire loadtest --protocol
webtransport`` on the other with a relay in front of the server (``--impair``, docs/impairment.md). Two shapes:

- ``answer``: ONE unthrottled stream (``--tokens-per-s 0`` on both sides) of ``--answer-tokens`` tokens: how long
  the whole answer takes (the run's ``elapsed_s``: QUIC + WebTransport handshake, request, every byte), with the
  delay alone and with loss on top;
- ``paced``: ``--paced-streams`` streams at 20 tokens/s for ``--paced-duration`` s: delivery lag and schedule
  lateness p99 under the same impairment.

    .venv/bin/python -m benches.wt_recovery --repeats 3 --out /tmp/wt_recovery.json

Prints a markdown table (the one in BENCHMARKS.md) and writes every report as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benches.sse_compare import TOKENWIRE, add_run_arguments, ms, run_loadtest, stop_server
from benches.wt_compare import start_server

ENGINES = ("aioquic", "native")


def serve_command(engine: str, paced: bool) -> list[str]:
    pace = ["--engine-steps-per-s", "{steps}"] if paced else ["--tokens-per-s", "0"]
    return [*TOKENWIRE, "serve", "--port", "{port}", "--wt-engine", engine, *pace]


def run(engine: str, impair: str, paced: bool, args: argparse.Namespace, port: int) -> dict[str, Any]:
    proc, cert = start_server(
        f"tokenwire-wt-{engine}", port, args.steps, args.server_cores, serve_command(engine, paced)
    )
    try:
        url = f"http://127.0.0.1:{port}"  # with --impair the loadtest takes the base URL and puts its relay in front
        paced_tokens = str(round(args.paced_duration * args.steps))
        shape = (
            ["--streams", str(args.paced_streams), "--tokens-per-s", str(args.steps), "--max-tokens", paced_tokens]
            if paced
            else ["--streams", "1", "--tokens-per-s", "0", "--max-tokens", str(args.answer_tokens)]
        )
        loadtest_args = [
            "--protocol", "webtransport", "--url", url, "--wt-cert-hash", cert, "--impair", impair,
            "--wt-engine", args.wt_client_engine, *shape,
        ]  # fmt: skip
        report = run_loadtest(args, proc, loadtest_args)
        run_report: dict[str, Any] = report["runs"]["webtransport"]  # --impair writes the comparison's shape
        return run_report
    finally:
        stop_server(proc)


def answer_row(engine: str, impair: str, reports: list[dict[str, Any]]) -> str:
    times = [r["elapsed_s"] for r in reports]
    received = [(r.get("wire") or {}).get("bytes_down") or 0 for r in reports]
    ok = sum(r["streams"]["ok"] for r in reports)
    c = [f"{r['correctness']['lost']}/{r['correctness']['duplicated']}" for r in reports]
    return (
        f"| {engine} | answer | {impair} | {statistics.median(times):.2f} | {max(times):.2f} "
        f"| {statistics.median(received) / 1000:,.0f} KB | | | {ok}/{len(reports)} | {' '.join(c)} |"
    )


def paced_row(engine: str, impair: str, reports: list[dict[str, Any]]) -> str:
    lag = max(ms(r["delivery_lag_s"], "p99") for r in reports)
    late = max(ms(r["schedule_lateness_s"], "p99") for r in reports)
    ok = sum(r["streams"]["ok"] for r in reports)
    total = sum(r["streams"]["total"] for r in reports)
    c = [f"{r['correctness']['lost']}/{r['correctness']['duplicated']}" for r in reports]
    return f"| {engine} | paced | {impair} | | | | {lag} | {late} | {ok}/{total} | {' '.join(c)} |"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engines", default=",".join(ENGINES), help="server engines, comma-separated")
    p.add_argument("--impairments", default="delay=50ms;loss=5%,delay=50ms", help="--impair specs, ';'-separated")
    p.add_argument("--answer-tokens", type=int, default=6_000, help="tokens of the unthrottled answer (about 190 KB)")
    p.add_argument("--paced-streams", type=int, default=20)
    p.add_argument("--paced-duration", type=float, default=10.0, help="seconds of tokens per paced stream")
    p.add_argument("--shapes", default="answer,paced")
    p.add_argument("--wt-client-engine", choices=ENGINES, default="aioquic", help="the load generator's engine")
    add_run_arguments(p, duration=10.0, out="wt_recovery.json")
    args = p.parse_args()
    print("| server engine | shape | impairment | answer s (median) | answer s (worst) | bytes received "
          "| lag p99 ms (worst) | lateness p99 ms (worst) | streams ok | lost/dup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    port = 18700
    for shape in args.shapes.split(","):
        for impair in args.impairments.split(";"):
            for engine in args.engines.split(","):
                reports = []
                for _ in range(args.repeats):
                    port += 1
                    reports.append(run(engine, impair, shape == "paced", args, port))
                results.append({"engine": engine, "shape": shape, "impair": impair, "reports": reports})
                print((paced_row if shape == "paced" else answer_row)(engine, impair, reports), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
