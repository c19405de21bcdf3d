"""``server/aioquic_adapter.py`` is the one place that reads aioquic's private attributes; what it reads works on
a real (unconnected) aioquic connection."""

from __future__ import annotations

import ast
from pathlib import Path

from aioquic.quic.connection import QuicConnection

import tokenwire.server
from tokenwire.server.aioquic_adapter import (
    grant_bidi_streams,
    pending_datagrams,
    remote_max_datagram_frame_size,
    send_buffered,
    trim_datagrams,
)
from tokenwire.server.webtransport import WebTransportServer

#: Private members of aioquic's objects that tokenwire's server reads or replaces.
AIOQUIC_PRIVATE = {
    "_quic",
    "_streams",
    "_stream",
    "_buffer_start",
    "_buffer_stop",
    "_local_max_streams_bidi",
    "_get_local_settings",
    "_QuicConnection__frame_handlers",
    "_serialize_transport_parameters",
    "_remote_max_datagram_frame_size",
    "_datagrams_pending",
}


def test_only_the_adapter_reads_aioquic_private_attributes() -> None:
    root = Path(tokenwire.server.__file__).parent
    seen: dict[str, set[str]] = {}
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.FunctionDef):  # an override of a private method
                name = node.name
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aioquic._"):
                name = node.module
            if name is not None and (name in AIOQUIC_PRIVATE or name.startswith("aioquic._")):
                seen.setdefault(path.name, set()).add(name)
    assert set(seen) == {"aioquic_adapter.py"}, seen


def quic() -> QuicConnection:
    server = WebTransportServer()
    return QuicConnection(configuration=server.quic_configuration(), original_destination_connection_id=bytes(8))


def test_buffered_bytes_of_a_stream() -> None:
    conn = quic()
    assert send_buffered(conn, 1) == 0  # no such stream
    conn.send_stream_data(1, b"abcde")
    assert send_buffered(conn, 1) == 5


def test_old_datagrams_are_trimmed_to_the_newest() -> None:
    conn = quic()
    assert pending_datagrams(conn) == 0 and trim_datagrams(conn, 2) == 0
    for n in range(5):
        conn.send_datagram_frame(bytes([n]))
    assert pending_datagrams(conn) == 5
    assert trim_datagrams(conn, 2) == 3
    assert list(conn._datagrams_pending) == [b"\x03", b"\x04"]


def test_the_bidirectional_stream_limit_is_set_before_the_handshake() -> None:
    conn = quic()
    grant_bidi_streams(conn, 300)
    assert conn._local_max_streams_bidi.value == conn._local_max_streams_bidi.sent == 300
    assert remote_max_datagram_frame_size(conn) == 0  # no peer yet
