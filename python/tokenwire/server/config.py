"""Every limit and timing of the servers, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from tokenwire.protocol.http1 import HttpLimits

if TYPE_CHECKING:
    from tokenwire.auth import Authenticator
    from tokenwire.generation import Engine, Generator

__all__ = ["ServerConfig", "ServerOptions", "WebTransportLimits", "normalize_origin"]


@dataclass(frozen=True, slots=True)
class WebTransportLimits:
    """Limits of the WebTransport server (per process unless said otherwise)."""

    #: WebTransport sessions open at once, over every connection; more are refused with 429.
    max_sessions: int = 10_000
    #: Sessions one QUIC connection may open.
    max_sessions_per_connection: int = 16
    #: Request streams (pending or attached) one session may hold at once; more get a 503 error reply. A stream
    #: counts from the moment the client opens it (its WebTransport header), until the server has sent its end.
    max_streams_per_session: int = 256
    #: Largest request message body (a start request's JSON, prompt included); more is a 413 error reply.
    max_request_bytes: int = 1 << 20
    #: Bytes a token stream may have in QUIC's send buffer (unsent or unacknowledged) before the server stops
    #: pulling frames from the ring for it (the ring is the buffer).
    stream_buffer_high: int = 256 * 1024
    #: Streams of a session not established yet (its CONNECT not arrived, or held: 0-RTT, SETTINGS not in) that are
    #: held until it is, counted by stream however many packets carry them.
    max_early_streams: int = 16
    #: QUIC idle timeout: a connection that receives nothing for this long is dropped.
    idle_timeout: float = 60.0
    #: QUIC flow control windows the server grants its peer.
    max_stream_data: int = 1 << 20
    max_data: int = 16 << 20
    #: Session tickets kept for resumption and 0-RTT (each resumes once; the oldest go first), on both engines.
    #: 0: no tickets are sent, so no connection resumes and none sends 0-RTT early data.
    max_session_tickets: int = 10_000
    #: UDP socket buffers asked of the kernel (one socket carries every session; 0 keeps the default).
    socket_buffer_bytes: int = 4 << 20
    #: Unreliable datagram previews of new frames (docs/protocol.md §4.5), sent only to streams whose request
    #: asks for them. Off by default: they cost bytes and never replace the reliable stream.
    datagram_previews: bool = False
    #: Preview datagrams a connection keeps waiting from one flush to the next when it cannot send them
    #: (congestion-limited, dead path); the older ones are dropped, so the queue stays bounded.
    max_pending_previews: int = 64

    @property
    def quic_bidi_streams(self) -> int:
        """Bidirectional streams QUIC lets a client have open at once on one connection (the server's
        ``initial_max_streams_bidi``; one more is granted as each closes). Every request stream counts, and so
        does each session's CONNECT stream: room for one full session, the CONNECT stream of every session the
        connection may open, and the stream that gets the 503, so a session meets the documented per-session
        limit (a 503 error reply) before QUIC's stream credit (where opening a stream just waits)."""
        return self.max_streams_per_session + self.max_sessions_per_connection + 1


