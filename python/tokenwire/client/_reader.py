"""What the SSE and WebTransport token readers share: iteration, and the exactly-once rule (docs/protocol.md §4.3)."""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterator
from typing import Any, Self

from tokenwire import _core
from tokenwire.errors import RemoteProtocolError, StreamFailed

__all__ = ["TokenReaderBase"]

_TOKEN = _core.FRAME_TOKEN
_DONE = _core.FRAME_DONE
_ERROR = _core.FRAME_ERROR


class TokenReaderBase:
    """Tokens of one stream, exactly once and in order. A subclass reads the wire in :meth:`_fill` and hands
    each frame to :meth:`_accept`; :meth:`_finish` ends the iteration (a subclass also releases its
    connection there)."""

    def __init__(self, stream_id: str, epoch: str, after: int) -> None:
        self.stream_id = stream_id
        self.epoch = epoch
        self.position = after  # seq of the last token handed to the caller
        self.received = after  # seq of the last frame accepted (tokens past ``position`` wait in ``_pending``)
        self.done: dict[str, Any] | None = None
        self.reconnects = 0
        self.duplicates_dropped = 0
        self._pending: collections.deque[tuple[int, str]] = collections.deque()
        self._finished = False

    async def _fill(self) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        self._finished = True

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        while not self._pending:
            if self._finished:
                self.position = self.received
                raise StopAsyncIteration
            await self._fill()
        seq, token = self._pending.popleft()
        self.position = seq
        return token

    async def batches(self) -> AsyncIterator[list[str]]:
        """The same tokens, a list per arrival (fewer awaits for fast consumers)."""
        while True:
            if self._pending:
                pending = self._pending
                self.position = pending[-1][0]
                batch = [token for _, token in pending]
                pending.clear()
                yield batch
            if self._finished:
                self.position = self.received
                return
            await self._fill()

    async def text(self) -> str:
        """Read the whole answer."""
        return "".join([t async for batch in self.batches() for t in batch])

    def _accept(self, kind: int, seq: int, payload: str) -> None:
        """One frame: a replayed seq is dropped, a gap is an error, a final frame ends the iteration."""
        if seq <= self.received:
            self.duplicates_dropped += 1
            return
        if seq != self.received + 1:
            raise RemoteProtocolError(f"stream {self.stream_id}: seq {seq} after {self.received} (a gap)")
        self.received = seq
        if kind == _TOKEN:
            self._pending.append((seq, payload))
        elif kind == _DONE:
            self.done = json.loads(payload)
            self._finish()
        elif kind == _ERROR:
            body = json.loads(payload)
            self._finish()
            raise StreamFailed(body.get("message", "generation failed"), body.get("code", "generation_failed"))
