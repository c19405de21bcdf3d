"""Stream ids, epochs and resume points (the SSE ``id:`` field / ``Last-Event-ID``).

Every event a stream sends carries the id ``{stream_id}:{epoch}:{seq}``, so a bare ``Last-Event-ID`` names
the stream, the history it belongs to and the last seq the client holds: enough to resume.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from tokenwire.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_STREAM_ID_LEN",
    "ResumePoint",
    "format_id_prefix",
    "new_epoch",
    "new_stream_id",
    "parse_resume_point",
    "validate_stream_id",
]

MAX_STREAM_ID_LEN = 128
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
# Seqs are QUIC varints on the binary wire: at most 2**62 - 1, i.e. at most 19 decimal digits.
_SEQ_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_SEQ = (1 << 62) - 1


def new_stream_id() -> str:
    """A fresh, unguessable stream id: 128 random bits, URL-safe base64 (22 characters)."""
    return secrets.token_urlsafe(16)


def new_epoch() -> str:
    """A fresh epoch: 48 random bits, URL-safe base64 (8 characters)."""
    return secrets.token_urlsafe(6)


def validate_stream_id(stream_id: str) -> str:
    """Returns ``stream_id`` if it is 1-128 characters of ``[A-Za-z0-9_-]``; else ``LocalProtocolError``."""
    if len(stream_id) > MAX_STREAM_ID_LEN or not _TOKEN_RE.fullmatch(stream_id):
        raise LocalProtocolError(f"stream id must be 1-{MAX_STREAM_ID_LEN} characters of [A-Za-z0-9_-]: {stream_id!r}")
    return stream_id


def format_id_prefix(stream_id: str, epoch: str) -> str:
    """The part of every event id before the seq."""
    return f"{stream_id}:{epoch}:"


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a client stands: the last seq it holds of ``stream_id`` in history ``epoch``."""

    stream_id: str
    epoch: str
    seq: int

    def __str__(self) -> str:
        return f"{self.stream_id}:{self.epoch}:{self.seq}"


def parse_resume_point(text: str) -> ResumePoint:
    """Parses ``{stream_id}:{epoch}:{seq}``; ``RemoteProtocolError`` (400) if it is not one."""
    if len(text) > MAX_STREAM_ID_LEN + 96:
        raise RemoteProtocolError("resume point is too long")
    parts = text.strip(" \t").split(":")
    if len(parts) != 3:
        raise RemoteProtocolError(f"resume point must be '<stream_id>:<epoch>:<seq>', got {text!r}")
    stream_id, epoch, seq = parts
    if len(stream_id) > MAX_STREAM_ID_LEN or not _TOKEN_RE.fullmatch(stream_id):
        raise RemoteProtocolError(f"malformed stream id in resume point {text!r}")
    if len(epoch) > 64 or not _TOKEN_RE.fullmatch(epoch):
        raise RemoteProtocolError(f"malformed epoch in resume point {text!r}")
    if not _SEQ_RE.fullmatch(seq) or int(seq) > _MAX_SEQ:
        raise RemoteProtocolError(f"malformed seq in resume point {text!r}")
    return ResumePoint(stream_id, epoch, int(seq))
