"""One load-generator process: many SSE streams on one event loop, decoded and checked in Rust.

Per stream: POST /v1/streams (stamped tokens), feed every body chunk to a ``StreamTracker`` (SSE parse,
seq continuity, content hash, delivery lag from the production stamp, all in Rust), optionally cut the
connection at random times and resume with ``Last-Event-ID``. Python runs once per network read, not per
token.

Besides each stream's verdict, every worker keeps what a comparison of transports needs (``WorkerBase``):
bytes on the wire as the client reads and writes them, its own CPU time, a time series in buckets of
``series_interval`` seconds from the common start (tokens, delivery lag histogram, active streams), events
with their times (cuts, reconnects, resumptions; capped), and per stream its start, first token, end and
recovery times (cut -> first resumed token).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httptools

from tokenwire import _core
from tokenwire._loop import loop_factory
from tokenwire.fake_model import FakeModel

__all__ = ["QUANTILES", "StreamResult", "WorkerBase", "WorkerConfig", "run_worker"]

#: The quantiles (fractions) of the lag and lateness curves in a report: 0.005, 0.01, ... 1.0 (200 points).
QUANTILES = [k / 200 for k in range(1, 201)]


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class WorkerConfig:
    host: str
    port: int
    path_prefix: str
    stream_indices: list[int]
    start_offsets: list[float]  # seconds after the common start, per stream (the ramp)
    max_tokens: int
    tokens_per_s: float
    disconnect_rate: float  # forced disconnects per stream per second (Poisson)
    seed: int
    model_seed: int
    resumable: bool
    start_at: float  # time.time() of the common start
    connect_timeout: float = 10.0
    stream_timeout: float = 600.0
    #: ``(host, port, path_prefix)`` of every server: stream i starts on ``targets[i % len]``; a cut stream
    #: resumes on another one, at random. Empty: only ``host``/``port``/``path_prefix``.
    targets: list[tuple[str, int, str]] = field(default_factory=list)
    series_interval: float = 1.0  # seconds per time-series bucket
    max_events: int = 20_000  # events kept (the rest are counted as dropped)


@dataclass
class StreamResult:
    index: int
    ok: bool
    status: int = 0
    error: str = ""
    tokens: int = 0
    duplicates: int = 0
    lost: int = 0
    hash_ok: bool = False
    ttft: float | None = None
    resumes: list[float] = field(default_factory=list)
    forced_drops: int = 0
    unexpected_drops: int = 0
    #: Reconnects made to resume (each gets a ``resumes`` sample once its first bytes arrive).
    resume_attempts: int = 0
    #: Of those, the ones sent to another server than the stream started on, and their latencies.
    cross_node_attempts: int = 0
    cross_node_resumes: list[float] = field(default_factory=list)
    #: Cut (forced or noticed) -> first token of the resumed stream, per cut that was recovered (a cut again
    #: before a token arrived counts from the first cut).
    recoveries: list[float] = field(default_factory=list)
    #: Seconds since the common start: the stream began, its first token, its end (``None``: never).
    start_s: float | None = None
    first_token_s: float | None = None
    end_s: float | None = None


class _Conn(asyncio.Protocol):
    """One HTTP response of a stream, fed straight into the tracker."""

    def __init__(self, stream: _Stream) -> None:
        self.s = stream
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.error_body = b""
        self.forced = False  # closed by a forced disconnect (not by the server or the network)
        self.bytes_in = 0  # bytes read on this connection, response head included
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure ends this response only
            self.s.fail(f"response parse error: {exc!r}")
            if self.transport is not None:
                self.transport.abort()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            self.error_body += body
            return
        self.s.on_body(body)

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Stream:
    def __init__(self, w: _Worker, index: int) -> None:
        self.w = w
        self.index = index
        self.prompt = f"loadtest {index}"
        self.tracker = _core.StreamTracker()  # its lag histogram: the worker's bucket of the moment (on_body)
        self.lag_bucket = -1
        self.result = StreamResult(index, ok=False)
        self.started_us = 0
        self.resume_started_us = 0
        self.cut_us = 0  # when the connection was cut (forced or noticed), until a resumed token arrives
        self.conn: _Conn | None = None
        self.conns: list[_Conn] = []  # every connection of the stream (their bytes read, counted at its end)
        self._sched_start_us = 0
        targets = w.cfg.targets or [(w.cfg.host, w.cfg.port, w.cfg.path_prefix)]
        self.targets = targets
        #: The server the stream started on (its producer), and the one the current connection goes to.
        self.home = self.target = targets[index % len(targets)]
        self._cross_node = False

    def fail(self, message: str) -> None:
        if not self.result.error:
            self.result.error = message

    def on_body(self, body: bytes) -> None:
        now = _now_us()
        t = self.tracker
        w = self.w
        bucket = w.bucket(now)
        if bucket != self.lag_bucket:
            t.lag = w.series_lag[bucket]
            self.lag_bucket = bucket
        try:
            new = t.feed(body, now)
        except Exception as exc:  # noqa: BLE001
            self.fail(f"decode error: {exc!r}")
            if self.conn is not None and self.conn.transport is not None:
                self.conn.transport.abort()
            return
        if self.resume_started_us:
            # Reconnect (connect, request) -> first bytes of the resumed stream (its replay starts in them).
            took = (now - self.resume_started_us) / 1e6
            self.result.resumes.append(took)
            if self._cross_node:
                self.result.cross_node_resumes.append(took)
            self.resume_started_us = 0
        if new:
            w.tokens += new
            w.series_tokens[bucket] += new
            if self.cut_us:
                w.recovered(self.result, now, self.cut_us)
                self.cut_us = 0
            if not self._sched_start_us:
                self._sched_start_us = t.first_token_at_us or now
            w.record_lateness(now, self._sched_start_us, t.last_seq - new + 1)

    async def _open(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> _Conn:
        cfg = self.w.cfg
        host, port, prefix = self.target
        lines = [f"{method} {prefix}{path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(cfg.connect_timeout):
            transport, conn = await loop.create_connection(lambda: _Conn(self), host, port)
        self.conn = conn
        self.conns.append(conn)
        transport.write(raw)
        self.w.bytes_up += len(raw)
        return conn

    async def run(self) -> StreamResult:  # noqa: C901 - the whole life of one stream, read top to bottom
        cfg = self.w.cfg
        rng = self.w.rng
        self.started_us = _now_us()
        body = json.dumps(
            {"prompt": self.prompt, "max_tokens": cfg.max_tokens, "tokens_per_s": cfg.tokens_per_s, "stamp": True}
        ).encode()
        t = self.tracker
        try:
            conn = await self._open("POST", "/v1/streams", body, {})
            first = True
            while True:
                drop_task = None
                if cfg.disconnect_rate > 0 and cfg.resumable:
                    drop_task = asyncio.get_running_loop().call_later(
                        rng.expovariate(cfg.disconnect_rate), self._force_drop, conn
                    )
                async with asyncio.timeout(cfg.stream_timeout):
                    await conn.closed
                if drop_task is not None:
                    drop_task.cancel()
                if first:
                    self.result.status = conn.status
                    first = False
                if conn.status not in (0, 200):
                    self.fail(f"HTTP {conn.status}: {conn.error_body[:200].decode('utf-8', 'replace')}")
                    break
                # Status 0: the connection ended before a response (reset by the network): a cut like another,
                # until no response has come for connect_timeout since the cut (the server is gone).
                if t.done or t.error is not None or self.result.error:
                    break
                if conn.status == 0 and self.cut_us and _now_us() - self.cut_us > cfg.connect_timeout * 1e6:
                    self.fail(f"no response for {cfg.connect_timeout:g} s after the connection was cut")
                    break
                if not cfg.resumable:
                    self.fail("connection ended before the stream did (target does not resume)")
                    break
                if not conn.forced:
                    self.result.unexpected_drops += 1
                    self.cut_us = self.cut_us or _now_us()
                    self.w.event("cut", self.index)
                # Resume: the stream id is the first part of the last event id.
                last = t.last_event_id
                stream_id = last.split(":", 1)[0]
                if not stream_id:
                    self.fail("dropped before the stream was named")
                    break
                self._resume_target()
                self.resume_started_us = _now_us()
                self.w.event("reconnect", self.index)
                t.new_response()
                conn = await self._open("GET", f"/v1/streams/{stream_id}/events", b"", {"Last-Event-ID": last})
        except TimeoutError:
            self.fail("timed out")
        except OSError as exc:
            self.fail(f"connection error: {exc!r}")
        r = self.result
        r.tokens, r.duplicates, r.lost = t.tokens, t.duplicates, t.lost
        self.w.bytes_down += sum(c.bytes_in for c in self.conns)
        if t.error is not None:
            self.fail(f"stream error event: {t.error}")
        self.w.settle(r, self.prompt, t.content_hash, bool(t.done), t.first_token_at_us or 0, self.started_us)
        return r

    def _resume_target(self) -> None:
        """With several servers, resume on one the cut connection did not go to, chosen at random (the first
        resume of a stream always lands on another server than its producer)."""
        r = self.result
        r.resume_attempts += 1
        others = [t for t in self.targets if t != self.target]
        if others:
            self.target = self.w.rng.choice(others)
        self._cross_node = self.target != self.home
        r.cross_node_attempts += self._cross_node

    def _force_drop(self, conn: _Conn) -> None:
        if conn.status != 200 or not self.tracker.last_event_id:
            # Not streaming yet (no stream id to resume with): try again a little later.
            asyncio.get_running_loop().call_later(0.05, self._force_drop, conn)
            return
        if conn.transport is not None and not conn.closed.done():
            conn.forced = True
            self.result.forced_drops += 1
            self.cut_us = self.cut_us or _now_us()
            self.w.event("forced_cut", self.index)
            conn.transport.abort()


class WorkerBase:
    """What every load-generator process shares, whatever the protocol: counters, histograms, the ramp,
    progress reports, the content check. Subclasses run one stream in :meth:`_run_stream`."""

    def __init__(self, cfg: Any, progress: Any) -> None:
        self.cfg = cfg
        self.progress = progress
        self.rng = random.Random(cfg.seed)  # noqa: S311 - not crypto
        self.lag = _core.LagHistogram()  # the whole run's: the buckets' merged at the end
        self.lateness = _core.LagHistogram()
        self.tokens = 0
        #: Bytes read and written by the client (SSE: on its TCP sockets; WebTransport: UDP datagrams).
        self.bytes_down = 0
        self.bytes_up = 0
        # The time series: bucket k covers [k, k+1) * series_interval seconds after the common start.
        self.start_us = int(cfg.start_at * 1e6)
        self.bucket_us = max(1, int(cfg.series_interval * 1e6))
        self.series_tokens: list[int] = []
        self.series_lag: list[Any] = []  # a LagHistogram per bucket
        self.series_active: list[int] = []  # the most streams active at once in each bucket
        self.events: list[tuple[float, str, int | None]] = []
        self.events_dropped = 0
        self.active = 0
        self.finished = 0
        self.failed = 0
        self._model = FakeModel(seed=cfg.model_seed)
        #: The pace asked of the server: a token every this many µs (0: unthrottled, no lateness).
        self.interval_us = int(1e6 / cfg.tokens_per_s) if cfg.tokens_per_s > 0 else 0

    def bucket(self, now_us: int) -> int:
        """The time-series bucket of ``now_us`` (created, with every bucket before it, when first seen)."""
        k = max(0, (now_us - self.start_us) // self.bucket_us)
        if k >= len(self.series_tokens):
            grow = k + 1 - len(self.series_tokens)
            self.series_tokens += [0] * grow
            self.series_lag += [_core.LagHistogram() for _ in range(grow)]
            self.series_active += [self.active] * grow
        return k

    def since_start(self, now_us: int) -> float:
        return (now_us - self.start_us) / 1e6

    def event(self, kind: str, stream: int | None) -> None:
        """An event of the run (``cut``, ``forced_cut``, ``reconnect``, ``resumed``) at this moment."""
        if len(self.events) < self.cfg.max_events:
            self.events.append((self.since_start(_now_us()), kind, stream))
        else:
            self.events_dropped += 1

    def recovered(self, r: StreamResult, now_us: int, cut_us: int) -> None:
        """The first token after a cut has arrived: a recovery sample and a ``resumed`` event."""
        r.recoveries.append((now_us - cut_us) / 1e6)
        self.event("resumed", r.index)

    def _set_active(self, delta: int) -> None:
        k = self.bucket(_now_us())  # new buckets start from the count before the change
        self.active += delta
        self.series_active[k] = max(self.series_active[k], self.active)

    def expected_hash(self, prompt: str) -> int:
        return _core.fnv1a64("".join(self._model.tokens(prompt, self.cfg.max_tokens)))

    def record_lateness(self, now_us: int, first_token_us: int, first_new: int) -> None:
        """One lateness value per arrival: how late its first new token (seq ``first_new``) is against the
        stream's schedule (a token every ``interval_us`` from its first)."""
        if self.interval_us:
            self.lateness.record(max(0, now_us - (first_token_us + (first_new - 1) * self.interval_us)))

    def settle(
        self, r: StreamResult, prompt: str, content_hash: int, done: bool, first_us: int, started_us: int
    ) -> None:
        """A stream's verdict: TTFT, the content check, and ``ok`` (complete, exact, nothing lost or twice)."""
        if first_us:
            r.ttft = (first_us - started_us) / 1e6
            r.first_token_s = self.since_start(first_us)
        r.hash_ok = content_hash == self.expected_hash(prompt)
        if done and not r.hash_ok and not r.error:
            r.error = "content differs from the model's tokens"
        r.ok = done and not r.error and r.hash_ok and r.lost == 0 and r.duplicates == 0

    async def _run_stream(self, index: int, slot: int) -> StreamResult:
        raise NotImplementedError

    def _slots(self) -> list[int]:
        """A per-stream argument for :meth:`_run_stream` (the WebTransport session); none by default."""
        return [0] * len(self.cfg.stream_indices)

    async def _close(self) -> None:
        """Release what the streams shared (connections, sessions)."""

    async def _one(self, index: int, offset: float, slot: int) -> StreamResult:
        delay = self.cfg.start_at + offset - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        start_s = max(0.0, self.since_start(_now_us()))  # the loop's timer may wake a hair before the wall clock
        self._set_active(1)
        try:
            result = await self._run_stream(index, slot)
        finally:
            self._set_active(-1)
        result.start_s = start_s
        result.end_s = self.since_start(_now_us())
        self.finished += 1
        self.failed += not result.ok
        return result

    def _counts(self) -> dict[str, int]:
        return {"tokens": self.tokens, "active": self.active, "finished": self.finished, "failed": self.failed}

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.progress(self._counts())

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        cpu0 = time.process_time()
        ticker = asyncio.get_running_loop().create_task(self._report_progress())
        try:
            results = await asyncio.gather(
                *(
                    self._one(i, off, slot)
                    for i, off, slot in zip(cfg.stream_indices, cfg.start_offsets, self._slots(), strict=True)
                )
            )
        finally:
            ticker.cancel()
            await self._close()
        cpu = time.process_time() - cpu0
        self.progress(self._counts())
        for h in self.series_lag:
            self.lag.merge(h)
        return {
            "results": [asdict(r) for r in results],
            "lag": _hist_summary(self.lag),
            "lateness": _hist_summary(self.lateness),
            "lag_quantiles": _quantiles(self.lag, QUANTILES),
            "lateness_quantiles": _quantiles(self.lateness, QUANTILES),
            "cpu_seconds": cpu,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "series": {
                "interval_s": cfg.series_interval,
                "tokens": self.series_tokens,
                "lag": [_hist_summary(h) for h in self.series_lag],
                "active": self.series_active,
            },
            "events": self.events,
            "events_dropped": self.events_dropped,
        }


class _Worker(WorkerBase):
    """SSE streams, one connection each."""

    async def _run_stream(self, index: int, slot: int) -> StreamResult:
        return await _Stream(self, index).run()


def _hist_summary(h: Any) -> dict[str, float]:
    if not h.count:
        return {"count": 0}
    p50, p90, p99, p999 = h.percentiles([50.0, 90.0, 99.0, 99.9])
    return {"count": h.count, "p50": p50, "p90": p90, "p99": p99, "p99_9": p999, "max": h.max, "mean": h.mean}


def _quantiles(h: Any, qs: Sequence[float]) -> list[float]:
    """The value (s) at each quantile ``q`` (0-1) of ``h``; ``[]`` if nothing was recorded."""
    return h.percentiles([q * 100 for q in qs]) if h.count else []


def run_on_fresh_loop(worker: WorkerBase) -> dict[str, Any]:
    """Run a worker's streams to the end on a fresh (uv)loop; returns its raw results."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(worker.run())


def run_worker(cfg: WorkerConfig, progress: Any) -> dict[str, Any]:
    """Run one worker's SSE streams to the end on a fresh (uv)loop; returns its raw results."""
    return run_on_fresh_loop(_Worker(cfg, progress))
