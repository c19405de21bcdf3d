"""A plain-Python model of ``tokenwire._core.Ring``, written from its documented contract.

Frames get seqs 1, 2, ...; the ring holds at most ``max_frames`` frames (at least 1) and ``max_bytes``
payload bytes (UTF-8 length). Appending drops the oldest frames while either bound is passed. Refused, and
changing nothing: a payload larger than ``max_payload`` (``max_bytes``, and never more than a decoder
accepts by default, 1 MiB), and a heartbeat (not history, never stored). ``since(after)`` gives every frame
after ``after``, or says why it cannot: the frames are gone (expired) or ``after`` was never produced.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["ModelExpired", "ModelFromFuture", "ModelNotHistory", "ModelTooLarge", "RingModel"]

FRAME_TOKEN = 1
HISTORY_KINDS = (1, 2, 3)  # token, done, error; heartbeat (4) is never stored
DEFAULT_MAX_PAYLOAD = 1 << 20


class ModelTooLarge(Exception):
    """A single payload over ``max_payload``."""


class ModelNotHistory(Exception):
    """A frame kind that a ring never stores (heartbeat)."""


class ModelExpired(Exception):
    def __init__(self, after: int, oldest_seq: int) -> None:
        super().__init__(f"after={after} expired, oldest held is {oldest_seq}")
        self.after = after
        self.oldest_seq = oldest_seq


class ModelFromFuture(Exception):
    def __init__(self, after: int, last_seq: int) -> None:
        super().__init__(f"after={after} is beyond last seq {last_seq}")
        self.after = after
        self.last_seq = last_seq


@dataclass
class RingModel:
    id_prefix: str = ""
    max_frames: int = 65536
    max_bytes: int = 8 << 20
    frames: deque[tuple[int, int, str]] = field(default_factory=deque)
    """Held frames as ``(kind, seq, payload)``, oldest first."""
    last_seq: int = 0
    payload_bytes: int = 0

    def __post_init__(self) -> None:
        self.max_frames = max(1, self.max_frames)

    @property
    def max_payload(self) -> int:
        return min(self.max_bytes, DEFAULT_MAX_PAYLOAD)

    @property
    def oldest_seq(self) -> int:
        return self.frames[0][1] if self.frames else self.last_seq + 1

    def __len__(self) -> int:
        return len(self.frames)

    def append(self, text: str, kind: int = FRAME_TOKEN) -> int:
        if kind not in HISTORY_KINDS:
            raise ModelNotHistory(kind)
        size = len(text.encode())
        if size > self.max_payload:
            raise ModelTooLarge(f"{size} > {self.max_payload}")
        self.last_seq += 1
        self.frames.append((kind, self.last_seq, text))
        self.payload_bytes += size
        while len(self.frames) > self.max_frames or self.payload_bytes > self.max_bytes:
            _, _, old = self.frames.popleft()
            self.payload_bytes -= len(old.encode())
        return self.last_seq

    def since(self, after: int) -> list[tuple[int, int, str]]:
        if after > self.last_seq:
            raise ModelFromFuture(after, self.last_seq)
        if after + 1 < self.oldest_seq:
            raise ModelExpired(after, self.oldest_seq)
        return [f for f in self.frames if f[1] > after]
