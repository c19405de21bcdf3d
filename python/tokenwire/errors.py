"""The exceptions tokenwire raises: one hierarchy, each class says whose fault it is.

``ProtocolError`` subclasses are also ``ValueError``s. ``status_hint`` is the HTTP status a server answers
with when the error reaches a client.
"""

from __future__ import annotations

__all__ = [
    "BackpressureExceeded",
    "DuplicateStreamId",
    "EpochMismatch",
    "FrameError",
    "GenerationRefused",
    "HubFull",
    "InvalidBody",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "ResumeError",
    "ResumeExpired",
    "ResumeFromFuture",
    "StorageUnavailable",
    "StreamClosed",
    "StreamFailed",
    "StreamNotFound",
    "TokenwireError",
    "UpstreamError",
    "error_fields",
    "status_of",
]


class TokenwireError(Exception):
    """Base class of every tokenwire error."""

    status_hint: int = 500


class ProtocolError(TokenwireError, ValueError):
    """Bytes or calls that break the wire contract."""

    status_hint = 400


class LocalProtocolError(ProtocolError):
    """This side misused the API: an SSE id with CR/LF/NUL, a payload over a bound, a bad frame kind."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed: a bad request, a bad ``Last-Event-ID``."""


class InvalidBody(RemoteProtocolError):
    """A request body that cannot be used: not UTF-8 JSON, not an object, nested too deep, a member of the wrong
    type or range, or a string that is not Unicode text. ``field`` names the member (``""``: the whole body)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class FrameError(RemoteProtocolError):
    """A binary frame that cannot be decoded: unknown kind, oversized, not UTF-8, truncated at close."""


class DuplicateStreamId(RemoteProtocolError):
    """A start request names a caller-chosen stream id the hub already holds (409, on SSE and WebTransport)."""

    status_hint = 409


class ResumeError(TokenwireError):
    """A resume point that cannot be served."""


class StreamNotFound(ResumeError, LookupError):
    """No such stream: never created, cancelled and removed, or expired after its time-to-live."""

    status_hint = 404


class EpochMismatch(ResumeError):
    """The resume point belongs to another history of the hub (for example before a restart)."""

    status_hint = 409

    def __init__(self, message: str, expected: str = "", got: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class ResumeExpired(ResumeError):
    """The frames after the resume point are no longer held; ``oldest_seq`` is the oldest still held."""

    status_hint = 410

    def __init__(self, message: str, oldest_seq: int = 0) -> None:
        super().__init__(message)
        self.oldest_seq = oldest_seq


class ResumeFromFuture(ResumeError, ValueError):
    """The resume point names a seq the stream has not produced; ``last_seq`` is the newest produced."""

    status_hint = 400

    def __init__(self, message: str, last_seq: int = 0) -> None:
        super().__init__(message)
        self.last_seq = last_seq


class HubFull(TokenwireError):
    """The hub's memory cap is held by open streams; no new stream can start until some end."""

    status_hint = 503


class StorageUnavailable(TokenwireError):
    """The shared stream storage (Redis) does not answer: no stream can start, and a stream another node
    produced cannot be resumed here, until it does (streams already running go on serving their readers)."""

    status_hint = 503


class StreamClosed(TokenwireError):
    """The stream has ended (finished, failed or cancelled); nothing more can be sent to it."""

    status_hint = 409


class StreamFailed(TokenwireError):
    """The generation behind a stream failed; the server sent an ``error`` event (``code``, ``message``)."""

    status_hint = 502

    def __init__(self, message: str, code: str = "generation_failed") -> None:
        super().__init__(message)
        self.code = code


class GenerationRefused(TokenwireError):
    """A generator refused a request before its first token (an upstream's non-2xx answer, say): the request is
    answered with exactly this ``status``, ``body`` and ``content_type`` (a WebTransport error reply carries the
    status and the body as its message), and no stream starts."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        text = body.decode("utf-8", "replace")
        super().__init__(text if len(text) <= 4096 else text[:4095] + "…")
        self.status = status
        self.body = body
        self.content_type = content_type


class UpstreamError(TokenwireError):
    """The OpenAI-compatible upstream behind :class:`tokenwire.proxy.UpstreamProxy` failed after its answer
    started: ``code`` ``upstream_timeout`` (no chunk within a timeout) or ``upstream_error`` (the connection cut,
    a malformed stream, an error the upstream sent mid-stream). The stream ends with an ``error`` event with that
    code and this message."""

    status_hint = 502

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class BackpressureExceeded(TokenwireError):
    """A reader fell too far behind; its connection is closed and it resumes from the ring."""

    status_hint = 503


def status_of(exc: BaseException) -> int:
    """The HTTP status a server answers for ``exc``: its ``status`` (``HttpError``) or ``status_hint``, else 500."""
    status = getattr(exc, "status", None) or getattr(exc, "status_hint", None)
    return status if isinstance(status, int) else 500


def error_fields(exc: BaseException) -> dict[str, object]:
    """The extra fields of an error answer (docs/protocol.md §4.2): ``oldest_seq``, ``last_seq``, ``epoch``
    (resume errors) and ``field`` (the request member an ``InvalidBody`` names)."""
    fields: dict[str, object] = {
        key: getattr(exc, attr)
        for attr, key in (("oldest_seq", "oldest_seq"), ("last_seq", "last_seq"), ("expected", "epoch"))
        if hasattr(exc, attr)
    }
    field = getattr(exc, "field", "")
    if field and isinstance(field, str):
        fields["field"] = field
    return fields
