"""The UDP relay the WebTransport tests put between client and server (the library's, re-exported so the tests
that import it from here keep working), and the UDP echo server and client its own tests use."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

from tokenwire.loadtest.relays import Address, DirectionStats, RelayStats, UdpRelay

__all__ = [
    "Address",
    "DirectionStats",
    "RelayStats",
    "UdpClient",
    "UdpEcho",
    "UdpRelay",
    "echo_behind_relay",
    "echo_server",
    "msgs",
    "settle",
    "udp_client",
    "until",
]


class UdpEcho(asyncio.DatagramProtocol):
    """Sends every datagram back where it came from and remembers who sent what."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sources: list[Address] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        src = (str(addr[0]), int(addr[1]))
        self.sources.append(src)
        assert self.transport is not None
        self.transport.sendto(data, src)


class UdpClient(asyncio.DatagramProtocol):
    """Records what comes back, with the arrival time."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[tuple[float, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received.append((time.monotonic(), data))

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    @property
    def payloads(self) -> list[bytes]:
        return [d for _, d in self.received]

    @property
    def local(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))


def _roomy_socket() -> socket.socket:
    """A UDP socket on 127.0.0.1 whose receive buffer holds the tests' bursts (asyncio reads one datagram
    per loop iteration, so a default 208 KiB buffer overflows at about 256 small datagrams)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[Address, UdpEcho]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(UdpEcho, sock=_roomy_socket())
    try:
        host, port = transport.get_extra_info("sockname")[:2]
        yield (str(host), int(port)), proto
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def udp_client(remote: Address) -> AsyncIterator[UdpClient]:
    loop = asyncio.get_running_loop()
    sock = _roomy_socket()
    sock.connect(remote)
    transport, proto = await loop.create_datagram_endpoint(UdpClient, sock=sock)
    try:
        yield proto
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def echo_behind_relay(**knobs: Any) -> AsyncIterator[tuple[UdpRelay, UdpEcho, UdpClient]]:
    async with echo_server() as (addr, echo), UdpRelay(addr, **knobs) as relay, udp_client(relay.address) as client:
        yield relay, echo, client


async def until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(2):
        while not cond():  # noqa: ASYNC110 - counters of several objects, polled
            await asyncio.sleep(0.002)


async def settle(relay: UdpRelay, client: UdpClient, sent: int) -> None:
    """Waits until every datagram sent has been either dropped or echoed back all the way."""
    await until(
        lambda: (
            relay.up.received == sent
            and relay.in_flight == 0
            and relay.down.received == relay.up.forwarded
            and len(client.received) == relay.down.forwarded
        )
    )


def msgs(n: int, start: int = 0) -> list[bytes]:
    return [f"{i:05d}".encode() for i in range(start, start + n)]
