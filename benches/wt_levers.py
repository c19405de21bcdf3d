"""The aioquic levers of issue 4, one at a time, side by side in one run: server CPU per 100k tokens.

Every row is a fresh server pinned to one core (``taskset -c 0``) and ``tokenwire loadtest --protocol
webtransport`` pinned to the other, at each point (``STREAMS`` = one session per stream, or
``STREAMSxSESSIONS``), 20 tokens/s per stream from an engine-style producer. Server levers come from
:mod:`benches.wt_lever_server`; client levers (what the peer does, which decides how many ACK packets the
server must process) are ``tokenwire loadtest`` options. The ratio column is against the plain aioquic
server of the same point.

    .venv/bin/python -m benches.wt_levers --points 100,1000x10 --duration 15 --out /tmp/wt_levers.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benches.sse_compare import PY, add_run_arguments, ms
from benches.wt_compare import parse_point, run_point

_LEVER_SERVER = [PY, "-m", "benches.wt_lever_server", "--steps-per-s", "{steps}", "--port", "{port}"]

#: (label, server name for wt_compare, server command or None, extra loadtest args)
LEVERS: list[tuple[str, str, list[str] | None, tuple[str, ...]]] = [
    ("plain aioquic: a write + transmit per token", "aioquic-plain", None, ()),
    ("tokenwire, no batching: a write + transmit per token", "tokenwire-wt", [*_LEVER_SERVER, "--per-write"], ()),
    ("tokenwire batched (= `tokenwire serve`)", "tokenwire-wt", _LEVER_SERVER, ()),
    ("+ defer the transmit after a received datagram", "tokenwire-wt", [*_LEVER_SERVER, "--defer-receive"], ()),
    ("+ lazy timer re-arming", "tokenwire-wt", [*_LEVER_SERVER, "--lazy-timer"], ()),
    ("batched; client transmits after every datagram", "tokenwire-wt", _LEVER_SERVER, ("--no-wt-batch-transmit",)),
    ("batched; client ACK delay 25 ms", "tokenwire-wt", _LEVER_SERVER, ("--wt-ack-delay-ms", "25")),
    ("batched; client ACK delay 100 ms", "tokenwire-wt", _LEVER_SERVER, ("--wt-ack-delay-ms", "100")),
    ("batched + server max_delay_ms 50", "tokenwire-wt", [*_LEVER_SERVER, "--max-delay-ms", "50"], ()),
    ("batched + server max_delay_ms 100", "tokenwire-wt", [*_LEVER_SERVER, "--max-delay-ms", "100"], ()),
    (
        "batched + max_delay_ms 50; client ACK delay 100 ms",
        "tokenwire-wt",
        [*_LEVER_SERVER, "--max-delay-ms", "50"],
        ("--wt-ack-delay-ms", "100"),
    ),
    ("tokenwire batched again (drift check)", "tokenwire-wt", _LEVER_SERVER, ()),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", default="100,1000x10", help="STREAMS or STREAMSxSESSIONS, comma-separated")
    p.add_argument("--levers", default="", help="row numbers to run (1-based, comma-separated); default all")
    add_run_arguments(p, duration=15.0, out="wt_levers.json")
    args = p.parse_args()
    chosen = {int(x) for x in args.levers.split(",") if x} or set(range(1, len(LEVERS) + 1))
    results = []
    print(
        "| # | lever | point | tokens/s | server CPU-s per 100k tokens | vs plain | lag p99 ms | lateness p99 ms | ok |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    port = 18700
    for point in [x for x in args.points.split(",") if x]:
        streams, sessions = parse_point(point)
        plain: float | None = None
        for n, (label, name, command, client_args) in enumerate(LEVERS, 1):
            if n not in chosen:
                continue
            port += 1
            r = run_point(name, streams, sessions, args, port, command=command, client_args=client_args)
            results.append({"lever": label, "point": point, "report": r})
            per100k = r.get("server", {}).get("cpu_seconds_per_100k_tokens")
            if name == "aioquic-plain":
                plain = per100k
            ratio = f"{plain / per100k:.2f}x" if plain and per100k else "n/a"
            cpu = f"{per100k:.2f}" if per100k else "no tokens"
            print(
                f"| {n} | {label} | {point} | {r['tokens']['per_s']:,.0f} | {cpu} | {ratio} "
                f"| {ms(r['delivery_lag_s'], 'p99')} | {ms(r['schedule_lateness_s'], 'p99')} "
                f"| {r['streams']['ok']}/{r['streams']['total']} |",
                flush=True,
            )
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
