"""The flusher: one write per marked connection per flush, a bound on how long a mark waits, and isolation."""

from __future__ import annotations

import asyncio
import time

import pytest

from tokenwire.server.flusher import Flusher


class Conn:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail
        self.failed: Exception | None = None

    def flush(self) -> None:
        if self.fail:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        self.log.append(self.name)

    def flush_failed(self, exc: Exception) -> None:
        self.failed = exc
        self.log.append(f"{self.name} closed")

    def __repr__(self) -> str:
        return f"<Conn {self.name}>"


def _busy(seconds: float) -> None:
    """A producer step that takes this long (CPU, inside one loop iteration)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_marks_of_one_iteration_are_flushed_together_at_the_next() -> None:
    flusher = Flusher(asyncio.get_running_loop(), max_wait_ms=50.0)
    log: list[str] = []
    for name in "abc":
        flusher.add(Conn(name, log))
    assert log == []  # nothing written inside the producers' steps while the wait is short
    await asyncio.sleep(0)
    assert log == ["a", "b", "c"]
    assert flusher.runs == 1
    assert flusher.inline_runs == 0


async def test_a_mark_that_waited_past_the_bound_is_flushed_inside_the_next_producer_step() -> None:
    flusher = Flusher(asyncio.get_running_loop(), max_wait_ms=0.5)
    log: list[str] = []
    flusher.add(Conn("a", log))
    _busy(0.002)  # a slow step (or a GC pause) between two marks of one iteration
    flusher.add(Conn("b", log))
    assert log == ["a", "b"]  # written now, not after every other callback of this iteration
    assert flusher.inline_runs == 1
    flusher.add(Conn("c", log))  # a new batch starts: it waits for the scheduled flush
    assert log == ["a", "b"]
    await asyncio.sleep(0)
    assert log == ["a", "b", "c"]


async def test_without_the_bound_marks_wait_for_the_next_iteration() -> None:
    flusher = Flusher(asyncio.get_running_loop(), max_wait_ms=0.0)
    log: list[str] = []
    flusher.add(Conn("a", log))
    _busy(0.002)
    flusher.add(Conn("b", log))
    assert log == []
    await asyncio.sleep(0)
    assert log == ["a", "b"]


async def test_max_delay_coalesces_on_purpose_and_ignores_the_bound() -> None:
    flusher = Flusher(asyncio.get_running_loop(), max_delay_ms=20.0, max_wait_ms=0.1)
    log: list[str] = []
    flusher.add(Conn("a", log))
    _busy(0.002)
    flusher.add(Conn("b", log))
    await asyncio.sleep(0)
    assert log == []
    await asyncio.sleep(0.05)
    assert log == ["a", "b"]


@pytest.mark.parametrize("max_wait_ms", [0.0, 0.5])
async def test_one_failing_connection_does_not_stop_the_others(max_wait_ms: float) -> None:
    flusher = Flusher(asyncio.get_running_loop(), max_wait_ms=max_wait_ms)
    log: list[str] = []
    bad = Conn("bad", log, fail=True)
    for conn in (Conn("a", log), bad, Conn("b", log)):
        flusher.add(conn)
    await asyncio.sleep(0)
    assert log == ["a", "bad closed", "b"]
    assert isinstance(bad.failed, UnicodeEncodeError)
    # The flusher still works afterwards.
    flusher.add(Conn("c", log))
    await asyncio.sleep(0)
    assert log[-1] == "c"
