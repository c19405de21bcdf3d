"""``tokenwire loadtest --compare sse,webtransport``: one scenario over each protocol, side by side.

The runs go one after the other against the same server, each with every figure of a single run plus what a
comparison needs (``LoadTestConfig.detail``: recovery, bytes on the wire, client CPU, lag curves, a time series,
events and a per-stream timeline). With an :class:`~tokenwire.loadtest.impair.Impairment`, each run goes through
a fresh :class:`~tokenwire.loadtest.relays.RelayProcess` in front of the server: SSE through its TCP relay,
WebTransport through its UDP relay (the certificate hash is still fetched from the server itself), so both
protocols meet the same network; the relay's counters and address changes go into the run.

:func:`run_compare` returns the report (``kind: tokenwire-loadtest-compare``) that ``--json`` writes and
``--report`` renders; :func:`format_compare` is the table printed at the end.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from tokenwire import __version__
from tokenwire.loadtest.runner import LoadTestConfig, fetch_wt_certificate, run_loadtest

if TYPE_CHECKING:
    from tokenwire.loadtest.impair import Impairment

__all__ = ["PROTOCOLS", "SUMMARY_ROWS", "format_compare", "machine_facts", "parse_protocols", "run_compare"]

PROTOCOLS = ("sse", "webtransport")
KIND = "tokenwire-loadtest-compare"


def _pct(section: str, key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda run: (run.get(section) or {}).get(key)


#: The side-by-side table: (metric, unit, value of a run's report). The terminal shows latencies (unit "s") in ms.
SUMMARY_ROWS: tuple[tuple[str, str, Callable[[dict[str, Any]], float | None]], ...] = (
    ("TTFT p50", "s", _pct("ttft_s", "p50")),
    ("TTFT p99", "s", _pct("ttft_s", "p99")),
    ("delivery lag p50", "s", _pct("delivery_lag_s", "p50")),
    ("delivery lag p99", "s", _pct("delivery_lag_s", "p99")),
    ("delivery lag max", "s", _pct("delivery_lag_s", "max")),
    ("lateness p99", "s", _pct("schedule_lateness_s", "p99")),
    ("tokens/s", "tokens/s", lambda run: run["tokens"]["per_s"]),
    ("reconnects", "count", lambda run: run["disconnects"]["resumes"]),
    ("recovery p50", "s", _pct("recovery_s", "p50")),
    ("recovery p99", "s", _pct("recovery_s", "p99")),
    ("bytes per token", "B", lambda run: run["wire"]["bytes_per_token"]),
    ("server CPU-s per 100k tokens", "cpu-s", _pct("server", "cpu_seconds_per_100k_tokens")),
    ("client CPU-s per 100k tokens", "cpu-s", _pct("client", "cpu_seconds_per_100k_tokens")),
    ("streams completed", "streams", lambda run: run["streams"]["ok"]),
    ("streams total", "streams", lambda run: run["streams"]["total"]),
    ("lost", "tokens", lambda run: run["correctness"]["lost"]),
    ("duplicated", "tokens", lambda run: run["correctness"]["duplicated"]),
)


def parse_protocols(text: str) -> list[str]:
    """``"sse,webtransport"`` -> ``["sse", "webtransport"]``: known names, each once, in the order given."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown or not names:
        raise ValueError(f"--compare takes a comma-separated list of {', '.join(PROTOCOLS)}; got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--compare names a protocol twice: {text!r}")
    return names


