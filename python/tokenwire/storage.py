"""Where stream history lives: the narrow interface the hub talks to, and the in-memory default.

A storage assigns seqs, keeps each stream's recent frames and its state, and renders frames in a wire
format. The hub calls ``append`` on the producer's hot path, so it must not block: a networked backend
(Redis Streams, for multi-node resume) keeps a local ring as write-through cache, ships appends in the
background, and implements :meth:`Storage.restore` to load a stream that another node produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from tokenwire import _core
from tokenwire.protocol.resume import new_epoch

__all__ = ["MemoryStorage", "Storage", "open_storage"]


@runtime_checkable
class Storage(Protocol):
    """What the hub calls on a history store. Handles are opaque ints the storage hands out.

    Readers of a stream (the hub's cursors) call ``poll``, ``frames_since`` and ``bytes_after``; the hub calls
    the rest. A shared storage (``shared`` True) also holds copies of streams other processes produce:
    :meth:`restore` makes one, and it reports their new frames, their end and cancels for the streams this
    process produces to the hub it is bound to (:class:`tokenwire.redis_storage.StorageHost`).
    """

    #: Another process can resume a stream this one produced (``--workers`` > 1 needs it).
    shared: bool

    @property
    def epoch(self) -> str:
        """Changes whenever history is lost (an in-memory store: at every start)."""
        ...

    @property
    def memory_bytes(self) -> int: ...

    def create(self, key: str, id_prefix: str, frames: int = ..., frame_bytes: int = ...) -> int:
        """A new open stream. ``frames`` > 0: it carries at most ``frames`` tokens of at most ``frame_bytes``
        bytes, and the memory cap is charged for what it will hold by its end (``HubFull`` now if that does
        not fit). A backend without a cap may ignore them; the hub passes them only when > 0."""
        ...

    def append(self, handle: int, text: str) -> int: ...
    def append_many(self, handle: int, texts: Sequence[str]) -> int: ...
    def end(self, handle: int, kind: int, payload: str, state: int, now: float) -> int: ...
    def poll(self, handle: int, after: int, wire: int = ...) -> tuple[bytes, int, bool]: ...
    def frames_since(self, handle: int, after: int) -> list[tuple[int, int, str]]: ...
    def last_seq(self, handle: int) -> int: ...
    def oldest_seq(self, handle: int) -> int: ...
    def bytes_after(self, handle: int, after: int) -> int: ...
    def state(self, handle: int) -> int: ...
    def sweep(self, now: float) -> list[str]: ...

    async def restore(self, key: str) -> int | None:
        """A copy of a stream this process does not hold (another node's); ``None`` if nobody has it."""
        ...

    def cancel_remote(self, key: str, reason: str) -> None:
        """Ask the process producing a copied stream to cancel it."""
        ...

    def label(self, handle: int, name: str, value: str) -> None:
        """Keep ``name = value`` with a stream this process produces (a shared storage ships it)."""
        ...

    def labels(self, key: str) -> dict[str, str]:
        """The labels of a copied stream, as its producer set them."""
        ...

    def bind(self, host: Any) -> None:
        """The hub this storage reports to (called once, by the hub)."""
        ...

    def start(self) -> None:
        """On the running loop: start background work (idempotent; the hub calls it with its janitor)."""
        ...

    async def aclose(self) -> None:
        """Finish background work (the hub's ``aclose`` calls it last)."""
        ...

    def stats(self) -> dict[str, float]:
        """Storage gauges and counters for the server's metrics (``tokenwire_storage_*``)."""
        ...


class MemoryStorage:
    """Process-local history in the Rust registry. A new epoch per instance: a restart loses history."""

    #: History is visible only to this process: a resume must come back to it (no ``--workers`` > 1).
    shared = False

    def __init__(
        self,
        *,
        max_frames_per_stream: int = 65_536,
        max_bytes_per_stream: int = 8 << 20,
        max_total_bytes: int = 1 << 30,
        ttl: float = 300.0,
        epoch: str | None = None,
    ) -> None:
        reg = _core.Registry(
            max_frames_per_stream=max_frames_per_stream,
            max_bytes_per_stream=max_bytes_per_stream,
            max_total_bytes=max_total_bytes,
            ttl=ttl,
        )
        self._registry = reg
        #: The per-stream frame bound (the hub's producer backpressure is a fraction of it).
        self.max_frames_per_stream = max_frames_per_stream
        self.max_bytes_per_stream = max_bytes_per_stream
        self._epoch = epoch or new_epoch()
        self.ttl = ttl
        # Bound methods of the registry, so the hub's hot path calls straight into Rust.
        self.create = reg.create
        self.lookup = reg.lookup
        self.append = reg.append
        self.append_many = reg.append_many
        self.end = reg.end
        self.since = reg.since
        self.poll = reg.poll
        self.frames_since = reg.frames_since
        self.last_seq = reg.last_seq
        self.oldest_seq = reg.oldest_seq
        self.bytes_after = reg.bytes_after
        self.state = reg.state
        self.remove = reg.remove
        self.sweep = reg.sweep

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def memory_bytes(self) -> int:
        return self._registry.memory_bytes

    @property
    def registry(self) -> _core.Registry:
        """The Rust registry itself: only the hub's cursors hand it on (a native writer reads frames from it)."""
        return self._registry

    def __len__(self) -> int:
        return len(self._registry)

    async def restore(self, key: str) -> int | None:
        return None

    def cancel_remote(self, key: str, reason: str) -> None:
        """Never called: every stream of a memory storage is this process's own."""

    def label(self, handle: int, name: str, value: str) -> None:
        """The stream object keeps its labels; nobody else reads them."""

    def labels(self, key: str) -> dict[str, str]:
        return {}

    def bind(self, host: Any) -> None:
        """Nothing to report: no other process writes here."""

    def start(self) -> None:
        """No background work."""

    async def aclose(self) -> None:
        """No background work."""

    def stats(self) -> dict[str, float]:
        return {}


def open_storage(url: str | None = None, **limits: Any) -> Storage:
    """The storage a URL names: ``None``, ``""`` or ``memory://`` the in-process default; ``redis://HOST:PORT/DB``,
    ``rediss://`` or ``unix:///path.sock`` a :class:`~tokenwire.redis_storage.RedisStorage` (needs the ``redis``
    extra). ``limits`` are the per-stream and total bounds (``max_frames_per_stream``, ``ttl``, ...)."""
    if not url or url == "memory://":
        return MemoryStorage(**limits)
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        from tokenwire.redis_storage import RedisStorage  # the redis client is an optional extra

        return RedisStorage(url, **limits)
    raise ValueError(f"unknown storage URL {url!r}: use memory:// or redis://HOST:PORT/DB")
