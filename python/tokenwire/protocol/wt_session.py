"""The WebTransport session layer of one QUIC connection, sans-I/O: HTTP/3 and WebTransport events in, actions out.

An engine adapter (aioquic's in ``server/webtransport.py``; a native QUIC engine's) feeds :class:`WtConnection`
what its connection reports, then performs :meth:`WtConnection.take_actions` in order. Nothing here owns a socket,
a loop or a clock (``now`` is an argument), and nothing here knows the QUIC engine: stream ids, header lists and
byte strings only, as aioquic's ``H3Connection.handle_event`` and h11's ``Connection`` work.

The rules (docs/protocol.md §3.1, §4.4, §4.5):

Sessions (extended CONNECT streams):

==============  =========================================  ==================================================
state           entered                                    left
==============  =========================================  ==================================================
HELD            a CONNECT before the handshake completed   handshake done and the client's SETTINGS in: its
                (0-RTT: never established from early       checks run; reset by the client; more than
                data) or before the client's SETTINGS      ``MAX_HELD_CAPSULE_BYTES`` on its stream (reset,
                (its draft, its flow control)              H3_EXCESSIVE_LOAD)
AUTHORIZING     checks passed, auth on: :class:`Authorize`  :meth:`~WtConnection.session_authorized` (200) or
                asks the application for a verdict         :meth:`~WtConnection.session_refused` (401 / 500)
ESTABLISHED     200 sent                                   CLOSE_WEBTRANSPORT_SESSION capsule, FIN or reset of
                                                           its stream, a WT_MAX_DATA that lowers the limit,
                                                           connection gone
CLOSED          (remembered, ``MAX_CLOSED_SESSIONS``)      late streams of it are refused (SESSION_GONE)
==============  =========================================  ==================================================

A CONNECT is refused with a status: 404 (not a WebTransport CONNECT / another path; 400 a CONNECT without a
WebTransport ``:protocol``), 403 (an ``Origin`` CORS would not let read the HTTP endpoints), the gate's 503
(draining) or 429 (every session of the process), 429 (this connection's sessions), 401 (credentials), 500 (the
authenticator failed); a second session of a draft-13-on client without flow control is reset
(H3_REQUEST_REJECTED).

Request streams (bidirectional WebTransport streams of a session):

- READING: bytes go to a :class:`RequestReader`; a complete request becomes :class:`RequestReceived` (state
  SERVING); a malformed one an error reply (then FIN; STOP_SENDING unless it was read whole); no complete
  request ``header_timeout`` after the stream opened: 408.
- A stream of a session not established yet is held (``max_early_streams`` a session, its bytes bounded by the
  request limit) and replayed once the session is; a stream of a closed or refused session is reset.
- Past ``max_streams_per_session`` open streams: 503 error reply.
- SERVING: the application answers with :meth:`WtConnection.send` (a reply, then frames; FIN at the end),
  :meth:`~WtConnection.reply_error` or :meth:`~WtConnection.reset_stream`. With WebTransport flow control on
  (the client's SETTINGS), bytes the session's credit does not cover wait here (:class:`CreditBlocked`) until a
  WT_MAX_DATA capsule raises it (:class:`CreditAvailable`), and a WT_DATA_BLOCKED capsule says so once per limit.
- ENDED: both halves done; :class:`ForgetStream` lets the adapter drop its state.

Whenever the layer ends a stream's sending half on its own (a reset by the peer, STOP_SENDING, its session gone,
the connection gone) it says :class:`StreamDetached`: the application stops feeding it (its generation goes on).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from tokenwire.errors import TokenwireError
from tokenwire.protocol.http1 import HttpError
from tokenwire.protocol.webtransport import (
    CAPSULE_CLOSE_SESSION,
    CAPSULE_WT_MAX_DATA,
    MAX_PREVIEW_BYTES,
    SESSION_GONE,
    SETTINGS_WT_INITIAL_MAX_DATA,
    WT_FLOW_CONTROL_ERROR,
    WT_PATH,
    CapsuleReader,
    Request,
    RequestReader,
    SendCredit,
    StartRequested,
    WtCode,
    connect_fields,
    connect_query,
    encode_preview,
    encode_reply,
    error_reply,
    flow_control_enabled,
    http3_error_code,
    is_webtransport_connect,
    max_data_of,
    session_origin_allowed,
    speaks_draft13_on,
)

__all__ = [
    "H3_EXCESSIVE_LOAD",
    "H3_NO_ERROR",
    "H3_REQUEST_CANCELLED",
    "H3_REQUEST_REJECTED",
    "MAX_CLOSED_SESSIONS",
    "MAX_HELD_CAPSULE_BYTES",
    "SETTINGS_H3_DATAGRAM",
    "Action",
    "Authorize",
    "Counters",
    "CreditAvailable",
    "CreditBlocked",
    "FinishSession",
    "ForgetStream",
    "Gate",
    "RequestReceived",
    "ResetStream",
    "SendCapsules",
    "SendData",
    "SendDatagram",
    "SendHeaders",
    "SessionState",
    "StopSending",
    "StreamDetached",
    "StreamState",
    "WtConnection",
    "WtCounters",
    "WtRequestStream",
    "WtRules",
    "WtSession",
    "feed",
    "is_unidirectional",
]

#: HTTP/3 error codes (RFC 9114 §8.1) the layer resets streams with.
H3_NO_ERROR: Final = 0x100
H3_EXCESSIVE_LOAD: Final = 0x107
H3_REQUEST_REJECTED: Final = 0x10B
H3_REQUEST_CANCELLED: Final = 0x10C
#: SETTINGS_H3_DATAGRAM (RFC 9297): the peer takes HTTP/3 datagrams (previews need it).
SETTINGS_H3_DATAGRAM: Final = 0x33

#: Ids of ended sessions remembered per connection (their late streams are refused, not held).
MAX_CLOSED_SESSIONS: Final = 256
#: Bytes of capsules kept for a CONNECT that is held (0-RTT, SETTINGS not in yet), applied once it is answered;
#: a client that sends more before its session exists has its CONNECT reset with H3_EXCESSIVE_LOAD.
MAX_HELD_CAPSULE_BYTES: Final = 16 * 1024
#: A preview's bytes besides its frames, at most: the tag and the session's quarter stream id (varints).
_PREVIEW_OVERHEAD: Final = 16
#: A DATAGRAM frame's own bytes (type, length) that must fit the peer's limit with the payload (aioquic: <).
_DATAGRAM_FRAME_OVERHEAD: Final = 3


def is_unidirectional(stream_id: int) -> bool:
    """RFC 9000 §2.1: bit 1 of a stream id tells a unidirectional stream."""
    return bool(stream_id & 2)


# -- what the layer needs from its host ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WtRules:
    """The limits and policies the session layer applies (the server's config, per connection)."""

    max_sessions_per_connection: int = 16
    max_streams_per_session: int = 256
    max_early_streams: int = 16
    max_request_bytes: int = 1 << 20
    #: Seconds a request stream may take to carry its complete request (408 after).
    header_timeout: float = 10.0
    #: CORS origins whose pages may open sessions (``*``: any); a page of the server itself always may.
    allow_origins: tuple[str, ...] = ()
    #: Datagram previews are enabled (docs/protocol.md §4.5).
    datagram_previews: bool = False
    #: Sessions need credentials: an established CONNECT first goes through :class:`Authorize`.
    auth: bool = False


class Gate(Protocol):
    """The process-wide part of admitting a session (every connection's sessions together)."""

    def refusal(self) -> int:
        """0 to admit one more session; else the status that refuses it (503 draining, 429 full)."""

    def opened(self) -> None:
        """A session was established."""

    def closed(self) -> None:
        """An established session ended."""


class WtCounters(Protocol):
    """The counters the layer keeps (the server's metrics object has them; an explicit subclass starts them at 0)."""

    sessions_total: int = 0
    sessions_refused_total: int = 0
    early_sessions_total: int = 0
    early_requests_total: int = 0
    deferred_starts_total: int = 0
    credit_waits_total: int = 0
    streams_reset_total: int = 0
    previews_sent_total: int = 0
    previews_dropped_total: int = 0
    requests_total: int = 0
    bad_requests_total: int = 0


class Counters(WtCounters):
    """:class:`WtCounters` on their own (a layer without a server: tests, tools)."""


# -- actions (what the adapter does, in order) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendHeaders:
    """HTTP/3 HEADERS on ``stream_id`` (a CONNECT's answer); ``end``: FIN after them."""

    stream_id: int
    headers: tuple[tuple[bytes, bytes], ...]
    end: bool = False


@dataclass(frozen=True, slots=True)
class SendCapsules:
    """Capsule bytes on a session's CONNECT stream, as the payload of an HTTP/3 DATA frame (no FIN). Advice: an
    adapter may drop it when the stream is closing."""

    session_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class FinishSession:
    """FIN on a session's CONNECT stream (no frame): the session is over on this side. May fail harmlessly."""

    session_id: int


@dataclass(frozen=True, slots=True)
class SendData:
    """Raw bytes on a WebTransport request stream (``end``: then FIN). An adapter that finds the stream reset
    by the peer (STOP_SENDING not yet seen) detaches it as for :class:`StreamDetached`."""

    stream_id: int
    data: bytes
    end: bool


@dataclass(frozen=True, slots=True)
class ResetStream:
    """RESET_STREAM with HTTP/3 error ``code`` (ignored by the adapter if the stream is gone)."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class StopSending:
    """STOP_SENDING with HTTP/3 error ``code`` (ignored by the adapter if the stream is gone)."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """An HTTP/3 datagram of session ``session_id`` (a preview)."""

    session_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ForgetStream:
    """Both halves of request stream ``stream_id`` are done: the adapter may drop what it keeps of it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class Authorize:
    """Auth on: decide who opens session ``session_id`` (its CONNECT's ``fields``, query and path), then call
    :meth:`WtConnection.session_authorized` or :meth:`WtConnection.session_refused` (at once or later)."""

    session_id: int
    fields: dict[str, str]
    query: dict[str, str]
    path: str


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Serve ``request`` on ``stream_id`` (a stream of ``session_id``, established): answer with
    :meth:`WtConnection.send`, :meth:`~WtConnection.reply_error` or :meth:`~WtConnection.reset_stream`."""

    stream_id: int
    session_id: int
    request: Request


@dataclass(frozen=True, slots=True)
class StreamDetached:
    """The layer ended ``stream_id``'s sending half (reset, STOP_SENDING, session or connection gone): stop
    feeding it. Its generation goes on."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class CreditBlocked:
    """``stream_id`` has bytes its session's flow control credit does not cover: take no more frames for it."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class CreditAvailable:
    """``stream_id``'s held bytes went out (a WT_MAX_DATA capsule): take frames for it again."""

    stream_id: int


Action = (
    SendHeaders
    | SendCapsules
    | FinishSession
    | SendData
    | ResetStream
    | StopSending
    | SendDatagram
    | ForgetStream
    | Authorize
    | RequestReceived
    | StreamDetached
    | CreditBlocked
    | CreditAvailable
)


# -- state ----------------------------------------------------------------------------------------------------


class SessionState(enum.Enum):
    HELD = "held"
    AUTHORIZING = "authorizing"
    ESTABLISHED = "established"
    CLOSED = "closed"


class StreamState(enum.Enum):
    READING = "reading"  # the request has not arrived whole
    SERVING = "serving"  # the application answers (reply, frames)
    ENDED = "ended"  # nothing more to send (FIN or reset sent; bytes held for credit may still go out)


class _Connect:
    """A CONNECT not answered yet (held, or authorizing) and what its stream carried meanwhile: capsules
    (``data``) and its end, applied once it is answered (a session the client closed before that serves
    nothing)."""

    __slots__ = ("data", "early", "ended", "headers", "id", "state")

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]], early: bool) -> None:
        self.id = stream_id
        self.headers = headers
        #: It came in 0-RTT early data.
        self.early = early
        self.data = bytearray()
        self.ended = False
        self.state = SessionState.HELD


