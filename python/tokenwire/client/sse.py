"""An async SSE client for tokenwire streams, decoding with the Rust core.

It delivers every token exactly once and in order: it keeps the seq of the last token it handed out, and
when the connection drops it reconnects to ``GET /v1/streams/{id}/events`` with ``Last-Event-ID`` (after a
jittered exponential backoff), dropping any replayed seq it already delivered. Resume failures surface as
the typed errors of :mod:`tokenwire.errors` (404 ``StreamNotFound``, 409 ``EpochMismatch``, 410
``ResumeExpired``); a failed generation as ``StreamFailed``.

Example (against ``tokenwire serve``)::

    async with SseClient("http://127.0.0.1:8000") as client:
        reader = await client.generate("Hello", max_tokens=32)
        async for token in reader:
            print(token, end="")
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import httptools

from tokenwire import _core
from tokenwire.client._reader import TokenReaderBase
from tokenwire.errors import (
    DuplicateStreamId,
    EpochMismatch,
    RemoteProtocolError,
    ResumeExpired,
    ResumeFromFuture,
    StreamNotFound,
    TokenwireError,
)

__all__ = ["ConnectionFailed", "SseClient", "TokenStreamReader"]

_T = TypeVar("_T")

log = logging.getLogger("tokenwire.client")

_READ_HIGH_WATER = 1 << 20


class ConnectionFailed(TokenwireError):
    """The server could not be reached (or kept failing) within the retry budget."""

    status_hint = 503


class _Response(asyncio.Protocol):
    """One HTTP/1.1 request/response on its own connection; the body arrives as chunks."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head = asyncio.get_running_loop().create_future()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.finished = False  # message complete or connection gone
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"malformed HTTP response: {exc}"))
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(exc or ConnectionResetError("connection closed before the response head"))
        self.finished = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if not self.head.done():
            self.head.set_exception(exc)
        self.finished = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH_WATER and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.finished = True
        self._wake()

    async def read(self) -> bytes:
        """Next body chunk; ``b""`` at the end of the response (or of the connection)."""
        while not self.chunks:
            if self.finished:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def body(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _error_for(status: int, body: bytes) -> TokenwireError:
    try:
        err = json.loads(body)["error"]
        message = str(err.get("message", ""))
    except (ValueError, KeyError, TypeError):
        err, message = {}, body[:200].decode("utf-8", "replace")
    if status == 404:
        return StreamNotFound(message)
    if status == 409 and err.get("type") == "DuplicateStreamId":
        return DuplicateStreamId(message)
    if status == 409:
        return EpochMismatch(message, expected=str(err.get("epoch", "")))
    if status == 410:
        return ResumeExpired(message, int(err.get("oldest_seq", 0)))
    if status == 400 and err.get("type") == "ResumeFromFuture":
        return ResumeFromFuture(message, int(err.get("last_seq", 0)))
    exc = RemoteProtocolError(f"HTTP {status}: {message}")
    exc.status_hint = status
    return exc


#: The SSE event types that carry frames, as frame kinds.
_SSE_KINDS = {"token": _core.FRAME_TOKEN, "done": _core.FRAME_DONE, "error": _core.FRAME_ERROR}


async def with_backoff(
    attempt: Callable[[], Awaitable[_T]],
    *,
    what: str,
    tries: int,
    initial: float,
    cap: float,
    transient: tuple[type[BaseException], ...],
    transient_status: tuple[int, ...],
    uniform: Callable[[float, float], float] = random.uniform,
) -> _T:
    """``attempt()`` until it succeeds, at most ``tries`` times, sleeping a jittered, doubling delay
    (``initial`` up to ``cap``) between tries. ``transient`` exceptions and ``RemoteProtocolError`` with a
    ``transient_status`` are retried; other errors (the typed resume errors) are final. After the last try:
    ``ConnectionFailed("could not {what}: ...")``."""
    delay = initial
    last_error: BaseException | None = None
    for n in range(tries):
        if n:
            await asyncio.sleep(uniform(0, delay))
            delay = min(cap, delay * 2)
        try:
            return await attempt()
        except transient as exc:
            last_error = exc
        except RemoteProtocolError as exc:
            if exc.status_hint not in transient_status:
                raise
            last_error = exc
    raise ConnectionFailed(f"could not {what}: {last_error!r}") from last_error


class TokenStreamReader(TokenReaderBase):
    """Async iterator of one stream's tokens, exactly once and in order, across reconnects.

    ``position`` is the seq of the last token handed to the caller (the final frame's seq once the iteration
    has ended), so ``last_event_id`` is always a safe point to resume from elsewhere, even after breaking out
    of the loop mid-batch. After the iteration ends, ``done`` holds the ``done`` event's JSON body.
    """

    def __init__(self, client: SseClient, response: _Response | None, stream_id: str = "", after: int = 0) -> None:
        super().__init__(stream_id, "", after)
        self._client = client
        self._response = response
        self._decoder = _core.SseDecoder()

    @property
    def last_event_id(self) -> str:
        """Resume point of what the caller has been handed."""
        return f"{self.stream_id}:{self.epoch}:{self.position}" if self.epoch else ""

    @property
    def _resume_id(self) -> str:
        return f"{self.stream_id}:{self.epoch}:{self.received}"

    async def aclose(self) -> None:
        """Stop reading (the generation goes on on the server)."""
        self._finish()

    async def _fill(self) -> None:
        if self._response is None:
            self._response = await self._client._reconnect(self)
            self._decoder = _core.SseDecoder()
            if self._response is None:
                self._finished = True
                return
        data = await self._response.read()
        if not data:
            error = self._response.error
            self._response.close()
            self._response = None
            if error is not None and not isinstance(error, OSError):
                raise error
            if not self._finished:
                log.debug("stream %s: connection ended at seq %d; resuming", self.stream_id, self.received)
            return
        try:
            events = self._decoder.feed(data)
        except RemoteProtocolError:
            self._response.close()
            self._response = None  # resume from the last complete event
            return
        for event_id, kind, payload in events:
            self._handle(event_id, kind, payload)

    def _handle(self, event_id: str, kind: str, payload: str) -> None:
        if kind == "stream":
            info = json.loads(payload)
            self.stream_id = info["stream_id"]
            self.epoch = info["epoch"]
            return
        frame_kind = _SSE_KINDS.get(kind)
        if frame_kind is not None:
            self._accept(frame_kind, int(event_id.rpartition(":")[2] or 0), payload)

    def _finish(self) -> None:
        super()._finish()
        if self._response is not None:
            self._response.close()
            self._response = None


class SseClient:
    """Client of one tokenwire SSE server (``base_url`` like ``http://127.0.0.1:8000``)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_retries: int = 8,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        connect_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"base_url must be http://host[:port], got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.max_retries = max_retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self._readers: set[TokenStreamReader] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for reader in list(self._readers):
            await reader.aclose()
        self._readers.clear()

    async def _request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> _Response:
        loop = asyncio.get_running_loop()
        lines = [
            f"{method} {self.prefix}{path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Accept: text/event-stream",
        ]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body or method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        async with asyncio.timeout(self.connect_timeout):
            transport, proto = await loop.create_connection(_Response, self.host, self.port)
            transport.write(raw)
            await proto.head
        return proto

    async def generate(self, prompt: str, *, max_tokens: int = 64, **params: Any) -> TokenStreamReader:
        """Start a generation (``POST /v1/streams``) and return its token reader."""
        body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, **params}).encode()
        resp = await self._request("POST", "/v1/streams", body)
        if resp.status != 200:
            raise _error_for(resp.status, await resp.body())
        reader = TokenStreamReader(self, resp, resp.headers.get("x-tokenwire-stream-id", ""))
        self._readers.add(reader)
        return reader

    async def attach(self, stream_id: str, *, last_event_id: str | None = None) -> TokenStreamReader:
        """Attach to a running or finished stream, from the start or from ``last_event_id``."""
        after = int(last_event_id.rpartition(":")[2]) if last_event_id else 0
        reader = TokenStreamReader(self, None, stream_id, after)
        if last_event_id:
            reader.epoch = last_event_id.split(":")[1]
        reader._response = await self._open_events(reader, last_event_id or None)
        if reader._response is None:
            reader._finished = True
        self._readers.add(reader)
        return reader

    async def cancel(self, stream_id: str) -> None:
        resp = await self._request("DELETE", f"/v1/streams/{stream_id}")
        body = await resp.body()
        resp.close()
        if resp.status != 204:
            raise _error_for(resp.status, body)

    async def _open_events(self, reader: TokenStreamReader, last_event_id: str | None) -> _Response | None:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        resp = await self._request("GET", f"/v1/streams/{reader.stream_id}/events", headers=headers)
        if resp.status == 200:
            return resp
        body = await resp.body()
        resp.close()
        if resp.status == 204:
            return None
        raise _error_for(resp.status, body)

    async def _reconnect(self, reader: TokenStreamReader) -> _Response | None:
        """Resume ``reader`` after a drop, with jittered exponential backoff; typed errors are final."""
        if not reader.stream_id or not reader.epoch:
            raise ConnectionFailed("the connection dropped before the stream was named; nothing to resume")
        resp = await with_backoff(
            lambda: self._open_events(reader, reader._resume_id),
            what=f"resume stream {reader.stream_id}",
            tries=self.max_retries + 1,
            initial=self.backoff_initial,
            cap=self.backoff_max,
            transient=(OSError, TimeoutError),
            transient_status=(502, 503, 504),
        )
        reader.reconnects += 1
        return resp
