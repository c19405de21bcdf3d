"""Typed surface of the Rust extension ``tokenwire._core``. Users import from ``tokenwire``, not here."""

from collections.abc import Sequence
from typing import Final, Literal, Self, TypeAlias, final

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

    def __new__(cls, id_prefix: str = "", *, max_frames: int = ..., max_bytes: int = ...) -> Self:
        """Defaults: 65,536 frames, 8 MiB of payload."""
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
        max_frames_per_stream: int = ...,
        max_bytes_per_stream: int = ...,
        max_total_bytes: int = ...,
        ttl: float = ...,
    ) -> Self:
        """Defaults: 65,536 frames and 8 MiB per stream, 1 GiB in all, ended streams kept 300 s."""
    def create(
        self,
        key: str,
        id_prefix: str,
        frames: int = 0,
        frame_bytes: int = 0,
        *,
        first_seq: int = 1,
        tracked: bool = False,
    ) -> int:
        """Register an open stream. ``HubFull`` if open streams hold the memory cap.

        ``frames`` > 0: the stream will carry at most ``frames`` frames of at most ``frame_bytes`` bytes (and
        its final frame); while open it is charged the most its ring can hold by then, and refused with
        ``HubFull`` at once if that does not fit below the cap. Its end gives the unused part back.
        ``first_seq``: the seq its first frame gets (a copy of another node's stream starts where the copied
        history does). ``tracked``: appends and the end put it on the :meth:`take_dirty` list.
        """

    def take_dirty(self) -> list[int]:
        """Tracked streams appended to or ended since the last call, each once, in first-append order."""

    def lookup(self, key: str) -> int | None: ...
    def append(self, handle: int, text: str) -> int:
        """Append one token; returns its seq. ``StreamClosed`` once the stream ended."""

    def append_many(self, handle: int, texts: Sequence[str]) -> int:
        """Append tokens; returns the last seq."""

    def end(self, handle: int, kind: int, payload: str, state: int, now: float) -> int:
        """Append the final ``FRAME_DONE``/``FRAME_ERROR`` frame and set the state; returns its seq."""

    def since(self, handle: int, after: int, wire: int = ...) -> bytes: ...
    def poll(self, handle: int, after: int, wire: int = ...) -> tuple[bytes, int, bool]:
        """One call per flush: ``(frames after `after` in `wire` format or b"", last_seq, ended)``."""

    def frames_since(self, handle: int, after: int) -> list[tuple[int, int, str]]: ...
    def last_seq(self, handle: int) -> int: ...
    def oldest_seq(self, handle: int) -> int: ...
    def bytes_after(self, handle: int, after: int) -> int:
        """Payload bytes held after seq ``after``: how far a reader there is behind, in bytes."""
    def state(self, handle: int) -> int: ...
    def key(self, handle: int) -> str: ...
    def remove(self, handle: int) -> str:
        """Drop a stream now; returns its key."""

    def sweep(self, now: float) -> list[str]:
        """Remove ended streams past their time-to-live; returns keys removed since the last sweep."""

    @property
    def memory_bytes(self) -> int: ...
    def __len__(self) -> int: ...

# -- SSE client side (rust/sse_parse.rs, rust/tracker.rs) -------------------------------------------------

DEFAULT_MAX_EVENT_BYTES: Final[int]
"""1 MiB + 4 KiB: the longest line or event data an :class:`SseDecoder`/:class:`StreamTracker` accepts."""

def fnv1a64(text: str) -> int:
    """FNV-1a 64 of ``text``'s UTF-8 bytes. Hashing the concatenation of tokens gives
    :attr:`StreamTracker.content_hash` (tokens in seq order, stamps removed, CR/CRLF as LF as SSE delivers)."""