class _HeldStream:
    """A request stream of a session not established yet: its bytes so far (at most the request limit plus a
    message head and one byte: whatever follows cannot change the answer, a 413 or "bytes after the request"),
    whether it ended, and whether it came in 0-RTT early data."""

    __slots__ = ("data", "early", "ended")

    def __init__(self, early: bool) -> None:
        self.data = bytearray()
        self.ended = False
        self.early = early


class WtSession:
    """One established session: its CONNECT stream id, its open request streams, and, when the client turned
    WebTransport flow control on, the credit it gives the server."""

    __slots__ = ("blocked", "capsules", "credit", "headers", "id", "principal", "state", "streams")

    def __init__(
        self, session_id: int, credit: SendCredit | None, headers: dict[str, str], principal: str | None
    ) -> None:
        self.id = session_id
        #: The CONNECT's regular headers (lower-case names): what a generator sees of the session's requests.
        self.headers = headers
        #: Who opened it, when auth is on: every request of the session runs as them.
        self.principal = principal
        #: Request streams counted against ``max_streams_per_session`` (until their sending half ends).
        self.streams: set[int] = set()
        #: ``None``: flow control is off (QUIC's alone applies).
        self.credit = credit
        self.capsules = CapsuleReader()
        #: Streams whose bytes wait for credit (a WT_MAX_DATA capsule), in the order they blocked.
        self.blocked: dict[int, WtRequestStream] = {}
        self.state = SessionState.ESTABLISHED


