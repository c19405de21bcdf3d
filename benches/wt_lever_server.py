"""tokenwire's WebTransport server with one aioquic lever switched at a time, for ``benches/wt_levers.py``.

The production server (``tokenwire serve``) is the ``batched`` configuration. The others change one
thing each, so the lever's effect on server CPU per token can be measured in the same run:

- ``--per-write``: no batching: every token is written and transmitted at once, as plain aioquic examples
  do (but still with tokenwire's Rust frames and ring). Undoes "one transmit per loop iteration" and
  "coalescing frames per packet".
- ``--defer-receive``: a datagram received does not transmit at once (aioquic does, after every
  datagram); the connection is queued in the flusher, so the ACK-only datagrams of one loop iteration and
  the next flush share one transmit.
- ``--lazy-timer``: aioquic re-arms a connection's timer (cancel + ``call_at``) whenever its deadline moves,
  about twice per packet (the loss-detection deadline after a send, the idle deadline after an ACK). Here a
  timer is moved only when the deadline comes earlier; one that fires early re-arms itself and does
  nothing else.
- ``--max-delay-ms N``: the flusher waits up to N ms to gather more tokens per packet (as for SSE).

    python -m benches.wt_lever_server --port 8400 --steps-per-s 20 --defer-receive

Prints ``serving WebTransport on URL (UDP); ... sha-256 HEX`` like ``tokenwire serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import uvloop

from tokenwire import FakeEngine, FakeModel, Hub, ServerOptions
from tokenwire.server import ServerConfig
from tokenwire.server import webtransport as wt
from tokenwire.server.webtransport import WebTransportConnection, WebTransportServer


class PerWrite(WebTransportConnection):
    def mark_dirty(self, st: Any) -> None:
        st.write()
        if not self.closed:
            self.transmit()


class DeferReceive(WebTransportConnection):
    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self._quic.receive_datagram(data, addr, now=self._loop.time())  # type: ignore[arg-type]
        self._process_events()
        if self.paused:
            self._wake_paused()
        if not self._queued:
            self._queued = True
            self.server.flusher.add(self)


class LazyTimer(WebTransportConnection):
    def transmit(self) -> None:
        self._transmit_task = None
        now = self._loop.time()
        for data, addr in self._quic.datagrams_to_send(now=now):
            self._transport.sendto(data, addr)  # type: ignore[union-attr]
        self._arm(self._quic.get_timer())

    def _arm(self, timer_at: float | None) -> None:
        if timer_at is None:
            return  # an armed timer fires, finds nothing due, and is not re-armed
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= timer_at:
                return  # fires early and re-arms (below)
            self._timer.cancel()
        self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def _handle_timer(self) -> None:
        self._timer = None
        due = self._quic.get_timer()
        # The loop may fire a timer up to its clock's resolution early: count it as on time (as aioquic does),
        # or an early firing would re-arm for the same deadline and spin.
        now = max(self._timer_at or 0.0, self._loop.time())
        if due is not None and now < due:
            self._arm(due)  # fired at an earlier deadline that has since moved later: nothing is due yet
            return
        self._timer_at = None
        self._quic.handle_timer(now=now)
        self._process_events()
        self.transmit()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8400)
    p.add_argument("--steps-per-s", type=float, default=20.0)
    p.add_argument("--max-delay-ms", type=float, default=0.0)
    p.add_argument("--per-write", action="store_true")
    p.add_argument("--defer-receive", action="store_true")
    p.add_argument("--lazy-timer", action="store_true")
    args = p.parse_args()
    chosen = [
        cls
        for cls, on in ((PerWrite, args.per_write), (DeferReceive, args.defer_receive), (LazyTimer, args.lazy_timer))
        if on
    ]
    if chosen:
        # The server builds its connections from the module's name: this process only.
        wt.WebTransportConnection = type("Levers", tuple(chosen), {})  # type: ignore[misc]

    async def run() -> None:
        config = ServerConfig(host=args.host, port=args.port, max_delay_ms=args.max_delay_ms)
        server = WebTransportServer(
            Hub(), ServerOptions(config, FakeEngine(FakeModel(seed=0), steps_per_s=args.steps_per_s))
        )
        await server.start()
        print(f"serving WebTransport on {server.url} (UDP); sha-256 {server.certificate.sha256_hex}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.shutdown(drain_timeout=0)

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
