"""A resumable proxy to an OpenAI-compatible upstream (vLLM, llama.cpp's server, SGLang, a hosted API).

:class:`UpstreamProxy` is a generator (:mod:`tokenwire.generation`): each request becomes one streamed
``POST {url}/chat/completions`` to the upstream, whose chunks go into the hub once, as received, so any number
of client reconnects (SSE or WebTransport) resume from the ring and the upstream is called exactly once::

    proxy = UpstreamProxy(UpstreamOptions("http://127.0.0.1:9000/v1", api_key=os.environ["UPSTREAM_KEY"]))
    server = SseServer(options=ServerOptions(generator=proxy))
    ...
    await proxy.aclose()

``tokenwire serve --upstream URL`` does just this (docs/proxy.md).

- The request: a chat request's JSON as received, with ``stream: true`` (a ``stream: false`` request also gets
  ``stream_options.include_usage``, so its one ``chat.completion`` has usage, as OpenAI answers) and without
  tokenwire's own members (:data:`TOKENWIRE_MEMBERS`). ``POST /v1/streams`` and WebTransport starts become
  ``messages: [{"role": "user", "content": prompt}]`` with their ``max_tokens``.
- Before the answer starts (the source's ``open()``), a non-2xx upstream answer refuses the request with the
  same status, body and content type (:class:`~tokenwire.errors.GenerationRefused`); an upstream that cannot be
  reached is 502 (``upstream_error``), one that does not answer in time 504 (``upstream_timeout``).
- Then every ``data:`` payload but ``[DONE]`` is one item, verbatim (parsed with the Rust SSE decoder); the
  stream ends at ``[DONE]`` with the finish reason and usage the chunks carried. A cut, a malformed stream, an
  error payload, or no chunk within a timeout raises :class:`~tokenwire.errors.UpstreamError`: the stream ends
  with an ``error`` event (code ``upstream_error`` / ``upstream_timeout``).
- Cancelling the stream (``DELETE``, abandonment, shutdown) closes the upstream response, so the upstream sees
  the disconnect and stops generating; a client that only disconnects does not reach it.
- Credentials: the proxy's own key (``api_key``) or, with ``pass_authorization``, the client's
  ``Authorization`` header; never logged, never in an error message.

HTTP: one aiohttp ``ClientSession`` per proxy, its connection pool bounded by ``max_connections`` (requests
beyond it wait for a connection, within the first-token timeout). aiohttp is an optional dependency:
``pip install 'tokenwire[proxy]'``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from tokenwire import _core
from tokenwire.errors import GenerationRefused, RemoteProtocolError, UpstreamError
from tokenwire.protocol.openai import chunk_error, chunk_finish_reason, chunk_usage, may_end, parse_chunk

if TYPE_CHECKING:
    from tokenwire.generation import GenerationRequest

try:
    import aiohttp
except ImportError as exc:  # pragma: no cover - the test environment has it
    raise ImportError(
        "tokenwire's upstream proxy needs aiohttp, an optional dependency: pip install 'tokenwire[proxy]'"
    ) from exc

__all__ = ["TOKENWIRE_MEMBERS", "UpstreamOptions", "UpstreamProxy"]

log = logging.getLogger("tokenwire.proxy")

#: Members of a request body that are tokenwire's own (a caller-chosen stream id, the fake model's knobs): they
#: are not sent upstream, where an OpenAI server would refuse them as unknown.
TOKENWIRE_MEMBERS = frozenset({"stream_id", "idempotency_key", "ttft", "tokens_per_s", "stamp"})
#: Members of a ``POST /v1/streams`` / WebTransport start passed on as they are.
_START_MEMBERS = ("model", "temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty", "user")
#: The most bytes of a refusal's body (non-2xx) read and passed on.
MAX_ERROR_BODY = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """Where the upstream is and how to talk to it."""

    #: The base URL an OpenAI SDK takes, e.g. ``http://127.0.0.1:9000/v1`` (requests go to
    #: ``{url}/chat/completions``).
    url: str
    #: Sent as ``Authorization: Bearer {api_key}`` on every upstream request (``None``: none, or the client's).
    api_key: str | None = dataclasses.field(default=None, repr=False)
    #: Without ``api_key``: forward the client's own ``Authorization`` header upstream.
    pass_authorization: bool = False
    #: The ``model`` of requests that name none (``POST /v1/streams``, WebTransport; chat requests without one).
    model: str | None = None
    #: Seconds to open a TCP (and TLS) connection to the upstream.
    connect_timeout: float | None = 10.0
    #: Seconds from sending the request to the first chunk (response headers included; a wait for a free pooled
    #: connection too).
    first_token_timeout: float | None = 60.0
    #: Seconds between two reads of the stream once it has started.
    token_timeout: float | None = 60.0
    #: Upstream connections open at once, at most (the pool's bound).
    max_connections: int = 1000
    #: The longest ``data:`` payload taken from the upstream (bytes).
    max_event_bytes: int = _core.DEFAULT_MAX_EVENT_BYTES

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port]/base, got {_safe_url(self.url)!r}")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        for name in ("connect_timeout", "first_token_timeout", "token_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds (or None: no limit)")

    @property
    def completions_url(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"


def _safe_url(url: str) -> str:
    """``url`` without credentials in it (``user:password@``), for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": code, "param": None, "code": code}}).encode()


