"""Coalesced writes: every connection with new frames is flushed once, soon, with a bound on how long it waits.

An inference engine emits one token for hundreds of streams in one decode step, all in one loop iteration.
Each ``send`` marks its connections; the first mark schedules one callback; the callback drains each marked
connection's new frames from the Rust ring into one ``transport.write``. (uvloop's ``_queue_write`` does the
same for its own buffers.)

Waiting for the next loop iteration alone has no bound: the flush runs after every other callback already due
in this iteration (every producer task woken by its timer), so when the core is contended or a GC pause hits,
one flush covers hundreds of connections and the token marked first waits for all of them. So the wait is
bounded: when a mark arrives and the oldest pending mark is older than ``max_wait_ms``, everything pending is
flushed right there, inside the producer's step. A connection still gets one write per flush however many
tokens it was sent in between, so an engine step's many tokens per stream still coalesce; what the bound
costs is a few more, smaller flushes when the loop is slow, never more than one write per token.

With ``max_delay_ms`` the callback instead waits up to that long on purpose, trading latency for fewer writes
(the bound does not apply: the delay is what was asked for).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tokenwire.metrics import Histogram

__all__ = ["DEFAULT_MAX_WAIT_MS", "Flushable", "Flusher"]

log = logging.getLogger("tokenwire.server")

#: Default bound on how long a marked connection waits for its flush (50 µs; see BENCHMARKS.md, issue 8).
DEFAULT_MAX_WAIT_MS = 0.05


class Flushable(Protocol):
    def flush(self) -> None: ...

    def flush_failed(self, exc: Exception) -> None:
        """``flush`` raised: end this connection (only this one); its client resumes elsewhere or later."""
        ...


class Flusher:
    __slots__ = (
        "_clock",
        "_delay",
        "_first",
        "_loop",
        "_max_wait",
        "_pending",
        "_scheduled",
        "inline_runs",
        "runs",
        "wait_histogram",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_delay_ms: float = 0.0,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        wait_histogram: Histogram | None = None,
    ) -> None:
        self._loop = loop
        self._delay = max_delay_ms / 1000.0
        # The bound needs a clock that moves inside a loop iteration: uvloop's loop.time() is cached per iteration.
        self._max_wait = 0.0 if self._delay else max_wait_ms / 1000.0
        self._clock = time.perf_counter
        self._first = 0.0
        self._pending: list[Flushable] = []
        self._scheduled = False
        #: Flushes run, and how many of them ran inside a producer's step because a mark waited too long.
        self.runs = 0
        self.inline_runs = 0
        #: Observes, per flush, how long its oldest mark waited (seconds).
        self.wait_histogram = wait_histogram

    def add(self, conn: Flushable) -> None:
        """Queue ``conn`` for the next flush (the caller makes sure it is queued once)."""
        pending = self._pending
        pending.append(conn)
        if len(pending) == 1:
            self._first = self._clock()
            if not self._scheduled:
                self._scheduled = True
                if self._delay:
                    self._loop.call_later(self._delay, self._scheduled_run)
                else:
                    self._loop.call_soon(self._scheduled_run)
        elif self._max_wait and self._clock() - self._first >= self._max_wait:
            self.inline_runs += 1
            self._run()

    def _scheduled_run(self) -> None:
        self._scheduled = False
        if self._pending:
            self._run()

    def _run(self) -> None:
        pending, self._pending = self._pending, []
        self.runs += 1
        if self.wait_histogram is not None:
            self.wait_histogram.observe(self._clock() - self._first)
        for conn in pending:
            # One connection's failure is its own: every other connection of this batch is still written
            # (uvloop's _exec_queued_writes isolates each transport the same way).
            try:
                conn.flush()
            except Exception as exc:
                log.exception("flush of %r failed; closing that connection only", conn)
                try:
                    conn.flush_failed(exc)
                except Exception:
                    log.exception("closing %r after a failed flush failed too", conn)
