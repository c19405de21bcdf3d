"""Peer 3: a plain aioquic WebTransport server, written the way the simple examples write one.

aioquic's ``H3Connection`` (``enable_webtransport=True``) accepts the extended CONNECT and hands each
bidirectional WebTransport stream's bytes to the app. The app reads tokenwire's start request
(:class:`tokenwire.protocol.webtransport.RequestReader`), submits it to the shared engine loop
(:class:`benches.peers.engine.QueueEngine`, one token per active request per step), answers with the
``0x21`` stream reply, then drains the request's queue: **one** ``send_stream_data`` per token (one
binary frame, ``tokenwire._core.encode_frame``) and ``transmit()`` after each write; a ``done`` frame with
FIN at the end. So a tokenwire WebTransport client (and ``tokenwire loadtest --protocol webtransport``)
reads it unchanged. No resume, no batching, no limits.

    python -m benches.peers.aioquic_wt_app --host 127.0.0.1 --port 8103 --steps-per-s 20

Prints ``listening on https://HOST:PORT/v1/webtransport sha256 HEX`` when ready (a development
certificate; pass the hash as ``--wt-cert-hash``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import uuid

import uvloop
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import H3Event, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import load_pem_x509_certificates

from benches.peers.common import done_data, parse_args
from benches.peers.engine import QueueEngine
from tokenwire import _core
from tokenwire.errors import TokenwireError
from tokenwire.protocol.webtransport import (
    WT_PATH,
    RequestReader,
    StartRequested,
    StreamAttached,
    encode_reply,
    is_webtransport_connect,
)
from tokenwire.server.certs import make_dev_certificate

__all__ = ["main"]

_EPOCH = "peer"
log = logging.getLogger("benches.peers.aioquic_wt_app")


class WtPeerProtocol(QuicConnectionProtocol):
    def __init__(self, *args: object, engine: QueueEngine, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.engine = engine
        self.h3: H3Connection | None = None
        self.readers: dict[int, RequestReader] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.h3 = H3Connection(self._quic, enable_webtransport=True)
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self.h3_event_received(h3_event)

    def h3_event_received(self, event: H3Event) -> None:
        assert self.h3 is not None
        if isinstance(event, HeadersReceived):
            ok, path = is_webtransport_connect(event.headers)
            if ok and path == WT_PATH:
                self.h3.send_headers(
                    event.stream_id, [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")]
                )
            else:
                self.h3.send_headers(event.stream_id, [(b":status", b"404")], end_stream=True)
            self.transmit()
        elif isinstance(event, WebTransportStreamDataReceived):
            reader = self.readers.setdefault(event.stream_id, RequestReader())
            try:
                request = reader.feed(event.data, event.stream_ended)
            except TokenwireError:
                self._quic.reset_stream(event.stream_id, 0)
                self.transmit()
                return
            if isinstance(request, StartRequested):
                task = asyncio.get_running_loop().create_task(self.stream_tokens(event.stream_id, request))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def stream_tokens(self, qid: int, request: StartRequested) -> None:
        stamp = bool(request.params.get("stamp", False))
        max_tokens = request.max_tokens if request.max_tokens is not None else 64
        queue = self.engine.submit(max_tokens, stamp=stamp, prompt=request.prompt)
        try:
            reply = StreamAttached(uuid.uuid4().hex[:16], _EPOCH, 0)
            self._quic.send_stream_data(qid, encode_reply(reply))
            self.transmit()
            seq = 0
            while (token := await queue.get()) is not None:
                seq += 1
                self._quic.send_stream_data(qid, _core.encode_frame(_core.FRAME_TOKEN, seq, token))
                self.transmit()
            final = done_data(seq, max_tokens)
            self._quic.send_stream_data(qid, _core.encode_frame(_core.FRAME_DONE, seq + 1, final), end_stream=True)
            self.transmit()
        except Exception:  # the stream or connection went away
            log.debug("stream %d ended early", qid, exc_info=True)
        finally:
            self.engine.abort(queue)
            self.readers.pop(qid, None)


async def _serve(host: str, port: int, steps_per_s: float) -> None:
    cert = make_dev_certificate()
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536)
    chain = load_pem_x509_certificates(cert.cert_pem)
    configuration.certificate = chain[0]
    configuration.certificate_chain = chain[1:]
    configuration.private_key = load_pem_private_key(cert.key_pem, password=None)
    engine = QueueEngine(steps_per_s)

    def create(*args: object, **kwargs: object) -> WtPeerProtocol:
        return WtPeerProtocol(*args, engine=engine, **kwargs)

    server = await serve(host, port, configuration=configuration, create_protocol=create)
    assert server._transport is not None
    bound = server._transport.get_extra_info("sockname")[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"listening on https://{host}:{bound}{WT_PATH} sha256 {cert.sha256.hex()}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await engine.aclose()
        server.close()


def main() -> int:
    args = parse_args(
        "python -m benches.peers.aioquic_wt_app", "plain aioquic WebTransport, one write+transmit per token."
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(args.host, args.port, args.steps_per_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
