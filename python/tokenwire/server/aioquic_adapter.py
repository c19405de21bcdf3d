"""Every access the WebTransport server makes to aioquic's private attributes, in one place.

aioquic has no public API for what these do (buffered bytes of a stream, the H3 layer's per-stream state, the
peer's bidirectional stream limit, an unknown frame type, extra SETTINGS); each function says what it reads. A
new aioquic version that moves one of them breaks this module and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioquic._buffer import Buffer
from aioquic.h3.connection import FrameType, H3Connection
from aioquic.quic.connection import QuicConnection, QuicConnectionError
from aioquic.quic.packet import QuicErrorCode

from tokenwire import _core
from tokenwire.protocol.webtransport import server_settings

__all__ = [
    "ServerH3",
    "forget_h3_stream",
    "grant_bidi_streams",
    "install_reset_stream_at",
    "pending_datagrams",
    "remote_max_datagram_frame_size",
    "send_buffered",
    "trim_datagrams",
    "webtransport_session_of",
]


def send_buffered(quic: QuicConnection, stream_id: int) -> int:
    """Bytes of a stream still in QUIC's send buffer: not yet sent, or sent and not yet acknowledged (the
    sender's buffer offsets)."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return sender._buffer_stop - sender._buffer_start


def remote_max_datagram_frame_size(quic: QuicConnection) -> int:
    """The peer's ``max_datagram_frame_size`` transport parameter (0: it takes no DATAGRAM frames)."""
    return quic._remote_max_datagram_frame_size or 0


def trim_datagrams(quic: QuicConnection, keep: int) -> int:
    """Drop the oldest datagrams waiting in QUIC's queue beyond the newest ``keep``; returns how many went."""
    pending = quic._datagrams_pending
    excess = len(pending) - keep
    if excess <= 0:
        return 0
    for _ in range(excess):
        pending.popleft()
    return excess


def pending_datagrams(quic: QuicConnection) -> int:
    """Datagrams waiting in QUIC's queue (not sent yet)."""
    return len(quic._datagrams_pending)


def webtransport_session_of(h3: H3Connection, stream_id: int) -> int | None:
    """The session of a bidirectional stream whose WebTransport header (signal 0x41 + session id) the H3 layer
    has read, else ``None``.

    aioquic emits no event for a stream that carried the header and nothing else (it has no data to report),
    so the server would never see such a stream open; this reads the H3 layer's stream state instead.
    """
    stream = h3._stream.get(stream_id)
    if stream is None or stream.frame_type != FrameType.WEBTRANSPORT_STREAM:
        return None
    session_id: int | None = stream.session_id
    return session_id


def forget_h3_stream(h3: H3Connection, stream_id: int) -> None:
    """aioquic's H3 layer never ends the send half of a WebTransport stream, so it would keep the stream's state
    for the whole connection: drop it once both halves are done."""
    h3._stream.pop(stream_id, None)


def grant_bidi_streams(quic: QuicConnection, count: int) -> None:
    """Let the peer open ``count`` bidirectional streams at once (QUIC ``initial_max_streams_bidi``, then one
    more for each that closes). aioquic fixes it at 128 with no option: this sets its private limit before the
    handshake sends the transport parameters."""
    limit = quic._local_max_streams_bidi
    if limit.used == 0 and limit.value == limit.sent:
        limit.value = limit.sent = count


class ServerH3(H3Connection):
    """aioquic's HTTP/3 with WebTransport on, announcing the SETTINGS of every WebTransport draft (aioquic
    sends only draft 02's SETTINGS_ENABLE_WEBTRANSPORT): a client of a newer draft finds its own."""

    def __init__(self, quic: QuicConnection, max_sessions: int) -> None:
        self._wt_settings = server_settings(max_sessions)
        super().__init__(quic, enable_webtransport=True)

    def _get_local_settings(self) -> dict[int, int]:
        return {**super()._get_local_settings(), **self._wt_settings}


#: draft-ietf-quic-reliable-stream-reset: the ``reset_stream_at`` transport parameter (empty) and its frame,
#: RESET_STREAM_AT (stream id, error code, final size, reliable size). webtransport-go v0.12 on refuses a
#: server that does not announce it.
_RESET_STREAM_AT_PARAMETER = 0x17F7586D2CB571
_RESET_STREAM_AT_FRAME = 0x24
_RESET_STREAM_FRAME = 0x04
_STREAM_FRAMES = range(0x08, 0x10)


