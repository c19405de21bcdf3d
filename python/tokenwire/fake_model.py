"""A seeded fake LLM for demos, tests and load tests: realistic word-piece tokens at a set pace.

Two ways to drive it, as real model servers are written (the two shapes of :mod:`tokenwire.generation`):
- :class:`FakeModel` is a :class:`~tokenwire.generation.Generator`: :meth:`FakeModel.generate` returns an async
  iterator of text (one request, its own pace) for :meth:`Hub.start <tokenwire.hub.Hub.start>`.
- :class:`FakeEngine` is an :class:`~tokenwire.generation.Engine`: it steps every active stream together, one
  token each per step, as batching inference engines (vLLM, TGI) do, and sends straight to the streams.

Served (``tokenwire serve``, :class:`~tokenwire.server.ServerOptions`), a request's body may set the pace of its
own generation: ``ttft`` and ``tokens_per_s`` (the FakeModel only: an engine keeps its step rate), and ``stamp``
(append each token's production time, for load tests).

The same ``(seed, prompt, max_tokens)`` always gives the same tokens, so tests can check every byte.
Tokens are drawn as they are sent (:class:`TokenDraw`), never built up front: a ``max_tokens`` of
millions costs no memory and no stall at the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections.abc import Sequence

from tokenwire.generation import GenerationRequest
from tokenwire.hub import Hub, TokenStream
from tokenwire.protocol.json_body import bool_field, float_field

__all__ = [
    "STAMP_SEPARATOR",
    "VOCABULARY",
    "FakeCompletion",
    "FakeEngine",
    "FakeModel",
    "TokenDraw",
    "stamp",
    "stamp_suffix",
    "unstamp",
    "usage",
]

log = logging.getLogger("tokenwire.fake_model")

#: Separates a token's text from its production time in stamp mode (U+2063 INVISIBLE SEPARATOR).
STAMP_SEPARATOR = "\u2063"


def stamp(text: str) -> str:
    """``text`` + separator + now as integer microseconds since the Unix epoch (load tests measure lag)."""
    return text + stamp_suffix()


def stamp_suffix() -> str:
    """What :func:`stamp` appends: the separator and now in µs (one read of the clock for a whole batch)."""
    return f"{STAMP_SEPARATOR}{time.time_ns() // 1000}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI-style token counts of a finished generation."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def unstamp(text: str) -> str:
    """The token text without its production stamp."""
    return text.partition(STAMP_SEPARATOR)[0]


#: Word pieces as a BPE tokenizer cuts them: leading spaces, suffixes, punctuation, code, newlines,
#: multi-byte UTF-8 (accents, CJK, Cyrillic, emoji with a zero-width joiner).
VOCABULARY: tuple[str, ...] = (
    " the",
    " a",
    " model",
    " token",
    "s",
    "ing",
    "ed",
    " stream",
    ",",
    ".",
    " of",
    " to",
    " and",
    " in",
    " is",
    " res",
    "um",
    "able",
    " connection",
    " client",
    " server",
    " drop",
    "ped",
    " again",
    " never",
    " café",
    " naïve",
    " über",
    " é",
    "té",
    " 日本",
    "語",
    " 你好",
    " Привет",
    " мир",
    " 🙂",
    " 👩\u200d💻",
    " —",
    " «",
    "»",
    " 42",
    "7",
    " 3.14",
    "%",
    " def",
    " return",
    "(",
    ")",
    ":",
    "    ",
    "\n",
    "\n\n",
    " `",
    "`",
    " **",
    "**",
    " x",
    " =",
    " +",
    " 1",
    "\t",
    " ",
    "'",
    '"',
    " λ",
    " ∑",
    " →",
)


#: Tokens per step of an unthrottled generation.
_UNTHROTTLED_BATCH = 256

#: Tokens a :class:`TokenDraw` draws at once for one-at-a-time takers.
_DRAW_CHUNK = 64

#: The most UTF-8 bytes :func:`stamp_suffix` adds to a token (the separator and 20 digits).
STAMP_BYTES = len(STAMP_SEPARATOR.encode()) + 20


class TokenDraw:
    """The tokens of one generation, drawn as they are taken: the same sequence as ``rng.choices(vocabulary,
    k=count)`` (``choices`` draws one ``random()`` per token, so drawing in chunks changes nothing), holding
    at most :data:`_DRAW_CHUNK` of them."""

    __slots__ = ("_buf", "_choices", "_pos", "_vocabulary", "left")

    def __init__(self, vocabulary: tuple[str, ...], rng: random.Random, count: int) -> None:
        self._vocabulary = vocabulary
        self._choices = rng.choices
        self._buf: list[str] = []
        self._pos = 0
        #: Tokens still to come.
        self.left = count

    def next(self) -> str:
        """The next token (the caller checks :attr:`left` first)."""
        pos = self._pos
        buf = self._buf
        if pos == len(buf):
            buf = self._buf = self._choices(self._vocabulary, k=min(_DRAW_CHUNK, self.left))
            pos = 0
        self._pos = pos + 1
        self.left -= 1
        return buf[pos]

    def take(self, k: int) -> list[str]:
        """The next ``k`` tokens (fewer at the end)."""
        k = min(k, self.left)
        held = self._buf[self._pos : self._pos + k]
        self._pos += len(held)
        self.left -= k
        if len(held) < k:
            held += self._choices(self._vocabulary, k=k - len(held))
        return held


class FakeCompletion:
    """Async iterator of one request's tokens; ``usage`` and ``finish_reason`` are set when exhausted.

    Paced, it yields one token (``str``) at a time; unthrottled (``tokens_per_s`` 0/None) it yields lists of
    up to 256 tokens, one list per loop iteration. :meth:`Hub.start <tokenwire.hub.Hub.start>` takes both.
    """

    def __init__(
        self, tokens: TokenDraw, prompt_tokens: int, ttft: float, tokens_per_s: float | None, stamp: bool = False
    ) -> None:
        self._tokens = tokens
        self._stamp = stamp
        self._i = 0
        self._ttft = ttft
        self._interval = 1.0 / tokens_per_s if tokens_per_s else 0.0
        self._t0: float | None = None
        self._prompt_tokens = prompt_tokens
        self.usage: dict[str, int] | None = None
        self.finish_reason: str | None = None

    def __aiter__(self) -> FakeCompletion:
        return self

    async def __anext__(self) -> str | list[str]:
        i = self._i
        tokens = self._tokens
        if not tokens.left:
            self.finish_reason = "length"
            self.usage = usage(self._prompt_tokens, i)
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        # Absolute schedule: token i is due at t0 + ttft + i * interval, so pacing never drifts.
        due = self._t0 + self._ttft + i * self._interval
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif not self._interval:
            # Unthrottled: hand out a batch per step (as a multi-token decode step does), one loop
            # iteration each, so the consumer's flushes interleave.
            batch = tokens.take(_UNTHROTTLED_BATCH)
            self._i = i + len(batch)
            await asyncio.sleep(0)
            if self._stamp:
                at = stamp_suffix()
                return [t + at for t in batch]
            return batch
        self._i = i + 1
        return stamp(tokens.next()) if self._stamp else tokens.next()


class FakeModel:
    """Deterministic fake LLM. ``tokens_per_s=None`` (or 0) produces as fast as the consumer takes."""

    def __init__(
        self,
        *,
        seed: int = 0,
        ttft: float = 0.0,
        tokens_per_s: float | None = 50.0,
        vocabulary: Sequence[str] = VOCABULARY,
    ) -> None:
        if not vocabulary:
            raise ValueError("vocabulary must not be empty")
        self.seed = seed
        self.ttft = ttft
        self.tokens_per_s = tokens_per_s
        self.vocabulary = tuple(vocabulary)
        #: The most UTF-8 bytes one token has (what a hub reserves per token, see :meth:`token_bytes`).
        self.max_token_bytes = max(len(t.encode()) for t in self.vocabulary)
        #: How many generations were started: a resumed stream must not start another.
        self.calls = 0

    def token_bytes(self, stamp: bool | GenerationRequest = False) -> int:
        """The most UTF-8 bytes one sent token has (with its stamp if ``stamp``, or if the request asks for it)."""
        if isinstance(stamp, GenerationRequest):
            stamp = bool_field(stamp.body, "stamp")
        return self.max_token_bytes + (STAMP_BYTES if stamp else 0)

    def begin(self, prompt: str, max_tokens: int) -> tuple[TokenDraw, int]:
        """One generation begins (counted in :attr:`calls`): its tokens, drawn lazily, and its prompt's token
        count."""
        self.calls += 1
        return self.draw(prompt, max_tokens), max(1, len(prompt) // 4)

    def start(self, prompt: str, max_tokens: int) -> tuple[list[str], int]:
        """As :meth:`begin`, with the whole answer as a list (memory in proportion to ``max_tokens``)."""
        draw, prompt_tokens = self.begin(prompt, max_tokens)
        return draw.take(max_tokens), prompt_tokens

    def draw(self, prompt: str, max_tokens: int) -> TokenDraw:
        """The tokens a generation of ``prompt`` produces, drawn as they are taken (not counted in calls)."""
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        rng = random.Random((self.seed << 32) ^ zlib.crc32(prompt.encode()))  # noqa: S311 - not crypto
        return TokenDraw(self.vocabulary, rng, max_tokens)

    def tokens(self, prompt: str, max_tokens: int) -> list[str]:
        """The tokens a generation of ``prompt`` produces (no pacing)."""
        return self.draw(prompt, max_tokens).take(max_tokens)

    def generate(
        self,
        prompt: str | GenerationRequest,
        max_tokens: int = 64,
        *,
        ttft: float | None = None,
        tokens_per_s: float | None = None,
        stamp: bool = False,
    ) -> FakeCompletion:
        """One generation as an async iterator of text, paced by ``ttft`` and ``tokens_per_s``.

        ``stamp``: append to each token its production time (see :func:`stamp`), for load tests. Given a
        :class:`~tokenwire.generation.GenerationRequest` (as a server calls it), the prompt and ``max_tokens``
        are the request's, and so are ``ttft``, ``tokens_per_s`` and ``stamp`` when its body sets them
        (``InvalidBody`` when one is out of range).
        """
        if isinstance(prompt, GenerationRequest):
            body = prompt.body
            max_tokens = prompt.max_tokens
            ttft = float_field(body, "ttft", 0.0, 600.0)
            tokens_per_s = float_field(body, "tokens_per_s", 0.0, 1e9)
            stamp = bool_field(body, "stamp")
            prompt = prompt.prompt
        tokens, prompt_tokens = self.begin(prompt, max_tokens)
        return FakeCompletion(
            tokens,
            prompt_tokens=prompt_tokens,
            ttft=self.ttft if ttft is None else ttft,
            tokens_per_s=self.tokens_per_s if tokens_per_s is None else tokens_per_s,
            stamp=stamp,
        )


class _Job:
    __slots__ = ("i", "prompt_tokens", "stamp", "stream", "tokens")

    def __init__(self, stream: TokenStream, tokens: TokenDraw, prompt_tokens: int, stamp: bool) -> None:
        self.stream = stream
        self.tokens = tokens
        self.prompt_tokens = prompt_tokens
        self.stamp = stamp
        self.i = 0


class FakeEngine:
    """Batching-engine mode: one loop, ``steps_per_s`` steps a second, one token per active stream a step.

    ``hub``: where :meth:`submit` makes its streams (a server hands its own to :meth:`enqueue`)."""

    def __init__(self, model: FakeModel, hub: Hub | None = None, *, steps_per_s: float = 20.0) -> None:
        if steps_per_s <= 0:
            raise ValueError("steps_per_s must be > 0")
        self.model = model
        self.hub = hub
        self.steps_per_s = steps_per_s
        self.steps = 0
        self._jobs: list[_Job] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> int:
        return len(self._jobs)

    def submit(
        self, prompt: str, max_tokens: int = 64, *, stream_id: str | None = None, stamp: bool = False
    ) -> TokenStream:
        """Start a generation: it gets its first token at the next step. Needs a running loop.

        The hub's memory cap is charged for what the stream will hold by its end (``HubFull`` if it does not
        fit)."""
        if self.hub is None:
            raise RuntimeError("FakeEngine.submit needs the engine made with a hub")
        stream = self.hub.create_stream(
            stream_id, abandonable=True, length=max_tokens, token_bytes=self.model.token_bytes(stamp)
        )
        self._add(stream, prompt, max_tokens, stamp)
        return stream

    def enqueue(self, request: GenerationRequest, stream: TokenStream) -> None:
        """The :class:`~tokenwire.generation.Engine` seam: generate ``request`` into ``stream`` (a server made it)
        from the next step on. Its body's ``stamp`` is honoured; the pace is the engine's."""
        self._add(stream, request.prompt, request.max_tokens, bool_field(request.body, "stamp"))

    def token_bytes(self, request: GenerationRequest) -> int:
        """The most UTF-8 bytes one token of ``request`` has (the server charges the hub's cap up front)."""
        return self.model.token_bytes(request)

    def _add(self, stream: TokenStream, prompt: str, max_tokens: int, stamp: bool) -> None:
        self._jobs.append(_Job(stream, *self.model.begin(prompt, max_tokens), stamp))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tokenwire:fake-engine")

    def step(self) -> int:
        """One decode step; returns how many tokens it sent."""
        sent = 0
        keep: list[_Job] = []
        for job in self._jobs:
            stream = job.stream
            if not stream.is_open:
                continue  # cancelled or abandoned
            tokens = job.tokens
            if tokens.left:
                text = tokens.next()
                stream.send(stamp(text) if job.stamp else text)
                job.i += 1
                sent += 1
            if not tokens.left:
                stream.finish("length", usage=usage(job.prompt_tokens, job.i))
            else:
                keep.append(job)
        self._jobs = keep
        self.steps += 1
        return sent

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.steps_per_s
        next_step = loop.time()
        while self._jobs:
            next_step += interval
            delay = next_step - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                if delay < -1.0:
                    log.warning("fake engine is %.2fs behind schedule; resetting", -delay)
                    next_step = loop.time()
                await asyncio.sleep(0)
            self.step()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