class WtRequestStream:
    """One request stream: its request reader, then what it sends; the two halves' ends."""

    __slots__ = (
        "early",
        "held",
        "held_end",
        "id",
        "opened_at",
        "preview_tag",
        "reader",
        "recv_ended",
        "send_ended",
        "session",
    )

    def __init__(self, stream_id: int, session: WtSession, now: float, max_request_bytes: int, early: bool) -> None:
        self.id = stream_id
        self.session = session
        #: Its first bytes came in 0-RTT early data (it waited for the handshake with its session).
        self.early = early
        self.opened_at = now
        self.reader: RequestReader | None = RequestReader(max_request_bytes)
        #: Bytes sent while the session had no credit, and whether FIN follows them.
        self.held = bytearray()
        self.held_end = False
        self.recv_ended = False
        self.send_ended = False
        #: > 0: datagram previews are sent, with this tag (docs/protocol.md §4.5).
        self.preview_tag = 0

    @property
    def waiting_for_credit(self) -> bool:
        return bool(self.held) or self.held_end

    @property
    def state(self) -> StreamState:
        if self.reader is not None:
            return StreamState.READING
        return StreamState.ENDED if self.send_ended else StreamState.SERVING

    @property
    def active(self) -> bool:
        """Bytes may still go out on it (its own or held for credit)."""
        return not self.send_ended or self.waiting_for_credit


