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

Forced disconnects are not implemented for WebTransport (``disconnect_rate`` must be 0); a stream that is
cut fails (no resume), so every failure is visible in the report.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from tokenwire import _core
from tokenwire.client import webtransport as _wt_client
from tokenwire.client.webtransport import WebTransportClient
from tokenwire.fake_model import STAMP_SEPARATOR
from tokenwire.loadtest.worker import StreamResult, WorkerBase
from tokenwire.protocol.webtransport import StartRequested, StreamAttached

__all__ = ["WtWorkerConfig", "run_wt_worker"]

_TOKEN = _core.FRAME_TOKEN
_DONE = _core.FRAME_DONE
_ERROR = _core.FRAME_ERROR


class _LeanConnection(_wt_client._Connection):
    """The client connection with one transmit per loop iteration instead of one per datagram received
    (aioquic's default): the ACKs of every datagram read in one iteration leave together. Measured here:
    see BENCHMARKS.md, "WebTransport (issue 4)"."""

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self._quic.receive_datagram(data, addr, now=self._loop.time())  # type: ignore[arg-type]
        self._process_events()
        self.transmit_soon()


def _now_us() -> int:
    return time.time_ns() // 1000


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
    lean: bool = (
        os.environ.get("TOKENWIRE_LOADTEST_WT_LEAN", "1") != "0"
    )  # one client transmit per loop iteration (see _LeanConnection)
    connect_timeout: float = 10.0
    stream_timeout: float = 600.0


class _WtWorker(WorkerBase):
    """WebTransport streams, spread over sessions (``cfg.session_of``)."""

    cfg: WtWorkerConfig

    def __init__(self, cfg: WtWorkerConfig, progress: Any) -> None:
        super().__init__(cfg, progress)
        self._interval_us = int(1e6 / cfg.tokens_per_s) if cfg.tokens_per_s > 0 else 0
        self.clients: dict[int, WebTransportClient] = {}

    def client(self, session: int) -> WebTransportClient:
        client = self.clients.get(session)
        if client is None:
            client = self.clients[session] = WebTransportClient(
                self.cfg.url,
                server_certificate_hashes=[self.cfg.cert_hash],
                connect_timeout=self.cfg.connect_timeout,
                max_retries=0,
            )
        return client

    async def _stream(self, index: int, session: int) -> StreamResult:  # noqa: C901 - one stream, top to bottom
        cfg = self.cfg
        result = StreamResult(index, ok=False)
        prompt = f"loadtest {index}"
        texts: list[str] = []
        started_us = _now_us()
        first_us = 0
        last = 0
        done = False
        lag, lateness, interval = self.lag, self.lateness, self._interval_us
        try:
            client = self.client(session)
            params = {"tokens_per_s": cfg.tokens_per_s, "stamp": True}
            stream, reply = await client._request(StartRequested(prompt, cfg.max_tokens, params))
            result.status = 200
            if not isinstance(reply, StreamAttached):
                raise TypeError(f"unexpected reply {reply!r}")
            async with asyncio.timeout(cfg.stream_timeout):
                while not done:
                    await stream.wait()
                    now = _now_us()
                    frames = stream.frames
                    first_new = 0
                    new = 0
                    while frames:
                        kind, seq, payload = frames.popleft()
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
                            done = True
                        elif kind == _ERROR:
                            result.error = f"stream error frame: {payload[:200]}"
                            done = True
                    if new:
                        self.tokens += new
                        result.tokens += new
                        if not first_us:
                            first_us = now
                        if interval:
                            # As the SSE worker: one lateness value per arrival, for its first new token.
                            lateness.record(max(0, now - (first_us + (first_new - 1) * interval)))
                    if not done and stream.over:
                        if stream.error is not None:
                            result.error = f"stream cut: {stream.error}"
                        else:
                            result.error = "stream ended before its final frame"
                        result.unexpected_drops += 1
                        break
            stream.abort()  # forget it (after FIN this only drops the bookkeeping)
        except TimeoutError:
            result.error = result.error or "timed out"
        except Exception as exc:  # noqa: BLE001 - any failure ends this stream only, and is reported
            result.error = result.error or f"connection error: {exc!r}"
        if first_us:
            result.ttft = (first_us - started_us) / 1e6
        result.hash_ok = _core.fnv1a64("".join(texts)) == self.expected_hash(prompt)
        if done and not result.hash_ok and not result.error:
            result.error = "content differs from the model's tokens"
        result.ok = done and not result.error and result.hash_ok and result.lost == 0 and result.duplicates == 0
        return result

    async def _run_stream(self, index: int, slot: int) -> StreamResult:
        return await self._stream(index, slot)

    def _slots(self) -> list[int]:
        return list(self.cfg.session_of)

    async def _close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


def run_wt_worker(cfg: WtWorkerConfig, progress: Any) -> dict[str, Any]:
    """Run one worker's WebTransport streams to the end on a fresh (uv)loop; returns its raw results."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    if cfg.lean:
        # This process only: the client builds its connections from the module's ``_Connection``.
        _wt_client._Connection = _LeanConnection  # type: ignore[misc]
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_WtWorker(cfg, progress).run())
