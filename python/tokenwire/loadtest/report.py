"""Aggregates worker results into the load-test report and formats its summary."""

from __future__ import annotations

import collections
import itertools
from typing import Any

from tokenwire.loadtest.worker import QUANTILES

__all__ = ["build_report", "build_run_detail", "format_report", "percentiles"]

#: Recovery samples kept in a report (evenly spaced over the sorted samples when there are more).
MAX_RECOVERY_SAMPLES = 2000
#: Set on a figure merged over several worker processes, as the summary's histograms are.
UPPER_BOUND_NOTE = "percentiles are the maximum over worker processes (upper bound)"


def percentiles(values: list[float], ps: tuple[float, ...] = (50, 90, 99, 100)) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    out = {}
    for p in ps:
        k = min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))
        out["max" if p == 100 else f"p{p:g}".replace(".", "_")] = s[k]
    return out


def _merge_hist(summaries: list[dict[str, float]]) -> dict[str, Any]:
    """Per-process histograms: exact for one process; with several, the percentile of each is the largest
    any process saw (an upper bound) and the mean is count-weighted."""
    live = [s for s in summaries if s.get("count")]
    if not live:
        return {"count": 0}
    if len(live) == 1:
        return dict(live[0])
    count = sum(s["count"] for s in live)
    merged: dict[str, Any] = {"count": count, "mean": sum(s["mean"] * s["count"] for s in live) / count}
    for key in ("p50", "p90", "p99", "p99_9", "max"):
        merged[key] = max(s[key] for s in live)
    merged["note"] = UPPER_BOUND_NOTE
    return merged


def build_report(
    config: dict[str, Any], raw: list[dict[str, Any]], *, elapsed: float, server: dict[str, Any] | None
) -> dict[str, Any]:
    results = [r for part in raw for r in part["results"]]
    tokens = sum(r["tokens"] for r in results)
    errors = collections.Counter(r["error"].split(":")[0] for r in results if r["error"])
    report: dict[str, Any] = {
        "config": config,
        "elapsed_s": elapsed,
        "streams": {
            "total": len(results),
            "ok": sum(r["ok"] for r in results),
            "failed": sum(not r["ok"] for r in results),
            "errors": dict(errors.most_common(10)),
        },
        "tokens": {"total": tokens, "per_s": tokens / elapsed if elapsed > 0 else 0.0},
        "correctness": {
            "lost": sum(r["lost"] for r in results),
            "duplicated": sum(r["duplicates"] for r in results),
            "content_mismatches": sum(1 for r in results if not r["hash_ok"] and not r["error"]),
            "incomplete": sum(1 for r in results if not r["ok"]),
        },
        "ttft_s": percentiles([r["ttft"] for r in results if r["ttft"] is not None]),
        "delivery_lag_s": _merge_hist([p["lag"] for p in raw]),
        "schedule_lateness_s": _merge_hist([p["lateness"] for p in raw]),
        "disconnects": {
            "forced": sum(r["forced_drops"] for r in results),
            "unexpected": sum(r["unexpected_drops"] for r in results),
            "resumes": sum(r.get("resume_attempts", 0) for r in results),
            "cross_node_resumes": sum(r.get("cross_node_attempts", 0) for r in results),
        },
        # Reconnect (connect + request) -> first bytes of the resumed stream; cross-node: resumed on another
        # server than the one the stream started on.
        "resume_s": percentiles([x for r in results for x in r["resumes"]]),
        "resume_cross_node_s": percentiles([x for r in results for x in r.get("cross_node_resumes", ())]),
        # The generator's own CPU while its streams ran (every worker process; startup not counted).
        "client": {"cpu_seconds": sum(p["cpu_seconds"] for p in raw), "processes": len(raw)},
    }
    if server is not None:
        cpu = server["cpu_seconds"]
        server["cpu_seconds_per_100k_tokens"] = cpu / tokens * 1e5 if tokens else None
        server["cpu_utilisation"] = cpu / elapsed if elapsed > 0 else None
        report["server"] = server
    c = report["correctness"]
    report["passed"] = c["lost"] == 0 and c["duplicated"] == 0 and c["incomplete"] == 0
    return report


def _spread(values: list[float], cap: int) -> list[float]:
    """``values`` sorted, or ``cap`` of them evenly spaced over the sorted list (first and last kept)."""
    s = sorted(values)
    if len(s) <= cap:
        return s
    return [s[round(i * (len(s) - 1) / (cap - 1))] for i in range(cap)]


