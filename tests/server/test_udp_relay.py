"""The lossy UDP relay the WebTransport tests put between client and server, checked on its own.

A plain UDP echo server behind the relay for each impairment, then a real QUIC connection (aioquic) that
moves 100 KB intact through 10% loss and through an address change mid-transfer (connection migration).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import pytest

from tests.support.udp_relay import (
    Address,
    UdpRelay,
    echo_behind_relay,
    echo_server,
    msgs,
    settle,
    udp_client,
    until,
)

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    Cert = tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bytes]

pytestmark = pytest.mark.usefixtures("no_leaks")


# ---------------------------------------------------------------------------------------- plain UDP


async def test_clean_path_delivers_everything_in_order() -> None:
    async with echo_behind_relay() as (relay, echo, client):
        for m in msgs(300):
            client.send(m)
        await settle(relay, client, 300)
        assert client.payloads == msgs(300)
        assert relay.up.forwarded == relay.down.forwarded == 300
        assert relay.up.dropped == relay.down.dropped == 0
        assert relay.up.bytes_forwarded == 300 * 5
        # like a NAT: the server sees the relay's upstream socket, not the client
        assert set(echo.sources) == {relay.flows[client.local]}
        assert relay.flows[client.local] != client.local


async def test_loss_drops_about_half_and_is_deterministic_per_seed() -> None:
    runs = []
    for _ in range(2):
        async with echo_behind_relay(loss=0.5, seed=11) as (relay, _, client):
            for m in msgs(400):
                client.send(m)
                await asyncio.sleep(0)
            await settle(relay, client, 400)
            assert relay.up.forwarded + relay.up.dropped == 400
            assert 150 <= relay.up.dropped <= 250
            assert relay.down.received == relay.up.forwarded
            assert relay.down.forwarded + relay.down.dropped == relay.down.received
            assert relay.up.duplicated == relay.down.duplicated == 0
            got = client.payloads
            assert got == sorted(got)  # loss alone does not reorder
            assert 50 <= len(got) <= 150
            runs.append(got)
    assert runs[0] == runs[1]  # same seed, same datagrams: the same ones are lost


async def test_delay_adds_latency_each_way() -> None:
    delay = 0.02
    async with echo_behind_relay(delay=delay) as (relay, _, client):
        rtts: list[float] = []
        for m in msgs(3):
            sent = time.monotonic()
            client.send(m)
            await until(lambda: len(client.received) == len(rtts) + 1)
            rtts.append(client.received[-1][0] - sent)
        assert min(rtts) >= 2 * delay - 0.003, rtts  # once up, once down
        assert max(rtts) < 2 * delay + 0.1, rtts
        relay.delay = 0.0  # knobs change at once
        sent = time.monotonic()
        client.send(b"fast")
        await until(lambda: len(client.received) == 4)
        assert client.received[-1][0] - sent < delay


async def test_jitter_reorders_but_loses_nothing() -> None:
    async with echo_behind_relay(delay=0.01, jitter=0.01, seed=3) as (relay, _, client):
        for m in msgs(100):
            client.send(m)
        await settle(relay, client, 100)
        got = client.payloads
        assert sorted(got) == msgs(100)
        assert got != msgs(100)
        assert relay.up.dropped == relay.down.dropped == 0


async def test_reorder_holds_some_back() -> None:
    async with echo_behind_relay(reorder=0.2, reorder_delay=0.02, seed=5) as (relay, _, client):
        for m in msgs(100):
            client.send(m)
        await settle(relay, client, 100)
        got = client.payloads
        assert sorted(got) == msgs(100)
        assert got != msgs(100)
        assert 5 <= relay.up.reordered <= 40
        assert relay.down.reordered > 0


async def test_duplicate_sends_extra_copies() -> None:
    async with echo_behind_relay(duplicate=0.3, seed=2) as (relay, _, client):
        for m in msgs(100):
            client.send(m)
        await settle(relay, client, 100)
        got = client.payloads
        assert set(got) == set(msgs(100))
        assert relay.up.forwarded == 100 + relay.up.duplicated
        assert relay.down.received == relay.up.forwarded
        assert len(got) == relay.down.forwarded == relay.down.received + relay.down.duplicated
        assert 15 <= relay.up.duplicated <= 45
        assert len(got) > 100


async def test_blackhole_drops_everything_then_recovers() -> None:
    async with echo_behind_relay(delay=0.02) as (relay, _, client):
        for m in msgs(10):
            client.send(m)
        await settle(relay, client, 10)
        assert len(client.received) == 10

        relay.delay = 1.0
        for m in msgs(5, 10):  # in flight when the link dies: lost too
            client.send(m)
        await until(lambda: relay.up.received == 15)
        assert relay.in_flight == 5
        relay.blackhole(True)
        assert relay.in_flight == 0
        relay.delay = 0.02
        for m in msgs(5, 15):
            client.send(m)
        await asyncio.sleep(0.05)
        assert len(client.received) == 10
        assert relay.up.received == 20
        assert relay.up.dropped == 10
        assert relay.in_flight == 0

        relay.blackhole(False)
        for m in msgs(10, 20):
            client.send(m)
        await settle(relay, client, 30)
        assert client.payloads == msgs(10) + msgs(10, 20)

        relay.loss = 1.0  # the same through the knob
        client.send(b"gone")
        await until(lambda: relay.up.dropped == 11)
        relay.loss = 0.0
        client.send(b"back")
        await until(lambda: client.payloads[-1:] == [b"back"])


async def test_change_address_moves_the_client_to_a_new_port() -> None:
    async with echo_behind_relay() as (relay, echo, client):
        client.send(b"before")
        await until(lambda: len(client.received) == 1)
        old = relay.flows[client.local]
        assert echo.sources == [old]

        changed = relay.change_address()
        new = changed[client.local]
        assert new != old and new[0] == old[0]
        assert relay.flows == {client.local: new}

        client.send(b"after")
        await until(lambda: len(client.received) == 2)
        assert echo.sources == [old, new]  # the server sees a new source port for the same client
        assert client.payloads == [b"before", b"after"]  # the client noticed nothing

        changed = await relay.rebind(client.local)
        client.send(b"again")
        await until(lambda: len(client.received) == 3)
        assert echo.sources[-1] == changed[client.local] not in (old, new)
        with pytest.raises(LookupError):
            relay.change_address(("127.0.0.1", 1))


async def test_each_client_gets_its_own_upstream_socket() -> None:
    async with echo_behind_relay() as (relay, echo, client), udp_client(relay.address) as other:
        client.send(b"a")
        other.send(b"b")
        await until(lambda: len(client.received) == len(other.received) == 1)
        assert client.payloads == [b"a"] and other.payloads == [b"b"]
        flows = relay.flows
        assert set(flows) == {client.local, other.local}
        assert set(echo.sources) == set(flows.values()) and len(set(echo.sources)) == 2


async def test_queue_is_bounded_and_exit_closes_everything() -> None:
    async with echo_server() as (addr, _):
        async with UdpRelay(addr, delay=1.0, max_queue=10) as relay, udp_client(relay.address) as client:
            for m in msgs(50):
                client.send(m)
            await until(lambda: relay.up.received == 50)
            assert relay.in_flight == 10
            assert relay.up.overflow == relay.up.dropped == 40
            port = relay.port
            upstream = relay.flows[client.local]
        assert relay.closed and relay.in_flight == 0 and relay.flows == {}
        for freed in (("127.0.0.1", port), upstream):  # both ports are free again
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(freed)


def test_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="loss"):
        UdpRelay(("127.0.0.1", 9), loss=1.5)
    with pytest.raises(ValueError):
        UdpRelay(("127.0.0.1", 9), delay=-1)


# ---------------------------------------------------------------------------------------- real QUIC


@pytest.fixture(scope="module")
def quic_cert() -> Cert:
    pytest.importorskip("aioquic")
    return self_signed_cert()


def self_signed_cert() -> Cert:
    """tokenwire's development certificate (ECDSA P-256, 127.0.0.1 / localhost): (cert, key, PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tokenwire.server.certs import make_dev_certificate

    made = make_dev_certificate(("localhost", "127.0.0.1"))
    key = serialization.load_pem_private_key(made.key_pem, password=None)
    return x509.load_pem_x509_certificate(made.cert_pem), cast("ec.EllipticCurvePrivateKey", key), made.cert_pem


