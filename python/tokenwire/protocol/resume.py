"""Stream ids, epochs and resume points (the SSE ``id:`` field / ``Last-Event-ID``).

Every event a stream sends carries the id ``{stream_id}:{epoch}:{seq}``, so a bare ``Last-Event-ID`` names
the stream, the history it belongs to and the last seq the client holds: enough to resume.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from tokenwire.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "MAX_EPOCH_LEN",
    "MAX_SEQ",
    "MAX_STREAM_ID_LEN",
    "ResumePoint",
    "format_id_prefix",
    "is_epoch",
    "is_stream_id",
    "new_epoch",
    "new_stream_id",
    "parse_resume_point",
    "validate_epoch",
    "validate_stream_id",
]

MAX_STREAM_ID_LEN = 128
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
# Seqs are QUIC varints on the binary wire: at most 2**62 - 1, i.e. at most 19 decimal digits.
_SEQ_RE = re.compile(r"0|[1-9][0-9]{0,18}")
MAX_SEQ = (1 << 62) - 1
MAX_EPOCH_LEN = 64


def new_stream_id() -> str:
    """A fresh, unguessable stream id: 128 random bits, URL-safe base64 (22 characters)."""
    return secrets.token_urlsafe(16)


def new_epoch() -> str:
    """A fresh epoch: 48 random bits, URL-safe base64 (8 characters)."""
    return secrets.token_urlsafe(6)


def is_stream_id(text: str) -> bool:
    """1-128 characters of ``[A-Za-z0-9_-]``."""
    return len(text) <= MAX_STREAM_ID_LEN and _TOKEN_RE.fullmatch(text) is not None


def validate_stream_id(stream_id: str, error: type[ProtocolError] = LocalProtocolError) -> str:
    """Returns ``stream_id`` if it is 1-128 characters of ``[A-Za-z0-9_-]``; else raises ``error`` (the
    caller's fault by default; ``RemoteProtocolError`` for an id that came from the peer)."""
    if not is_stream_id(stream_id):
        raise error(f"stream id must be 1-{MAX_STREAM_ID_LEN} characters of [A-Za-z0-9_-]: {stream_id!r}")
    return stream_id


def is_epoch(text: str) -> bool:
    """1-64 characters of ``[A-Za-z0-9_-]``: what an epoch may be in a resume point, on either wire."""
    return len(text) <= MAX_EPOCH_LEN and _TOKEN_RE.fullmatch(text) is not None


def validate_epoch(epoch: str, error: type[ProtocolError] = RemoteProtocolError) -> str:
    """Returns ``epoch`` if :func:`is_epoch`; else raises ``error`` (400). A malformed epoch is a malformed
    resume point, answered before any epoch comparison (which would say 409 ``EpochMismatch``)."""
    if not is_epoch(epoch):
        raise error(f"epoch must be 1-{MAX_EPOCH_LEN} characters of [A-Za-z0-9_-]: {epoch!r}")
    return epoch


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
        return f"{format_id_prefix(self.stream_id, self.epoch)}{self.seq}"


def parse_resume_point(text: str) -> ResumePoint:
    """Parses ``{stream_id}:{epoch}:{seq}``; ``RemoteProtocolError`` (400) if it is not one."""
    if len(text) > MAX_STREAM_ID_LEN + 96:
        raise RemoteProtocolError("resume point is too long")
    parts = text.strip(" \t").split(":")
    if len(parts) != 3:
        raise RemoteProtocolError(f"resume point must be '<stream_id>:<epoch>:<seq>', got {text!r}")
    stream_id, epoch, seq = parts
    if not is_stream_id(stream_id):
        raise RemoteProtocolError(f"malformed stream id in resume point {text!r}")
    if not is_epoch(epoch):
        raise RemoteProtocolError(f"malformed epoch in resume point {text!r}")
    if not _SEQ_RE.fullmatch(seq) or int(seq) > MAX_SEQ:
        raise RemoteProtocolError(f"malformed seq in resume point {text!r}")
    return ResumePoint(stream_id, epoch, int(seq))
