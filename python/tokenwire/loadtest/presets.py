"""Named comparison scenarios: ``tokenwire loadtest --preset NAME`` (BENCHMARKS.md, "SSE vs WebTransport").

Each preset reproduces one row of the comparison tokenwire is built on (SSE is the universal fallback;
WebTransport reconnects faster, keeps streams independent, survives an address change) as a scenario run over
both protocols through the same impaired network (:mod:`tokenwire.loadtest.impair`). A preset only sets
defaults: any option given on the command line wins (``--preset hol --streams 50``).

Every preset models an HTTPS SSE endpoint (``tls=on``: the TCP relay charges the TLS 1.3 handshake's round trip
a production SSE connection pays; QUIC's handshake carries TLS itself), so connection setup is compared like
for like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PRESETS", "Preset", "preset_defaults"]


@dataclass(frozen=True)
class Preset:
    name: str
    row: str  # the comparison row it reproduces
    question: str  # what it measures, in a sentence
    impair: str  # the --impair spec
    streams: int = 50
    duration: float = 10.0  # seconds per stream at ``tokens_per_s``
    tokens_per_s: float = 20.0
    disconnect_rate: float = 0.0
    sessions: int = 0  # WebTransport sessions the streams share (0: one per stream)
    #: New streams per second: users arriving over a few seconds, so the TTFT figures measure the network and
    #: the protocol rather than a burst of simultaneous handshakes queueing for CPU (``--ramp 1000`` shows that).
    ramp: float = 20.0
    #: The summary rows that answer the question (names of ``compare.SUMMARY_ROWS``), for the preset table.
    metrics: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="latency",
            row="latency",
            question="time to first token and token delay on a 50 ms round trip, no loss",
            impair="delay=25ms,jitter=2ms,tls=on",
            metrics=("TTFT p50", "TTFT p99", "delivery lag p50", "delivery lag p99"),
        ),
        Preset(
            name="recovery",
            row="reconnect / recovery",
            question="a cut connection resumed (SSE: new TCP+TLS connection with Last-Event-ID; WebTransport: new "
            "QUIC connection, 0-RTT when the client holds a ticket): cut to first resumed token",
            impair="delay=25ms,jitter=2ms,tls=on",
            disconnect_rate=0.2,
            metrics=("reconnects", "recovery p50", "recovery p99", "lateness p99"),
        ),
        Preset(
            name="hol",
            row="head-of-line blocking, many streams on one connection",
            question="100 streams on ONE connection at 2% loss: WebTransport's streams on one QUIC session against "
            "SSE multiplexed on one TCP connection (link=shared: a loss stalls every stream, as HTTP/2 would)",
            # A busy shared connection recovers a lost segment by fast retransmit, about a round trip and the
            # three duplicate ACKs behind it, not by a retransmission timeout: rto 75 ms on a 50 ms round trip.
            impair="loss=2%,delay=25ms,jitter=2ms,link=shared,rto=75ms,tls=on",
            streams=100,
            sessions=1,
            metrics=("delivery lag p50", "delivery lag p99", "delivery lag max", "lateness p99"),
        ),
        Preset(
            name="hol-h1",
            row="head-of-line blocking, SSE over HTTP/1.1",
            question="the same 100 streams at 2% loss, SSE with one TCP connection per stream (HTTP/1.1, what "
            "tokenwire serves; a browser opens at most 6 per origin) against one WebTransport session",
            impair="loss=2%,delay=25ms,jitter=2ms,tls=on",
            streams=100,
            sessions=1,
            metrics=("delivery lag p50", "delivery lag p99", "delivery lag max", "lateness p99"),
        ),
        Preset(
            name="lossy",
            row="bad network (5% loss, 50 ms each way)",
            question="one stream per connection through 5% loss, 50 ms delay and 10 ms jitter",
            impair="loss=5%,delay=50ms,jitter=10ms,tls=on",
            metrics=("TTFT p99", "delivery lag p99", "lateness p99", "bytes per token"),
        ),
        Preset(
            name="migration",
            row="connection migration",
            question="the client's address changes every 3 s (NAT rebinding): QUIC migrates the connection, TCP "
            "connections are reset and SSE resumes",
            impair="delay=10ms,jitter=1ms,rebind=3s,tls=on",
            streams=20,
            metrics=("reconnects", "recovery p99", "delivery lag max", "lateness p99"),
        ),
    )
}


def preset_defaults(name: str) -> dict[str, Any]:
    """The ``tokenwire loadtest`` option defaults of preset ``name`` (argparse destinations; strings are parsed
    as if given on the command line)."""
    p = PRESETS[name]
    return {
        "compare": "sse,webtransport",
        "impair": p.impair,
        "streams": p.streams,
        "duration": p.duration,
        "tokens_per_s": p.tokens_per_s,
        "disconnect_rate": p.disconnect_rate,
        "sessions": p.sessions,
        "ramp": p.ramp,
    }
