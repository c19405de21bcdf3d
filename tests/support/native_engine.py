"""The native QUIC engine (``tokenwire._core.QuicEngine``) on the running loop, as the server will drive it: a
reader on its UDP socket and one timer at its next deadline, each wake-up one ``poll_io()`` call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from tokenwire import _core
from tokenwire._core import QuicEngine
from tokenwire.protocol.webtransport import server_settings
from tokenwire.server.certs import Certificate

#: HTTP/3 SETTINGS: no QPACK dynamic table, extended CONNECT, HTTP/3 datagrams.
H3_BASE = {0x01: 0, 0x07: 0, 0x08: 1, 0x33: 1}
SERVER_SETTINGS = {**H3_BASE, **server_settings(16)}
CLIENT_SETTINGS = {0x01: 0, 0x07: 0, 0x33: 1, 0x2B603742: 1}
WAIT = 5.0

E = TypeVar("E")


async def wait_in(events: list[E], changed: asyncio.Event, what: str, found: Callable[[E], bool]) -> E:
    """The first of ``events`` that ``found`` accepts, waiting (``changed`` is set on news) up to ``WAIT``."""
    try:
        async with asyncio.timeout(WAIT):
            while True:
                for event in events:
                    if found(event):
                        return event
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"no {what} in {events}") from None


class Driven:
    """A ``QuicEngine`` on the running loop: its socket's readability and its deadline both call ``poll_io``;
    every event is kept in ``events`` (and handed to ``on_event``, whose sends go out at the end of the batch)."""

    def __init__(self, engine: QuicEngine, on_event: Callable[[_core.QuicEvent], None] | None = None) -> None:
        self.engine = engine
        self.on_event = on_event
        self.loop = asyncio.get_running_loop()
        self.events: list[_core.QuicEvent] = []
        self.changed = asyncio.Event()
        self.timer: asyncio.TimerHandle | None = None
        self.loop.add_reader(engine.fileno(), self.wake)
        self.wakeups = 0

    def wake(self) -> None:
        self.wakeups += 1
        batch = self.engine.poll_io()
        if batch:
            self.events += batch
            self.changed.set()
            if self.on_event is not None:
                for event in batch:
                    self.on_event(event)
                self.engine.transmit()
        self.arm()

    def arm(self) -> None:
        """The timer at the engine's next deadline (after any call that may have changed it)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        delay = self.engine.next_timeout()
        if delay is not None:
            self.timer = self.loop.call_at(self.loop.time() + delay, self.wake)

    def sent(self) -> None:
        """After a group of ``send_*`` calls: the packets out, the timer re-armed."""
        self.engine.transmit()
        self.arm()

    def rebind(self) -> None:
        """The engine moves to a new socket (a new local port; its connections follow): watch that one."""
        self.loop.remove_reader(self.engine.fileno())
        host = self.engine.local_address[0]
        self.engine.rebind(host, 0)
        self.loop.add_reader(self.engine.fileno(), self.wake)
        self.arm()

    def close(self) -> None:
        self.loop.remove_reader(self.engine.fileno())
        if self.timer is not None:
            self.timer.cancel()

    async def wait_for(self, what: str, found: Callable[[_core.QuicEvent], bool]) -> _core.QuicEvent:
        return await wait_in(self.events, self.changed, what, found)

    def wt_bytes(self, stream_id: int) -> tuple[bytes, bool]:
        data, fin = b"", False
        for e in self.events:
            if e[0] == "wt_stream" and e[2] == stream_id:
                data += e[4]
                fin = fin or e[5]
        return data, fin

    async def wt_until_fin(self, stream_id: int) -> bytes:
        await self.wait_for(f"FIN of stream {stream_id}", lambda e: e[0] == "wt_stream" and e[2] == stream_id and e[5])
        return self.wt_bytes(stream_id)[0]


@contextlib.asynccontextmanager
async def native_server(
    certificate: Certificate, on_event: Callable[[_core.QuicEvent], None] | None = None, *, conn_window: int = 16 << 20
) -> AsyncIterator[Driven]:
    """A native server engine on 127.0.0.1 (a free port) with ``certificate``, driven on the running loop
    (``conn_window``: its connection receive window, also what it buffers unacknowledged)."""
    engine = QuicEngine(
        server=True,
        host="127.0.0.1",
        port=0,
        h3_settings=SERVER_SETTINGS,
        cert_chain_pem=certificate.cert_pem,
        key_pem=certificate.key_pem,
        idle_timeout=10.0,
        conn_window=conn_window,
    )
    driven = Driven(engine, on_event)
    try:
        yield driven
    finally:
        engine.close_all(0x100, b"test over")
        driven.sent()
        driven.close()
