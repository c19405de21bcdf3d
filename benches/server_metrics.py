"""Read a running tokenwire server's own view of a run from its ``/metrics`` (for the side-by-side benches).

``flush_wait(port)``: percentiles of ``tokenwire_flush_wait_seconds`` (per flush, how long its oldest pending
write waited: a token appended -> its connection written). A percentile is the upper bound of the bucket it
falls in, so it reads "at most". Peers have no such metric: ``{}``.
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any

__all__ = ["flush_wait", "quantiles_from_buckets"]

_BUCKET = re.compile(r'^tokenwire_flush_wait_seconds_bucket\{le="([^"]+)",protocol="sse"\} (\S+)$')


def quantiles_from_buckets(buckets: list[tuple[float, float]], qs: tuple[float, ...]) -> dict[str, float]:
    """``{"p50": bound, ...}`` from cumulative ``(upper bound, count)`` pairs, sorted by bound."""
    total = buckets[-1][1] if buckets else 0.0
    out: dict[str, float] = {"count": total}
    if not total:
        return out
    for q in qs:
        need = q * total
        out[f"p{round(q * 100):d}"] = next(b for b, c in buckets if c >= need)
    return out


def flush_wait(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    buckets = []
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    if not buckets:
        return {}
    buckets.sort()
    return quantiles_from_buckets(buckets, (0.5, 0.99))
