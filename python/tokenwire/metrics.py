"""Server metrics: plain counters and fixed-bucket histograms on the hot path, Prometheus text on scrape.

Counting is an attribute increment or a bisect; prometheus_client only renders them when ``/metrics`` is
read (a custom collector), so no lock or label lookup is paid per token.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from http import HTTPStatus
from typing import Literal, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "HUB_GAUGES",
    "Histogram",
    "MetricsSource",
    "ServerMetrics",
    "UpstreamMetrics",
    "WriteMeter",
    "status_label",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Gauges that read the hub, not the server: rendered once on a scrape that includes other servers' metrics.
HUB_GAUGES = frozenset(("open_streams", "hub_memory_bytes"))

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


#: Sub-millisecond buckets for the flusher's wait (docs/protocol.md, "Write coalescing").
FLUSH_WAIT_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


#: An upstream's latencies: a model server's queue and prefill can take seconds (the first-token timeout is 60 s).
UPSTREAM_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@runtime_checkable
class MetricsSource(Protocol):
    """Metrics a server's generator keeps of its own (its ``metrics`` attribute): rendered on the server's
    ``/metrics`` after the server's, once per scrape however many servers of the process share the generator."""

    def collect(self) -> Iterable[Metric]: ...


class Histogram:
    """Cumulative-on-render histogram with fixed upper bounds (seconds)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class ServerMetrics:
    """Counters of one server process, per protocol label (``sse`` now, ``webtransport`` later)."""

    COUNTERS: tuple[tuple[str, str], ...] = (
        ("connections_total", "Connections accepted"),
        ("requests_total", "HTTP requests parsed"),
        ("bad_requests_total", "Requests answered with a 4xx/5xx error"),
        ("streams_started_total", "Generations started by a request"),
        ("tokens_sent_total", "Token frames written to clients"),
        ("bytes_sent_total", "Stream bytes written to clients"),
        ("flushes_total", "Coalesced stream writes (one per connection per loop iteration at most)"),
        ("disconnects_total", "Stream connections that ended before their stream did"),
        ("resumes_total", "Attaches with a resume point"),
        ("replayed_frames_total", "Frames served from the ring on resume"),
        ("backpressure_closes_total", "Connections closed because the client stopped reading"),
        ("heartbeats_total", "Heartbeat comments written"),
        ("fd_limit_refusals_total", "Connections answered 503 because the process had no file descriptor left"),
    )

    # The counters above, declared for type checkers (``__init__`` sets each to 0).
    connections_total: int
    requests_total: int
    bad_requests_total: int
    streams_started_total: int
    tokens_sent_total: int
    bytes_sent_total: int
    flushes_total: int
    disconnects_total: int
    resumes_total: int
    replayed_frames_total: int
    backpressure_closes_total: int
    heartbeats_total: int
    fd_limit_refusals_total: int

    def __init__(self, protocol: str = "sse") -> None:
        self.protocol = protocol
        for name, _ in self.COUNTERS:
            setattr(self, name, 0)
        self.ttft = Histogram()
        self.inter_token = Histogram()
        self.resume_latency = Histogram()
        #: Per flush: how long its oldest mark waited (a token appended -> its connection written).
        self.flush_wait = Histogram(FLUSH_WAIT_BUCKETS)
        self.gauges: dict[str, Callable[[], float]] = {}
        #: Metrics of other servers in this process on the same hub, rendered with these (:meth:`include`).
        self.included: list[ServerMetrics] = []
        #: The generator's own metrics (an upstream proxy's), when it keeps any.
        self.sources: list[MetricsSource] = []

    def include(self, other: ServerMetrics) -> None:
        """Render ``other`` (another protocol's server on the same hub, in this process: ``tokenwire serve``'s
        WebTransport server beside its SSE server) on this one's scrape, so one ``/metrics`` shows the process.
        A family both have gets one sample per ``protocol`` label; the hub-wide gauges (:data:`HUB_GAUGES`)
        are the same numbers for both, so they are rendered once, from this one."""
        if other is not self and other not in self.included:
            self.included.append(other)

    def all_sources(self) -> list[MetricsSource]:
        """The generators' own metrics of this server and of those included, each once (the servers of one
        process share their generator)."""
        out: list[MetricsSource] = []
        for m in (self, *self.included):
            for source in m.sources:
                if not any(source is seen for seen in out):
                    out.append(source)
        return out

    def registry(self) -> CollectorRegistry:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(_Collector(self))
        return reg

    def render(self, registry: CollectorRegistry) -> bytes:
        return generate_latest(registry)


class WriteMeter:
    """One reader's write accounting: its :meth:`observe` is the ``on_read`` hook of the reader's
    :class:`~tokenwire.hub.Cursor`, so a write is counted with no call in between (the SSE flush's hot path).

    ``requested_at``: when the request that the next write answers arrived (0: none waits); ``last_write``: when
    the reader last wrote (a heartbeat too), the clock of the inter-token histogram and of heartbeats.
    """

    __slots__ = ("clock", "last_write", "metrics", "requested_at")

    def __init__(self, metrics: ServerMetrics, clock: Callable[[], float], last_write: float = 0.0) -> None:
        self.metrics = metrics
        self.clock = clock
        self.requested_at = 0.0
        self.last_write = last_write

    def observe(self, pos: int, last: int, nbytes: int) -> None:
        """Account one coalesced write of frames ``pos+1..last`` (``nbytes``): the first write after a request
        feeds the time-to-first-token (``pos == 0``) or resume histogram, later ones the inter-token histogram."""
        now = self.clock()
        m = self.metrics
        requested_at = self.requested_at
        if requested_at:
            (m.ttft if pos == 0 else m.resume_latency).observe(now - requested_at)
            self.requested_at = 0.0
        else:
            m.inter_token.observe(now - self.last_write)
        self.last_write = now
        m.flushes_total += 1
        m.tokens_sent_total += last - pos
        m.bytes_sent_total += nbytes


class _Collector(Collector):
    def __init__(self, metrics: ServerMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        labels = ["protocol"]
        counters: dict[str, CounterMetricFamily] = {}
        gauges: dict[str, GaugeMetricFamily] = {}
        histograms: dict[str, HistogramMetricFamily] = {}
        for m in (self.m, *self.m.included):
            for name, doc in m.COUNTERS:
                fam = counters.get(name)
                if fam is None:
                    fam = counters[name] = CounterMetricFamily(
                        f"tokenwire_{name.removesuffix('_total')}", doc, labels=labels
                    )
                fam.add_metric([m.protocol], getattr(m, name))
            for name, getter in m.gauges.items():
                if m is not self.m and (name in HUB_GAUGES or name.startswith("storage_")):
                    continue
                g = gauges.get(name)
                if g is None:
                    g = gauges[name] = GaugeMetricFamily(f"tokenwire_{name}", name.replace("_", " "), labels=labels)
                g.add_metric([m.protocol], getter())
            for name, hist, doc in (
                ("time_to_first_token_seconds", m.ttft, "Request received to first token written"),
                ("inter_token_seconds", m.inter_token, "Time between token writes on a stream connection"),
                ("resume_seconds", m.resume_latency, "Resume request received to first replayed byte written"),
                ("flush_wait_seconds", m.flush_wait, "Per flush, how long its oldest pending write waited"),
            ):
                h = histograms.get(name)
                if h is None:
                    h = histograms[name] = HistogramMetricFamily(f"tokenwire_{name}", doc, labels=labels)
                h.add_metric([m.protocol], hist.buckets(), sum_value=hist.sum)
        yield from counters.values()
        yield from gauges.values()
        yield from histograms.values()
        for source in self.m.all_sources():
            yield from source.collect()


#: How an upstream request went (``tokenwire_upstream_requests_total{outcome}``): ``streamed`` is a stage (the
#: upstream answered 2xx with an event stream), the others are endings, one per request.
Outcome = Literal["streamed", "refused", "failed", "timeout", "cancelled", "completed"]
#: What a request that failed or timed out was waiting for (its ``phase`` label).
Phase = Literal["connect", "first_chunk", "between_chunks"]
_PHASES: tuple[Phase, ...] = ("connect", "first_chunk", "between_chunks")


def status_label(status: int) -> str:
    """The ``status`` label of a refusal: the code itself when it is a registered HTTP status (429 and 401 call
    for different actions, a class would merge them), else its class (``"5xx"``): at most the ~60 registered
    codes and 9 classes, whatever an upstream sends."""
    try:
        return str(HTTPStatus(status).value)
    except ValueError:
        return f"{status // 100}xx"


class UpstreamMetrics:
    """The requests of one upstream proxy (:class:`tokenwire.proxy.UpstreamProxy` owns one, as its ``metrics``):
    plain integers and fixed-bucket histograms, rendered on scrape (docs/proxy.md, "Metrics and logs"). No label
    carries anything of a request (model, prompt, key) or the upstream's URL."""

    __slots__ = (
        "chunks_received_total",
        "first_chunk_time",
        "max_connections",
        "open_requests",
        "requests",
        "response_time",
    )

    def __init__(self, max_connections: int = 0) -> None:
        #: The connection pool's bound (a gauge, beside ``open_requests``: how close to waiting for a connection).
        self.max_connections = max_connections
        #: Requests sent and not ended yet (no outcome but ``streamed``).
        self.open_requests = 0
        self.chunks_received_total = 0
        #: Request sent -> response headers (every response, refusals included).
        self.response_time = Histogram(UPSTREAM_BUCKETS)
        #: Request sent -> first chunk (the requests that got one).
        self.first_chunk_time = Histogram(UPSTREAM_BUCKETS)
        #: Per label set (``(("outcome", ...), ...)``): requests. The label sets known in advance start at 0, so a
        #: rate over them works from the first scrape; refusals get a series per status as they come.
        self.requests: dict[tuple[tuple[str, str], ...], int] = {}
        for outcome in ("streamed", "completed", "cancelled"):
            self.requests[(("outcome", outcome),)] = 0
        for outcome in ("failed", "timeout"):
            for phase in _PHASES:
                self.requests[(("outcome", outcome), ("phase", phase))] = 0

    def count(self, outcome: Outcome, *, status: int | None = None, phase: Phase | None = None) -> None:
        """One request more with ``outcome`` (a refusal's ``status``; a failure's or timeout's ``phase``)."""
        labels: tuple[tuple[str, str], ...] = (("outcome", outcome),)
        if status is not None:
            labels += (("status", status_label(status)),)
        if phase is not None:
            labels += (("phase", phase),)
        self.requests[labels] = self.requests.get(labels, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "tokenwire_upstream_requests",
            "Upstream requests by outcome: streamed (answered 2xx, stream started), and how each ended: completed "
            "([DONE]), refused (non-2xx, label status), failed or timeout (label phase), cancelled (by tokenwire)",
        )
        for labels, value in self.requests.items():
            requests.add_sample("tokenwire_upstream_requests_total", dict(labels), value)
        yield requests
        yield CounterMetricFamily(
            "tokenwire_upstream_chunks_received", "Chunks received from the upstream", value=self.chunks_received_total
        )
        yield GaugeMetricFamily(
            "tokenwire_upstream_open_requests", "Upstream requests sent and not ended yet", value=self.open_requests
        )
        yield GaugeMetricFamily(
            "tokenwire_upstream_max_connections", "The upstream connection pool's bound", value=self.max_connections
        )
        for name, hist, doc in (
            ("tokenwire_upstream_response_seconds", self.response_time, "Upstream request sent to response headers"),
            ("tokenwire_upstream_first_chunk_seconds", self.first_chunk_time, "Upstream request sent to first chunk"),
        ):
            yield HistogramMetricFamily(name, doc, buckets=hist.buckets(), sum_value=hist.sum)