@final
class SseDecoder:
    """Incremental WHATWG SSE parser ("Interpreting an event stream"): feed response bytes in any split.

    UTF-8 is decoded lossily (U+FFFD), one leading BOM is dropped, CRLF/LF/CR end lines (also a CR and LF
    split across chunks). ``id`` persists across events and is ignored if it holds NUL; ``retry`` needs
    ASCII digits. A line or event data over ``max_event_bytes`` raises ``RemoteProtocolError``; events
    completed before it in the same ``feed`` are returned first, and the decoder stays failed.
    """

    def __new__(cls, max_event_bytes: int = ...) -> Self: ...
    def feed(self, data: bytes) -> list[tuple[str, str, str]]:
        """Events completed by ``data``, as ``(last_event_id, event_type, data)``; the type defaults to
        ``"message"``."""

    def close(self) -> None:
        """End of the stream: an incomplete event is discarded (as the specification says). Raises the
        decoder's error if it failed; a later ``feed`` raises ``LocalProtocolError``."""

    @property
    def retry(self) -> int | None:
        """Reconnection time (ms) from the last valid ``retry`` field, ``None`` if none."""

    @property
    def last_event_id(self) -> str:
        """The last event id buffer (``""`` until an ``id`` field sets it)."""

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line and event held back."""

@final
class LagHistogram:
    """Log-linear (HDR-style) histogram of lags in µs: exact below 32 µs, then 32 buckets per power of two
    up to 134 s (values reported within 1.6 %; larger values share the top bucket, ``max`` stays exact).
    Fixed memory: 5.9 KiB, allocated at the first record. Not for sharing between threads."""

    def __new__(cls) -> Self: ...
    def record(self, lag_us: int) -> None: ...
    def merge(self, other: LagHistogram) -> None:
        """Add every value recorded in ``other`` (e.g. ``total.merge(tracker.lag)`` per stream)."""

    def percentiles(self, percentiles: Sequence[float]) -> list[float]:
        """The value at each percentile (0-100) in seconds; ``nan`` each if nothing was recorded.
        ``ValueError`` for a percentile outside 0-100. Percentile 0 and 100 are the exact min and max."""

    @property
    def count(self) -> int: ...
    @property
    def max(self) -> float:
        """Largest value in seconds (``nan`` if none)."""

    @property
    def mean(self) -> float:
        """Mean in seconds (``nan`` if none)."""

@final
class StreamTracker:
    """Load-test fast path: exactly-once and lag accounting of ONE tokenwire SSE stream, parsed in Rust.

    Feed it the raw response bytes in any split. ``token``/``done``/``error`` events carry id
    ``{stream_id}:{epoch}:{seq}``: a frame with seq <= ``last_seq`` counts as a duplicate (not delivered);
    seq > ``last_seq + 1`` adds the difference to ``lost``; then ``last_seq = seq``. ``stream`` events change
    no count (the first one only sets ``last_event_id`` before any frame); other events are ignored.
    Token text is not kept: ``content_hash`` is a running :func:`fnv1a64` of it.

    Stamps: a token ending with U+2063 and 1-20 digits (production time, µs since the Unix epoch) is
    hashed without that suffix, and if ``now_us > 0`` its lag ``now_us - stamp`` (0 if negative) is
    recorded in ``lag``: a histogram of its own, or the one passed in (one shared by many trackers).

    After a dropped connection, call :meth:`new_response` and feed the resumed response to the same tracker.
    A malformed id or an oversized line/event raises ``RemoteProtocolError``; counts include every event
    before it, and the tracker raises again on each ``feed`` until :meth:`new_response`.
    """

    def __new__(cls, *, max_event_bytes: int = ..., lag: LagHistogram | None = None) -> Self: ...
    def feed(self, data: bytes, now_us: int = 0) -> int:
        """Parse ``data``; returns the number of new (non-duplicate) tokens in it. ``now_us`` is the
        current time in µs since the Unix epoch (``0``: don't time)."""

    def new_response(self) -> None:
        """A new (resumed) response body follows: drop the previous one's incomplete event and any parse
        error; keep every count, ``last_seq`` and ``last_event_id``."""

    def lag_percentiles(self, percentiles: Sequence[float]) -> list[float]:
        """``self.lag.percentiles(percentiles)``: seconds, ``nan`` if no lag was recorded."""

    @property
    def lag(self) -> LagHistogram:
        """The histogram lags are recorded in (shared if one was passed to the constructor). Assigning another
        one sends the lags of later feeds there (the load tester's per-interval histograms); the lags already
        recorded stay in the old one."""

    @lag.setter
    def lag(self, value: LagHistogram) -> None: ...
    @property
    def tokens(self) -> int:
        """Tokens accepted, each once, in order."""

    @property
    def duplicates(self) -> int:
        """Frames (tokens and final events) with a seq at or below the last accepted one."""

    @property
    def lost(self) -> int:
        """Frames skipped by gaps in the seqs."""

    @property
    def last_seq(self) -> int: ...
    @property
    def last_event_id(self) -> str:
        """Id of the last accepted frame (or the first ``stream`` event's): the ``Last-Event-ID`` to resume
        with; ``""`` before any."""

    @property
    def done(self) -> bool: ...
    @property
    def done_data(self) -> str | None:
        """JSON data of the ``done`` event."""

    @property
    def error(self) -> str | None:
        """JSON data of the ``error`` event."""

    @property
    def content_hash(self) -> int:
        """FNV-1a 64 of the accepted tokens' text in seq order (stamps removed)."""

    @property
    def lag_count(self) -> int:
        """Tokens of this stream whose lag was recorded."""

    @property
    def first_token_at_us(self) -> int | None:
        """``now_us`` of the feed that delivered the first token (feeds with ``now_us > 0`` only)."""

    @property
    def retry(self) -> int | None:
        """Reconnection time (ms) from the response's ``retry`` field, ``None`` if none."""

FLUSH_OK: Final[int]
"""``QuicEngine.flush`` status 0: every frame after ``after`` went out (or nothing was new)."""
FLUSH_ENDED: Final[int]
"""Status 1: the final frame went out and the stream got its FIN (the engine sends whatever QUIC flow control
still holds back, then the FIN)."""
FLUSH_PAUSED: Final[int]
"""Status 2: the stream could not take it all; the rest waits in the engine, ``("writable", ...)`` comes."""
FLUSH_EXPIRED: Final[int]
"""Status 3: ``after`` is older than the oldest frame the ring holds."""
FLUSH_GONE: Final[int]
"""Status 4: no such registry handle, or ``after`` is beyond its last frame."""
FLUSH_STREAM_CLOSED: Final[int]
"""Status 5: the connection or the stream is closed."""

QuicHeaders: TypeAlias = list[tuple[bytes, bytes]]
QuicEvent: TypeAlias = (
    tuple[Literal["connected"], int, str, int]
    | tuple[Literal["handshake"], int]
    | tuple[Literal["settings"], int, dict[int, int]]
    | tuple[Literal["headers"], int, int, QuicHeaders, bool]
    | tuple[Literal["data"], int, int, bytes, bool]
    | tuple[Literal["wt_stream"], int, int, int, bytes, bool]
    | tuple[Literal["datagram"], int, int, bytes]
    | tuple[Literal["goaway"], int, int]
    | tuple[Literal["reset"], int, int, int]
    | tuple[Literal["stop_sending"], int, int, int]
    | tuple[Literal["writable"], int, int]
    | tuple[Literal["closed"], int, int, str]
)
"""An event of ``QuicEngine.poll_io``; the first item names it, the second is the connection id."""

@final
class QuicEngine:
    """The native QUIC + HTTP/3 engine: one UDP socket (bound and owned here), a quinn-proto endpoint and its
    connections. Nothing blocks and no thread runs: an event loop watches ``fileno()`` for readability and one
    timer at ``next_timeout()``, and calls ``poll_io()`` on either. Connection ids are ints this engine gives
    (never reused); stream ids are QUIC's.

    Events (``poll_io``): ``("connected", conn, peer_host, peer_port)`` (server: a new connection; client: its
    handshake completed), ``("handshake", conn)`` (server: handshake completed), ``("settings", conn, dict)``
    (the peer's HTTP/3 SETTINGS), ``("headers", conn, stream_id, headers, fin)``, ``("data", conn, stream_id,
    bytes, fin)`` (DATA payload of a request stream; capsules on a CONNECT), ``("wt_stream", conn, stream_id,
    session_id, bytes, fin)`` (the first one of a stream opens it), ``("datagram", conn, session_id, bytes)``,
    ``("goaway", conn, id)``, ``("reset", conn, stream_id, code)``, ``("stop_sending", conn, stream_id, code)``,
    ``("writable", conn, stream_id)`` (a blocked stream can take more) and ``("closed", conn, code, reason)``
    (the last event of a connection; an HTTP/3 error of the peer closes it with that code).

    Errors: a bad setup raises ``LocalProtocolError`` (or ``OSError`` for the socket); a call on a gone
    connection or closed stream raises ``StreamClosed``; ``open_bidi`` past the peer's stream limit raises
    ``BlockingIOError``.
    """

    def __new__(
        cls,
        *,
        server: bool,
        host: str,
        port: int,
        h3_settings: dict[int, int],
        cert_chain_pem: bytes | None = None,
        key_pem: bytes | None = None,
        server_cert_hashes: Sequence[bytes] | None = None,
        ca_pem: bytes | None = None,
        alpn: Sequence[bytes] | None = None,
        idle_timeout: float = 30.0,
        keepalive: float | None = None,
        ack_frequency: tuple[int, float] | None = None,
        max_bidi_streams: int = 1024,
        stream_window: int = 1048576,
        conn_window: int = 16777216,
        session_tickets: int = 10000,
        early_data: bool = True,
        stream_send_window: int | None = None,
        max_pending_datagrams: int | None = None,
        reuse_port: bool = False,
        socket_buffer: int = 4194304,
        endpoint_key: bytes | None = None,
    ) -> Self:
        """Bind ``host:port`` (0: a free port). A server needs ``cert_chain_pem`` and ``key_pem``; a client
        trusts the server by the SHA-256 of its certificate's DER (``server_cert_hashes``, as a browser's
        ``serverCertificateHashes``) or by a CA bundle (``ca_pem``, with the server name checked).
        ``h3_settings``: every HTTP/3 setting announced, in order. ``alpn`` defaults to ``[b"h3"]``.
        ``keepalive``: seconds between PINGs when idle. ``ack_frequency``: ``(threshold, max_delay)`` asked of a
        peer that supports the ACK frequency extension (quinn, so the native client): an ACK after more than
        ``threshold`` ack-eliciting packets or ``max_delay`` seconds; fewer ACKs to read, slower loss detection.
        quinn caps the delay at the path's round trip (at least 25 ms), so on loopback it changes little.

        Resumption and 0-RTT. Server: ``session_tickets`` sessions are kept in memory (the oldest go first), one
        ticket is sent per connection, and each resumes once (a replayed first flight finds it gone); a resumed
        connection's 0-RTT streams are reported before its ``("handshake", conn)``: act on none of them before
        it (only the handshake proves the flight is not a replay). 0: no tickets, no resumption, no 0-RTT.
        Client: tickets are kept per server name (256 names, the newest 8 each) and a connection resumes with
        one; with ``early_data`` a resumed connection may open streams and send on them before its
        ``("connected", ...)`` (see ``early_data()``).

        ``stream_send_window``: bytes each open WebTransport stream this end sends on may leave unacknowledged
        (unsent or in flight), pooled per connection (the connection's send window is this times its open
        WebTransport send streams, at least once): a peer that stops acknowledging blocks the writes there
        (``send_data`` takes less, a flush says ``FLUSH_PAUSED``) until its ACKs free room (``writable``).
        ``None``: the send window is ``conn_window``. ``max_pending_datagrams``: datagrams a connection keeps
        waiting to be sent, counted (see ``trim_datagrams``); ``None``: quinn's own queue, bounded in bytes only,
        which drops the oldest silently. ``reuse_port``: bind with ``SO_REUSEPORT``, sharing the port with other
        processes' sockets bound so (``tokenwire serve --workers N``; the kernel spreads datagrams over them by
        their 4-tuple). ``socket_buffer``: the UDP receive and send buffer sizes asked of the kernel (it caps them
        at ``net.core.rmem_max``/``wmem_max``; 0: its defaults). ``endpoint_key``: a secret (at least 16 bytes)
        the servers of one deployment share: their stateless reset tokens and connection-id checks agree, so a
        server that receives a packet of a connection another one holds answers with a stateless reset that
        client accepts, and it reconnects at once rather than at its idle timeout. Only where packets are
        routed by connection id (RFC 9000 §21.11: where an attacker can steer a packet to another instance, by
        changing its address or port, a shared key hands out valid reset tokens); ``tokenwire serve --workers``
        spreads packets by address, so it does not set one. ``None``: a random one of this engine's own."""
    def fileno(self) -> int:
        """The UDP socket's descriptor, for the event loop's reader."""
    @property
    def local_address(self) -> tuple[str, int]: ...
    def poll_io(self) -> list[QuicEvent]:
        """One wake-up: drain the socket (recvmmsg batches), run due timers, advance HTTP/3, send every
        packet; all events of the batch, in order."""
    def next_timeout(self) -> float | None:
        """Seconds until the engine's next deadline (0 if past; ``None``: nothing pending)."""
    def send_headers(self, conn: int, stream_id: int, headers: Sequence[tuple[bytes, bytes]], fin: bool) -> None:
        """A HEADERS frame (QPACK, static table) on a request stream."""
    def send_data(self, conn: int, stream_id: int, data: bytes, fin: bool) -> int:
        """Bytes accepted: a request stream takes them all as a DATA frame (queued if need be); a WebTransport
        stream takes what QUIC flow control allows, raw; fewer than ``len(data)``: wait for ``writable``."""
    def reset_stream(self, conn: int, stream_id: int, code: int) -> None: ...
    def stop_sending(self, conn: int, stream_id: int, code: int) -> None: ...
    @property
    def flushed_bytes(self) -> int:
        """Bytes every ``flush`` has written into streams (prefixes and frames), since the start."""
    def peer_address(self, conn: int) -> tuple[str, int]:
        """The address connection ``conn`` sends to now (its active path: after a migration, the new one)."""
    def send_datagram(self, conn: int, session_id: int, payload: bytes) -> bool:
        """An HTTP/3 datagram of the session; ``False`` if QUIC refused it (too large, datagrams off)."""
    def trim_datagrams(self) -> int:
        """With ``max_pending_datagrams``: every connection keeps at most that many datagrams pending, dropping the
        oldest that wait in the engine (those quinn's queue already holds it cannot give back: only the ones the
        flush that met a full congestion window handed over, at most ``max_pending_datagrams``). Returns the
        datagrams dropped since the last call. A server calls it once per flush, before the flush's new ones."""
    def pending_datagrams(self, conn: int) -> int:
        """Datagrams of ``conn`` not sent yet, in the engine or in quinn's queue (0 without
        ``max_pending_datagrams``)."""
    def close(self, conn: int, code: int, reason: bytes) -> None:
        """Close a connection; its ``closed`` event comes with the next ``poll_io``. A closing connection sends
        nothing but its CONNECTION_CLOSE: ``transmit()`` first what must go out before (stream resets)."""
    def close_all(self, code: int, reason: bytes) -> None: ...
    def flush(
        self, registry: Registry, batch: Sequence[tuple[int, int, int, int, bytes]]
    ) -> list[tuple[int, int, int, int]]:
        """Per item ``(conn, stream_id, handle, after, prefix)``: ``prefix`` and the registry's binary frames
        after ``after`` into the WebTransport stream, straight from Rust memory, FIN after the final frame;
        then one transmit. Returns per item ``(conn, stream_id, new_after, status)`` (``FLUSH_*``)."""
    def transmit(self) -> None:
        """Send every pending packet (after a group of ``send_*`` calls)."""
    def connect(self, host: str, port: int, server_name: str) -> int:
        """Client: a new connection (``host``: an IP, or a name resolved now, which may block)."""
    def rebind(self, host: str, port: int) -> None:
        """Move to a new UDP socket on ``host:port`` (0: a free port): every connection follows (migration; a
        PING goes out at once so the peer sees the new address). ``fileno()`` changes: take the old descriptor
        off the event loop first, watch the new one after."""
    def early_data(self, conn: int) -> tuple[bool, bool]:
        """0-RTT on ``conn``: ``(offered, accepted)``. Client: ``offered`` right after ``connect`` when a ticket
        allowed it (streams opened and written before ``("connected", ...)`` then leave in 0-RTT); ``accepted``,
        known at ``("connected", ...)``: the server took them. Offered but not accepted: those streams are
        gone (no event says so) and their ids are given again: open them again and resend. Server: both say the
        client's 0-RTT data was accepted."""
    def open_bidi(self, conn: int) -> int: ...
    def open_wt_stream(self, conn: int, session_id: int) -> int:
        """A bidirectional WebTransport stream of the session, its header (0x41 + session id) written."""
    def stats(self) -> dict[str, int]:
        """Counters: packets/bytes in and out, recv/send syscalls, send_dropped (send buffer full), send_errors
        (other refusals), lost_packets, connections, connections_accepted/refused, datagrams_dropped (by
        ``trim_datagrams``, or refused once queued), wakeups, gso_segments (most
        datagrams one send carries), recv_buffer and send_buffer (the socket's buffers as the kernel granted
        them: it caps the 4 MiB asked for at ``net.core.rmem_max`` / ``wmem_max``), early_data_accepted
        (handshakes whose 0-RTT data the server took) and early_data_rejected (client: refused, sent again)."""