class UpstreamProxy:
    """A :class:`~tokenwire.generation.Generator` whose tokens are an OpenAI-compatible upstream's chunks (see
    the module docstring). Close it when done (``await proxy.aclose()``, or ``async with``): its connection pool
    is its own."""

    def __init__(self, options: UpstreamOptions | str) -> None:
        self.options = UpstreamOptions(options) if isinstance(options, str) else options
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        #: Upstream requests made, and refused (non-2xx, unreachable).
        self.counters = {"requests": 0, "refused": 0, "failed": 0}

    def __repr__(self) -> str:
        return f"UpstreamProxy({self.url!r})"

    @property
    def url(self) -> str:
        """The upstream's base URL, without any credentials it holds (for logs and banners)."""
        return _safe_url(self.options.url)

    def generate(self, request: GenerationRequest) -> UpstreamSource:
        """The source of one request (nothing is sent before its ``open()`` or first read)."""
        return UpstreamSource(self, request)

    def session(self) -> aiohttp.ClientSession:
        """The proxy's HTTP session, made on first use (in the running loop)."""
        if self._closed:
            raise RuntimeError("this UpstreamProxy is closed")
        if self._session is None or self._session.closed:
            opts = self.options
            connector = aiohttp.TCPConnector(limit=opts.max_connections, limit_per_host=0, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=opts.connect_timeout),
                auto_decompress=False,  # the request asks for no encoding; bytes pass as they come
                raise_for_status=False,
            )
        return self._session

    def upstream_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON sent upstream for ``request`` (see the module docstring)."""
        opts = self.options
        if request.route == "chat":
            body = {k: v for k, v in request.body.items() if k not in TOKENWIRE_MEMBERS}
            if not body.get("stream"):  # answered as one chat.completion: with usage, as OpenAI answers
                options = body.get("stream_options")
                body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            body["stream"] = True
        else:
            body = {k: request.body[k] for k in _START_MEMBERS if request.body.get(k) is not None}
            body["messages"] = [{"role": "user", "content": request.prompt}]
            body["max_tokens"] = request.max_tokens
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if "model" not in body and opts.model is not None:
            body["model"] = opts.model
        return body

    def upstream_headers(self, request: GenerationRequest) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", "Accept-Encoding": "identity"}
        if self.options.api_key:
            headers["Authorization"] = f"Bearer {self.options.api_key}"
        elif self.options.pass_authorization and (client := request.headers.get("authorization")):
            headers["Authorization"] = client
        return headers

    async def aclose(self) -> None:
        """Close the connection pool (open upstream responses are closed with it)."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class UpstreamSource:
    """One upstream request: ``open()``, then an async iterator of raw chunk JSON texts (an item is a list when
    one read brought several). ``finish_reason`` and ``usage`` are those the chunks carried."""

    chunk_format: Literal["openai"] = "openai"

    def __init__(self, proxy: UpstreamProxy, request: GenerationRequest) -> None:
        self._proxy = proxy
        self._request = request
        self._response: aiohttp.ClientResponse | None = None
        self._decoder = _core.SseDecoder(proxy.options.max_event_bytes)
        self._first_deadline = 0.0
        self._started = False  # a chunk has been returned
        self._done = False  # [DONE] seen
        self._closed = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.chunks = 0

    # -- the request ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Send the request and wait for the response headers. ``GenerationRefused``: the upstream answered
        non-2xx (its status, body and content type), cannot be reached (502) or did not answer in time (504)."""
        if self._response is not None or self._closed:
            return
        proxy = self._proxy
        opts = proxy.options
        url = opts.completions_url
        loop = asyncio.get_running_loop()
        first = opts.first_token_timeout
        self._first_deadline = loop.time() + first if first is not None else float("inf")
        data = json.dumps(proxy.upstream_body(self._request), ensure_ascii=False).encode("utf-8", "surrogatepass")
        proxy.counters["requests"] += 1
        where = f"the upstream at {_safe_url(url)}"
        try:
            async with asyncio.timeout(first):
                response = await proxy.session().post(url, data=data, headers=proxy.upstream_headers(self._request))
        except aiohttp.ConnectionTimeoutError:
            raise self._refuse(504, f"connecting to {where} timed out", "upstream_timeout") from None
        except TimeoutError:
            raise self._refuse(504, f"{where} sent no answer in {first} s", "upstream_timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._refuse(502, f"{where} cannot be reached: {exc}", "upstream_error") from None
        except RuntimeError as exc:  # the proxy was closed
            raise self._refuse(503, str(exc), "upstream_error") from None
        if not 200 <= response.status < 300:
            try:
                async with asyncio.timeout(first):
                    body = await response.content.read(MAX_ERROR_BODY)
            except (TimeoutError, aiohttp.ClientError, OSError):
                body = b""
            finally:
                response.close()
            proxy.counters["refused"] += 1
            content_type = response.headers.get("Content-Type", "application/json")
            log.info("upstream %s refused a request: %d", _safe_url(url), response.status)
            raise GenerationRefused(response.status, body, content_type)
        media = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if media != "text/event-stream":
            response.close()
            what = media or "no content type"
            raise self._refuse(502, f"{where} answered {what}, not an event stream", "upstream_error")
        self._response = response
        log.debug("upstream %s answered %d, streaming", _safe_url(url), response.status)

    def _refuse(self, status: int, message: str, code: str) -> GenerationRefused:
        self._proxy.counters["refused"] += 1
        log.warning("%s", message)
        return GenerationRefused(status, _error_body(message, code))

    # -- the chunks ----------------------------------------------------------------------------------------

    def __aiter__(self) -> UpstreamSource:
        return self

    async def __anext__(self) -> str | list[str]:
        response = self._response
        if response is None and not self._closed:
            try:
                await self.open()  # a caller that did not open first: a refusal fails the stream
            except GenerationRefused as exc:
                raise UpstreamError("upstream_error", f"the upstream answered {exc.status}: {exc}") from None
            response = self._response
        while response is not None and not self._done:
            data = await self._read(response)
            if not data:
                return self._at_eof()
            try:
                events = self._decoder.feed(data)
            except RemoteProtocolError as exc:
                raise self._failed("upstream_error", f"the upstream's event stream is malformed: {exc}") from None
            items = self._take(events) if events else None
            if items:
                self._started = True
                self.chunks += len(items)
                return items[0] if len(items) == 1 else items
        raise StopAsyncIteration

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        if self._started:
            within = self._proxy.options.token_timeout
        else:
            within = self._first_deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(within):
                return await response.content.readany()
        except TimeoutError:
            what = "a chunk" if self._started else "the first chunk"
            limit = self._proxy.options.token_timeout if self._started else self._proxy.options.first_token_timeout
            raise self._failed("upstream_timeout", f"the upstream sent no {what} within {limit} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise self._failed("upstream_error", f"the upstream connection failed mid-stream: {exc!r}") from None

    def _at_eof(self) -> str | list[str]:
        """The response ended without ``[DONE]``: fine after a finish reason (some servers send no ``[DONE]``),
        a cut otherwise."""
        if self.finish_reason is not None:
            self._done = True
            raise StopAsyncIteration
        raise self._failed("upstream_error", "the upstream closed the stream before it finished (no [DONE])")

    def _take(self, events: list[tuple[str, str, str]]) -> list[str]:
        """The chunks among ``events``; ``[DONE]`` ends the stream (what follows it is not read)."""
        items: list[str] = []
        for _, kind, data in events:
            if data == "[DONE]":
                self._done = True
                break
            if kind == "error":
                raise self._failed("upstream_error", f"the upstream sent an error event: {data[:500]}")
            if kind != "message" or not data:
                continue
            if may_end(data):
                self._end_fields(data)
            items.append(data)
        return items

    def _end_fields(self, data: str) -> None:
        try:
            chunk = parse_chunk(data)
        except RemoteProtocolError as exc:
            raise self._failed("upstream_error", str(exc)) from None
        if (error := chunk_error(chunk)) is not None:
            message = error.get("message") or json.dumps(error)[:500]
            raise self._failed("upstream_error", f"the upstream failed mid-stream: {message}")
        if (reason := chunk_finish_reason(chunk)) is not None:
            self.finish_reason = reason
        if (usage := chunk_usage(chunk)) is not None:
            self.usage = usage

    def _failed(self, code: str, message: str) -> UpstreamError:
        self._proxy.counters["failed"] += 1
        log.warning("upstream stream failed after %d chunks: %s", self.chunks, message)
        return UpstreamError(code, message)

    # -- the end -------------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the upstream response: after ``[DONE]`` its connection goes back to the pool; before (a
        cancel, an abandonment, a failure) the connection is closed, so the upstream sees the disconnect."""
        self._closed = True
        response, self._response = self._response, None
        if response is None:
            return
        if self._done:
            response.release()
        else:
            response.close()
