"""Typed surface of the Rust extension ``tokenwire._core``. Users import from ``tokenwire``, not here."""

from collections.abc import Sequence
from typing import Final, Self, final

__version__: Final[str]

FRAME_TOKEN: Final[int]
"""Frame kind 1: one token of text."""
FRAME_DONE: Final[int]
"""Frame kind 2: the stream finished; payload is JSON ``{"reason": ..., "usage": ...}``."""
FRAME_ERROR: Final[int]
"""Frame kind 3: the stream failed; payload is JSON ``{"code": ..., "message": ...}``."""
FRAME_HEARTBEAT: Final[int]
"""Frame kind 4: keep-alive, seq 0, no payload."""

WIRE_SSE: Final[int]
WIRE_BINARY: Final[int]

STATE_OPEN: Final[int]
STATE_FINISHED: Final[int]
STATE_FAILED: Final[int]
STATE_CANCELLED: Final[int]

MAX_VARINT: Final[int]
"""2**62 - 1, the largest QUIC variable-length integer."""
DEFAULT_MAX_PAYLOAD: Final[int]
"""1 MiB: the largest frame payload a :class:`FrameDecoder` accepts by default."""

def encode_varint(value: int) -> bytes:
    """Minimal QUIC varint encoding of ``value``; ``LocalProtocolError`` above ``MAX_VARINT``."""

def decode_varint(data: bytes) -> tuple[int, int] | None:
    """``(value, bytes used)`` from the front of ``data``, or ``None`` if ``data`` holds only part of one."""

def sse_event(data: str, *, id: str | None = None, event: str | None = None) -> bytes:
    """One complete SSE event. ``data`` is split on every newline kind into ``data:`` lines.

    Raises ``LocalProtocolError`` (a ``ValueError``) if ``id`` or ``event`` holds CR or LF, or ``id`` holds NUL.
    """

def sse_comment(text: str = "") -> bytes:
    """A comment block (one ``:`` line per line of ``text``), used as heartbeat."""

def sse_retry(retry_ms: int) -> bytes:
    """A ``retry:`` block setting the client's reconnection delay."""

def sse_batch(tokens: Sequence[str], *, id_prefix: str, first_seq: int, event: str | None = ...) -> bytes:
    """Token events of one stream in one buffer: event ``i`` has id ``f"{id_prefix}{first_seq + i}"``.

    ``event`` defaults to ``"token"``; ``None`` writes no ``event:`` line.
    """

def encode_frame(kind: int, seq: int, payload: str) -> bytes:
    """One binary frame: ``kind: u8 | seq: varint | len: varint | payload``."""

def encode_frames(kind: int, first_seq: int, payloads: Sequence[str]) -> bytes:
    """Frames of one kind with consecutive seqs from ``first_seq``, in one buffer."""

@final
class FrameDecoder:
    """Incremental binary frame decoder: feed any split of the byte stream.

    A malformed frame raises ``FrameError``. If frames before it arrived in the same ``feed``, they are
    returned and the error is raised by the next call; the decoder stays failed.
    """

    def __new__(cls, max_payload: int = ...) -> Self: ...
    def feed(self, data: bytes) -> list[tuple[int, int, str]]:
        """Complete frames in ``data`` (after what was buffered) as ``(kind, seq, payload)``."""

    def close(self) -> None:
        """End of input: ``FrameError`` if part of a frame is still buffered."""

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""

@final
class Ring:
    """One stream's recent frames, seq-indexed (1, 2, ...), bounded by frame count and payload bytes."""

    def __new__(cls, id_prefix: str = "", *, max_frames: int = 65536, max_bytes: int = ...) -> Self: ...
    def append(self, text: str, kind: int = ...) -> int:
        """Append one frame; returns its seq. ``LocalProtocolError`` if ``text`` alone exceeds ``max_bytes``."""

    def append_many(self, texts: Sequence[str], kind: int = ...) -> int:
        """Append frames in order; returns the last seq."""

    def since(self, after: int, wire: int = ...) -> bytes:
        """Every frame after seq ``after`` rendered in ``wire`` format.

        ``ResumeExpired`` (``.oldest_seq``) if some are no longer held; ``ResumeFromFuture`` if ``after`` is
        beyond the last seq.
        """

    def frames_since(self, after: int) -> list[tuple[int, int, str]]:
        """Every frame after seq ``after`` as ``(kind, seq, payload)``; same errors as :meth:`since`."""

    @property
    def last_seq(self) -> int: ...
    @property
    def oldest_seq(self) -> int:
        """Seq of the oldest frame held (``last_seq + 1`` when none is)."""

    @property
    def payload_bytes(self) -> int: ...
    @property
    def memory_bytes(self) -> int:
        """Bytes allocated for this ring."""

    def __len__(self) -> int: ...

@final
class Registry:
    """Every stream's ring and state, a global memory cap, and a time-to-live for ended streams.

    Handles are opaque ints; a handle of a removed stream raises ``StreamNotFound``, never reaching another.
    """

    def __new__(
        cls,
        *,
        max_frames_per_stream: int = 65536,
        max_bytes_per_stream: int = ...,
        max_total_bytes: int = ...,
        ttl: float = 300.0,
    ) -> Self:
        """Defaults: 8 MiB per stream, 1 GiB in all, ended streams kept 300 s."""
    def create(self, key: str, id_prefix: str) -> int:
        """Register an open stream. ``HubFull`` if open streams hold the memory cap."""

    def lookup(self, key: str) -> int | None: ...
    def append(self, handle: int, text: str) -> int:
        """Append one token; returns its seq. ``StreamClosed`` once the stream ended."""

    def append_many(self, handle: int, texts: Sequence[str]) -> int:
        """Append tokens; returns the last seq."""

    def end(self, handle: int, kind: int, payload: str, state: int, now: float) -> int:
        """Append the final ``FRAME_DONE``/``FRAME_ERROR`` frame and set the state; returns its seq."""

    def since(self, handle: int, after: int, wire: int = ...) -> bytes: ...
    def frames_since(self, handle: int, after: int) -> list[tuple[int, int, str]]: ...
    def last_seq(self, handle: int) -> int: ...
    def oldest_seq(self, handle: int) -> int: ...
    def state(self, handle: int) -> int: ...
    def key(self, handle: int) -> str: ...
    def remove(self, handle: int) -> str:
        """Drop a stream now; returns its key."""

    def sweep(self, now: float) -> list[str]:
        """Remove ended streams past their time-to-live; returns keys removed since the last sweep."""

    @property
    def memory_bytes(self) -> int: ...
    def __len__(self) -> int: ...