def machine_facts() -> dict[str, Any]:
    """Where the comparison ran: host, OS, Python, CPU, tokenwire's version, when."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "tokenwire_version": __version__,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _scenario(cfg: LoadTestConfig, preset: str | None) -> dict[str, Any]:
    return {
        "streams": cfg.streams,
        "sessions": cfg.sessions,
        "tokens_per_s": cfg.tokens_per_s,
        "max_tokens": cfg.max_tokens,
        "disconnect_rate": cfg.disconnect_rate,
        "ramp": cfg.ramp,
        "procs": cfg.procs,
        "seed": cfg.seed,
        "url": cfg.url,
        "preset": preset,
    }


def run_compare(
    base: LoadTestConfig,
    protocols: Sequence[str],
    *,
    impairment: Impairment | None = None,
    preset: str | None = None,
    out: TextIO = sys.stderr,
) -> dict[str, Any]:
    """Run ``base``'s scenario over each of ``protocols`` in turn against ``base.url`` (through a fresh relay
    each when ``impairment`` is given) and return the comparison report; the table goes to ``out`` unless
    ``base.quiet``."""
    parts = urlsplit(base.url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--url must be http://host:port, got {base.url!r}")
    if len(base.urls) > 1:
        raise ValueError("a comparison runs against one server: give one --url")
    machine = machine_facts()
    wt_url = ""
    if "webtransport" in protocols and not base.wt_cert_hash:
        # Once, before any run: the server must serve WebTransport, the UDP relay needs its port, and every run
        # pins this hash (no fetch of its own).
        wt_url, cert_hex = fetch_wt_certificate(base.url)
        base = replace(base, wt_cert_hash=cert_hex, wt_url=base.wt_url or wt_url)
    runs: dict[str, dict[str, Any]] = {}
    for protocol in protocols:
        cfg = replace(base, protocol=protocol, detail=True, label=protocol, urls=[base.url])
        if not base.quiet:
            print(f"== {protocol}: {_describe(cfg, impairment)}", file=out, flush=True)
        if impairment is None:
            runs[protocol] = run_loadtest(cfg, out)
        else:
            runs[protocol] = _run_impaired(cfg, impairment, wt_url, out)
    report = {
        "kind": KIND,
        "version": 1,
        "protocols": list(protocols),
        "impairment": impairment.as_dict() if impairment is not None else None,
        "impairment_text": impairment.describe() if impairment is not None else "none",
        "scenario": _scenario(base, preset),
        "machine": machine,
        "runs": runs,
        "summary": summary_rows(runs),
        "passed": all(run["passed"] for run in runs.values()),
    }
    if not base.quiet:
        print(format_compare(report), file=out, flush=True)
    return report


def _describe(cfg: LoadTestConfig, impairment: Impairment | None) -> str:
    cuts = f", {cfg.disconnect_rate:g} forced cuts/stream/s" if cfg.disconnect_rate else ""
    network = f"; network: {impairment.describe()}" if impairment is not None else ""
    return f"{cfg.streams} streams x {cfg.max_tokens} tokens at {cfg.tokens_per_s:g}/s{cuts}{network}"


def _run_impaired(cfg: LoadTestConfig, impairment: Impairment, wt_url: str, out: TextIO) -> dict[str, Any]:
    """One run through a fresh relay process: SSE to its TCP port, WebTransport to its UDP port."""
    from tokenwire.loadtest.relays import RelayProcess

    server = urlsplit(cfg.url)
    host, port = server.hostname or "127.0.0.1", server.port or 80
    wt = urlsplit(wt_url) if wt_url else None
    # Without the server's word, ``tokenwire serve``'s: one port number for both.
    udp_port = (wt.port or port) if wt is not None else port
    relay = RelayProcess(host, port, udp_port, impairment, seed=cfg.seed)
    relay.start()
    try:
        if cfg.protocol == "sse":
            url = f"http://{relay.host}:{relay.tcp_port}{server.path}"
            cfg = replace(cfg, url=url, urls=[url])
        else:
            path = wt.path if wt is not None and wt.path else "/v1/webtransport"
            cfg = replace(cfg, wt_url=f"https://{relay.host}:{relay.udp_port}{path}")
        run = run_loadtest(cfg, out)
    finally:
        stats = relay.stop()
    run["relay"] = stats
    side = stats.get("tcp" if cfg.protocol == "sse" else "udp") or {}
    rebinds = [{"t": at - run["started_at"], "kind": "rebind", "stream": None} for at in side.get("rebinds", ())]
    run["events"] = sorted(run["events"] + rebinds, key=lambda e: e["t"])
    return run


def summary_rows(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The side-by-side table as data: one row per metric, a value per protocol (``None``: not measured)."""
    rows = []
    for metric, unit, value in SUMMARY_ROWS:
        row: dict[str, Any] = {"metric": metric, "unit": unit}
        for protocol, run in runs.items():
            row[protocol] = value(run)
        rows.append(row)
    return rows


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value * 1e3:,.2f}"
    if unit in ("count", "streams", "tokens"):
        return f"{value:,.0f}"
    if unit == "cpu-s":
        return f"{value:,.3f}"
    return f"{value:,.1f}"


def format_compare(report: dict[str, Any]) -> str:
    """The comparison as a table, one column per protocol (seconds shown in ms)."""
    protocols = report["protocols"]
    header = ["metric", "unit", *protocols]
    body = [
        [row["metric"], "ms" if row["unit"] == "s" else row["unit"], *(_cell(row[p], row["unit"]) for p in protocols)]
        for row in report["summary"]
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["", f"comparison; network impairment: {report['impairment_text']}"]
    for line in [header, *body]:
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(line[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells))
    notes = [run["delivery_lag_s"].get("note") for run in report["runs"].values()]
    if any(notes):
        lines.append("(several client processes: lag percentiles are the maximum over processes, an upper bound)")
    verdicts = ", ".join(f"{p} {'PASS' if report['runs'][p]['passed'] else 'FAIL'}" for p in protocols)
    lines.append(f"exactly-once: {verdicts} -> {'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)
