"""WebTransport requests and replies (docs/protocol.md §3.1 and §4.4): sans-I/O.

A client opens one bidirectional WebTransport stream per request and writes one **request message**: start a
generation, attach to a stream (resume), or cancel one. The server writes one **reply message** first (the
stream it attached, a cancel confirmation, or a typed error), then, on an attached stream, the core's binary
frames (§3) until the final frame, then FIN.

Message layout (both directions)::

    kind: u8 | len: varint | body: len bytes, a UTF-8 JSON object

Kinds 0x11-0x13 are requests, 0x21-0x23 replies; none collides with a frame kind (1-4), so a reader that
confuses the two fails at once. Decoding is incremental (any split of the bytes), bounded (``max_bytes``)
and typed: ``FrameError`` for bytes that are not a message, ``RequestTooLarge`` (413) past the bound,
``RemoteProtocolError`` for a message whose fields are wrong.

Stream resets carry WebTransport application error codes (:class:`WtCode`), which travel in QUIC as
HTTP/3 error codes (:func:`http3_error_code`, draft-ietf-webtrans-http3 §4.3).

Nothing here does I/O or reads a clock; the server and client adapters move the bytes.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from tokenwire import _core
from tokenwire.errors import (
    DuplicateStreamId,
    EpochMismatch,
    FrameError,
    GenerationRefused,
    HubFull,
    InvalidBody,
    LocalProtocolError,
    RemoteProtocolError,
    ResumeExpired,
    ResumeFromFuture,
    StreamNotFound,
    TokenwireError,
    error_fields,
    status_of,
)
from tokenwire.protocol.json_body import loads_object
from tokenwire.protocol.resume import MAX_EPOCH_LEN, MAX_SEQ, validate_epoch, validate_stream_id

__all__ = [
    "CAPSULE_CLOSE_SESSION",
    "CAPSULE_WT_MAX_DATA",
    "DEFAULT_MAX_MESSAGE",
    "MAX_PREVIEW_BYTES",
    "REPLY_CANCELLED",
    "REPLY_ERROR",
    "REPLY_STREAM",
    "REQUEST_ATTACH",
    "REQUEST_CANCEL",
    "REQUEST_START",
    "SERVER_FLOW_CONTROL_LIMIT",
    "SESSION_GONE",
    "SETTINGS_ENABLE_WEBTRANSPORT",
    "SETTINGS_WEBTRANSPORT_MAX_SESSIONS",
    "SETTINGS_WT_ENABLED",
    "SETTINGS_WT_INITIAL_MAX_DATA",
    "SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI",
    "SETTINGS_WT_INITIAL_MAX_STREAMS_UNI",
    "SETTINGS_WT_MAX_SESSIONS",
    "WT_FLOW_CONTROL_ERROR",
    "WT_PATH",
    "WT_PROTOCOLS",
    "AttachRequested",
    "CancelConfirmed",
    "CancelRequested",
    "CapsuleReader",
    "Message",
    "MessageReader",
    "Reply",
    "ReplyReader",
    "Request",
    "RequestFailed",
    "RequestReader",
    "RequestTooLarge",
    "SendCredit",
    "StartRequested",
    "StreamAttached",
    "WtCode",
    "code_for_status",
    "connect_fields",
    "connect_headers",
    "connect_query",
    "encode_capsule",
    "encode_message",
    "encode_preview",
    "encode_reply",
    "encode_request",
    "error_from_reply",
    "error_reply",
    "flow_control_enabled",
    "http3_error_code",
    "is_webtransport_connect",
    "max_data_of",
    "origin_allowed",
    "parse_preview",
    "parse_reply",
    "parse_request",
    "server_settings",
    "session_origin_allowed",
    "speaks_draft13_on",
    "wt_error_code",
]

#: The path of a WebTransport session (extended CONNECT ``:path``).
WT_PATH: Final = "/v1/webtransport"

REQUEST_START: Final = 0x11
REQUEST_ATTACH: Final = 0x12
REQUEST_CANCEL: Final = 0x13
REPLY_STREAM: Final = 0x21
REPLY_CANCELLED: Final = 0x22
REPLY_ERROR: Final = 0x23

REQUEST_KINDS: Final = frozenset((REQUEST_START, REQUEST_ATTACH, REQUEST_CANCEL))
REPLY_KINDS: Final = frozenset((REPLY_STREAM, REPLY_CANCELLED, REPLY_ERROR))

#: Largest message body accepted by default (what ``POST /v1/streams`` accepts as a body).
DEFAULT_MAX_MESSAGE: Final = 1 << 20


class WtCode(enum.IntEnum):
    """WebTransport application error codes of a token stream (RESET_STREAM / STOP_SENDING).

    On the wire they are mapped into the HTTP/3 error space with :func:`http3_error_code`.
    """

    #: Nothing wrong: the client stops reading a stream it no longer wants.
    NO_ERROR = 0x00
    #: The server failed (500).
    INTERNAL_ERROR = 0x01
    #: The server is shutting down: resume, elsewhere or later.
    SHUTDOWN = 0x02
    #: The server cut this stream (slow reader, ring moved past it): attach again from your position.
    RESUME = 0x10
    #: Malformed or invalid request (400).
    BAD_REQUEST = 0x11
    #: Unknown stream (404).
    STREAM_NOT_FOUND = 0x12
    #: Resume point of another epoch (409).
    EPOCH_MISMATCH = 0x13
    #: Resume point no longer held (410).
    RESUME_EXPIRED = 0x14
    #: Request message over the size limit (413).
    TOO_LARGE = 0x15
    #: Too many streams, or the hub's memory is full (503): retry later.
    BUSY = 0x16
    #: A start request's caller-chosen stream id is taken (409 ``DuplicateStreamId``).
    STREAM_EXISTS = 0x17


_CODE_BY_STATUS: Final = {
    400: WtCode.BAD_REQUEST,
    404: WtCode.STREAM_NOT_FOUND,
    409: WtCode.EPOCH_MISMATCH,
    410: WtCode.RESUME_EXPIRED,
    413: WtCode.TOO_LARGE,
    429: WtCode.BUSY,
    503: WtCode.BUSY,
}

#: HTTP/3 error code that resets a session's streams when the session is gone (draft-ietf-webtrans-http3).
SESSION_GONE: Final = 0x170D7B68

_WT_H3_FIRST: Final = 0x52E4A40FA8DB
_WT_H3_LAST: Final = 0x52E5AC983162


def code_for_status(status: int) -> WtCode:
    """The error code of an error reply with HTTP status ``status``."""
    if status in _CODE_BY_STATUS:
        return _CODE_BY_STATUS[status]
    return WtCode.BAD_REQUEST if 400 <= status < 500 else WtCode.INTERNAL_ERROR


def http3_error_code(code: int) -> int:
    """The HTTP/3 (QUIC) error code that carries WebTransport application error ``code`` (32 bits)."""
    if not 0 <= code <= 0xFFFFFFFF:
        raise LocalProtocolError(f"WebTransport error codes are 32-bit, got {code}")
    return _WT_H3_FIRST + code + code // 0x1E


def wt_error_code(h3_code: int) -> int | None:
    """The WebTransport application error code carried by an HTTP/3 error code; ``None`` if it carries none."""
    if not _WT_H3_FIRST <= h3_code <= _WT_H3_LAST or (h3_code - 0x21) % 0x1F == 0:
        return None  # outside the range, or a reserved (GREASE) codepoint
    shifted = h3_code - _WT_H3_FIRST
    return shifted - shifted // 0x1F


# -- messages ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded message: its kind and JSON object body."""

    kind: int
    body: dict[str, Any]


