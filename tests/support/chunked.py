"""Chunked HTTP/1.1 bodies (RFC 9112 §7.1) as raw socket reads get them, for tests that read a server's bytes."""

from __future__ import annotations

__all__ = ["dechunk", "split_response"]


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """``(body, complete)``: the body of a chunked message as far as it arrived (a cut chunk keeps the bytes
    that came), and whether its last chunk (``0 CRLF CRLF``) came. Anything but chunk framing raises."""
    out: list[bytes] = []
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break  # cut inside a size line
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert rest == b"\r\n", f"bytes after the last chunk: {rest[:40]!r}"
            return b"".join(out), True
        out.append(rest[:size])
        tail = rest[size : size + 2]
        assert tail == b"\r\n"[: len(tail)], f"chunk of {size} bytes not followed by CRLF: {rest[:80]!r}"
        data = rest[size + 2 :]
    return b"".join(out), False


def split_response(raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """``(status line, headers with lower-case names, body bytes as sent)`` of one raw response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.encode("latin-1"), headers, body