# -- the layer --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class WtConnection:
    """The WebTransport sessions and request streams of one QUIC connection (server side)."""

    rules: WtRules
    gate: Gate
    counters: WtCounters = field(default_factory=Counters)

    sessions: dict[int, WtSession] = field(default_factory=dict, init=False)
    #: Sessions ever established here (the per-connection limit counts them, closed ones too).
    sessions_opened: int = field(default=0, init=False)
    closed_sessions: set[int] = field(default_factory=set, init=False)
    streams: dict[int, WtRequestStream] = field(default_factory=dict, init=False)
    #: Streams of sessions not established yet: session id -> stream id -> its bytes so far.
    early: dict[int, dict[int, _HeldStream]] = field(default_factory=dict, init=False)
    #: CONNECTs held until the handshake has completed and the client's SETTINGS have arrived.
    held_connects: list[_Connect] = field(default_factory=list, init=False)
    #: CONNECTs waiting for their auth verdict, by stream id.
    authorizing: dict[int, _Connect] = field(default_factory=dict, init=False)
    handshake_done: bool = field(default=False, init=False)
    #: The client's HTTP/3 SETTINGS (``None``: not received yet).
    peer_settings: dict[int, int] | None = field(default=None, init=False)
    closed: bool = field(default=False, init=False)
    #: The time of the latest input that may open streams (streams held for a session open with it at that time).
    _now: float = field(default=0.0, init=False)
    _actions: list[Action] = field(default_factory=list, init=False)

    def take_actions(self) -> list[Action]:
        """What to do, in order, since the last call."""
        actions, self._actions = self._actions, []
        return actions

    # -- inputs: the connection ------------------------------------------------------------------------------

    def handshake_completed(self, now: float) -> None:
        self._now = now
        self.handshake_done = True
        self._release_connects()

    def settings_received(self, settings: Mapping[int, int], now: float) -> None:
        """The client's SETTINGS (once)."""
        self._now = now
        if self.peer_settings is None:
            self.peer_settings = dict(settings)
            self._release_connects()

    def connection_terminated(self) -> None:
        """The QUIC connection is gone: every stream is detached (generations go on), every session ends."""
        if self.closed:
            return
        self.closed = True
        for qid in self.streams:
            self._actions.append(StreamDetached(qid))
        self.streams.clear()
        self.held_connects.clear()
        self.authorizing.clear()
        self.early.clear()
        for _ in self.sessions:
            self.gate.closed()
        self.sessions.clear()

    # -- inputs: streams ---------------------------------------------------------------------------------------

    def headers_received(self, stream_id: int, headers: list[tuple[bytes, bytes]], fin: bool, now: float) -> None:
        """HEADERS of a request (a CONNECT, or anything else: refused)."""
        if self.closed:
            return
        self._now = now
        if self._connects_ready:
            self._answer(_Connect(stream_id, headers, early=False))
        elif len(self.held_connects) >= self.rules.max_sessions_per_connection:
            self._refuse(stream_id, 429)
        else:
            self.held_connects.append(_Connect(stream_id, headers, early=not self.handshake_done))

    def data_received(self, stream_id: int, data: bytes, fin: bool) -> None:
        """DATA payload on a request stream: capsules of a session's CONNECT stream (its end closes it)."""
        if self.closed:
            return
        session = self.sessions.get(stream_id)
        if session is not None:
            if data:
                self._capsules(session, data)
            if fin and session.id in self.sessions:
                self._close_session(session, fin=True)
        elif (held := self._held(stream_id)) is not None:  # kept until the CONNECT is answered
            held.data += data
            held.ended = held.ended or fin
            if len(held.data) > MAX_HELD_CAPSULE_BYTES:
                self._drop_held_connect(held, H3_EXCESSIVE_LOAD)

    def knows_stream(self, stream_id: int) -> bool:
        return stream_id in self.streams

    def wt_stream_data(
        self, stream_id: int, session_id: int, data: bytes, fin: bool, now: float, *, early: bool = False
    ) -> None:
        """Bytes of WebTransport stream ``stream_id`` of ``session_id`` (the first call opens it; ``data`` may be
        empty: a stream that carried only its header). ``now``: for its header timeout."""
        if self.closed:
            return
        st = self.streams.get(stream_id)
        if st is None:
            st = self._open(session_id, stream_id, data, fin, now, early)
            if st is None:
                return
        if fin:
            st.recv_ended = True
        reader = st.reader
        if reader is None:
            if data and not st.send_ended:
                self.reset_stream(stream_id, WtCode.BAD_REQUEST)  # bytes after the request
            self._maybe_forget(st)
            return
        try:
            request = reader.feed(data, fin)
        except TokenwireError as exc:
            st.reader = None
            self._reply_error(st, exc, request_read=reader.whole)  # read whole, malformed: no STOP_SENDING
            return
        if request is not None:
            self._request_complete(st, request)

    def _request_complete(self, st: WtRequestStream, request: Request) -> None:
        st.reader = None
        counters = self.counters
        counters.requests_total += 1
        if st.early:  # served now that the handshake has completed: a replayed flight never gets here
            if isinstance(request, StartRequested):
                counters.deferred_starts_total += 1
            else:
                counters.early_requests_total += 1
        self._actions.append(RequestReceived(st.id, st.session.id, request))

    def stream_reset(self, stream_id: int, code: int = 0) -> bool:
        """The peer reset ``stream_id`` (RESET_STREAM). True when it was a request stream (the HTTP/3 layer need
        not see it)."""
        st = self.streams.get(stream_id)
        if st is not None:
            st.recv_ended = True
            if st.reader is not None:  # reset before its request was complete: nothing to serve
                st.reader = None
                if not st.send_ended:
                    self._actions.append(ResetStream(stream_id, http3_error_code(WtCode.NO_ERROR)))
                    st.send_ended = True
                self._finished_sending(st)
            else:
                self._maybe_forget(st)
            return True
        session = self.sessions.get(stream_id)
        if session is not None:
            self._close_session(session)
        elif (held := self._held(stream_id)) is not None:  # cancelled before it was answered
            self._drop_held_connect(held, H3_REQUEST_CANCELLED)
        return False

    def stop_sending(self, stream_id: int, code: int = 0) -> bool:
        """The peer stopped reading ``stream_id`` (STOP_SENDING; QUIC has reset our side). True when it was a
        request stream."""
        st = self.streams.get(stream_id)
        if st is None:
            return False
        self._actions.append(StreamDetached(stream_id))
        self._drop_held(st)
        st.send_ended = True
        self._finished_sending(st)
        return True

    def tick(self, now: float) -> None:
        """Time out request streams whose request has not arrived whole within ``header_timeout`` (408)."""
        for st in list(self.streams.values()):
            if st.reader is not None and now - st.opened_at >= self.rules.header_timeout:
                st.reader = None
                self._reply_error(st, HttpError(408, "no complete request in time"))

    # -- inputs: the application --------------------------------------------------------------------------------

    def session_authorized(self, session_id: int, principal: str | None, now: float) -> None:
        """The verdict on an :class:`Authorize`: ``principal`` opens the session (its checks run again)."""
        self._now = now
        connect = self.authorizing.pop(session_id, None)
        if connect is not None and not self.closed:
            self._answer(connect, (principal,))

    def session_refused(self, session_id: int, challenge: str | None) -> None:
        """The verdict on an :class:`Authorize`: refused, 401 with ``challenge`` (``WWW-Authenticate``); ``None``:
        the authenticator failed (500)."""
        if self.authorizing.pop(session_id, None) is None or self.closed:
            return
        if challenge is None:
            self._refuse(session_id, 500)
        else:
            self._refuse(session_id, 401, headers=[(b"www-authenticate", challenge.encode("latin-1"))])

    def send(self, stream_id: int, data: bytes, end: bool) -> None:
        """The application's bytes on request stream ``stream_id`` (then FIN if ``end``): a reply, frames. What the
        session's credit does not cover waits here for a WT_MAX_DATA capsule (the client's limit is never
        exceeded). Ignored once the sending half has ended."""
        st = self.streams.get(stream_id)
        if st is None or st.send_ended:
            return
        self._send(st, data, end)
        if end:
            self._finished_sending(st)

    def reply_error(self, stream_id: int, exc: BaseException, *, request_read: bool = True) -> None:
        """A typed error reply for the request on ``stream_id`` (then FIN)."""
        st = self.streams.get(stream_id)
        if st is not None:
            self._reply_error(st, exc, request_read=request_read)

    def reset_stream(self, stream_id: int, code: int, raw: bool = False) -> None:
        """Reset request stream ``stream_id`` with WebTransport error ``code`` (``raw``: an HTTP/3 code as is);
        the application's attachment is detached."""
        st = self.streams.get(stream_id)
        if st is None:
            return
        h3_code = code if raw else http3_error_code(code)
        self._actions.append(StreamDetached(stream_id))
        unsent = st.waiting_for_credit  # FIN queued, not sent: the stream is still open
        self._drop_held(st)
        if not st.send_ended or unsent:
            self._actions.append(ResetStream(stream_id, h3_code))
            st.send_ended = True
            self.counters.streams_reset_total += 1
        if not st.recv_ended:
            self._actions.append(StopSending(stream_id, h3_code))
        self._finished_sending(st)

    def grant_previews(self, stream_id: int, max_datagram_frame_size: int) -> int:
        """A request asked for datagram previews: the tag they carry (0: not granted). Granted when enabled here
        and the peer takes DATAGRAM frames (RFC 9221: ``max_datagram_frame_size`` > 0) and HTTP/3 datagrams
        (RFC 9297: its SETTINGS_H3_DATAGRAM is 1). The tag is unique on this connection and known to a browser
        page (which never sees QUIC stream ids)."""
        st = self.streams.get(stream_id)
        if st is None or not self.rules.datagram_previews or max_datagram_frame_size <= 0:
            return 0
        if (self.peer_settings or {}).get(SETTINGS_H3_DATAGRAM) != 1:
            return 0
        st.preview_tag = stream_id // 4 + 1
        return st.preview_tag

    def preview(self, stream_id: int, frames: bytes, max_datagram_frame_size: int) -> None:
        """An unreliable copy of ``frames`` (just sent on ``stream_id``) as an HTTP/3 datagram of its session;
        dropped when it cannot fit one packet, or the peer's DATAGRAM frame limit (§4.5)."""
        st = self.streams.get(stream_id)
        if st is None or not st.preview_tag:
            return
        size = _PREVIEW_OVERHEAD + len(frames)
        if size > MAX_PREVIEW_BYTES or size + _DATAGRAM_FRAME_OVERHEAD >= max_datagram_frame_size:
            self.counters.previews_dropped_total += 1
            return
        self._actions.append(SendDatagram(st.session.id, encode_preview(st.preview_tag, frames)))
        self.counters.previews_sent_total += 1

    # -- queries ---------------------------------------------------------------------------------------------

    def stream(self, stream_id: int) -> WtRequestStream | None:
        return self.streams.get(stream_id)

    def waiting_for_credit(self, stream_id: int) -> bool:
        st = self.streams.get(stream_id)
        return st is not None and st.waiting_for_credit

    def active(self, stream_id: int) -> bool:
        """``stream_id`` is a request stream that may still send (its own bytes, or bytes held for credit)."""
        st = self.streams.get(stream_id)
        return st is not None and st.active

    # -- sessions -----------------------------------------------------------------------------------------------

    @property
    def _connects_ready(self) -> bool:
        return self.handshake_done and self.peer_settings is not None

    def _release_connects(self) -> None:
        if not (self.held_connects and self._connects_ready):
            return
        held, self.held_connects = self.held_connects, []
        for connect in held:
            if connect.early:
                self.counters.early_sessions_total += 1
            self._answer(connect)

    def _held(self, stream_id: int) -> _Connect | None:
        held = next((h for h in self.held_connects if h.id == stream_id), None)
        return held if held is not None else self.authorizing.get(stream_id)

    def _drop_held_connect(self, held: _Connect, h3_code: int) -> None:
        """Give up a held CONNECT (reset by the client, or too much sent before its answer): its stream is reset
        with ``h3_code``, the streams held for its session with SESSION_GONE."""
        if self.authorizing.pop(held.id, None) is None:
            self.held_connects.remove(held)
        self._refuse(held.id, reset=h3_code)

    def _answer(self, connect: _Connect, authorized: tuple[str | None] | None = None) -> None:
        """A CONNECT accepted as a session (200), or refused (the handshake has completed and the client's
        SETTINGS are known by now). ``authorized``: the principal the application found for it."""
        sid = connect.id
        settings = self.peer_settings or {}
        flow_control = flow_control_enabled(settings)
        fields = connect_fields(connect.headers)
        status = self._connect_status(connect.headers, fields, settings, flow_control)
        if status < 0:
            self._refuse(sid, reset=H3_REQUEST_REJECTED)
            return
        if status:
            self._refuse(sid, status)
            return
        if authorized is None:
            if self.rules.auth:  # held until the application decides
                connect.state = SessionState.AUTHORIZING
                self.authorizing[sid] = connect
                target = dict(connect.headers).get(b":path", b"").decode("latin-1")
                path = target.partition("?")[0]  # as an HTTP request's path: the query (?access_token=) apart
                self._actions.append(Authorize(sid, fields, connect_query(target), path))
                return
            authorized = (None,)
        self._actions.append(SendHeaders(sid, ((b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02"))))
        credit = SendCredit(settings.get(SETTINGS_WT_INITIAL_MAX_DATA, 0)) if flow_control else None
        session = WtSession(sid, credit, fields, authorized[0])
        self.sessions[sid] = session
        self.sessions_opened += 1
        self.gate.opened()
        self.counters.sessions_total += 1
        self._established(session, connect)

    def _connect_status(
        self, headers: list[tuple[bytes, bytes]], fields: dict[str, str], settings: dict[int, int], flow_control: bool
    ) -> int:
        """The status that refuses a CONNECT (0: none; -1: reset its stream with H3_REQUEST_REJECTED instead). A
        page's ``Origin`` is checked as CORS would let it call the HTTP endpoints (403)."""
        rules = self.rules
        ok, path = is_webtransport_connect(headers)
        pseudo = dict(headers)
        if not ok:
            return 400 if pseudo.get(b":method") == b"CONNECT" else 404
        if path.partition("?")[0] != WT_PATH:
            return 404
        authority = pseudo.get(b":authority", b"").decode("latin-1")
        if not session_origin_allowed(rules.allow_origins, fields.get("origin"), authority):
            return 403
        refusal = self.gate.refusal()
        if refusal:
            return refusal
        if self.sessions_opened + len(self.authorizing) >= rules.max_sessions_per_connection:
            return 429
        if self.sessions and speaks_draft13_on(settings) and not flow_control:
            # A client of draft 13 on without flow control may hold one session at a time (draft 14 §5.1).
            return -1
        return 0

    def _established(self, session: WtSession, connect: _Connect) -> None:
        """A session just answered 200: what its CONNECT stream carried while held (capsules, its end), then the
        request streams held for it, unless the client closed it meanwhile (then they are reset)."""
        sid = session.id
        if connect.data:
            self._capsules(session, bytes(connect.data))
        if connect.ended and sid in self.sessions:
            self._close_session(session, fin=True)
        if sid not in self.sessions:  # the client closed it before it was answered: nothing of it is served
            for qid in self.early.pop(sid, {}):
                self._abandon(qid, SESSION_GONE)
            return
        for qid, waiting in self.early.pop(sid, {}).items():
            # Held streams open now: their header timeout starts with the session.
            self.wt_stream_data(qid, sid, bytes(waiting.data), waiting.ended, self._now, early=waiting.early)

    def _refuse(
        self, stream_id: int, status: int = 0, reset: int = 0, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Refuse the session of CONNECT stream ``stream_id``: answer an HTTP ``status`` (with ``headers``), or reset
        the stream with the HTTP/3 error code ``reset``; streams held for it are abandoned."""
        self.counters.sessions_refused_total += 1
        if reset:
            self._abandon(stream_id, reset)
        else:
            self._actions.append(SendHeaders(stream_id, ((b":status", str(status).encode()), *(headers or ())), True))
        self._remember_closed(stream_id)
        for qid in self.early.pop(stream_id, {}):
            self._abandon(qid, SESSION_GONE)

    def _remember_closed(self, session_id: int) -> None:
        if len(self.closed_sessions) < MAX_CLOSED_SESSIONS:
            self.closed_sessions.add(session_id)

    def _abandon(self, stream_id: int, h3_code: int) -> None:
        """Refuse a stream that never became a request stream."""
        self._actions.append(ResetStream(stream_id, h3_code))
        self._actions.append(StopSending(stream_id, h3_code))

    def _capsules(self, session: WtSession, data: bytes) -> None:
        """Capsules on the session's CONNECT stream: WT_MAX_DATA raises the credit (ignored when flow control is
        off, draft 14 §5.1), CLOSE_WEBTRANSPORT_SESSION ends the session; others are skipped."""
        for capsule_type, value in session.capsules.feed(data):
            if capsule_type == CAPSULE_CLOSE_SESSION:
                self._close_session(session, fin=True)
                return
            credit = session.credit
            if capsule_type == CAPSULE_WT_MAX_DATA and credit is not None:
                try:
                    credit.raise_limit(max_data_of(value))
                except TokenwireError:
                    self._abandon(session.id, WT_FLOW_CONTROL_ERROR)
                    self._close_session(session)
                    return
                self._credit_arrived(session)

    def _close_session(self, session: WtSession, fin: bool = False) -> None:
        """The session is gone: its streams are reset (their generations go on)."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.state = SessionState.CLOSED
        self._remember_closed(session.id)
        self.gate.closed()
        for qid in [*session.streams, *session.blocked]:
            if qid in self.streams:
                self.reset_stream(qid, SESSION_GONE, raw=True)
        if fin:
            self._actions.append(FinishSession(session.id))

    # -- request streams ------------------------------------------------------------------------------------------

    def _open(
        self, session_id: int, stream_id: int, data: bytes, fin: bool, now: float, early: bool
    ) -> WtRequestStream | None:
        """A new request stream of a session; ``None`` if it is refused or held until its session is established."""
        self._now = now
        if is_unidirectional(stream_id):
            return None  # tokenwire uses no unidirectional streams: ignore them
        rules = self.rules
        session = self.sessions.get(session_id)
        if session is None:
            self._hold_stream(session_id, stream_id, data, fin)
            return None
        st = WtRequestStream(stream_id, session, now, rules.max_request_bytes, early)
        self.streams[stream_id] = st
        session.streams.add(stream_id)
        if len(session.streams) > rules.max_streams_per_session:
            st.recv_ended = fin
            st.reader = None
            self._reply_error(st, HttpError(503, "too many streams on this session"))
            return None
        return st

    def _hold_stream(self, session_id: int, stream_id: int, data: bytes, fin: bool) -> None:
        """Bytes of a stream whose session is not established yet: kept (``max_early_streams`` streams a session),
        or the stream is refused (too many, or its session is gone)."""
        rules = self.rules
        held = self.early.get(session_id)
        if session_id in self.closed_sessions or (
            held is None and len(self.early) >= rules.max_sessions_per_connection
        ):
            self._abandon(stream_id, SESSION_GONE)
            return
        if held is None:
            held = self.early[session_id] = {}
        waiting = held.get(stream_id)
        if waiting is None:
            if len(held) >= rules.max_early_streams:
                self._abandon(stream_id, SESSION_GONE)
                return
            waiting = held[stream_id] = _HeldStream(not self.handshake_done)
        room = rules.max_request_bytes + 16 - len(waiting.data)  # kind, length (8 at most), body, one more
        waiting.data += data[: max(0, room)]
        waiting.ended = waiting.ended or fin

    def _reply_error(self, st: WtRequestStream, exc: BaseException, *, request_read: bool = False) -> None:
        """A typed error reply, then FIN; STOP_SENDING with its code if the request side is still open and the
        request was not read whole (``request_read``: only its FIN can follow, and Firefox 153 drops a reply that
        a STOP_SENDING overtakes: its readable fails with "Error in input stream")."""
        reply = error_reply(exc)
        self.counters.bad_requests_total += 1
        if not st.send_ended:
            self._send(st, encode_reply(reply), True)
        if not st.recv_ended and not request_read:
            self._actions.append(StopSending(st.id, http3_error_code(reply.code)))
        self._finished_sending(st)

    def _finished_sending(self, st: WtRequestStream) -> None:
        st.session.streams.discard(st.id)
        self._maybe_forget(st)

    def _maybe_forget(self, st: WtRequestStream) -> None:
        if st.send_ended and st.recv_ended and not st.waiting_for_credit and self.streams.pop(st.id, None) is not None:
            st.session.streams.discard(st.id)
            self._actions.append(ForgetStream(st.id))

    # -- sending and flow control ------------------------------------------------------------------------------

    def _send(self, st: WtRequestStream, data: bytes, end: bool) -> None:
        credit = st.session.credit
        if credit is not None and (st.waiting_for_credit or len(data) > credit.available):
            st.held += data
            st.held_end = st.held_end or end
            if end:
                st.send_ended = True
            self._send_held(st)
            if st.waiting_for_credit:
                self._wait_for_credit(st, credit)
            return
        if credit is not None:
            credit.take(len(data))
        self._actions.append(SendData(st.id, data, end))
        if end:
            st.send_ended = True

    def _send_held(self, st: WtRequestStream) -> None:
        """Send as much of ``st.held`` as the session's credit covers (and FIN after the last byte)."""
        credit = st.session.credit
        if credit is None:
            return
        granted = credit.take(len(st.held))
        data = bytes(st.held[:granted])
        del st.held[:granted]
        end = st.held_end and not st.held
        if data or end:
            st.held_end = st.held_end and not end
            self._actions.append(SendData(st.id, data, end))

    def _wait_for_credit(self, st: WtRequestStream, credit: SendCredit) -> None:
        """``st`` has bytes the credit does not cover: it takes no frames until a WT_MAX_DATA capsule comes; the
        client hears once per limit that the server is blocked."""
        st.session.blocked.setdefault(st.id, st)
        self._actions.append(CreditBlocked(st.id))
        capsule = credit.blocked()
        if capsule:
            self.counters.credit_waits_total += 1
            self._actions.append(SendCapsules(st.session.id, capsule))

    def _credit_arrived(self, session: WtSession) -> None:
        """A WT_MAX_DATA capsule raised the limit: the held bytes go out, in the order their streams blocked; a
        stream with nothing left held takes frames again."""
        credit = session.credit
        for st in list(session.blocked.values()):
            self._send_held(st)
            if st.waiting_for_credit and credit is not None:
                self._wait_for_credit(st, credit)  # blocked again, at the new limit
                break
            del session.blocked[st.id]
            self._actions.append(CreditAvailable(st.id))
            self._maybe_forget(st)

    def _drop_held(self, st: WtRequestStream) -> None:
        """The stream is reset or stopped: its held bytes will never be sent."""
        st.held.clear()
        st.held_end = False
        st.session.blocked.pop(st.id, None)


def feed(conn: WtConnection, event: tuple[Any, ...], now: float) -> bool:
    """Feed one event of a QUIC engine that reports them as tuples (``tokenwire._core.QuicEngine``: a str tag,
    the connection id, then the event's fields) to ``conn``; False for an event that is not the session layer's
    (``connected``, ``datagram``, ``writable``: the adapter's own) or one it did not take (a reset or
    STOP_SENDING of a stream that is not a request stream)."""
    tag = event[0]
    if tag == "headers":
        conn.headers_received(event[2], event[3], event[4], now)
    elif tag == "data":
        conn.data_received(event[2], event[3], event[4])
    elif tag == "wt_stream":
        conn.wt_stream_data(event[2], event[3], event[4], event[5], now)
    elif tag == "reset":
        return conn.stream_reset(event[2], event[3])
    elif tag == "stop_sending":
        return conn.stop_sending(event[2], event[3])
    elif tag == "settings":
        conn.settings_received(event[2], now)
    elif tag == "handshake":
        conn.handshake_completed(now)
    elif tag == "closed":
        conn.connection_terminated()
    else:
        return False
    return True
