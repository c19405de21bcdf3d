"""Coalesced writes: every connection with new frames is flushed once, at the next loop iteration.

An inference engine emits one token for hundreds of streams in one decode step, all in one loop iteration.
Each ``send`` marks its connections; the first mark schedules one callback; the callback drains each marked
connection's new frames from the Rust ring into one ``transport.write``. With ``max_delay_ms`` the callback
waits up to that long, trading latency for fewer writes. (uvloop's ``_queue_write`` does the same for
its own buffers.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

__all__ = ["Flushable", "Flusher"]

log = logging.getLogger("tokenwire.server")


class Flushable(Protocol):
    def flush(self) -> None: ...

    def flush_failed(self, exc: Exception) -> None:
        """``flush`` raised: end this connection (only this one); its client resumes elsewhere or later."""
        ...


class Flusher:
    __slots__ = ("_delay", "_loop", "_pending", "_scheduled", "runs")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_delay_ms: float = 0.0) -> None:
        self._loop = loop
        self._delay = max_delay_ms / 1000.0
        self._pending: list[Flushable] = []
        self._scheduled = False
        self.runs = 0

    def add(self, conn: Flushable) -> None:
        """Queue ``conn`` for the next flush (the caller makes sure it is queued once)."""
        self._pending.append(conn)
        if not self._scheduled:
            self._scheduled = True
            if self._delay:
                self._loop.call_later(self._delay, self._run)
            else:
                self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        self.runs += 1
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
