"""One WebTransport load-generator process: many token streams over a few WebTransport sessions.

The same results as the SSE worker (:mod:`tokenwire.loadtest.worker`): one :class:`StreamResult` per stream,
delivery lag from the production stamp (``stamp: true``; the µs after ``"\\u2063"`` in each token) and
schedule lateness in two histograms, so :mod:`tokenwire.loadtest.report` aggregates either unchanged.

Streams are spread over ``sessions`` WebTransport sessions (QUIC connections), one
:class:`~tokenwire.client.WebTransportClient` each; every stream is one bidirectional stream of its session
carrying a start request. The worker reads the client's parsed frames directly (``(kind, seq, payload)``
from the Rust frame decoder, queued on the request stream) rather than through the token iterator: one
Python wake-up per arrival, not per token. Seq continuity, duplicates and the content hash (FNV-1a 64 of the
unstamped texts) are checked here.

Forced disconnects (``disconnect_rate``, Poisson per stream): a stream alone on its session is cut by
dropping the QUIC connection (the resume reconnects, with 0-RTT when the client holds a ticket); a stream
sharing its session by closing its request stream (the session stays). Any cut stream, forced or not, is
resumed with an attach after the last seq received, and the time from the cut to the first resumed frame is
a resume sample; unexpected cuts are counted apart, as in the SSE worker. The time from the cut to the first
resumed token is a recovery sample.

Bytes on the wire are the UDP datagrams the clients' connections received and sent (every connection a client
made, reconnects included).

Engines (``engine``): ``aioquic`` gives every session its own aioquic connection and UDP socket; ``native``
runs ONE :class:`~tokenwire.client.native.NativeClientEngine` (tokenwire's QUIC engine in Rust, one UDP socket)
per worker process carrying all its sessions: the loop wakes on the socket or the engine's deadline, each
wake-up one call into Rust for every datagram read, and the frames go straight to each stream's accounting.
Its byte counts are the engine socket's.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tokenwire import _core
from tokenwire.client.native import NativeClientEngine, NativeConnection
from tokenwire.client.webtransport import WebTransportClient, _Connection, _RequestStream
from tokenwire.fake_model import STAMP_SEPARATOR
from tokenwire.loadtest.worker import StreamResult, WorkerBase, _now_us, run_on_fresh_loop
from tokenwire.protocol.webtransport import StartRequested, StreamAttached

__all__ = ["WtWorkerConfig", "run_wt_worker"]

_TOKEN = _core.FRAME_TOKEN
_DONE = _core.FRAME_DONE
_ERROR = _core.FRAME_ERROR
_RESUME_ATTEMPTS = 8


@dataclass
class WtWorkerConfig:
    url: str  # https://host:port/v1/webtransport
    cert_hash: bytes  # sha-256 of the server's certificate (pinned)
    stream_indices: list[int]
    start_offsets: list[float]  # seconds after the common start, per stream (the ramp)
    session_of: list[int]  # session number of each stream (a session lives in one process)
    max_tokens: int
    tokens_per_s: float
    seed: int
    model_seed: int
    start_at: float  # time.time() of the common start
    disconnect_rate: float = 0.0  # forced disconnects per stream per second (Poisson)
    batch_transmit: bool = True  # the client's one transmit per loop iteration (WebTransportClient)
    ack_delay: float | None = None  # the client's ACK delay (WebTransportClient); None: aioquic's
    keepalive: float | None = 1.0  # the client's PING after this much silence (WebTransportClient); None: never
    connect_timeout: float = 10.0
    stream_timeout: float = 600.0
    series_interval: float = 1.0  # seconds per time-series bucket
    max_events: int = 20_000  # events kept (the rest are counted as dropped)
    engine: str = "aioquic"  # or "native": one Rust QUIC engine (one UDP socket) for all the worker's sessions


class _Cut:
    """A forced disconnect of one stream, fired by a timer (Poisson times, as the SSE worker's)."""

    __slots__ = ("client", "fired", "fired_us", "on_fire", "stream", "whole_connection")

    def __init__(
        self,
        client: WebTransportClient,
        stream: _RequestStream,
        *,
        whole_connection: bool,
        on_fire: Callable[[], None],
    ) -> None:
        self.client = client
        self.stream: _RequestStream | None = stream
        self.whole_connection = whole_connection
        self.on_fire = on_fire
        self.fired = False
        self.fired_us = 0

    def fire(self) -> None:
        stream = self.stream
        if stream is None or stream.over:
            return
        self.fired = True
        self.fired_us = _now_us()
        self.on_fire()
        if self.whole_connection:
            self.client.drop()
        else:
            stream.abort()


class _Tally:
    """One stream's accounting, fed its frames as they are parsed (the request stream's sink: no task wakes
    up per arrival): seq continuity, duplicates, the texts (for the content hash), delivery lag and
    lateness, resume and recovery samples. Returns True once the final frame (``done`` or ``error``) came."""

    __slots__ = ("cut_us", "done", "first_us", "last", "result", "resume_started_us", "texts", "w")

    def __init__(self, w: _WtWorker, result: StreamResult) -> None:
        self.w = w
        self.result = result
        self.texts: list[str] = []
        self.last = 0  # seq of the last frame accepted
        self.done = False
        self.first_us = 0  # when the first token came
        self.cut_us = 0  # when the stream was cut, until a resumed token arrives
        self.resume_started_us = 0  # when the resume began, until its first frame arrives

    def __call__(self, frames: list[tuple[int, int, str]]) -> bool:  # noqa: C901 - the per-frame hot loop, inline
        now = _now_us()
        w = self.w
        result = self.result
        bucket = w.bucket(now)
        lag = w.series_lag[bucket]
        if self.resume_started_us:
            result.resumes.append((now - self.resume_started_us) / 1e6)
            self.resume_started_us = 0
        last = self.last
        texts = self.texts
        first_new = 0
        new = 0
        for kind, seq, payload in frames:
            if seq == 0:
                continue  # heartbeat
            if seq <= last:
                result.duplicates += 1
                continue
            if seq != last + 1:
                result.lost += seq - last - 1
            last = seq
            if kind == _TOKEN:
                text, _, stamp = payload.partition(STAMP_SEPARATOR)
                texts.append(text)
                if stamp:
                    lag.record(max(0, now - int(stamp)))
                new += 1
                if not first_new:
                    first_new = seq
            elif kind == _DONE:
                self.done = True
            elif kind == _ERROR:
                result.error = f"stream error frame: {payload[:200]}"
                self.done = True
        self.last = last
        if new:
            self._delivered(now, bucket, new, first_new)
        return self.done

    def _delivered(self, now: int, bucket: int, new: int, first_new: int) -> None:
        w = self.w
        w.tokens += new
        w.series_tokens[bucket] += new
        self.result.tokens += new
        if self.cut_us:
            w.recovered(self.result, now, self.cut_us)
            self.cut_us = 0
        if not self.first_us:
            self.first_us = now
        w.record_lateness(now, self.first_us, first_new)


class _CountedClient(WebTransportClient):
    """A client whose connections' datagram counters add up in its worker's ``bytes_down``/``bytes_up``."""

    def __init__(self, worker: _WtWorker, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker = worker
        self.made: list[_Connection | NativeConnection] = []  # connections whose counts are not yet in the worker's

    async def _connect(self) -> _Connection | NativeConnection:
        conn = await super()._connect()
        self.fold(lost_only=True)
        self.made.append(conn)
        return conn

    def fold(self, *, lost_only: bool) -> None:
        """Add the counts of lost connections (they send and receive no more), or of all, to the worker's."""
        keep = []
        for conn in self.made:
            if lost_only and conn.lost is None:
                keep.append(conn)
            else:
                self.worker.bytes_down += conn.bytes_received
                self.worker.bytes_up += conn.bytes_sent
        self.made = keep


class _WtWorker(WorkerBase):
    """WebTransport streams, spread over sessions (``cfg.session_of``)."""

    cfg: WtWorkerConfig

    def __init__(self, cfg: WtWorkerConfig, progress: Any) -> None:
        super().__init__(cfg, progress)
        self.clients: dict[int, _CountedClient] = {}
        self.session_streams: collections.Counter[int] = collections.Counter(cfg.session_of)
        self.native: NativeClientEngine | None = None

    def _engine(self) -> str | NativeClientEngine:
        """``"aioquic"``, or the worker's one native engine (made at the first session)."""
        if self.cfg.engine != "native":
            return "aioquic"
        if self.native is None:
            v6 = ":" in (urlsplit(self.cfg.url).hostname or "")
            self.native = NativeClientEngine(
                server_certificate_hashes=[self.cfg.cert_hash],
                keepalive=self.cfg.keepalive,
                idle_timeout=60.0,
                host="::" if v6 else "0.0.0.0",  # noqa: S104 - the generator's ephemeral port
            )
        return self.native

    def client(self, session: int) -> WebTransportClient:
        client = self.clients.get(session)
        if client is None:
            client = self.clients[session] = _CountedClient(
                self,
                self.cfg.url,
                server_certificate_hashes=[self.cfg.cert_hash],
                connect_timeout=self.cfg.connect_timeout,
                max_retries=_RESUME_ATTEMPTS - 1,  # attaches only: a start is never retried
                backoff_max=2.0,
                batch_transmit=self.cfg.batch_transmit,
                ack_delay=self.cfg.ack_delay,
                keepalive=self.cfg.keepalive,
                engine=self._engine(),
            )
        return client

    def _schedule_cut(self, cut: _Cut) -> asyncio.TimerHandle | None:
        rate = self.cfg.disconnect_rate
        if rate <= 0:
            return None
        return asyncio.get_running_loop().call_later(self.rng.expovariate(rate), cut.fire)

    async def _stream(self, index: int, session: int) -> StreamResult:  # noqa: C901 - one stream, top to bottom
        cfg = self.cfg
        result = StreamResult(index, ok=False)
        prompt = f"loadtest {index}"
        tally = _Tally(self, result)
        started_us = _now_us()
        cut: _Cut | None = None
        timer: asyncio.TimerHandle | None = None
        try:
            client = self.client(session)
            params = {"tokens_per_s": cfg.tokens_per_s, "stamp": True}
            stream, reply = await client._request(StartRequested(prompt, cfg.max_tokens, params))
            result.status = 200
            if not isinstance(reply, StreamAttached):
                raise TypeError(f"unexpected reply {reply!r}")
            stream.take_frames(tally)
            # A stream alone on its session is cut by dropping the connection (a reconnect, 0-RTT when it
            # can); one of many by closing just its request stream (the session stays).
            cut = _Cut(
                client,
                stream,
                whole_connection=self.session_streams[session] == 1,
                on_fire=lambda: self.event("forced_cut", index),
            )
            timer = self._schedule_cut(cut)
            async with asyncio.timeout(cfg.stream_timeout):
                while not tally.done:
                    await stream.wait()
                    if tally.done or not stream.over:
                        continue
                    if stream.ended:
                        result.error = "stream ended before its final frame"
                        break
                    # Cut: by us (a forced disconnect) or by the network or server. Resume after ``last``.
                    if cut.fired:
                        result.forced_drops += 1
                        tally.cut_us = tally.cut_us or cut.fired_us
                    else:
                        result.unexpected_drops += 1
                        tally.cut_us = tally.cut_us or _now_us()
                        self.event("cut", index)
                    if timer is not None:
                        timer.cancel()  # an unexpected cut: the pending forced one is void
                    # Cut again before a frame arrived: the resume sample runs from the first cut.
                    tally.resume_started_us = tally.resume_started_us or _now_us()
                    self.event("reconnect", index)
                    result.resume_attempts += 1
                    stream, _ = await client._attach_after(
                        reply.stream_id, reply.epoch, tally.last, uniform=self.rng.uniform
                    )
                    stream.take_frames(tally)
                    cut.stream = stream
                    cut.fired = False
                    timer = self._schedule_cut(cut)
            stream.abort()  # forget it (after FIN this only drops the bookkeeping)
        except TimeoutError:
            result.error = result.error or "timed out"
        except Exception as exc:  # noqa: BLE001 - any failure ends this stream only, and is reported
            result.error = result.error or f"connection error: {exc!r}"
        finally:
            if cut is not None:
                cut.stream = None
            if timer is not None:
                timer.cancel()
        self.settle(result, prompt, _core.fnv1a64("".join(tally.texts)), tally.done, tally.first_us, started_us)
        return result

    async def _run_stream(self, index: int, slot: int) -> StreamResult:
        return await self._stream(index, slot)

    def _slots(self) -> list[int]:
        return list(self.cfg.session_of)

    async def _close(self) -> None:
        for client in self.clients.values():
            await client.aclose()
            client.fold(lost_only=False)
        if self.native is not None:
            stats = self.native.stats()
            self.bytes_down += stats["bytes_in"]
            self.bytes_up += stats["bytes_out"]
            self.native.close()


def run_wt_worker(cfg: WtWorkerConfig, progress: Any) -> dict[str, Any]:
    """Run one worker's WebTransport streams to the end on a fresh (uv)loop; returns its raw results."""
    return run_on_fresh_loop(_WtWorker(cfg, progress))