@contextlib.asynccontextmanager
async def quic_echo_server(quic_cert: Cert) -> AsyncIterator[tuple[Address, set[Address]]]:
    """An aioquic server that echoes every stream back and closes it; yields its address and the peer
    addresses it has received packets from."""
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration

    peers: set[Address] = set()
    tasks: set[asyncio.Task[None]] = set()

    class Recording(QuicConnectionProtocol):
        def datagram_received(self, data: bytes | str, addr: tuple[str | int, ...]) -> None:
            peers.add((str(addr[0]), int(addr[1])))
            super().datagram_received(data, addr)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
        writer.write_eof()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(echo(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    config = QuicConfiguration(is_client=False, alpn_protocols=["echo"], initial_rtt=0.02)
    config.certificate, config.private_key = quic_cert[0], quic_cert[1]
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Recording, stream_handler=on_stream)
    try:
        transport = server._transport
        assert transport is not None
        host, port = transport.get_extra_info("sockname")[:2]
        yield (str(host), int(port)), peers
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _client_config(quic_cert: Cert) -> QuicConfiguration:
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(is_client=True, alpn_protocols=["echo"], initial_rtt=0.02)
    config.load_verify_locations(cadata=quic_cert[2])  # a real certificate check, not CERT_NONE
    return config


async def test_quic_moves_100_kb_intact_through_10_percent_loss(quic_cert: Cert) -> None:
    from aioquic.asyncio.client import connect

    payload = random.Random(1).randbytes(100_000)
    async with asyncio.timeout(15), quic_echo_server(quic_cert) as (addr, _):
        async with (
            UdpRelay(addr, loss=0.1, delay=0.001, jitter=0.0005, seed=4) as relay,  # the handshake too
            connect("127.0.0.1", relay.port, configuration=_client_config(quic_cert)) as client,
        ):
            reader, writer = await client.create_stream()
            writer.write(payload)
            writer.write_eof()
            echoed = await reader.read()
        assert echoed == payload
        assert relay.up.dropped > 5 and relay.down.dropped > 5  # loss really happened, both ways


async def test_quic_survives_an_address_change_mid_transfer(quic_cert: Cert) -> None:
    from aioquic.asyncio.client import connect

    payload = random.Random(2).randbytes(100_000)
    async with asyncio.timeout(15), quic_echo_server(quic_cert) as (addr, peers):
        async with (
            UdpRelay(addr, loss=0.05, delay=0.001, seed=6) as relay,
            connect("127.0.0.1", relay.port, configuration=_client_config(quic_cert)) as client,
        ):
            (old,) = relay.flows.values()
            reader, writer = await client.create_stream()
            writer.write(payload)
            writer.write_eof()
            first = await reader.readexactly(30_000)
            (new,) = relay.change_address().values()  # NAT rebinding mid-transfer
            rest = await reader.read()
        assert first + rest == payload
        assert peers == {old, new}  # the server saw the client move, and kept the connection