def encode_message(kind: int, body: Mapping[str, Any]) -> bytes:
    """``kind | len | body`` with ``body`` as compact JSON."""
    if not 0 <= kind <= 0xFF:
        raise LocalProtocolError(f"message kind must fit a byte, got {kind}")
    payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return bytes((kind,)) + _core.encode_varint(len(payload)) + payload


class RequestTooLarge(FrameError):
    """A request message longer than the receiver's limit."""

    status_hint = 413


class MessageReader:
    """Incremental decoder of ONE message: feed any split of the bytes.

    Errors are detected as early as possible: an unknown kind at its byte, an oversized body right after
    its length. After the first error the reader is poisoned: every later call raises it again. Bytes that
    arrive after the message are kept in :attr:`rest`; :attr:`whole` says that every byte of the message
    arrived (a body that then failed its checks included).
    """

    __slots__ = ("_buf", "_error", "_kinds", "_length", "_max", "message", "rest", "whole")

    def __init__(self, kinds: Iterable[int], max_bytes: int = DEFAULT_MAX_MESSAGE) -> None:
        self._kinds = frozenset(kinds)
        self._max = max_bytes
        self._buf = bytearray()  # grows in place: a large request in many pieces is not copied each time
        self._length: int | None = None
        self._error: FrameError | InvalidBody | None = None
        self.message: Message | None = None
        self.rest = b""
        self.whole = False

    def feed(self, data: bytes) -> Message | None:
        """The message once ``data`` completes it (returned once), else ``None``."""
        if self._error is not None:
            raise self._error
        if self.message is not None:
            self.rest += data
            return None
        buf = self._buf
        buf += data
        if self._length is not None and len(buf) < 1 + self._length:
            return None  # the body is still incomplete: nothing to parse yet
        try:
            return self._parse(buf)
        except (FrameError, InvalidBody) as exc:
            self._error = exc
            buf.clear()
            raise

    def _parse(self, buf: bytearray) -> Message | None:
        if not buf:
            return None
        kind = buf[0]
        if kind not in self._kinds:
            raise FrameError(f"unknown message kind 0x{kind:02x}")
        if self._length is None:
            decoded = _core.decode_varint(bytes(buf[1:9]))  # a varint takes 8 bytes at most
            if decoded is None:
                return None
            length, used = decoded
            if length > self._max:
                raise RequestTooLarge(f"message body of {length} bytes is over the limit of {self._max}")
            self._length = length
            del buf[1 : 1 + used]  # keep the kind byte, drop the length
        end = 1 + self._length
        if len(buf) < end:
            return None
        payload, self.rest = bytes(buf[1:end]), bytes(buf[end:])
        self.whole = True
        buf.clear()
        try:
            body = loads_object(payload, "message body")  # the checks of an HTTP request body
        except InvalidBody as exc:
            if exc.field:  # a member at fault (a lone surrogate): the message itself was well formed
                raise
            raise FrameError(str(exc)) from None
        self.message = Message(kind, body)
        return self.message

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back."""
        return len(self._buf)

    def close(self) -> None:
        """End of the stream: ``FrameError`` unless a whole message arrived."""
        if self._error is not None:
            raise self._error
        if self.message is None:
            self._error = FrameError(
                "the stream ended inside a message" if self._buf else "the stream ended before any message"
            )
            raise self._error


# -- requests (client -> server) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartRequested:
    """Start a generation and stream it from seq 0. ``params``: ``stream_id``, ``ttft``, ``tokens_per_s``,
    ``stamp`` as in ``POST /v1/streams`` (the server checks them)."""

    prompt: str
    max_tokens: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body, the same object ``POST /v1/streams`` takes."""
        out: dict[str, Any] = {**self.params, "prompt": self.prompt}
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        return out


