"""What both relays share: the address types, the base class (one timer heap, the lifecycle, the rebind timer),
the seeded generators, the ``rate`` link and the knobs' checks."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import time
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

__all__ = ["Address", "Direction", "Link", "RelayBase", "check_knobs", "jittered", "seeded"]

Address = tuple[str, int]
Direction = Literal["up", "down"]

_TIMER_SLACK = 0.0005  # uvloop's timers have millisecond resolution; send what is due within this

_E = TypeVar("_E", bound=tuple[Any, ...])  # a heap entry: (when, seq, ...)


class RelayBase(Generic[_E]):
    """What both relays share: a listening address, one heap of timed entries behind one timer handle (no tasks,
    so nothing is left behind on asyncio or uvloop), and an address change every ``rebind_every`` seconds; the
    target, the address to listen on, one seeded generator per direction, the ``rate`` link."""

    def __init__(self, target: Address, *, bind: Address, seed: int, rebind_every: float) -> None:
        self.target = target
        self.rebind_every = rebind_every  # s between address changes; 0: never
        self._bind = bind
        self._rng = seeded(seed)
        self._link = Link()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._address: Address | None = None
        self._heap: list[_E] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._rebind_timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:  # pragma: no cover - both relays have their own
        raise NotImplementedError

    async def aclose(self) -> None:  # pragma: no cover - both relays have their own
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def address(self) -> Address:
        """Where clients connect or send: the relay's listening address."""
        if self._address is None:
            raise RuntimeError("relay not started")
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closed:
            raise RuntimeError("relay not running")
        return self._loop

    def _stop_timers(self) -> None:
        for timer in (self._timer, self._rebind_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._rebind_timer = None
        self._heap.clear()

    # ----------------------------------------------------------------- the heap

    def _push(self, entry: _E) -> None:
        heapq.heappush(self._heap, entry)
        self._arm()

    def _arm(self) -> None:
        if self._closed or self._loop is None:
            return
        if not self._heap:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        when = self._heap[0][0]
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_later(max(0.0, when - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic() + _TIMER_SLACK
        heap = self._heap
        while heap and heap[0][0] <= now:
            self._due(heapq.heappop(heap))
        self._arm()

    def _due(self, entry: _E) -> None:  # pragma: no cover - both relays have their own
        raise NotImplementedError

    # ----------------------------------------------------------------- periodic rebind

    def _arm_rebind(self) -> None:
        if self.rebind_every > 0 and not self._closed and self._loop is not None:
            self._rebind_timer = self._loop.call_later(self.rebind_every, self._on_rebind_timer)

    def _on_rebind_timer(self) -> None:
        self._rebind_timer = None
        self._rebind_now()
        self._arm_rebind()

    def _rebind_now(self) -> None:  # pragma: no cover - both relays have their own
        raise NotImplementedError


def seeded(seed: int) -> dict[Direction, random.Random]:
    """One generator per direction: impairment, not cryptography."""
    return {d: random.Random(f"{seed}:{d}") for d in ("up", "down")}  # noqa: S311


class Link:
    """The bottleneck of ``rate``: each direction serializes one chunk after another at ``rate`` bytes/s."""

    __slots__ = ("free_at",)

    def __init__(self) -> None:
        self.free_at: dict[Direction, float] = {"up": 0.0, "down": 0.0}

    def serialize(self, direction: Direction, size: int, now: float, rate: float, queue: float) -> float | None:
        """When ``size`` bytes arriving ``now`` are all on the wire; None when more than ``queue`` bytes wait."""
        start = max(now, self.free_at[direction])
        if (start - now) * rate + size > queue:
            return None
        self.free_at[direction] = done = start + size / rate
        return done


def check_knobs(probabilities: dict[str, float], durations: dict[str, float], rate: float) -> None:
    for name, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability, got {p}")
    for name, d in durations.items():
        if not 0.0 <= d < math.inf:
            raise ValueError(f"{name} must be a number of seconds, 0 or more, got {d}")
    if not 0.0 <= rate < math.inf:
        raise ValueError(f"rate must be bytes/s, 0 (unlimited) or more, got {rate}")


def jittered(delay: float, jitter: float, u: float) -> float:
    """``delay`` plus a uniform ``[-jitter, +jitter]`` drawn as ``u`` in [0, 1), never below 0."""
    return max(0.0, delay + (2.0 * u - 1.0) * jitter)
