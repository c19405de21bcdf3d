"""Sans-I/O HTTP/1.1 requests on httptools: bytes in, :class:`Request` objects out, limits enforced.

Pipelined requests in one buffer come out in order. Anything malformed or over a limit raises
:class:`HttpError` with the status to answer (400, 413, 414, 431, 501), and the connection is then closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl

import httptools

from tokenwire.errors import RemoteProtocolError

__all__ = [
    "LAST_CHUNK",
    "HttpError",
    "HttpLimits",
    "Request",
    "RequestParser",
    "check_body_size",
    "chunk",
    "parse_query",
    "render_head",
    "render_response",
]


class HttpError(RemoteProtocolError):
    """A request that cannot be served; ``status`` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.status_hint = status


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    max_url_bytes: int = 8 * 1024
    max_body_bytes: int = 1 << 20


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    keep_alive: bool = True
    http_version: str = "1.1"
    #: Header names in the order received (lower case), for diagnostics.
    header_names: list[str] = field(default_factory=list)


class RequestParser:
    """Feed bytes; get complete requests. One instance per connection."""

    def __init__(self, limits: HttpLimits | None = None) -> None:
        self.limits = limits or HttpLimits()
        self._parser = httptools.HttpRequestParser(self)
        self._done: list[Request] = []
        #: True from the first byte of a request until it is complete (a header timer runs meanwhile).
        self.busy = False
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._names: list[str] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._last_name = ""

    @property
    def partial_headers(self) -> Mapping[str, str]:
        """The headers of the request being parsed, as far as they have arrived (lower-case names): what the
        answer to a request refused before it was complete (413, 431, 408) can go by, such as its ``Origin``."""
        return self._headers

    def feed(self, data: bytes) -> list[Request]:
        """Parse ``data``; returns the requests it completed. ``HttpError`` on anything unservable."""
        try:
            self._parser.feed_data(data)
        except HttpError:
            raise
        except httptools.HttpParserCallbackError as exc:
            # httptools wraps what our callbacks raised; the limit error is the one to answer with.
            cause = exc.__context__
            if isinstance(cause, HttpError):
                raise cause from None
            raise HttpError(400, f"malformed HTTP request: {exc}") from None
        except httptools.HttpParserUpgrade:
            raise HttpError(501, "protocol upgrades are not supported on this endpoint") from None
        except httptools.HttpParserError as exc:
            raise HttpError(400, f"malformed HTTP request: {exc}") from None
        done, self._done = self._done, []
        return done

    # -- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.busy = True
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url_bytes:
            raise HttpError(414, f"request target longer than {self.limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            raise HttpError(431, f"request headers larger than {self.limits.max_header_bytes} bytes")
        key = name.decode("latin-1").lower()
        if key not in self._headers:
            if len(self._names) >= self.limits.max_headers:
                raise HttpError(431, f"more than {self.limits.max_headers} request headers")
            self._names.append(key)
        self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        check_body_size(self._headers.get("content-length"), 0, self.limits.max_body_bytes)

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        check_body_size(None, self._body_len, self.limits.max_body_bytes)
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.busy = False
        parser = self._parser
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise HttpError(400, "malformed request target") from None
        try:
            path = url.path.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "request target is not UTF-8") from None
        query = parse_query(url.query or b"")
        self._done.append(
            Request(
                method=parser.get_method().decode("latin-1"),
                path=path,
                query=query,
                headers=self._headers,
                body=b"".join(self._body),
                keep_alive=parser.should_keep_alive(),
                http_version=parser.get_http_version(),
                header_names=self._names,
            )
        )


def check_body_size(content_length: str | None, received: int, limit: int) -> None:
    """413 for a declared ``Content-Length`` (or a malformed one) or a body received so far above ``limit``."""
    if (
        content_length is not None and (not content_length.isdigit() or int(content_length) > limit)
    ) or received > limit:
        raise HttpError(413, f"request body larger than {limit} bytes")


def parse_query(raw: bytes) -> dict[str, str]:
    """A request target's query string as a dict (the last of repeated names wins); 400 unless UTF-8."""
    if not raw:
        return {}
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise HttpError(400, "request target is not UTF-8") from None


def render_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """Status line and headers, ending with the blank line. A status without a registered reason phrase (an
    upstream's 520, passed on) gets an empty one, as RFC 9112 allows."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def render_response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    keep_alive: bool,
    extra: list[tuple[str, str]] | None = None,
    send_body: bool = True,
) -> bytes:
    """A complete response with a body (``send_body=False``: the head only, as the answer to ``HEAD``, its
    Content-Length that of the body). 204 and 304 carry neither a body nor Content-Length (RFC 9110 §8.6);
    an empty ``content_type`` leaves Content-Type out."""
    headers = [("Content-Type", content_type)] if content_type else []
    if status not in (204, 304):
        headers.append(("Content-Length", str(len(body))))
    if extra:
        headers.extend(extra)
    headers.append(("Connection", "keep-alive" if keep_alive else "close"))
    head = render_head(status, headers)
    return head + body if send_body and status not in (204, 304) else head


#: The end of a chunked body (no trailers). Written only when a response ends normally: a body cut without it
#: is an error to every HTTP client, so a network cut can never pass for a complete answer.
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (RFC 9112 §7.1); ``b""`` for no data (an empty chunk would end
    the body)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)