class _ResetStreamAt:
    """Announces ``reset_stream_at`` on one QUIC connection and handles RESET_STREAM_AT frames (aioquic knows
    neither).

    A peer resets a WebTransport stream with RESET_STREAM_AT so that the stream's first ``reliable_size``
    bytes (its header: 0x41 and the session id) are still delivered: the receiver must learn which session
    the stream belonged to. A RESET_STREAM_AT whose reliable bytes have all been delivered is a RESET_STREAM
    (aioquic's own handler: flow control, final size, the ``StreamReset`` event); otherwise it waits until
    STREAM frames have delivered them. Without this, such a frame would close the whole connection
    ("Unknown frame type").

    aioquic has no extension point for either, so this reads private members of the connection: the frame
    handler table (RESET_STREAM_AT added, STREAM wrapped) and the method that encodes the transport
    parameters (called during the handshake, after the protocol's constructor has made this).
    """

    __slots__ = ("handle_reset", "handle_stream", "pending", "quic")

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic
        handlers: dict[int, tuple[Callable[..., None], Any]]
        handlers = quic._QuicConnection__frame_handlers  # type: ignore[attr-defined]
        self.handle_reset, reset_epochs = handlers[_RESET_STREAM_FRAME]
        self.handle_stream, stream_epochs = handlers[_STREAM_FRAMES[0]]
        #: Resets waiting for their reliable bytes: stream id -> (error code, final size, reliable size).
        self.pending: dict[int, tuple[int, int, int]] = {}
        handlers[_RESET_STREAM_AT_FRAME] = (self.on_reset_stream_at, reset_epochs)
        for frame_type in _STREAM_FRAMES:
            handlers[frame_type] = (self.on_stream, stream_epochs)
        serialize = quic._serialize_transport_parameters
        announce = _core.encode_varint(_RESET_STREAM_AT_PARAMETER) + _core.encode_varint(0)
        quic._serialize_transport_parameters = lambda: serialize() + announce  # type: ignore[method-assign]

    def _reset(self, context: Any, frame_type: int, stream_id: int, error_code: int, final_size: int) -> None:
        frame = Buffer(capacity=24)
        for value in (stream_id, error_code, final_size):
            frame.push_uint_var(value)
        self.handle_reset(context, frame_type, Buffer(data=frame.data))

    def _delivered(self, stream_id: int) -> int:
        stream = self.quic._streams.get(stream_id)
        return 0 if stream is None else stream.receiver.starting_offset()

    def on_reset_stream_at(self, context: Any, frame_type: int, buf: Buffer) -> None:
        stream_id, error_code, final_size, reliable_size = (buf.pull_uint_var() for _ in range(4))
        if reliable_size > final_size:
            raise QuicConnectionError(
                error_code=QuicErrorCode.FRAME_ENCODING_ERROR,
                frame_type=frame_type,
                reason_phrase="RESET_STREAM_AT reliable size beyond its final size",
            )
        earlier = self.pending.pop(stream_id, None)
        if earlier is not None:  # a repeated frame may only lower the reliable size
            reliable_size = min(reliable_size, earlier[2])
        if reliable_size <= self._delivered(stream_id):
            self._reset(context, frame_type, stream_id, error_code, final_size)
        else:
            self.pending[stream_id] = (error_code, final_size, reliable_size)

    def on_stream(self, context: Any, frame_type: int, buf: Buffer) -> None:
        if not self.pending:
            self.handle_stream(context, frame_type, buf)
            return
        start = buf.tell()
        stream_id = buf.pull_uint_var()
        buf.seek(start)
        self.handle_stream(context, frame_type, buf)
        waiting = self.pending.get(stream_id)
        if waiting is not None and waiting[2] <= self._delivered(stream_id):
            del self.pending[stream_id]
            self._reset(context, frame_type, stream_id, waiting[0], waiting[1])


def install_reset_stream_at(quic: QuicConnection) -> None:
    """Announce ``reset_stream_at`` on ``quic`` and handle its frames (see :class:`_ResetStreamAt`)."""
    _ResetStreamAt(quic)
