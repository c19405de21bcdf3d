"""The WebTransport server: aioquic QUIC + HTTP/3 on the running loop (uvloop in production), sharing a Hub.

A client opens a WebTransport session (extended CONNECT to ``/v1/webtransport``), then one bidirectional
stream per request: start, attach (resume) or cancel (docs/protocol.md §4.4). Many token streams share one
session and one QUIC connection.

Three layers: the session and request-stream rules are sans-I/O (:mod:`tokenwire.protocol.wt_session`); what
the server does with what they hand over (auth verdicts, requests served from the hub, token streams flushed,
heartbeats, slow readers) is engine-neutral (:mod:`tokenwire.server.wt_host`); this module only moves aioquic's
events into the session layer and performs its actions on aioquic, reading aioquic's private attributes through
:mod:`tokenwire.server.aioquic_adapter` alone.

Data path of a token stream: ``TokenStream.send`` -> ring append (Rust) -> the stream's listener marks it
dirty in its connection -> the connection queues itself once in the :class:`~tokenwire.server.flusher.Flusher`
-> next loop iteration: one cursor poll (one ``Storage.poll``) per dirty stream renders its new binary frames
(Rust) into one
``send_stream_data``, then ONE ``transmit()`` for the whole connection, so packets carry frames of many
streams and the loop pays for one packetisation per connection per iteration, not per token.

A stream whose bytes pile up in QUIC's send buffer (a slow or gone reader) stops pulling from the ring;
after ``stall_timeout`` it is reset with :attr:`WtCode.RESUME` and the client resumes from its position.
Closing a stream, a session or a connection never stops a generation; a cancel request does.

Datagram previews (off by default, docs/protocol.md §4.5): a stream whose request asks for them also gets
each batch of new frames as an HTTP/3 datagram, queued for the same transmit; bounded, never instead of the
stream.

0-RTT: a session is never established from early data (draft-ietf-webtrans-http3 §3.2: the CONNECT is not
safe). A CONNECT that arrives before the handshake has completed is held, with the request streams of its
session, and answered once it has (RFC 8470 §3: defer rather than refuse, so the client loses no round trip);
a replayed first flight never completes a handshake, so it never gets a session, and no request of it is
served. A CONNECT also waits for the client's SETTINGS (its draft and its flow control).

WebTransport flow control (drafts 12 on): the server's SETTINGS give every client limits it never reaches
(2**60 streams and bytes per session). When the client turns flow control on as well (Safari, webtransport-go
with a Config), the server keeps to the client's WT_MAX_DATA: bytes its credit does not cover wait in the
stream (which stops pulling frames from the ring) until a WT_MAX_DATA capsule raises it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.tls import SessionTicket, load_pem_private_key, load_pem_x509_certificates

from tokenwire.protocol.wt_session import (
    FinishSession,
    ResetStream,
    SendCapsules,
    SendData,
    SendDatagram,
    SendHeaders,
    StopSending,
)
from tokenwire.server.aioquic_adapter import (
    ServerH3,
    forget_h3_stream,
    grant_bidi_streams,
    install_reset_stream_at,
    pending_datagrams,
    remote_max_datagram_frame_size,
    send_buffered,
    trim_datagrams,
    webtransport_session_of,
)
from tokenwire.server.wt_host import SessionHost, WebTransportMetrics, WtServerBase

__all__ = ["WebTransportConnection", "WebTransportMetrics", "WebTransportServer"]

log = logging.getLogger("tokenwire.server.webtransport")


class WebTransportConnection(QuicConnectionProtocol, SessionHost):
    """One QUIC connection on aioquic: moves aioquic's events into its session layer (``session``) and performs the
    layer's actions on aioquic; :class:`~tokenwire.server.wt_host.SessionHost` serves what the layer hands over."""

    def __init__(
        self, quic: QuicConnection, stream_handler: QuicStreamHandler | None = None, *, server: WebTransportServer
    ) -> None:
        super().__init__(quic, stream_handler)
        self._init_host(server)
        self.server: WebTransportServer = server
        self.quic = quic
        grant_bidi_streams(quic, server.config.webtransport.quic_bidi_streams)
        install_reset_stream_at(quic)
        self.h3: H3Connection | None = None
        self._settings_seen = False

    # -- asyncio / aioquic ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        self.server.metrics.connections_total += 1

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if self.paused:
            self._wake_paused()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):  # the common case first
            h3 = self.h3
            if h3 is not None:
                h3_events = h3.handle_event(event)
                if not self._settings_seen and h3.received_settings is not None:  # the client's SETTINGS came
                    self._settings_seen = True
                    self.session.settings_received(h3.received_settings, self.server.loop.time())
                    self._pump()
                for h3_event in h3_events:
                    self._h3_event_received(h3_event)
                if not h3_events and not self.session.knows_stream(event.stream_id):
                    self._maybe_header_only(h3, event.stream_id)
            return
        handler = _QUIC_HANDLERS.get(type(event))
        if handler is not None and handler(self, event):
            return  # consumed: the H3 layer does not see it
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self._h3_event_received(h3_event)

    def _maybe_header_only(self, h3: H3Connection, qid: int) -> None:
        """A stream that so far carried only its WebTransport header opens now: its header timeout and its
        place in the session's stream limit start here, not when its first request byte arrives."""
        session_id = webtransport_session_of(h3, qid)
        if session_id is not None:
            self.session.wt_stream_data(qid, session_id, b"", False, self.server.loop.time())
            self._pump()

    def _on_protocol_negotiated(self, event: ProtocolNegotiated) -> bool:
        if event.alpn_protocol in H3_ALPN:
            self.h3 = ServerH3(self.quic, self.server.config.webtransport.max_sessions_per_connection)
        return False

    def _on_handshake_completed(self, event: HandshakeCompleted) -> bool:
        self.session.handshake_completed(self.server.loop.time())
        self._pump()
        return False

    def _on_stop_sending(self, event: StopSendingReceived) -> bool:
        # The client stopped reading a request stream (QUIC has reset our side). Generation goes on.
        consumed = self.session.stop_sending(event.stream_id, event.error_code)
        self._pump()
        return consumed

    def _on_stream_reset(self, event: StreamReset) -> bool:
        consumed = self.session.stream_reset(event.stream_id, event.error_code)
        self._pump()
        return consumed

    def _on_terminated(self, event: ConnectionTerminated) -> bool:
        self._terminated()
        return True

    def _h3_event_received(self, event: H3Event) -> None:
        session = self.session
        if isinstance(event, WebTransportStreamDataReceived):
            session.wt_stream_data(
                event.stream_id, event.session_id, event.data, event.stream_ended, self.server.loop.time()
            )
        elif isinstance(event, HeadersReceived):
            session.headers_received(event.stream_id, event.headers, event.stream_ended, self.server.loop.time())
        elif isinstance(event, DataReceived):
            session.data_received(event.stream_id, event.data, event.stream_ended)
        self._pump()

    # -- the session layer's actions -----------------------------------------------------------------

    def _send_headers(self, action: SendHeaders) -> None:
        if self.h3 is not None:
            self.h3.send_headers(action.stream_id, list(action.headers), end_stream=action.end)

    def _send_capsules(self, action: SendCapsules) -> None:
        if self.h3 is not None:
            with contextlib.suppress(Exception):  # the CONNECT stream may be closing: the capsule is advice
                self.h3.send_data(action.session_id, action.data, end_stream=False)

    def _finish_session(self, action: FinishSession) -> None:
        with contextlib.suppress(Exception):
            self.quic.send_stream_data(action.session_id, b"", end_stream=True)

    def _send_data(self, action: SendData) -> None:
        try:
            self.quic.send_stream_data(action.stream_id, action.data, action.end)
        except RuntimeError:  # reset by the peer's STOP_SENDING before we saw the event
            st = self.streams.get(action.stream_id)
            if st is not None:
                self._lost(st)

    def _reset_stream(self, action: ResetStream) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            self.quic.reset_stream(action.stream_id, action.code)

    def _stop_sending(self, action: StopSending) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            self.quic.stop_stream(action.stream_id, action.code)

    def _send_datagram(self, action: SendDatagram) -> None:
        if self.h3 is not None:
            self.h3.send_datagram(action.session_id, action.payload)

    def _forget_engine_stream(self, qid: int) -> None:
        if self.h3 is not None:
            forget_h3_stream(self.h3, qid)

    # -- hooks of the session host -------------------------------------------------------------------

    def datagram_limit(self) -> int:
        return remote_max_datagram_frame_size(self.quic)

    def _close_connection(self, h3_code: int, reason: str) -> None:
        self.close(error_code=h3_code, reason_phrase=reason)

    def _trim_previews(self) -> None:
        """Previews a congested connection could not send wait in QUIC's queue, ahead of stream data in every
        packet: keep the newest ``max_pending_previews`` and drop the older ones (they are stale)."""
        if not pending_datagrams(self.quic):
            return
        dropped = trim_datagrams(self.quic, self.server.config.webtransport.max_pending_previews)
        self.server.metrics.previews_dropped_total += dropped

    def pending_previews(self) -> int:
        return pending_datagrams(self.quic)

    def send_blocked(self, qid: int) -> bool:
        """QUIC holds more than ``stream_buffer_high`` bytes of stream ``qid`` (unsent or unacknowledged): a slow
        reader, or a congested path."""
        return send_buffered(self.quic, qid) > self.server.config.webtransport.stream_buffer_high

    def _wake_paused(self) -> None:
        low = self.server.config.webtransport.stream_buffer_high // 2
        quic = self.quic
        for st in list(self.paused):
            if send_buffered(quic, st.qid) <= low:
                self.paused.discard(st)
                st.release_reader()

    def shutdown(self) -> None:
        super().shutdown()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_QUIC_HANDLERS: dict[type[QuicEvent], Callable[[WebTransportConnection, Any], bool]] = {
    ProtocolNegotiated: WebTransportConnection._on_protocol_negotiated,
    HandshakeCompleted: WebTransportConnection._on_handshake_completed,
    StopSendingReceived: WebTransportConnection._on_stop_sending,
    StreamReset: WebTransportConnection._on_stream_reset,
    ConnectionTerminated: WebTransportConnection._on_terminated,
}