@dataclass(frozen=True, slots=True)
class AttachRequested:
    """Attach to a stream after seq ``after`` (0: from the start). ``epoch`` is required when ``after > 0``.
    ``previews``: ask for datagram previews of new frames (§4.5; the server may refuse)."""

    stream_id: str
    epoch: str = ""
    after: int = 0
    previews: bool = False


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Stop a stream's generation (closing a stream never does)."""

    stream_id: str


Request = StartRequested | AttachRequested | CancelRequested


def encode_request(request: Request) -> bytes:
    if isinstance(request, StartRequested):
        return encode_message(REQUEST_START, request.body())
    if isinstance(request, AttachRequested):
        body: dict[str, Any] = {"stream_id": request.stream_id, "after": request.after}
        if request.epoch:
            body["epoch"] = request.epoch
        if request.previews:
            body["previews"] = True
        return encode_message(REQUEST_ATTACH, body)
    return encode_message(REQUEST_CANCEL, {"stream_id": request.stream_id})


def _stream_id(body: Mapping[str, Any]) -> str:
    value = body.get("stream_id")
    if not isinstance(value, str):
        raise RemoteProtocolError("'stream_id' (string) is required")
    return validate_stream_id(value, RemoteProtocolError)


def _previews(body: Mapping[str, Any]) -> bool:
    value = body.get("previews", False)
    if not isinstance(value, bool):
        raise InvalidBody("'previews' must be a boolean", "previews")
    return value