def _merge_series(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' time series as one: tokens and active streams summed per bucket; lag percentiles per bucket
    the largest any process saw (an upper bound with several processes)."""
    interval = parts[0]["interval_s"]
    n = max(len(p["tokens"]) for p in parts)

    def column(key: str) -> list[list[Any]]:
        return [[p[key][k] for p in parts if k < len(p[key])] for k in range(n)]

    tokens = [sum(c) for c in column("tokens")]
    # A process whose series ends early had no stream active after its last bucket.
    active = [sum(c) for c in column("active")]
    lags = [[h for h in c if h.get("count")] for c in column("lag")]

    def lag(key: str) -> list[float | None]:
        return [max(h[key] for h in c) if c else None for c in lags]

    return {
        "interval_s": interval,
        "t": [k * interval for k in range(n)],
        "tokens": tokens,
        "tokens_per_s": [x / interval for x in tokens],
        "lag_p50_s": lag("p50"),
        "lag_p99_s": lag("p99"),
        "lag_max_s": lag("max"),
        "active": active,
    }


def _curve(curves: list[list[float]]) -> list[float]:
    """Quantile curves of several processes as one: the largest value at each quantile (an upper bound)."""
    live = [c for c in curves if c]
    return [max(vs) for vs in zip(*live, strict=True)] if live else []


def build_run_detail(raw: list[dict[str, Any]], *, started_at: float, tokens: int, procs: int) -> dict[str, Any]:
    """What a comparison adds to a run's report (the contract of ``tokenwire loadtest --compare``): recovery,
    bytes on the wire, client CPU, the lag and lateness curves, the time series, events and per-stream timeline.
    Times are seconds since ``started_at`` (the common start, ``time.time()``)."""
    results = sorted((r for part in raw for r in part["results"]), key=lambda r: r["index"])
    recoveries = [x for r in results for x in r["recoveries"]]
    down, up = sum(p["bytes_down"] for p in raw), sum(p["bytes_up"] for p in raw)
    cpu = sum(p["cpu_seconds"] for p in raw)
    events = sorted(itertools.chain.from_iterable(p["events"] for p in raw), key=lambda e: e[0])
    detail: dict[str, Any] = {
        "started_at": started_at,
        "recovery_s": percentiles(recoveries),
        "recovery_samples": _spread(recoveries, MAX_RECOVERY_SAMPLES),
        "wire": {
            "bytes_down": down,
            "bytes_up": up,
            "bytes_per_token": down / tokens if tokens else None,
            "measured_at": "client",
        },
        "client": {
            "cpu_seconds": cpu,
            "cpu_seconds_per_100k_tokens": cpu / tokens * 1e5 if tokens else None,
            "processes": procs,
        },
        "relay": None,
        "quantiles": QUANTILES,
        "lag_cdf": {
            "lag_s": _curve([p["lag_quantiles"] for p in raw]),
            "lateness_s": _curve([p["lateness_quantiles"] for p in raw]),
        },
        "series": _merge_series([p["series"] for p in raw]),
        "events": [{"t": t, "kind": kind, "stream": stream} for t, kind, stream in events],
        "events_dropped": sum(p["events_dropped"] for p in raw),
        "timeline": [
            {
                "stream": r["index"],
                "start_s": r["start_s"],
                "first_token_s": r["first_token_s"],
                "end_s": r["end_s"],
                "ok": r["ok"],
                "cuts": r["forced_drops"] + r["unexpected_drops"],
            }
            for r in results
        ],
    }
    if len(raw) > 1:
        detail["lag_cdf"]["note"] = detail["series"]["note"] = UPPER_BOUND_NOTE
    return detail


def _ms(d: dict[str, Any], *keys: str) -> str:
    return "  ".join(f"{k} {d[k] * 1e3:.1f}ms" for k in keys if k in d) or "n/a"


def format_report(r: dict[str, Any]) -> str:
    s, t, c = r["streams"], r["tokens"], r["correctness"]
    lines = [
        "",
        f"streams   {s['ok']}/{s['total']} ok, {s['failed']} failed {s['errors'] or ''}",
        f"tokens    {t['total']:,} in {r['elapsed_s']:.1f}s = {t['per_s']:,.0f}/s",
        (
            f"exactly-once: lost {c['lost']}, duplicated {c['duplicated']}, content mismatches "
            f"{c['content_mismatches']}, incomplete {c['incomplete']}  -> {'PASS' if r['passed'] else 'FAIL'}"
        ),
        f"ttft      {_ms(r['ttft_s'], 'p50', 'p90', 'p99', 'max')}",
        f"lag       {_ms(r['delivery_lag_s'], 'p50', 'p90', 'p99', 'p99_9', 'max')}",
        f"lateness  {_ms(r['schedule_lateness_s'], 'p50', 'p90', 'p99', 'p99_9', 'max')}",
        (
            f"drops     forced {r['disconnects']['forced']}, unexpected {r['disconnects']['unexpected']}; "
            f"resume {_ms(r['resume_s'], 'p50', 'p99', 'max')}"
        ),
    ]
    if len(r["config"].get("urls") or ()) > 1:
        d = r["disconnects"]
        lines.append(
            f"nodes     {len(r['config']['urls'])} urls; {d['cross_node_resumes']} of {d['resumes']} resumes on "
            f"another node than the stream's start; cross-node resume {_ms(r['resume_cross_node_s'], 'p50', 'p99', 'max')}"
        )
    if "server" in r:
        sv = r["server"]
        per = sv["cpu_seconds_per_100k_tokens"]
        lines.append(
            f"server    cpu {sv['cpu_seconds']:.2f}s ({(sv['cpu_utilisation'] or 0) * 100:.0f}% of one core)"
            f"{f', {per:.2f} cpu-s per 100k tokens' if per is not None else ''}; rss {sv['rss_bytes'] / 2**20:.1f} MiB"
            f" (peak {sv['peak_rss_bytes'] / 2**20:.1f}, before {sv['rss_before_bytes'] / 2**20:.1f})"
        )
    return "\n".join(lines)
