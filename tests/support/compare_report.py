"""Compare reports for the HTML report's tests (``kind: tokenwire-loadtest-compare``, version 1).

:func:`real_run` makes one as a user does: ``tokenwire serve`` in a subprocess, then ``tokenwire loadtest --compare
sse,webtransport`` through impairing relays with ``--json`` and ``--report`` (a few seconds; the tests share one
run per session, the ``real_compare`` fixture). :func:`sample_report` synthesises one from a small simulated run
(seeded), for the shapes a real run cannot give cheaply: one protocol, no cuts, no impairment, empty series, a
failed run with nulls, more streams than the timeline draws, hostile strings.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import serve_cli

__all__ = [
    "PAGE_IDS",
    "PLOT_IDS",
    "REAL_RUN_ARGS",
    "SUMMARY_ROWS",
    "RealRun",
    "compare_report",
    "real_run",
    "sample_report",
]

#: The ids the HTML report's page gives its plots, and all the ids the tests look for (the contract's list).
PLOT_IDS = ("plot-lag-cdf", "plot-lag-time", "plot-tokens", "plot-timeline")
PAGE_IDS = ("summary", *PLOT_IDS, "config", "machine")

#: (metric, unit) of the summary rows, in the order of the contract's list.
SUMMARY_ROWS = (
    ("TTFT p50", "s"),
    ("TTFT p99", "s"),
    ("delivery lag p50", "s"),
    ("delivery lag p99", "s"),
    ("delivery lag max", "s"),
    ("lateness p99", "s"),
    ("tokens/s", "tokens/s"),
    ("reconnects", "count"),
    ("recovery p50", "s"),
    ("recovery p99", "s"),
    ("bytes per token", "B"),
    ("server CPU-s per 100k tokens", "cpu-s"),
    ("client CPU-s per 100k tokens", "cpu-s"),
    ("streams completed", "streams"),
    ("streams total", "streams"),
    ("lost", "tokens"),
    ("duplicated", "tokens"),
)


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    out = {}
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        out[name] = s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]
    return out


def _quantiles(values: list[float], qs: list[float]) -> list[float]:
    if not values:
        return []
    s = sorted(values)
    return [s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))] for q in qs]


def _run(
    protocol: str,
    rng: random.Random,
    *,
    streams: int,
    tokens: int,
    tokens_per_s: float,
    cut_rate: float,
    rebind_every: float,
    failed: int,
    lost: int,
    duplicated: int,
    empty: bool,
    started_at: float,
) -> dict[str, Any]:
    """One protocol's run: streams start over a one-second ramp, emit ``tokens`` tokens at ``tokens_per_s``, and
    are cut at random with probability ``cut_rate`` each; a cut costs a recovery (slower for SSE)."""
    base_lag = 0.004 if protocol == "webtransport" else 0.006
    recovery_mean = 0.08 if protocol == "webtransport" else 0.35
    lags: list[float] = []
    lateness: list[float] = []
    recoveries: list[float] = []
    events: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    arrivals: list[tuple[float, float]] = []
    for i in range(0 if empty else streams):
        start = rng.uniform(0, 1.0)
        first = start + rng.uniform(0.01, 0.05)
        t = first
        cuts = 0
        ok = i >= failed
        n = tokens if ok else rng.randrange(1, tokens)
        for _ in range(n):
            t += 1 / tokens_per_s
            lag = rng.expovariate(1 / base_lag)
            if rng.random() < cut_rate / tokens:
                cuts += 1
                rec = rng.expovariate(1 / recovery_mean)
                events.append({"t": t, "kind": "forced_cut" if cuts % 2 else "cut", "stream": i})
                events.append({"t": t + rec * 0.6, "kind": "reconnect", "stream": i})
                events.append({"t": t + rec, "kind": "resumed", "stream": i})
                recoveries.append(rec)
                lag += rec
                t += rec
            lags.append(lag)
            lateness.append(max(0.0, lag - base_lag))
            arrivals.append((t, lag))
        timeline.append({"stream": i, "start_s": start, "first_token_s": first, "end_s": t, "ok": ok, "cuts": cuts})
    if rebind_every and not empty:
        t = rebind_every
        while t < max((a for a, _ in arrivals), default=0):
            events.append({"t": t, "kind": "rebind", "stream": None})
            t += rebind_every
    events.sort(key=lambda e: e["t"])
    elapsed = max((tl["end_s"] for tl in timeline), default=0.0)
    interval = 0.25
    buckets = int(elapsed / interval) + 1 if not empty else 0
    per: list[list[float]] = [[] for _ in range(buckets)]
    for at, lag in arrivals:
        per[min(buckets - 1, int(at / interval))].append(lag)
    series: dict[str, Any] = {
        "interval_s": interval,
        "t": [k * interval for k in range(buckets)],
        "tokens": [len(b) for b in per],
        "tokens_per_s": [len(b) / interval for b in per],
        "lag_p50_s": [_pct(b).get("p50") for b in per],
        "lag_p99_s": [_pct(b).get("p99") for b in per],
        "lag_max_s": [_pct(b).get("max") for b in per],
        "active": [sum(1 for tl in timeline if tl["start_s"] <= k * interval < tl["end_s"]) for k in range(buckets)],
    }
    quantiles = [k / 200 for k in range(1, 201)]
    total = len(lags)
    ok_streams = sum(1 for tl in timeline if tl["ok"])
    bytes_down = total * (58 if protocol == "sse" else 31)
    cpu = total * 2e-5
    return {
        "config": {"protocol": protocol, "streams": streams, "max_tokens": tokens, "tokens_per_s": tokens_per_s},
        "elapsed_s": elapsed,
        "streams": {"total": len(timeline), "ok": ok_streams, "failed": len(timeline) - ok_streams, "errors": {}},
        "tokens": {"total": total, "per_s": total / elapsed if elapsed else 0.0},
        "correctness": {
            "lost": lost,
            "duplicated": duplicated,
            "content_mismatches": 0,
            "incomplete": len(timeline) - ok_streams,
        },
        "ttft_s": _pct([tl["first_token_s"] - tl["start_s"] for tl in timeline]),
        "delivery_lag_s": {"count": total, **_pct(lags)},
        "schedule_lateness_s": {"count": total, **_pct(lateness)},
        "disconnects": {
            "forced": sum(1 for e in events if e["kind"] == "forced_cut"),
            "unexpected": sum(1 for e in events if e["kind"] == "cut"),
            "resumes": len(recoveries),
            "cross_node_resumes": 0,
        },
        "resume_s": _pct(recoveries),
        "resume_cross_node_s": {},
        "passed": lost == 0 and duplicated == 0 and ok_streams == len(timeline),
        "started_at": started_at,
        "recovery_s": _pct(recoveries),
        "recovery_samples": recoveries[:1000],
        "wire": {
            "bytes_down": bytes_down,
            "bytes_up": len(timeline) * 300,
            "bytes_per_token": bytes_down / total if total else None,
            "measured_at": "client",
        },
        "client": {"cpu_seconds": cpu, "cpu_seconds_per_100k_tokens": cpu / total * 1e5 if total else None},
        "relay": None,
        "lag_cdf": {"lag_s": _quantiles(lags, quantiles), "lateness_s": _quantiles(lateness, quantiles)},
        "quantiles": quantiles,
        "series": series,
        "events": events,
        "events_dropped": 0,
        "timeline": timeline,
    }


def _summary_value(metric: str, run: dict[str, Any]) -> float | None:
    def get(d: dict[str, Any] | None, key: str) -> float | None:
        return None if d is None else d.get(key)

    lookup = {
        "TTFT p50": get(run["ttft_s"], "p50"),
        "TTFT p99": get(run["ttft_s"], "p99"),
        "delivery lag p50": get(run["delivery_lag_s"], "p50"),
        "delivery lag p99": get(run["delivery_lag_s"], "p99"),
        "delivery lag max": get(run["delivery_lag_s"], "max"),
        "lateness p99": get(run["schedule_lateness_s"], "p99"),
        "tokens/s": run["tokens"]["per_s"],
        "reconnects": run["disconnects"]["resumes"],
        "recovery p50": get(run["recovery_s"], "p50"),
        "recovery p99": get(run["recovery_s"], "p99"),
        "bytes per token": run["wire"]["bytes_per_token"],
        "server CPU-s per 100k tokens": get(run.get("server"), "cpu_seconds_per_100k_tokens"),
        "client CPU-s per 100k tokens": run["client"]["cpu_seconds_per_100k_tokens"],
        "streams completed": run["streams"]["ok"],
        "streams total": run["streams"]["total"],
        "lost": run["correctness"]["lost"],
        "duplicated": run["correctness"]["duplicated"],
    }
    return lookup[metric]


def sample_report(
    protocols: Sequence[str] = ("sse", "webtransport"),
    *,
    streams: int = 40,
    tokens: int = 30,
    cut_rate: float = 0.5,
    impairment: bool = True,
    failed: int = 0,
    lost: int = 0,
    duplicated: int = 0,
    empty: bool = False,
    seed: int = 1,
) -> dict[str, Any]:
    """A compare report as the contract describes it, from a seeded simulated run of each protocol."""
    rng = random.Random(seed)
    started = 1_760_000_000.0
    rebind = 1.0 if impairment else 0.0
    runs = {}
    for k, p in enumerate(protocols):
        runs[p] = _run(
            p,
            rng,
            streams=streams,
            tokens=tokens,
            tokens_per_s=20.0,
            cut_rate=cut_rate,
            rebind_every=rebind,
            failed=failed,
            lost=lost,
            duplicated=duplicated,
            empty=empty,
            started_at=started + 10 * k,
        )
        if impairment:
            runs[p]["relay"] = {
                "tcp": {"connections": streams, "bytes_up": 1000, "bytes_down": 90000, "stalls": 7,
                        "stall_seconds": 1.4, "resets": 3, "rebinds": [started + 1.0]},
                "udp": {"datagrams_up": 400, "datagrams_down": 2400, "bytes_up": 9000, "bytes_down": 80000,
                        "dropped_up": 20, "dropped_down": 120, "duplicated": 4, "reordered": 24,
                        "rebinds": [started + 1.0]},
            }  # fmt: skip
    summary = []
    for metric, unit in SUMMARY_ROWS:
        row: dict[str, Any] = {"metric": metric, "unit": unit}
        for p in protocols:
            row[p] = _summary_value(metric, runs[p])
        summary.append(row)
    return {
        "kind": "tokenwire-loadtest-compare",
        "version": 1,
        "protocols": list(protocols),
        "impairment": (
            {
                "loss": 0.05,
                "delay": 0.05,
                "jitter": 0.01,
                "reorder": 0.01,
                "duplicate": 0.0,
                "rate": 0.0,
                "rebind": rebind,
                "link": "connection",
                "rto": 0.22,
            }
            if impairment
            else None
        ),
        "impairment_text": "loss 5%, delay 50 ms, jitter 10 ms, reorder 1%, rebind 1 s" if impairment else "none",
        "scenario": {
            "streams": streams,
            "sessions": 1,
            "tokens_per_s": 20.0,
            "max_tokens": tokens,
            "disconnect_rate": cut_rate,
            "ramp": 40.0,
            "procs": 1,
            "seed": seed,
            "url": "http://127.0.0.1:8000",
            "preset": None,
        },
        "machine": {
            "hostname": "loadbox",
            "platform": "Linux-6.1-x86_64",
            "python": "3.11.2",
            "cpu_model": "Example CPU @ 2.0GHz",
            "cpus": 2,
            "tokenwire_version": "0.0.0",
            "started_at": "2025-10-09T08:53:20+00:00",
        },
        "runs": runs,
        "summary": summary,
        "passed": all(r["passed"] for r in runs.values()),
    }


def compare_report(**kw: Any) -> dict[str, Any]:
    """A synthetic compare report (keywords: :func:`sample_report`'s)."""
    return sample_report(**kw)


#: The real run's scenario: both protocols, forced cuts, and a network with loss, delay and address changes, so
#: each plot has lines, markers and cuts to draw (12 streams x 2 s each, one protocol after the other).
REAL_RUN_ARGS = (
    "--compare", "sse,webtransport", "--streams", "12", "--duration", "2", "--disconnect-rate", "0.3",
    "--impair", "loss=1%,delay=5ms,rebind=1s", "--seed", "1",
)  # fmt: skip


@dataclass(frozen=True)
class RealRun:
    """What one ``tokenwire loadtest --compare ... --json J --report H`` run wrote, and what it printed."""

    json_path: Path
    html_path: Path
    stderr: str

    def report(self) -> dict[str, Any]:
        """The JSON report, read afresh each call (a test may change its copy)."""
        report: dict[str, Any] = json.loads(self.json_path.read_text(encoding="utf-8"))
        return report

    @property
    def html(self) -> str:
        return self.html_path.read_text(encoding="utf-8")


def real_run(directory: Path) -> RealRun:
    """Runs ``tokenwire serve`` and, against it, ``tokenwire loadtest`` with :data:`REAL_RUN_ARGS`; the run must
    pass (exit 0: every stream complete, nothing lost or duplicated)."""
    json_path, html_path = directory / "compare.json", directory / "compare.html"
    with serve_cli() as (url, _):
        proc = subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "tokenwire", "loadtest", "--url", url, *REAL_RUN_ARGS,
             "--json", str(json_path), "--report", str(html_path)],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return RealRun(json_path, html_path, proc.stderr)
