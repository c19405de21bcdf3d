"""Coalesced writes: every connection with new frames is flushed once, at the next loop iteration.

An inference engine emits one token for hundreds of streams in one decode step, all in one loop iteration.
Each ``send`` marks its connections; the first mark schedules one callback; the callback drains each marked
connection's new frames from the Rust ring into one ``transport.write``. With ``max_delay_ms`` the callback
waits up to that long, trading latency for fewer writes. (uvloop's ``_queue_write`` does the same for
its own buffers.)
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Flushable", "Flusher"]


class Flushable(Protocol):
    def flush(self) -> None: ...


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
            conn.flush()
