"""The engine-style producer that both peer servers share.

One asyncio task runs decode steps on an absolute schedule (``steps_per_s`` a second, no drift); each step
pushes the next token of every active request onto that request's own :class:`asyncio.Queue`, and ``None``
after its last token. The response handler drains its queue. This is how FastAPI-style apps in front of a
batching inference engine are usually written (vLLM's and TGI's OpenAI frontends work the same way).

The tokens are ``tokenwire.fake_model.FakeModel(seed=0).tokens(prompt, max_tokens)``, so a peer streams
exactly the text that tokenwire streams for the same request. The schedule mirrors
:class:`tokenwire.fake_model.FakeEngine`: a request gets its first token at the next step, and a loop that
falls more than 1 s behind resets its schedule instead of bursting.

``stamp=True`` appends ``"\\u2063" + str(time.time_ns() // 1000)`` (production time in µs since the epoch,
after an INVISIBLE SEPARATOR) to each token at the moment the step produces it; a load generator reads it
back to measure delivery lag. ``steps_per_s=0`` runs unthrottled: steps back to back, with one
``await asyncio.sleep(0)`` between them so the consumers can run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from tokenwire.fake_model import STAMP_SEPARATOR, FakeModel, stamp

__all__ = ["STAMP_SEPARATOR", "QueueEngine"]

log = logging.getLogger("benches.peers.engine")


class _Job:
    __slots__ = ("i", "queue", "stamp", "tokens")

    def __init__(self, tokens: list[str], queue: asyncio.Queue[str | None], stamp: bool) -> None:
        self.tokens = tokens
        self.queue = queue
        self.stamp = stamp
        self.i = 0


class QueueEngine:
    """One loop, ``steps_per_s`` steps a second, one token per active request a step, into per-request queues."""

    def __init__(self, steps_per_s: float = 20.0, *, seed: int = 0) -> None:
        if steps_per_s < 0:
            raise ValueError("steps_per_s must be >= 0 (0 = unthrottled)")
        self.steps_per_s = steps_per_s
        self.model = FakeModel(seed=seed, tokens_per_s=None)
        #: Decode steps run so far.
        self.steps = 0
        self._jobs: dict[asyncio.Queue[str | None], _Job] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> int:
        """Requests still generating."""
        return len(self._jobs)

    def submit(self, max_tokens: int, *, stamp: bool = False, prompt: str = "") -> asyncio.Queue[str | None]:
        """Start a generation; its queue gets one token per step from the next step on, then ``None``.

        Needs a running loop. The caller drains the queue and calls :meth:`abort` if it stops early.
        """
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._jobs[queue] = _Job(self.model.start(prompt, max_tokens)[0], queue, stamp)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="peers:queue-engine")
        return queue

    async def drain(self, max_tokens: int, *, stamp: bool = False, prompt: str = "") -> AsyncIterator[str]:
        """:meth:`submit`, then the request's tokens as they come; a consumer that stops early aborts it."""
        queue = self.submit(max_tokens, stamp=stamp, prompt=prompt)
        try:
            while (token := await queue.get()) is not None:
                yield token
        finally:
            self.abort(queue)  # the client went away mid-stream: stop generating for it

    def abort(self, queue: asyncio.Queue[str | None]) -> None:
        """Stop the generation feeding ``queue`` (its client went away). A no-op once it has ended."""
        self._jobs.pop(queue, None)

    def step(self) -> int:
        """One decode step: the next token of every active request into its queue. Returns how many."""
        sent = 0
        done: list[asyncio.Queue[str | None]] = []
        for queue, job in self._jobs.items():
            i = job.i
            tokens = job.tokens
            if i < len(tokens):
                token = tokens[i]
                if job.stamp:
                    token = stamp(token)
                queue.put_nowait(token)
                job.i = i = i + 1
                sent += 1
            if i >= len(tokens):
                queue.put_nowait(None)
                done.append(queue)
        for queue in done:
            del self._jobs[queue]
        self.steps += 1
        return sent

    async def _run(self) -> None:
        if not self.steps_per_s:
            while self._jobs:
                await asyncio.sleep(0)
                self.step()
            return
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.steps_per_s
        next_step = loop.time()
        while self._jobs:
            # Absolute schedule: step k is due at start + k * interval, so the pace never drifts.
            next_step += interval
            delay = next_step - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                if delay < -1.0:
                    log.warning("queue engine is %.2fs behind schedule; resetting", -delay)
                    next_step = loop.time()
                await asyncio.sleep(0)
            self.step()

    async def aclose(self) -> None:
        """Stop the loop and end every open generation early: its queue gets ``None`` now.

        A consumer that sees ``None`` before ``max_tokens`` tokens knows the engine shut down.
        """
        for queue in self._jobs:
            queue.put_nowait(None)
        self._jobs.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
