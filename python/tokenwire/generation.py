"""The model seam: what a server asks of whatever generates tokens.

Two shapes, as model servers are written:

- a :class:`Generator` makes one token source per request (``generate(request)``): an async iterator (or a
  plain iterator, run in a worker thread) of text, each item one token or a list of tokens produced together.
  The hub drives it in a task of its own (:meth:`Hub.start <tokenwire.hub.Hub.start>`);
- an :class:`Engine` steps many streams together, as batching inference engines do: the server makes the
  stream and hands it over (``enqueue(request, stream)``); the engine calls ``stream.send`` and ends it.

The fake model implements both (:class:`~tokenwire.fake_model.FakeModel`,
:class:`~tokenwire.fake_model.FakeEngine`), and so does the OpenAI-compatible proxy
(:class:`tokenwire.proxy.UpstreamProxy`). ``tokenwire serve --model package.module:factory`` loads a user's
(:func:`load_generator`).

Optional members, read when present:

- on a generator or engine, ``token_bytes(request) -> int``: the most UTF-8 bytes one item may hold; with
  ``request.max_tokens`` the hub charges its memory cap up front, so a start that cannot fit is refused at once
  (``HubFull``, 503) instead of failing half-way; ``metrics``, an object with ``collect()`` that yields
  prometheus_client metric families (:class:`tokenwire.metrics.MetricsSource`): rendered on the ``/metrics`` of
  every server it drives, once per scrape (the proxy's ``tokenwire_upstream_*``);
- on a source, ``usage`` and ``finish_reason`` once exhausted (they go into the ``done`` frame);
  ``async open()``, awaited before the answer starts (an upstream's response headers, say): raising
  :class:`~tokenwire.errors.GenerationRefused` answers the request with that status and body and starts
  nothing; ``chunk_format = "openai"``: every item is one whole OpenAI ``chat.completion.chunk`` as JSON text
  (the stream is labelled ``format`` = ``openai-chunks`` and rendered as such, docs/proxy.md).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeGuard, runtime_checkable

from tokenwire.errors import TokenwireError

if TYPE_CHECKING:
    from tokenwire.hub import TokenStream

__all__ = [
    "Engine",
    "GenerationRequest",
    "Generator",
    "GeneratorLoadError",
    "TokenSource",
    "aiter_source",
    "is_engine",
    "load_generator",
]

#: One item of a source: a token, or tokens produced together (one decode step of a batch).
Item = str | Sequence[str]
#: What :meth:`Generator.generate` returns.
TokenSource = AsyncIterable[Item] | Iterable[Item]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A request to generate, as the endpoint that took it validated it."""

    #: The endpoint: ``create`` (``POST /v1/streams``), ``chat`` (``POST /v1/chat/completions``), or
    #: ``webtransport`` (a start request on a WebTransport session).
    route: Literal["create", "chat", "webtransport"]
    #: ``create``/``webtransport``: the ``prompt`` member; ``chat``: the messages' contents joined by newlines.
    prompt: str
    #: Checked against ``ServerConfig.max_tokens_limit`` (chat: ``max_completion_tokens`` or ``max_tokens``).
    max_tokens: int
    #: The request's JSON as received: a chat request's ``model``, ``messages``, ``tools``, ``temperature``...
    body: Mapping[str, Any]
    #: The id the stream gets (chosen before :meth:`Generator.generate` is called).
    stream_id: str
    #: Request headers with lower-case names (WebTransport: the session's CONNECT). Left out of the ``repr``: they
    #: may hold the client's ``Authorization``.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Who asked, when the server checks credentials (``ServerOptions.auth``); ``None`` otherwise.
    principal: str | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """A chat request's ``messages`` (``[]`` for the other routes)."""
        messages = self.body.get("messages")
        return list(messages) if isinstance(messages, list) else []


@runtime_checkable
class Generator(Protocol):
    """Makes one token source per request."""

    def generate(self, request: GenerationRequest) -> TokenSource: ...


@runtime_checkable
class Engine(Protocol):
    """Steps many streams together: the server makes each stream, the engine sends to it and ends it
    (``stream.finish`` / ``stream.fail``), and stops sending once ``stream.is_open`` is false (cancelled,
    abandoned)."""

    def enqueue(self, request: GenerationRequest, stream: TokenStream) -> None: ...


def is_engine(source: Generator | Engine) -> TypeGuard[Engine]:
    """Whether ``source`` is engine-style (it has ``enqueue``; a class with both is taken as an engine)."""
    return callable(getattr(source, "enqueue", None))


class _Threaded:
    """A plain iterator as an async one: each ``next()`` runs in the loop's default executor, so a model that
    blocks while it computes a token does not block the loop. ``usage``/``finish_reason`` are read through."""

    __slots__ = ("_it", "_source")

    def __init__(self, source: Iterable[Item]) -> None:
        self._source = source
        self._it: Iterator[Item] = iter(source)

    def __aiter__(self) -> _Threaded:
        return self

    async def __anext__(self) -> Item:
        item = await asyncio.to_thread(next, self._it, _END)
        if item is _END:
            raise StopAsyncIteration
        return item  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        if name in ("usage", "finish_reason"):
            return getattr(self._source, name, getattr(self._it, name, None))
        raise AttributeError(name)

    async def aclose(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            await asyncio.to_thread(close)


_END = object()


def aiter_source(source: TokenSource) -> AsyncIterable[Item]:
    """``source`` as an async iterable: as it is when it is one, else its items taken in a worker thread."""
    if isinstance(source, AsyncIterable):
        return source
    if isinstance(source, str | bytes) or not isinstance(source, Iterable):
        raise TypeError(f"a generator must return an iterator of text, got {type(source).__name__}")
    return _Threaded(source)


class GeneratorLoadError(TokenwireError):
    """``tokenwire serve --model package.module:factory`` could not make a generator (the message says what)."""


def load_generator(spec: str) -> Generator | Engine:
    """The generator ``spec`` names: ``package.module:name``, where ``name`` (dots for attributes) is a
    :class:`Generator` or :class:`Engine`, or a callable that takes no arguments and returns one (a class, a
    factory function). ``GeneratorLoadError`` says which step failed."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise GeneratorLoadError(f"--model takes package.module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the user module's: say which
        raise GeneratorLoadError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise GeneratorLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, type) or not isinstance(target, Generator | Engine):  # a class is a factory
        if not callable(target):
            raise GeneratorLoadError(f"{spec} is neither a generator nor a callable that makes one")
        try:
            target = target()
        except Exception as exc:  # the factory's own failure, with its type
            raise GeneratorLoadError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    if asyncio.iscoroutine(target):
        target.close()
        raise GeneratorLoadError(f"{spec} returned a coroutine: the factory must be a plain function")
    if not isinstance(target, Generator | Engine):
        raise GeneratorLoadError(
            f"{spec} made a {type(target).__name__}, which has neither generate(request) nor enqueue(request, stream)"
        )
    return target