def parse_request(message: Message) -> Request:
    """The typed request of a message; ``RemoteProtocolError`` if a field is missing or malformed."""
    body = message.body
    if message.kind == REQUEST_START:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise InvalidBody("'prompt' (string) is required", "prompt")  # as POST /v1/streams answers
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
            raise InvalidBody("'max_tokens' must be an integer", "max_tokens")
        _previews(body)
        params = {k: v for k, v in body.items() if k not in ("prompt", "max_tokens")}
        return StartRequested(prompt, max_tokens, params)
    if message.kind == REQUEST_ATTACH:
        stream_id = _stream_id(body)
        epoch = body.get("epoch", "")
        if not isinstance(epoch, str):
            raise RemoteProtocolError(f"'epoch' must be a string of 1-{MAX_EPOCH_LEN} characters of [A-Za-z0-9_-]")
        if epoch:  # the rule of an SSE resume point's epoch: a malformed one is 400, not 409
            validate_epoch(epoch)
        after = body.get("after", 0)
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_SEQ:
            raise RemoteProtocolError("'after' must be an integer from 0 to 2**62-1")
        if after > 0 and not epoch:
            raise RemoteProtocolError("an attach after seq > 0 must name the epoch of its resume point")
        return AttachRequested(stream_id, epoch, after, _previews(body))
    if message.kind == REQUEST_CANCEL:
        return CancelRequested(_stream_id(body))
    raise FrameError(f"message kind 0x{message.kind:02x} is not a request")


class RequestReader:
    """Server side of one request stream: the request, once its bytes have arrived.

    A stream carries exactly one request; bytes after it are a protocol error. The client may end its
    side (FIN) right after the request, or keep it open.
    """

    __slots__ = ("_reader", "request")

    def __init__(self, max_bytes: int = DEFAULT_MAX_MESSAGE) -> None:
        self._reader = MessageReader(REQUEST_KINDS, max_bytes)
        self.request: Request | None = None

    @property
    def whole(self) -> bool:
        """Every byte of the request message arrived and none followed (so only the stream's end may come),
        whether or not the request then passed its checks."""
        return self._reader.whole and not self._reader.rest

    def feed(self, data: bytes, end: bool = False) -> Request | None:
        """The request once ``data`` completes it (returned once). Raises ``FrameError``,
        ``RequestTooLarge`` or ``RemoteProtocolError``."""
        reader = self._reader
        message = reader.feed(data) if data or self.request is None else None
        if reader.rest:
            raise FrameError("a stream carries one request; bytes followed it")
        if end:
            reader.close()
        if message is None:
            return None
        self.request = parse_request(message)
        return self.request


# -- replies (server -> client) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamAttached:
    """The stream this request stream now carries: frames after seq ``after`` of ``stream_id`` in ``epoch``.
    ``preview``: the tag its datagram previews carry (§4.5), or 0 when none are sent."""

    stream_id: str
    epoch: str
    after: int
    preview: int = 0

    @property
    def previews(self) -> bool:
        return self.preview > 0