def _enlarge_socket_buffers(sock: Any, size: int) -> None:
    """Ask for ``size``-byte UDP buffers: one socket carries every session, and the kernel's default
    receive buffer (≈ 208 KiB) drops datagrams in bursts of many sessions. Beyond ``net.core.rmem_max`` the
    kernel caps the request; with CAP_NET_ADMIN the ``*FORCE`` options lift the cap. Best effort."""
    if sock is None or size <= 0:
        return
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):  # fmt: skip
        for option in (force, plain):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
            except OSError:
                continue


class WebTransportServer(WtServerBase):
    """``tokenwire serve``'s WebTransport side on aioquic: one UDP socket, one Hub (shared with the SSE server),
    one flusher.

    ``certificate``: a :class:`~tokenwire.server.certs.Certificate` (``load_certificate`` for production
    files); by default a development certificate is made (see :attr:`certificate` for its SHA-256).
    """

    def _init_engine(self) -> None:
        self._tickets: collections.OrderedDict[bytes, SessionTicket] = collections.OrderedDict()
        self._transport: asyncio.DatagramTransport | None = None
        self._quic_server: QuicServer | None = None

    @property
    def port(self) -> int:
        if self._transport is None:
            raise RuntimeError("server not started")
        return int(self._transport.get_extra_info("sockname")[1])

    def quic_configuration(self) -> QuicConfiguration:
        limits = self.config.webtransport
        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=H3_ALPN,
            max_datagram_frame_size=65536,
            idle_timeout=limits.idle_timeout,
            max_stream_data=limits.max_stream_data,
            max_data=limits.max_data,
        )
        chain = load_pem_x509_certificates(self.certificate.cert_pem)
        configuration.certificate = chain[0]
        configuration.certificate_chain = chain[1:]
        configuration.private_key = load_pem_private_key(self.certificate.key_pem)
        return configuration

    def _add_ticket(self, ticket: SessionTicket) -> None:
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > self.config.webtransport.max_session_tickets:
            self._tickets.popitem(last=False)

    def _pop_ticket(self, label: bytes) -> SessionTicket | None:
        # Single use: a ticket presented twice (a replay) finds nothing the second time.
        return self._tickets.pop(label, None)

    async def start(self) -> None:
        loop = self._start_common()
        configuration = self.quic_configuration()
        tickets = self.config.webtransport.max_session_tickets > 0  # 0: no tickets sent, no resumption, no 0-RTT
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: QuicServer(
                configuration=configuration,
                create_protocol=partial(WebTransportConnection, server=self),
                session_ticket_fetcher=self._pop_ticket if tickets else None,
                session_ticket_handler=self._add_ticket if tickets else None,
            ),
            local_addr=(self.config.host, self.config.port),
            reuse_port=self.config.reuse_port or None,
        )
        self._transport = transport
        self._quic_server = protocol
        _enlarge_socket_buffers(transport.get_extra_info("socket"), self.config.webtransport.socket_buffer_bytes)
        self._start_tick()
        log.info(
            "WebTransport server listening on %s (UDP; epoch %s; certificate sha-256 %s)",
            self.url,
            self.hub.epoch,
            self.certificate.sha256_hex,
        )

    async def _close_engine(self) -> None:
        if self._transport is not None:
            self._transport.close()
        await asyncio.sleep(0)  # let the transport close
        log.info("WebTransport server stopped")