#: The WebTransport server's QUIC engines (:attr:`ServerConfig.wt_engine`).
WtEngine = Literal["aioquic", "native"]
WT_ENGINES: tuple[WtEngine, ...] = ("aioquic", "native")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    #: Bind with ``SO_REUSEPORT`` (TCP, and UDP for WebTransport), so that several processes share the port and
    #: the kernel spreads connections over them (``tokenwire serve --workers``).
    reuse_port: bool = False
    #: SSE ``retry:`` sent first on every stream: the client's reconnection delay.
    retry_ms: int = 1000
    #: A comment line on a stream that wrote nothing for this long keeps proxies from closing it.
    heartbeat_interval: float = 15.0
    #: Seconds a new connection may take to send its first complete request (slowloris guard).
    header_timeout: float = 10.0
    #: Seconds a keep-alive connection may sit idle between requests.
    idle_timeout: float = 60.0
    #: A stream connection whose client has not read for this long is closed; it resumes later.
    stall_timeout: float = 30.0
    #: Per-connection kernel-side backlog we accept before pausing (transport high-water mark).
    write_buffer_high: int = 64 * 1024
    max_connections: int = 20_000
    #: 0: flush at the next loop iteration. >0: wait up to this long to coalesce more tokens per write.
    max_delay_ms: float = 0.0
    #: With ``max_delay_ms`` 0: a connection marked this long ago is flushed at the next mark (inside the
    #: producer's step) instead of waiting for the next loop iteration; 0 turns the bound off.
    flush_max_wait_ms: float = 0.05
    #: Largest ``max_tokens`` a request may ask for.
    max_tokens_limit: int = 100_000
    #: Seconds shutdown waits for open streams to finish before closing their connections.
    drain_timeout: float = 10.0
    #: ``Idempotency-Key`` values remembered (each as long as its stream is in the hub); the oldest go first.
    max_idempotency_keys: int = 10_000
    #: CORS, off by default: the origins (``https://app.example``, or ``*`` for any) whose pages may call the
    #: endpoints. Preflights (``OPTIONS``) are answered for them, and every answer to them carries
    #: ``Access-Control-Allow-Origin`` and exposes ``X-Tokenwire-Stream-Id``, ``X-Tokenwire-Epoch`` and
    #: ``Location`` (docs/protocol.md §7.4).
    allow_origins: tuple[str, ...] = ()
    http: HttpLimits = field(default_factory=HttpLimits)
    webtransport: WebTransportLimits = field(default_factory=WebTransportLimits)
    #: The QUIC engine of the WebTransport server (:func:`tokenwire.server.webtransport_server`): ``"native"``
    #: (the default: quinn-proto in the Rust extension, driven in batches) or ``"aioquic"`` (pure Python, the
    #: reference; webtransport-go 0.12+ clients need it); docs/protocol.md §3.2 says what differs.
    wt_engine: WtEngine = "native"

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_origins", tuple(normalize_origin(o) for o in self.allow_origins))
        if self.wt_engine not in WT_ENGINES:
            raise ValueError(f"wt_engine is one of {', '.join(WT_ENGINES)}, got {self.wt_engine!r}")


@dataclass(slots=True)
class ServerOptions:
    """Everything a server of a hub is given besides the hub: the one argument of :class:`~tokenwire.server.SseServer`,
    :class:`~tokenwire.server.WebTransportServer` and :class:`~tokenwire.asgi.TokenwireASGI` (each also takes a
    bare :class:`ServerConfig` as shorthand for ``ServerOptions(config)``). Several servers of one process share
    one (``tokenwire serve``: the SSE and the WebTransport server)."""

    #: Limits and timings.
    config: ServerConfig = field(default_factory=lambda: ServerConfig())
    #: What generates the tokens of the streams requests start: a :class:`~tokenwire.generation.Generator` (one
    #: source per request) or an :class:`~tokenwire.generation.Engine` (many streams per step). ``None``: a
    #: :class:`~tokenwire.fake_model.FakeModel` with its defaults. The servers never close it: its owner does.
    generator: Generator | Engine | None = None
    #: Who may call the endpoints (:mod:`tokenwire.auth`: an :class:`~tokenwire.auth.ApiKeys`, or any callable of
    #: an :class:`~tokenwire.auth.AuthRequest` returning the principal or ``None``, sync or async); ``None``:
    #: anyone. Asked on every ``/v1`` request and WebTransport session (docs/protocol.md §8).
    auth: Authenticator | None = None

    @classmethod
    def of(cls, options: ServerOptions | ServerConfig | None) -> ServerOptions:
        """``options`` as a :class:`ServerOptions` (a bare config: with the other fields at their defaults)."""
        if isinstance(options, ServerOptions):
            return options
        return cls(config=options or ServerConfig())


def normalize_origin(origin: str) -> str:
    """``origin`` as a browser sends it in ``Origin`` (``scheme://host[:port]``: lower case, no default port, no
    path or trailing slash), or ``*``; ``ValueError`` for anything else."""
    text = origin.strip()
    if text == "*":
        return text
    parts = urlsplit(text.lower())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == -1
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise ValueError(f"an allowed origin is scheme://host[:port] or *, got {origin!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")
