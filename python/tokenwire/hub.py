"""The stream hub: token generation decoupled from client connections.

A producer sends tokens to a :class:`TokenStream`; the hub stores them (in Rust) with consecutive seqs;
any number of subscribers attach at any seq, detach, and re-attach while generation goes on. A
disconnect never stops generation: the abandonment policy cancels a producer only after nobody has been
attached for ``abandon_after`` seconds, and :meth:`TokenStream.cancel` stops it at once.

Data path: ``TokenStream.send`` -> ``storage.append`` (Rust ring) -> each attached listener is called
(no I/O: it marks a subscriber or a connection ready) -> the reader's :class:`Cursor` takes everything after
its position as one batch in its wire format (one ``storage.poll``). Every reader (the SSE connection, the
WebTransport stream, the ASGI response, :class:`Subscription`) reads through a cursor; nothing outside this
module touches a storage handle.

All methods are called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, Self, TypeVar, overload

from tokenwire import _core
from tokenwire.errors import (
    EpochMismatch,
    LocalProtocolError,
    ResumeExpired,
    ResumeFromFuture,
    StreamClosed,
    StreamNotFound,
    TokenwireError,
)
from tokenwire.protocol.openai import native_render
from tokenwire.protocol.resume import (
    ResumePoint,
    format_id_prefix,
    new_stream_id,
    parse_resume_point,
    validate_stream_id,
)
from tokenwire.storage import MemoryStorage, Storage

__all__ = [
    "RAW_CHUNKS",
    "Cursor",
    "Frame",
    "FrameKind",
    "Hub",
    "OnRead",
    "Render",
    "StreamState",
    "Subscription",
    "TokenStream",
    "Wire",
    "is_raw_chunks",
]

log = logging.getLogger("tokenwire.hub")

Wire = Literal["sse", "binary"]
_WIRES: dict[str, int] = {"sse": _core.WIRE_SSE, "binary": _core.WIRE_BINARY}

Listener = Callable[[], None]

#: The ``format`` label of a stream whose every frame is one raw OpenAI ``chat.completion.chunk`` (a source with
#: ``chunk_format = "openai"``, such as :class:`tokenwire.proxy.UpstreamProxy`'s): its native renderings carry
#: each chunk's content as the frame's token (:func:`tokenwire.protocol.openai.native_render`).
RAW_CHUNKS = "openai-chunks"


def is_raw_chunks(stream: TokenStream) -> bool:
    """Whether every frame of ``stream`` is one raw OpenAI chunk (an upstream's, through the proxy)."""
    return stream.labels.get("format") == RAW_CHUNKS


#: A custom rendering, for formats the core does not render (the OpenAI chunks): the frames one read of a
#: :class:`Cursor` took, as ``(kind, seq, text)`` in seq order (the last may be the final ``done`` or ``error``
#: frame), to the bytes to write.
Render = Callable[[list[tuple[int, int, str]]], bytes]

#: A cursor's accounting hook, called after each read that took frames: ``(position before, last seq read,
#: bytes returned)`` (bytes 0 for :meth:`Cursor.frames`). The servers feed their write metrics from it.
OnRead = Callable[[int, int, int], None]


class Reader(Protocol):
    """A reader of a stream (a :class:`Cursor`): ``position`` is the seq of the last frame it has taken."""

    @property
    def position(self) -> int: ...


#: Longer error messages are cut, so a final frame always fits the ring.
_MAX_ERROR_MESSAGE = 4096


class StreamState(enum.IntEnum):
    OPEN = _core.STATE_OPEN
    FINISHED = _core.STATE_FINISHED
    FAILED = _core.STATE_FAILED
    CANCELLED = _core.STATE_CANCELLED


class FrameKind(enum.IntEnum):
    TOKEN = _core.FRAME_TOKEN
    DONE = _core.FRAME_DONE
    ERROR = _core.FRAME_ERROR
    HEARTBEAT = _core.FRAME_HEARTBEAT


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a stream's history: a token, or the final ``done``/``error``."""

    kind: FrameKind
    seq: int
    text: str

    def json(self) -> Any:
        """The JSON body of a ``done`` or ``error`` frame."""
        return json.loads(self.text)


def _frames(raw: list[tuple[int, int, str]]) -> list[Frame]:
    kinds = FrameKind
    return [Frame(kinds(k), s, t) for k, s, t in raw]


class TokenStream:
    """One generation's output. Producers call :meth:`send` ... then :meth:`finish` or :meth:`fail`."""

    __slots__ = (
        "_append",
        "_append_many",
        "_detached_since",
        "_handle",
        "_hub",
        "_listeners",
        "_paused_readers",
        "_producer",
        "_readers_waiter",
        "_remote",
        "_state",
        "abandonable",
        "created_at",
        "end_reason",
        "id",
        "labels",
    )

    def __init__(self, hub: Hub, stream_id: str, handle: int, now: float, abandonable: bool) -> None:
        self.id = stream_id
        #: Cancelled by the hub's abandonment policy when nobody is attached for too long.
        self.abandonable = abandonable
        self._hub = hub
        self._handle = handle
        self._append = hub.storage.append
        self._append_many = hub.storage.append_many
        self._listeners: list[Listener] = []
        #: Readers that stopped taking frames (their transport is full): they may hold the producer back.
        self._paused_readers: set[Reader] = set()
        self._readers_waiter: asyncio.Future[None] | None = None
        self._producer: asyncio.Task[None] | None = None
        #: A copy of a stream another process produces (a shared storage's): its frames arrive from there.
        self._remote = False
        self._state = StreamState.OPEN
        self._detached_since = now
        self.created_at = now
        self.end_reason: str | None = None
        #: Small facts about the stream that travel with its history (a shared storage ships them to every
        #: node): e.g. the chat completion metadata of an OpenAI-compatible stream. Set with :meth:`label`.
        self.labels: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<TokenStream {self.id} {self._state.name.lower()} last_seq={self.last_seq}>"

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is StreamState.OPEN

    @property
    def last_seq(self) -> int:
        """Seq of the newest frame (0 before the first)."""
        return self._hub.storage.last_seq(self._handle)

    @property
    def oldest_seq(self) -> int:
        """Seq of the oldest frame still held for resume."""
        return self._hub.storage.oldest_seq(self._handle)

    @property
    def id_prefix(self) -> str:
        """What every event id of this stream starts with: ``{stream_id}:{epoch}:``."""
        return format_id_prefix(self.id, self._hub.epoch)

    @property
    def subscribers(self) -> int:
        return len(self._listeners)

    def label(self, name: str, value: str) -> None:
        """Attach ``name = value`` to the stream (set it before the first token to have it on other nodes with
        the stream's first shipped frames; a later value is shipped with the next ones)."""
        self.labels[name] = value
        self._hub.storage.label(self._handle, name, value)

    # -- producer side -------------------------------------------------------------------------------

    def send(self, text: str) -> int:
        """Append one token; returns its seq. ``StreamClosed`` once the stream has ended."""
        seq = self._append(self._handle, text)
        if self._listeners:
            for listener in self._listeners:
                listener()
        return seq

    def send_many(self, texts: Sequence[str]) -> int:
        """Append tokens in order with one call into the core; returns the last seq."""
        seq = self._append_many(self._handle, texts)
        if self._listeners:
            for listener in self._listeners:
                listener()
        return seq

    def finish(self, reason: str = "stop", usage: dict[str, Any] | None = None) -> int:
        """End the stream normally with a ``done`` frame; returns its seq."""
        body: dict[str, Any] = {"reason": reason}
        if usage is not None:
            body["usage"] = usage
        return self._end(FrameKind.DONE, body, StreamState.FINISHED, reason)

    def fail(self, error: BaseException | str, *, code: str = "generation_failed") -> int:
        """End the stream with an ``error`` frame; returns its seq."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if len(message) > _MAX_ERROR_MESSAGE:
            message = message[: _MAX_ERROR_MESSAGE - 1] + "…"
        return self._end(FrameKind.ERROR, {"code": code, "message": message}, StreamState.FAILED, code)

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the generation now: a ``done`` frame with ``reason``, and the producer task is cancelled.

        The frame reports ``usage`` ``{"completion_tokens": n}`` where the producer is a :meth:`Hub.start` task:
        each frame it sent is a token, so the last seq counts them (nothing is counted per ``send``).
        A no-op on a stream that has already ended. On a copy of another process's stream the cancel is sent
        to that process; the ``done`` frame arrives from there.
        """
        if self._remote:
            if self._state is StreamState.OPEN:
                self._hub.storage.cancel_remote(self.id, reason)
            return
        if self._state is StreamState.OPEN:
            body: dict[str, Any] = {"reason": reason}
            if self._producer is not None:
                body["usage"] = {"completion_tokens": self.last_seq}
            self._end(FrameKind.DONE, body, StreamState.CANCELLED, reason)
        producer = self._producer
        if producer is not None and not producer.done():
            producer.cancel()

    def _end(self, kind: FrameKind, body: dict[str, Any], state: StreamState, reason: str) -> int:
        if self._state is not StreamState.OPEN:
            raise StreamClosed(f"stream {self.id} is {self._state.name.lower()}; it cannot end again")
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        seq = self._hub.storage.end(self._handle, int(kind), payload, int(state), self._hub.clock())
        self._ended(state, reason)
        return seq

    def _ended(self, state: StreamState, reason: str | None) -> None:
        """The final frame is held (appended here, or by a shared storage's copy): say so to the hub and readers."""
        self._state = state
        self.end_reason = reason
        self._hub._on_end(self)
        for listener in self._listeners:  # a snapshot: attach/detach replace the list
            listener()

    def _final_reason(self) -> str | None:
        """The reason (``done``) or code (``error``) in the final frame held, as ``end_reason`` holds it."""
        for kind, _, text in self._hub.storage.frames_since(self._handle, self.last_seq - 1)[-1:]:
            with contextlib.suppress(ValueError, AttributeError):
                body = json.loads(text)
                return str(body.get("reason" if kind == FrameKind.DONE else "code", ""))
        return None

    async def _reaches(self, seq: int, within: float) -> None:
        """Wait until frame ``seq`` is held or the stream ends (at most ``within`` s)."""
        reached = asyncio.get_running_loop().create_future()

        def check() -> None:
            if (self.last_seq >= seq or not self.is_open) and not reached.done():
                reached.set_result(None)

        self.attach(check)
        try:
            check()
            await asyncio.wait_for(reached, within)
        except TimeoutError:
            pass  # the resume check says what is missing
        finally:
            self.detach(check)

    # -- subscriber side -----------------------------------------------------------------------------

    def cursor(self, after: int = 0, wire: Wire | None = "sse", render: Render | None = None) -> Cursor:
        """A reader's place in this stream after seq ``after``: :meth:`Cursor.poll` reads what is new in ``wire``
        format, or rendered by ``render`` (then ``wire`` is not used). ``wire=None`` and no ``render``: a cursor
        for :meth:`Cursor.frames` only. Resume errors come from the reads (check a resume point first with
        :meth:`Hub.check_resume`)."""
        return Cursor(self, after, None if wire is None else _WIRES[wire], render)

    def attach(self, listener: Listener) -> None:
        """Call ``listener()`` (no arguments, no I/O) whenever frames are appended or the stream ends."""
        # Copy on write: a listener may run a flush that detaches another reader of this stream (a
        # WebTransport stream cut inside an inline flush) while ``send`` iterates the list.
        self._listeners = [*self._listeners, listener]

    def detach(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners = [x for x in self._listeners if x != listener]
        if not self._listeners:
            self._detached_since = self._hub.clock()

    # -- producer backpressure -----------------------------------------------------------------------

    def reader_paused(self, reader: Reader) -> None:
        """``reader`` stopped taking frames (its transport is full). While it is behind by more than the hub's
        ``reader_high_water`` frames, a producer the hub drives (:meth:`Hub.start`) waits for it, so a live
        reader that stalls briefly does not fall off the ring. ``send`` itself never blocks."""
        self._paused_readers.add(reader)

    def reader_resumed(self, reader: Reader) -> None:
        """``reader`` takes frames again, or is gone (call it on disconnect too): it holds nobody back."""
        self._paused_readers.discard(reader)
        waiter = self._readers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def readers_behind(self) -> bool:
        """True while a paused reader is more than ``reader_high_water`` frames, or ``reader_high_water_bytes``
        payload bytes, behind the newest frame (the ring drops by count and by bytes, whichever comes first)."""
        return bool(self._behind())

    def _behind(self) -> list[Reader]:
        readers = self._paused_readers
        if not readers:
            return []
        hub = self._hub
        floor = self.last_seq - hub.reader_high_water
        bytes_after, handle, max_bytes = hub.storage.bytes_after, self._handle, hub.reader_high_water_bytes
        return [r for r in readers if r.position < floor or bytes_after(handle, r.position) > max_bytes]

    async def wait_for_readers(self, max_wait: float) -> bool:
        """Wait (at most ``max_wait`` s) until no paused reader is behind; False if it gave up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while self.readers_behind() and self._state is StreamState.OPEN:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._readers_waiter = waiter = loop.create_future()
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                # Those still behind hold nobody back any more (until they resume and pause again): the
                # producer goes on, and they may fall off the ring (410 on resume).
                self._paused_readers.difference_update(self._behind())
                return False
            finally:
                self._readers_waiter = None
        return True


class Cursor:
    """One reader's place in a stream and the one way to read it: everything after ``position`` in one storage call.

    Every consumer of a stream reads through a cursor (the SSE connection, the WebTransport stream, the ASGI
    response, :class:`Subscription`), so a storage backend meets readers in this class only. A cursor is also the
    :class:`Reader` that producer backpressure compares (``stream.reader_paused(cursor)``). It does not listen:
    its owner attaches a listener to the stream and polls when woken.
    """

    __slots__ = (
        "_frames_since",
        "_handle",
        "_read",
        "_render",
        "_state",
        "_wire",
        "native",
        "on_read",
        "position",
        "stream",
    )

    def __init__(self, stream: TokenStream, after: int, wire: int | None, render: Render | None) -> None:
        self.stream = stream
        #: Seq of the last frame read: a reader that has delivered everything read resumes after it.
        self.position = after
        #: Accounting hook (:data:`OnRead`), called after each read that took frames.
        self.on_read: OnRead | None = None
        self._handle = stream._handle
        self._wire = _core.WIRE_SSE if wire is None else wire
        if render is None and wire is not None and is_raw_chunks(stream):
            render = native_render(stream.id_prefix, wire)  # each frame a raw OpenAI chunk: its content is the token
        self._render = render
        storage = stream._hub.storage
        #: ``(registry, handle)`` when a native writer may read this cursor's binary frames straight from the Rust
        #: registry (in-memory storage, binary wire, no render); it then reports what it took with :meth:`advance`.
        self.native: tuple[_core.Registry, int] | None = None
        if isinstance(storage, MemoryStorage) and wire == _core.WIRE_BINARY and render is None:
            self.native = (storage.registry, self._handle)
        self._frames_since = storage.frames_since
        self._state = storage.state
        # What a poll calls, chosen once: for a wire format, the storage's bound method itself, so the SSE flush's
        # hot path is this one Python call and one call into the core.
        self._read: Callable[[int, int, int], tuple[bytes, int, bool]] = storage.poll
        if render is not None:
            self._read = self._read_rendered
        elif wire is None:
            self._read = _frames_only

    def __repr__(self) -> str:
        return f"<Cursor {self.stream.id} position={self.position}>"

    def poll(self) -> tuple[bytes, int, bool]:
        """``(data, last_seq, ended)``: every frame after ``position`` rendered (``b""`` if none), the stream's last
        seq, and whether it has ended (``data`` then ends with the final frame, unless an earlier poll took it).
        ``position`` moves to ``last_seq``. ``ResumeExpired`` (``.oldest_seq``) when the frames after
        ``position`` are no longer held (the reader fell behind the ring), ``StreamNotFound`` when the stream is
        gone; ``position`` is unchanged then."""
        pos = self.position
        result = self._read(self._handle, pos, self._wire)
        last = result[1]
        if last > pos:
            self.position = last
            on_read = self.on_read
            if on_read is not None:
                on_read(pos, last, len(result[0]))
        return result

    def advance(self, last: int, nbytes: int) -> None:
        """A native writer took the frames after ``position`` up to seq ``last`` (``nbytes`` on the wire) straight
        from the registry (:attr:`native`): move there and account the read as :meth:`poll` does."""
        pos = self.position
        if last > pos:
            self.position = last
            on_read = self.on_read
            if on_read is not None:
                on_read(pos, last, nbytes)

    def _read_rendered(self, handle: int, pos: int, wire: int) -> tuple[bytes, int, bool]:
        raw = self._frames_since(handle, pos)
        if not raw:
            return b"", pos, self._state(handle) != _core.STATE_OPEN
        kind, last, _ = raw[-1]
        render = self._render
        assert render is not None  # noqa: S101 - chosen only with a render
        return render(raw), last, kind != _core.FRAME_TOKEN

    def frames(self) -> list[Frame]:
        """Every frame after ``position`` (``[]`` if none), as :class:`Frame` objects; ``position`` moves to the
        last. Errors as :meth:`poll`."""
        pos = self.position
        raw = self._frames_since(self._handle, pos)
        if not raw:
            return []
        last = self.position = raw[-1][1]
        if self.on_read is not None:
            self.on_read(pos, last, 0)
        return _frames(raw)


def _frames_only(handle: int, after: int, wire: int) -> tuple[bytes, int, bool]:
    raise LocalProtocolError("this cursor has no wire format and no render: read it with frames()")


T = TypeVar("T", list[Frame], bytes)


class Subscription(Generic[T]):
    """Async iterator over a stream's frames after a seq, in batches; ends after the final frame.

    Yields ``list[Frame]`` (``wire=None``) or ``bytes`` in the requested wire format. ``position`` is the
    seq of the last frame delivered: the resume point to come back with.
    """

    def __init__(self, stream: TokenStream, after: int, wire: int | None) -> None:
        self.stream = stream
        #: Where this subscription reads (``position`` is its).
        self.cursor = Cursor(stream, after, wire, None)
        self._bytes = wire is not None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        stream.attach(self._wake)

    @property
    def position(self) -> int:
        """Seq of the last frame delivered: the resume point to come back with."""
        return self.cursor.position

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Subscription[T]:
        return self

    def read_ready(self) -> T | None:
        """Whatever is available now without waiting, or ``None``."""
        if self._bytes:
            batch: Any = self.cursor.poll()[0]  # one core call
        else:
            batch = self.cursor.frames()
        return batch or None

    async def __anext__(self) -> T:
        while not self._closed:
            batch = self.read_ready()
            if batch is not None:
                return batch
            if not self.stream.is_open:
                break
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.close()
        raise StopAsyncIteration

    def close(self) -> None:
        """Detach from the stream (generation goes on)."""
        if not self._closed:
            self._closed = True
            self.stream.detach(self._wake)
            self._wake()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Hub:
    """Holds streams and their history; hands subscriptions out and checks resume points.

    ``abandon_after``: seconds a stream with a producer task may have no subscriber before the producer is
    cancelled (``None``: never). Ended streams stay resumable for the storage's time-to-live.
    """

    def __init__(
        self,
        storage: Storage | None = None,
        *,
        abandon_after: float | None = 30.0,
        sweep_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        reader_high_water: int | None = None,
        backpressure_timeout: float = 60.0,
    ) -> None:
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self.storage.bind(self)
        #: Frames a paused reader may fall behind before a producer the hub drives waits for it (default: a
        #: quarter of the storage's per-stream frame bound). Engine-style ``send`` never waits.
        if reader_high_water is None:
            reader_high_water = max(1, getattr(self.storage, "max_frames_per_stream", 65_536) // 4)
        self.reader_high_water = reader_high_water
        #: The same in payload bytes (default: a quarter of the storage's per-stream byte bound).
        self.reader_high_water_bytes: int = max(1, getattr(self.storage, "max_bytes_per_stream", 8 << 20) // 4)
        #: Longest one wait for a paused reader; then the producer goes on (that reader may fall off the ring;
        #: its resume gets 410). Readers are closed after their server's stall timeout anyway.
        self.backpressure_timeout = backpressure_timeout
        #: Longest wait for a copy of another node's stream to reach a client's resume point (shared storage).
        self.catch_up_wait = 2.0
        self.abandon_after = abandon_after
        self.sweep_interval = sweep_interval
        self.clock = clock
        self._streams: dict[str, TokenStream] = {}
        self._producers: set[asyncio.Task[None]] = set()
        self._janitor: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "streams_started",
                "streams_finished",
                "streams_failed",
                "streams_cancelled",
                "streams_abandoned",
                "streams_expired",
                "resumes",
                "producer_waits",
                "streams_restored",
            ),
            0,
        )

    @property
    def epoch(self) -> str:
        return self.storage.epoch

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def stats(self) -> dict[str, int]:
        """Counters plus gauges: streams held, open streams, attached subscribers, memory bytes."""
        open_streams = sum(1 for s in self._streams.values() if s.is_open)
        subscribers = sum(len(s._listeners) for s in self._streams.values())
        return {
            **self.counters,
            "streams": len(self._streams),
            "open_streams": open_streams,
            "subscribers": subscribers,
            "memory_bytes": self.storage.memory_bytes,
        }

    # -- producers -----------------------------------------------------------------------------------

    def create_stream(
        self, stream_id: str | None = None, *, abandonable: bool = False, length: int = 0, token_bytes: int = 0
    ) -> TokenStream:
        """A new open stream to send to. ``HubFull`` if open streams hold the memory cap.

        ``abandonable``: let the abandonment policy cancel it when nobody is attached for ``abandon_after``
        seconds (streams of :meth:`start` are). ``length`` > 0: the stream carries at most ``length`` tokens
        of at most ``token_bytes`` UTF-8 bytes; the memory cap is charged now for what it will hold by its
        end, so a start that would pass the cap is ``HubFull`` at once.
        """
        stream_id = new_stream_id() if stream_id is None else validate_stream_id(stream_id)
        if stream_id in self._streams:
            raise LocalProtocolError(f"stream {stream_id!r} exists already")
        prefix = format_id_prefix(stream_id, self.epoch)
        if length > 0:
            handle = self.storage.create(stream_id, prefix, length, token_bytes)
        else:
            handle = self.storage.create(stream_id, prefix)
        stream = TokenStream(self, stream_id, handle, self.clock(), abandonable)
        self._streams[stream_id] = stream
        self.counters["streams_started"] += 1
        with contextlib.suppress(RuntimeError):  # no running loop: the caller sweeps by hand
            self._ensure_janitor()
        log.debug("stream %s created", stream_id)
        return stream

    def start(
        self,
        source: AsyncIterable[str | Sequence[str]],
        *,
        stream_id: str | None = None,
        length: int = 0,
        token_bytes: int = 0,
    ) -> TokenStream:
        """Create a stream and run a task that sends every string of ``source`` to it, then finishes it.

        ``source`` is any async iterable of text (a FakeModel, a real LLM client); an item may also be a
        list of tokens produced together (one ``send_many``). If it has ``usage`` or
        ``finish_reason`` attributes when exhausted, they go into the ``done`` frame. An exception in it
        fails the stream with an ``error`` frame. ``length``, ``token_bytes``: see :meth:`create_stream`.
        """
        stream = self.create_stream(stream_id, abandonable=True, length=length, token_bytes=token_bytes)
        task = asyncio.get_running_loop().create_task(self._pump(stream, source), name=f"tokenwire:{stream.id}")
        stream._producer = task
        self._producers.add(task)
        task.add_done_callback(self._producers.discard)
        return stream

    async def _feed(self, stream: TokenStream, source: AsyncIterable[str | Sequence[str]]) -> None:
        """Every item of ``source`` into ``stream``, then its end. Runs once per token of every generation the
        hub drives, so ``TokenStream.send`` is inlined here."""
        append, append_many, handle = stream._append, stream._append_many, stream._handle
        paused = stream._paused_readers
        async for item in source:
            if type(item) is str:
                append(handle, item)
            else:
                append_many(handle, item)
            if listeners := stream._listeners:
                for listener in listeners:
                    listener()
                if paused and stream.readers_behind():
                    await self._hold_back(stream)
        if stream.is_open:
            reason = getattr(source, "finish_reason", None) or "stop"
            stream.finish(reason, usage=getattr(source, "usage", None))

    async def _pump(self, stream: TokenStream, source: AsyncIterable[str | Sequence[str]]) -> None:
        try:
            await self._feed(stream, source)
        except StreamClosed:
            pass  # cancelled while the source was mid-token
        except asyncio.CancelledError:
            if stream.is_open:
                stream.cancel("cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - any source error fails just this stream
            log.warning("generation of stream %s failed: %r", stream.id, exc)
            if stream.is_open:
                code = getattr(exc, "code", None)
                if isinstance(exc, TokenwireError) and isinstance(code, str) and code:
                    stream.fail(str(exc), code=code)  # a typed failure names itself (UpstreamError: upstream_*)
                else:
                    stream.fail(exc)
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _hold_back(self, stream: TokenStream) -> None:
        """A paused reader is far behind: the producer waits for it (bounded by ``backpressure_timeout``)."""
        self.counters["producer_waits"] += 1
        if not await stream.wait_for_readers(self.backpressure_timeout):
            log.warning("stream %s: a paused reader held the producer back too long; going on", stream.id)

    def _on_end(self, stream: TokenStream) -> None:
        key = {
            StreamState.FINISHED: "streams_finished",
            StreamState.FAILED: "streams_failed",
            StreamState.CANCELLED: "streams_cancelled",
        }[stream.state]
        self.counters[key] += 1
        log.debug("stream %s ended: %s (%s)", stream.id, stream.state.name.lower(), stream.end_reason)

    # -- lookups and subscribers ---------------------------------------------------------------------

    def get(self, stream_id: str) -> TokenStream:
        """A stream this hub holds (its own, or a copy :meth:`find` made); else ``StreamNotFound``."""
        try:
            return self._streams[stream_id]
        except KeyError:
            raise StreamNotFound(f"no stream {stream_id!r} (never created, or expired)") from None

    def needs_restore(self, stream_id: str, after: int = 0) -> bool:
        """:meth:`find` must come before the sync lookups: a shared storage may have a stream not held here, or
        a copy held here may not have reached ``after`` yet (a client read it from the producing node)."""
        if not self.storage.shared:
            return False
        stream = self._streams.get(stream_id)
        return stream is None or (stream._remote and stream.is_open and after > stream.last_seq)

    async def find(self, stream_id: str, after: int = 0, epoch: str = "") -> TokenStream:
        """The stream, held here or copied from the shared storage (a stream another process produces: its
        frames so far, then the live tail). ``StreamNotFound``; ``StorageUnavailable`` if the storage does not
        answer. ``after``: the seq a resume starts after; a copy behind it is waited for (at most
        ``catch_up_wait`` s), since the client read that seq from the producing node an instant ago. ``epoch``:
        the resume point's; a stream no node has from another epoch is ``EpochMismatch`` (409, as for one held)."""
        stream = self._streams.get(stream_id)
        if stream is None and self.storage.shared:
            try:
                stream = await self._restore(stream_id)
            except StreamNotFound:
                if epoch:
                    self.check_epoch(epoch)
                raise
        if stream is None:
            return self.get(stream_id)
        if stream._remote and stream.is_open and after > stream.last_seq:
            await stream._reaches(after, self.catch_up_wait)
        return stream

    async def _restore(self, stream_id: str) -> TokenStream:
        handle = await self.storage.restore(stream_id)
        if handle is None:
            raise StreamNotFound(f"no stream {stream_id!r} on any node (never created, or expired)")
        stream = self._streams.get(stream_id)  # a concurrent find made it meanwhile
        if stream is None:
            stream = TokenStream(self, stream_id, handle, self.clock(), abandonable=False)
            stream._remote = True
            stream.labels = self.storage.labels(stream_id)
            state = StreamState(self.storage.state(handle))
            if state is not StreamState.OPEN:
                stream._state = state
                stream.end_reason = stream._final_reason()
            self._streams[stream_id] = stream
            self.counters["streams_restored"] += 1
            log.debug("stream %s copied from the shared storage (%s)", stream_id, state.name.lower())
        return stream

    # -- a shared storage's reports (StorageHost) ----------------------------------------------------

    def on_remote_frames(self, key: str) -> None:
        stream = self._streams.get(key)
        if stream is not None:
            for listener in stream._listeners:
                listener()

    def on_remote_end(self, key: str, state: int) -> None:
        stream = self._streams.get(key)
        if stream is not None and stream._state is StreamState.OPEN:
            stream._ended(StreamState(state), stream._final_reason())

    def on_remote_cancel(self, key: str, reason: str) -> None:
        stream = self._streams.get(key)
        if stream is not None and not stream._remote:
            stream.cancel(reason)

    def has_readers(self, key: str) -> bool:
        stream = self._streams.get(key)
        return stream is not None and bool(stream._listeners)

    def on_remote_readers(self, key: str) -> None:
        stream = self._streams.get(key)
        if stream is not None:
            stream._detached_since = self.clock()

    def owned_unread(self) -> list[str]:
        return [s.id for s in self._streams.values() if s.is_open and s.abandonable and not s._listeners]

    def cancel(self, stream_id: str, reason: str = "cancelled") -> TokenStream:
        """Cancel a stream's generation (``StreamNotFound`` if unknown); a no-op if it has ended."""
        stream = self.get(stream_id)
        stream.cancel(reason)
        return stream

    def check_resume(self, stream_id: str, after: int) -> TokenStream:
        """The stream, if frames after ``after`` can be served; else the precise ``ResumeError``."""
        stream = self.get(stream_id)
        last = stream.last_seq
        if after > last:
            raise ResumeFromFuture(
                f"resume point seq {after} is in the future: stream {stream_id} has produced up to {last}", last
            )
        oldest = stream.oldest_seq
        if after + 1 < oldest:
            raise ResumeExpired(
                f"resume point seq {after} has expired: the oldest frame of stream {stream_id} still held is "
                f"seq {oldest}",
                oldest,
            )
        return stream

    @overload
    def subscribe(self, stream_id: str, after: int = 0, *, wire: None = None) -> Subscription[list[Frame]]: ...
    @overload
    def subscribe(self, stream_id: str, after: int = 0, *, wire: Wire) -> Subscription[bytes]: ...
    def subscribe(self, stream_id: str, after: int = 0, *, wire: Wire | None = None) -> Subscription[Any]:
        """Attach to a stream after seq ``after`` (0: from the start). Errors are raised here, at once."""
        stream = self.check_resume(stream_id, after)
        return Subscription(stream, after, None if wire is None else _WIRES[wire])

    def parse_resume(self, resume_point: str | ResumePoint) -> ResumePoint:
        """Parse and check the epoch of a ``Last-Event-ID``: ``RemoteProtocolError``, ``EpochMismatch``."""
        point = parse_resume_point(resume_point) if isinstance(resume_point, str) else resume_point
        self.check_epoch(point.epoch)
        return point

    def check_epoch(self, epoch: str) -> None:
        """``EpochMismatch`` unless ``epoch`` is this hub's: a resume point from another history."""
        if epoch != self.epoch:
            raise EpochMismatch(
                f"resume point belongs to epoch {epoch!r}, this hub's history is epoch {self.epoch!r}; "
                "the frames it refers to are not here",
                expected=self.epoch,
                got=epoch,
            )

    @overload
    def resume(self, resume_point: str | ResumePoint, *, wire: None = None) -> Subscription[list[Frame]]: ...
    @overload
    def resume(self, resume_point: str | ResumePoint, *, wire: Wire) -> Subscription[bytes]: ...
    def resume(self, resume_point: str | ResumePoint, *, wire: Wire | None = None) -> Subscription[Any]:
        """Subscribe from a ``Last-Event-ID`` (``{stream_id}:{epoch}:{seq}``)."""
        point = self.parse_resume(resume_point)
        sub: Subscription[Any] = self.subscribe(point.stream_id, point.seq, wire=wire)
        self.counters["resumes"] += 1
        return sub

    # -- housekeeping --------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Cancel abandoned producers and drop ended streams past their time-to-live; returns dropped ids."""
        now = self.clock()
        if self.abandon_after is not None:
            deadline = now - self.abandon_after
            for stream in list(self._streams.values()):
                if (
                    stream.is_open
                    and stream.abandonable
                    and not stream._listeners
                    and stream._detached_since <= deadline
                ):
                    log.info("stream %s abandoned: no subscriber for %.1fs", stream.id, now - stream._detached_since)
                    self.counters["streams_abandoned"] += 1
                    stream.cancel("abandoned")
        removed = self.storage.sweep(now)
        for stream_id in removed:
            self._streams.pop(stream_id, None)
        self.counters["streams_expired"] += len(removed)
        return removed

    def _ensure_janitor(self) -> None:
        self.storage.start()
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.get_running_loop().create_task(self._run_janitor(), name="tokenwire:janitor")

    async def _run_janitor(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                self.sweep()
            except Exception:  # the janitor must outlive one bad sweep
                log.exception("hub sweep failed")

    async def __aenter__(self) -> Self:
        self._ensure_janitor()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self, reason: str = "shutdown") -> None:
        """Cancel every running producer (their streams end with ``reason``) and stop the janitor.

        History stays readable until the hub is dropped.
        """
        for stream in list(self._streams.values()):
            if stream.is_open and stream.abandonable:
                stream.cancel(reason)
        tasks = [*self._producers]
        if self._janitor is not None:
            self._janitor.cancel()
            tasks.append(self._janitor)
            self._janitor = None
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.storage.aclose()  # after the producers' ends, so a shared storage ships them