@dataclass(frozen=True, slots=True)
class CancelConfirmed:
    stream_id: str


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A typed error answer: ``type`` is the class name of :mod:`tokenwire.errors` (or ``HttpError``),
    ``status`` the HTTP status the SSE server answers in the same case, ``code`` a :class:`WtCode`.
    ``extra``: ``oldest_seq``, ``last_seq``, ``epoch`` or ``field`` as in docs/protocol.md §4.2."""

    type: str
    message: str
    status: int
    code: int
    extra: dict[str, Any] = field(default_factory=dict)


Reply = StreamAttached | CancelConfirmed | RequestFailed


def encode_reply(reply: Reply) -> bytes:
    if isinstance(reply, StreamAttached):
        body = {"stream_id": reply.stream_id, "epoch": reply.epoch, "after": reply.after}
        if reply.preview:
            body["preview"] = reply.preview
        return encode_message(REPLY_STREAM, body)
    if isinstance(reply, CancelConfirmed):
        return encode_message(REPLY_CANCELLED, {"stream_id": reply.stream_id})
    body = {"type": reply.type, "message": reply.message, "status": reply.status, "code": reply.code}
    return encode_message(REPLY_ERROR, body | {k: v for k, v in reply.extra.items() if k not in body})


def parse_reply(message: Message) -> Reply:
    body = message.body
    try:
        if message.kind == REPLY_STREAM:
            after = body["after"]
            if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_SEQ:
                raise RemoteProtocolError("'after' must be an integer from 0 to 2**62-1")
            preview = body.get("preview", 0)
            if isinstance(preview, bool) or not isinstance(preview, int) or not 0 <= preview <= MAX_SEQ:
                raise RemoteProtocolError("'preview' must be an integer from 0 to 2**62-1")
            return StreamAttached(_stream_id(body), str(body["epoch"]), after, preview)
        if message.kind == REPLY_CANCELLED:
            return CancelConfirmed(_stream_id(body))
        if message.kind == REPLY_ERROR:
            status, code = body.get("status", 500), body.get("code", WtCode.INTERNAL_ERROR)
            if not isinstance(status, int) or not isinstance(code, int):
                raise RemoteProtocolError("error 'status' and 'code' must be integers")
            extra = {k: v for k, v in body.items() if k not in ("type", "message", "status", "code")}
            return RequestFailed(str(body.get("type", "")), str(body.get("message", "")), status, code, extra)
    except KeyError as exc:
        raise RemoteProtocolError(f"reply without {exc}") from None
    raise FrameError(f"message kind 0x{message.kind:02x} is not a reply")


def error_reply(exc: BaseException) -> RequestFailed:
    """The error answer for an exception raised while serving a request (docs/protocol.md §4.4)."""
    status = status_of(exc)
    message = str(exc) if isinstance(exc, TokenwireError) else "internal server error"
    code = WtCode.STREAM_EXISTS if isinstance(exc, DuplicateStreamId) else code_for_status(status)
    return RequestFailed(type(exc).__name__, message, status, int(code), error_fields(exc))


#: The typed errors a reply names that keep their own status (the others take the reply's).
_TYPED: dict[str, Callable[[RequestFailed], TokenwireError]] = {
    "StreamNotFound": lambda r: StreamNotFound(r.message),
    "EpochMismatch": lambda r: EpochMismatch(r.message, expected=str(r.extra.get("epoch", ""))),
    "ResumeExpired": lambda r: ResumeExpired(r.message, _int(r.extra.get("oldest_seq"))),
    "ResumeFromFuture": lambda r: ResumeFromFuture(r.message, _int(r.extra.get("last_seq"))),
    "HubFull": lambda r: HubFull(r.message),
    "DuplicateStreamId": lambda r: DuplicateStreamId(r.message),
    # The body the generator (an upstream) refused with is the message.
    "GenerationRefused": lambda r: GenerationRefused(r.status, r.message.encode()),
}


def error_from_reply(reply: RequestFailed) -> TokenwireError:
    """The typed exception a client raises for an error answer (the inverse of :func:`error_reply`)."""
    typed = _TYPED.get(reply.type)
    if typed is not None:
        return typed(reply)
    extra, message = reply.extra, reply.message
    exc: TokenwireError
    if reply.type == "RequestTooLarge":
        exc = RequestTooLarge(message)
    elif reply.type == "FrameError":
        exc = FrameError(message)
    elif reply.type == "InvalidBody":
        field = extra.get("field", "")
        exc = InvalidBody(message, field if isinstance(field, str) else "")
    else:
        exc = RemoteProtocolError(f"{reply.type} ({reply.status}): {message}")
    exc.status_hint = reply.status
    return exc


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ReplyReader:
    """Client side of one request stream: the reply message, then the core's binary frames.

    :meth:`feed` returns the frames completed so far as ``(kind, seq, payload)``; :attr:`reply` is set once
    the reply has arrived. Errors are ``FrameError``/``RemoteProtocolError``, raised by the call that meets
    them (frames completed before an error in the same call are returned, and the next call raises).
    """

    __slots__ = ("_frames", "_reader", "reply")

    def __init__(self, max_payload: int = _core.DEFAULT_MAX_PAYLOAD) -> None:
        self._reader = MessageReader(REPLY_KINDS, DEFAULT_MAX_MESSAGE)
        self._frames = _core.FrameDecoder(max_payload)
        self.reply: Reply | None = None

    def feed(self, data: bytes) -> list[tuple[int, int, str]]:
        if self.reply is None:
            message = self._reader.feed(data)
            if message is None:
                return []
            self.reply = parse_reply(message)
            data = self._reader.rest
            self._reader.rest = b""
            if not data:
                return []
        if data and not isinstance(self.reply, StreamAttached):
            raise FrameError("bytes after a reply that carries no stream")
        return self._frames.feed(data)

    def close(self) -> None:
        """End of the stream (FIN): ``FrameError`` if it ended inside the reply or a frame."""
        if self.reply is None:
            self._reader.close()
        self._frames.close()


# -- datagram previews (docs/protocol.md §4.5) -------------------------------------------------------

#: Largest preview payload a server sends (tag + frames): it must fit one QUIC packet of the
#: smallest size QUIC allows (1,200 bytes) with the packet's and the DATAGRAM frame's own bytes.
MAX_PREVIEW_BYTES: Final = 1000


def encode_preview(tag: int, frames: bytes) -> bytes:
    """One HTTP/3 datagram payload of a preview: ``tag: varint | binary frames (§3)``; the tag is the one
    the ``stream`` reply named (``StreamAttached.preview``)."""
    return _core.encode_varint(tag) + frames


def parse_preview(data: bytes) -> tuple[int, list[tuple[int, int, str]]]:
    """``(tag, frames)`` of a preview datagram; ``FrameError`` if it is not one (a preview holds
    whole frames only)."""
    head = _core.decode_varint(data)
    if head is None:
        raise FrameError("a preview datagram without its tag")
    tag, used = head
    decoder = _core.FrameDecoder(MAX_PREVIEW_BYTES)
    frames = decoder.feed(data[used:])
    decoder.close()
    return tag, frames


# -- the session (extended CONNECT, RFC 9220 / draft-ietf-webtrans-http3) ---------------------------


def connect_headers(
    authority: str, path: str = WT_PATH, origin: str | None = None, extra: Iterable[tuple[str, str]] = ()
) -> list[tuple[bytes, bytes]]:
    """Request headers of the extended CONNECT that opens a WebTransport session (``path`` may carry a query,
    such as ``?access_token=``); ``extra``: more headers (``authorization``), names in lower case."""
    headers = [
        (b":method", b"CONNECT"),
        (b":protocol", b"webtransport"),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
    ]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra]
    return headers


#: ``:protocol`` of a WebTransport extended CONNECT: ``webtransport`` (drafts up to 14, what browsers send) and
#: ``webtransport-h3`` (draft 15 on). The stream and datagram framing is the same in every one of them.
WT_PROTOCOLS: Final = frozenset((b"webtransport", b"webtransport-h3"))

#: HTTP/3 SETTINGS of WebTransport (besides SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 and SETTINGS_H3_DATAGRAM = 1,
#: which aioquic sends): each draft's way to say "WebTransport here" (docs/protocol.md §3.1 has the table of
#: browsers and drafts).
#: SETTINGS_ENABLE_WEBTRANSPORT (drafts 02-06; Chromium, Firefox, webtransport-go up to v0.10).
SETTINGS_ENABLE_WEBTRANSPORT: Final = 0x2B603742
#: SETTINGS_WEBTRANSPORT_MAX_SESSIONS (drafts 07-12; Chromium's quiche knows it as its draft 07).
SETTINGS_WEBTRANSPORT_MAX_SESSIONS: Final = 0xC671706A
#: SETTINGS_WT_MAX_SESSIONS (drafts 13-14; Safari 26.4 requires it >= 1).
SETTINGS_WT_MAX_SESSIONS: Final = 0x14E9CD29
#: SETTINGS_WT_ENABLED (draft 15 on; webtransport-go v0.11 on).
SETTINGS_WT_ENABLED: Final = 0x2C7CF000
#: The initial WebTransport flow control limits (drafts 12 on, the same codes in each): what the peer may open
#: and send in each session before a WT_MAX_STREAMS / WT_MAX_DATA capsule raises them.
SETTINGS_WT_INITIAL_MAX_DATA: Final = 0x2B61
SETTINGS_WT_INITIAL_MAX_STREAMS_UNI: Final = 0x2B64
SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI: Final = 0x2B65
_INITIAL_LIMITS: Final = (
    SETTINGS_WT_INITIAL_MAX_DATA,
    SETTINGS_WT_INITIAL_MAX_STREAMS_UNI,
    SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI,
)

#: The server's initial limits on a client, in every session: 2**60 streams of each kind and 2**60 bytes, more
#: than any session can use, so the server never has to raise them with capsules. A client is still bounded
#: where it matters: QUIC's stream and data flow control, the per-session stream limit (a 503 error reply) and
#: the request size limit (413).
SERVER_FLOW_CONTROL_LIMIT: Final = 1 << 60

#: Capsules (RFC 9297 §3.2) on a session's CONNECT stream that the server reads; others are skipped.
CAPSULE_CLOSE_SESSION: Final = 0x2843
CAPSULE_WT_MAX_DATA: Final = 0x190B4D3D
#: HTTP/3 error code that closes a session whose peer broke flow control (a WT_MAX_DATA that went down).
WT_FLOW_CONTROL_ERROR: Final = 0x045D4487


def server_settings(max_sessions: int) -> dict[int, int]:
    """The WebTransport SETTINGS of a server that accepts ``max_sessions`` sessions on one connection: every
    draft's, so a client of any of them finds its own, and the initial flow control limits
    (:data:`SERVER_FLOW_CONTROL_LIMIT`). Draft 13-14 clients need them with more than one session (Safari
    refuses a server that allows several sessions without them); sending them also says that this server does
    WebTransport flow control: a client that sends its own enables it (:func:`flow_control_enabled`)."""
    return {
        SETTINGS_ENABLE_WEBTRANSPORT: 1,
        SETTINGS_WEBTRANSPORT_MAX_SESSIONS: max_sessions,
        SETTINGS_WT_MAX_SESSIONS: max_sessions,
        SETTINGS_WT_ENABLED: 1,
        SETTINGS_WT_INITIAL_MAX_DATA: SERVER_FLOW_CONTROL_LIMIT,
        SETTINGS_WT_INITIAL_MAX_STREAMS_UNI: SERVER_FLOW_CONTROL_LIMIT,
        SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI: SERVER_FLOW_CONTROL_LIMIT,
    }


def flow_control_enabled(client_settings: Mapping[int, int]) -> bool:
    """Whether WebTransport flow control is on, given the client's SETTINGS and the server's
    (:func:`server_settings`, which declare it): the client declares it too with a non-zero initial limit
    (drafts 12 on) or more than one session in SETTINGS_WT_MAX_SESSIONS (drafts 13-14) (draft 14 §5.1)."""
    return (
        any(client_settings.get(code, 0) for code in _INITIAL_LIMITS)
        or client_settings.get(SETTINGS_WT_MAX_SESSIONS, 0) > 1
    )


def speaks_draft13_on(client_settings: Mapping[int, int]) -> bool:
    """Whether the client speaks draft 13 or later (it sends SETTINGS_WT_MAX_SESSIONS or SETTINGS_WT_ENABLED):
    without flow control such a client may hold one session per connection (draft 14 §5.1)."""
    return bool(client_settings.get(SETTINGS_WT_MAX_SESSIONS, 0) or client_settings.get(SETTINGS_WT_ENABLED, 0))


class SendCredit:
    """WebTransport flow control of what this endpoint sends in one session (draft 14 §5.4): the peer's limit
    (its SETTINGS_WT_INITIAL_MAX_DATA, 0 when absent, then WT_MAX_DATA capsules) and the stream bytes sent so
    far (every byte this endpoint writes on the session's streams counts; datagrams do not)."""

    __slots__ = ("blocked_at", "limit", "sent")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0
        #: The limit a WT_DATA_BLOCKED capsule was last sent at (one per limit).
        self.blocked_at = -1

    @property
    def available(self) -> int:
        return max(0, self.limit - self.sent)

    def take(self, wanted: int) -> int:
        """Use up to ``wanted`` bytes of credit; returns how many may be sent now."""
        granted = min(wanted, self.available)
        self.sent += granted
        return granted

    def raise_limit(self, limit: int) -> None:
        """A WT_MAX_DATA capsule: the new limit; ``RemoteProtocolError`` if it is lower than the last one."""
        if limit < self.limit:
            raise RemoteProtocolError(f"WT_MAX_DATA went down from {self.limit} to {limit}")
        self.limit = limit

    def blocked(self) -> bytes:
        """The WT_DATA_BLOCKED capsule to send when a write finds no credit (``b""``: sent already at this
        limit)."""
        if self.blocked_at == self.limit:
            return b""
        self.blocked_at = self.limit
        return encode_capsule(_CAPSULE_WT_DATA_BLOCKED, _core.encode_varint(self.limit))


_CAPSULE_WT_DATA_BLOCKED: Final = 0x190B4D41
#: The largest capsule value the reader keeps (CLOSE_WEBTRANSPORT_SESSION's message is at most 1,024 bytes);
#: the values of longer capsules, and of every capsule it does not read, are skipped as they arrive.
_MAX_CAPSULE_VALUE: Final = 4096
_READ_CAPSULES: Final = frozenset((CAPSULE_CLOSE_SESSION, CAPSULE_WT_MAX_DATA))


def encode_capsule(capsule_type: int, value: bytes) -> bytes:
    """``type | length | value`` (RFC 9297 §3.2), for the DATA frames of a CONNECT stream."""
    return _core.encode_varint(capsule_type) + _core.encode_varint(len(value)) + value


class CapsuleReader:
    """Incremental reader of the capsules of a session's CONNECT stream (the payload of its DATA frames): feed
    any split of the bytes; get ``(type, value)`` of each complete capsule the server acts on (WT_MAX_DATA,
    CLOSE_WEBTRANSPORT_SESSION). Other capsules are skipped, whatever their length, without being kept."""

    __slots__ = ("_buf", "_skip")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of a skipped capsule's value still to come

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        buf = self._buf
        buf += data
        while buf:
            if self._skip:
                dropped = min(self._skip, len(buf))
                del buf[:dropped]
                self._skip -= dropped
                continue
            head = _core.decode_varint(bytes(buf[:8]))
            if head is None:
                break
            capsule_type, used = head
            size = _core.decode_varint(bytes(buf[used : used + 8]))
            if size is None:
                break
            length, used_length = size
            start = used + used_length
            if capsule_type not in _READ_CAPSULES or length > _MAX_CAPSULE_VALUE:
                del buf[:start]
                self._skip = length
                continue
            if len(buf) < start + length:
                break
            out.append((capsule_type, bytes(buf[start : start + length])))
            del buf[: start + length]
        return out


def max_data_of(value: bytes) -> int:
    """The Maximum Data of a WT_MAX_DATA capsule's value; ``FrameError`` if it is not exactly one varint."""
    decoded = _core.decode_varint(value)
    if decoded is None or decoded[1] != len(value):
        raise FrameError("a WT_MAX_DATA capsule holds one varint")
    return decoded[0]


def is_webtransport_connect(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bool, str]:
    """``(is an extended CONNECT for WebTransport (any draft's :protocol), its :path)`` of a request's headers."""
    fields = dict(headers)
    ok = fields.get(b":method") == b"CONNECT" and fields.get(b":protocol") in WT_PROTOCOLS
    return ok, fields.get(b":path", b"").decode("latin-1")


def connect_query(path: str) -> dict[str, str]:
    """The query parameters of a CONNECT's ``:path`` (the last of repeated names wins), as the HTTP endpoints
    read a request's: ``?access_token=`` is how a browser sends its credentials (docs/protocol.md §8)."""
    _, _, query = path.partition("?")
    return dict(parse_qsl(query, keep_blank_values=True, errors="replace"))


def connect_fields(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The regular (not pseudo-) headers of a CONNECT, lower-case names, as the HTTP endpoints see a request's
    (several fields of one name joined by ``, ``)."""
    fields: dict[str, str] = {}
    for name, value in headers:
        if name.startswith(b":"):
            continue
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    return fields


def origin_allowed(allow_origins: tuple[str, ...], origin: str | None) -> bool:
    """Whether CORS lets a page on ``origin`` (a request's ``Origin``) read the answers (``*``: any page)."""
    return origin is not None and ("*" in allow_origins or origin in allow_origins)


def session_origin_allowed(allow_origins: tuple[str, ...], origin: str | None, authority: str) -> bool:
    """Whether a WebTransport session may be opened from a page on ``origin`` (the CONNECT's ``Origin``), as CORS
    would let the page read the HTTP endpoints' answers: yes without ``Origin`` (not a browser), for an allowed
    origin, and for a page of this server itself (the origin's host and port are the CONNECT's ``:authority``:
    ``tokenwire serve`` serves its pages and WebTransport on one port number); with CORS off (no allowed origins)
    no other page, as no other page can read an HTTP answer then."""
    if origin is None or origin_allowed(allow_origins, origin):
        return True
    own = urlsplit(origin)
    return bool(own.netloc) and own.netloc == authority.lower()
