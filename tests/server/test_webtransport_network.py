"""WebTransport end to end through a bad network: the lossy UDP relay of ``tests.support.udp_relay`` between
the Python client and the server, both on this loop.

- Chaos: 80 token streams over 4 clients (one session each, 20 streams multiplexed), each client behind its
  own relay with loss, delay, jitter (reordering) and duplicates, while every client suffers forced
  disconnects at random moments: the client drops its connection, the link dies long enough for QUIC's
  idle timeout to end the connection on both sides, the server closes the connection, the NAT in front of
  the client rebinds, the client moves to a new socket. Every stream ends with exactly the model's tokens,
  in order, none twice, and every prompt ran once.
- Migration: the client rebinds its UDP socket mid-stream (``WebTransportClient.rebind``), then a NAT
  rebinding moves it again; the server sees the new addresses and the session goes on without a reconnect.
  A NAT rebinding at a quiet moment (nothing in flight, nothing to acknowledge) is healed by the client's
  keepalive PING, not by the idle timeout and a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from aioquic.h3.connection import ErrorCode

from tests.support.servers import AnyWtServer, read_n, wt_client, wt_server
from tests.support.udp_relay import Address, UdpRelay
from tokenwire import FakeModel
from tokenwire.client.webtransport import StreamInterrupted, WebTransportClient, WebTransportStreamReader
from tokenwire.server.config import WebTransportLimits
from tokenwire.server.native import NativeConnection
from tokenwire.server.webtransport import WebTransportConnection

#: A server connection of either engine.
AnyConnection = WebTransportConnection | NativeConnection

pytestmark = pytest.mark.usefixtures("no_leaks", "wt_engine")

#: QUIC idle timeout the clients ask for (the server agrees to the smaller one): a blackhole longer than
#: this ends the connection on both sides, as a dead link would.
IDLE_TIMEOUT = 0.4
BLACKHOLE = IDLE_TIMEOUT + 0.5


def server_address(server: AnyWtServer) -> Address:
    return ("127.0.0.1", server.port)


def peer_of(conn: AnyConnection) -> Address | None:
    """The address the server sends this connection's packets to (its active, migrated path)."""
    if isinstance(conn, NativeConnection):
        return conn.peer_address()
    addr = conn._quic.get_peer_address()
    return None if addr is None else (str(addr[0]), int(addr[1]))


def on_path(conn: AnyConnection, addr: Address) -> bool:
    """The server sends to ``addr`` now, and has validated it (PATH_CHALLENGE answered from there; quinn moves
    to a new address only once it has validated it, and says no more)."""
    if isinstance(conn, NativeConnection):
        return peer_of(conn) == addr
    return peer_of(conn) == addr and conn._quic._network_paths[0].is_validated


def only_connection(server: AnyWtServer) -> AnyConnection:
    (conn,) = server.connections
    return conn


async def until(cond: Callable[[], bool]) -> None:
    """Path validation takes a round trip or a few (more under loss): poll for its outcome."""
    async with asyncio.timeout(3):
        while not cond():  # noqa: ASYNC110 - the server's QUIC state, polled
            await asyncio.sleep(0.005)


# ----------------------------------------------------------------------------------------------- migration


async def test_a_nat_rebinding_during_the_handshake_does_not_stall_it() -> None:
    """The server's first flight is lost and, before the client sends again, the NAT's mapping changes: the
    client's retransmitted Initial reaches the server from a new address while the handshake is still going.
    The server must answer there (a phone's NAT may rebind at any moment) rather than wait for packets from
    an address the client will never use again; the handshake completes on the first connection."""
    model = FakeModel(seed=5)
    async with (
        asyncio.timeout(15),
        wt_server(model=model) as server,
        UdpRelay(server_address(server), delay=0.05) as relay,
        wt_client(server, via=relay.address) as client,
    ):
        starting = asyncio.create_task(client.generate("early move", max_tokens=20, tokens_per_s=2000))
        await until(lambda: relay.down.received >= 1)  # the server's first flight is in the relay
        relay.blackhole(True)  # ... and is lost, in flight included
        (first,) = relay.flows.values()
        (second,) = relay.change_address().values()
        relay.blackhole(False)
        reader = await starting
        assert [t async for t in reader] == model.tokens("early move", 20)
        conn = only_connection(server)
        assert second != first and on_path(conn, second)
        assert client.connections == 1 and server.metrics.connections_total == 1 and reader.reconnects == 0


async def test_the_client_rebinds_its_socket_mid_stream_and_keeps_its_session() -> None:
    """Direct to the server: the server sees the client's new port itself, and validates the new path."""
    model = FakeModel(seed=5)
    async with wt_server(model=model) as server, wt_client(server) as client:
        reader = await client.generate("move me", max_tokens=150, tokens_per_s=300)
        got = await read_n(reader, 20)
        conn = only_connection(server)
        before = client.local_address
        assert before is not None and on_path(conn, ("127.0.0.1", before[1]))
        after = await client.rebind()
        assert after[1] != before[1] and client.local_address == after
        await until(lambda: on_path(conn, ("127.0.0.1", after[1])))  # the server follows the client's new port
        got += await read_n(reader, 20)  # over the new path
        got += [t async for t in reader]
        assert got == model.tokens("move me", 150)
        assert reader.done is not None and reader.done["reason"] == "length"
        assert reader.reconnects == 0 and reader.duplicates_dropped == 0
        assert client.connections == 1 and server.metrics.connections_total == 1
        assert server.metrics.resumes_total == 0 and model.calls == 1


async def test_migration_through_a_lossy_relay_client_rebind_then_nat_rebinding() -> None:
    """Through the relay (loss, jitter): a client socket rebind, then the NAT's mapping changes; no reconnect."""
    model = FakeModel(seed=5)
    async with (
        wt_server(model=model) as server,
        UdpRelay(server_address(server), loss=0.03, delay=0.002, jitter=0.002, duplicate=0.01, seed=21) as relay,
        wt_client(server, via=relay.address, keepalive=0.1) as client,
    ):
        reader = await client.generate("migrate", max_tokens=200, tokens_per_s=300)
        got = await read_n(reader, 20)
        conn = only_connection(server)
        (first,) = relay.flows.values()
        assert on_path(conn, first)

        old_local = client.local_address
        new_local = await client.rebind()  # the client's own socket: the relay sees a new client
        assert old_local is not None and new_local[1] != old_local[1]
        moved = ("127.0.0.1", new_local[1])
        await until(lambda: moved in relay.flows)  # the PING went out at once from the new socket
        second = relay.flows[moved]
        assert second != first
        await until(lambda: on_path(conn, second))
        got += await read_n(reader, 30)  # over the new path

        (third,) = relay.change_address(moved).values()  # NAT rebinding: the server sees another address
        assert third not in (first, second)
        got += await read_n(reader, 30)
        await until(lambda: on_path(conn, third))

        got += [t async for t in reader]
        assert got == model.tokens("migrate", 200)
        assert reader.reconnects == 0
        assert client.connections == 1 and server.metrics.connections_total == 1 and model.calls == 1
        assert relay.up.dropped + relay.down.dropped > 0


async def test_a_nat_rebinding_while_the_stream_is_quiet_is_healed_by_the_client_keepalive() -> None:
    """The NAT's mapping changes between two tokens, when nothing is in flight: what the server sends next
    goes to the old mapping and is lost, and the client has nothing to acknowledge. Only a packet from the
    client can tell the server where it is now: the keepalive PING does, long before the idle timeout."""
    model = FakeModel(seed=5)
    async with (
        asyncio.timeout(10),
        wt_server(model=model) as server,
        UdpRelay(server_address(server)) as relay,  # no delay: nothing is ever in flight in the relay
        wt_client(server, via=relay.address, keepalive=0.1) as client,
    ):
        reader = await client.generate("quiet", max_tokens=30, tokens_per_s=40)
        got = await read_n(reader, 5)
        conn = only_connection(server)
        (first,) = relay.flows.values()
        await asyncio.sleep(0.005)  # between two tokens (25 ms apart), once the client's ACK is out
        (second,) = relay.change_address().values()
        got += [t async for t in reader]
        assert got == model.tokens("quiet", 30)
        assert on_path(conn, second) and second != first
        assert reader.reconnects == 0 and client.connections == 1 and server.metrics.connections_total == 1


# ---------------------------------------------------------------------------------------------------- chaos

CHAOS_KINDS = ("drop", "blackhole", "server_close", "nat", "rebind")


class ChaosClient:
    """One client behind its own relay, its readers, and the disconnects it suffers.

    ``done`` counts the disruptions that took effect: a live connection dropped by the client, ended by the
    QUIC idle timeout during a blackhole, or closed by the server; a NAT rebinding; a client socket rebind.
    """

    def __init__(self, index: int, server: AnyWtServer, relay: UdpRelay, client: WebTransportClient) -> None:
        self.index = index
        self.server = server
        self.relay = relay
        self.client = client
        self.rng = random.Random(1000 + index)
        self.readers: list[tuple[str, int, WebTransportStreamReader]] = []
        self.results: dict[str, list[str]] = {}
        self.done: Counter[str] = Counter()

    @property
    def finished(self) -> bool:
        return all(reader.finished for _, _, reader in self.readers)

    async def start(self, prompts: list[tuple[str, int]]) -> None:
        """Starts are never retried (a prompt must not run twice), so they happen before the disconnects."""
        for prompt, n in prompts:
            self.readers.append((prompt, n, await self.client.generate(prompt, max_tokens=n)))

    async def read(self, prompt: str, reader: WebTransportStreamReader) -> None:
        got = self.results.setdefault(prompt, [])
        async for token in reader:
            got.append(token)

    def server_connections(self) -> list[AnyConnection]:
        mine = set(self.relay.flows.values())
        return [c for c in self.server.connections if not c.closed and peer_of(c) in mine]

    async def disrupt(self) -> None:
        """Every kind of disruption in turn (from a different one per client), then random ones, at random
        moments, until every stream of this client has ended."""
        kinds = [*CHAOS_KINDS[self.index :], *CHAOS_KINDS[: self.index]]
        while not self.finished:
            await asyncio.sleep(self.rng.uniform(0.1, 0.35))
            if self.finished:
                break
            kind = kinds.pop(0) if kinds else self.rng.choice(CHAOS_KINDS)
            conn = self.client._conn
            live = conn is not None and conn.lost is None
            if kind == "drop":
                self.client.drop()  # CONNECTION_CLOSE from the client (may be lost: then the server times out)
                self.done[kind] += live
            elif kind == "blackhole":
                self.relay.blackhole(True)  # nothing gets through, for longer than the idle timeout
                await asyncio.sleep(BLACKHOLE)
                self.relay.blackhole(False)
                self.done[kind] += conn is not None and "Idle timeout" in str(conn.lost)
            elif kind == "server_close":
                for server_conn in self.server_connections():
                    server_conn.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="chaos")
                    self.done[kind] += 1
            elif kind == "nat":
                self.relay.change_address()  # migration as the server sees it: no reconnect needed
                self.done[kind] += live
            else:
                with contextlib.suppress(StreamInterrupted, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.client.rebind()  # migration from the client's side
                        self.done[kind] += 1


@contextlib.asynccontextmanager
async def chaos_clients(server: AnyWtServer, count: int) -> AsyncIterator[list[ChaosClient]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for i in range(count):
            relay = await stack.enter_async_context(
                UdpRelay(server_address(server), loss=0.05, delay=0.002, jitter=0.002, duplicate=0.01, seed=i)
            )
            client = wt_client(
                server,
                via=relay.address,
                idle_timeout=IDLE_TIMEOUT,
                keepalive=0.1,  # heals a NAT rebinding at a quiet moment before the idle timeout does
                connect_timeout=3.0,
                max_retries=12,
            )
            await stack.enter_async_context(client)
            clients.append(ChaosClient(i, server, relay, client))
        yield clients


async def test_chaos_80_streams_through_loss_jitter_duplicates_and_random_disconnects() -> None:
    model = FakeModel(seed=5)
    rng = random.Random(42)
    n_clients, per_client = 4, 20
    async with (
        asyncio.timeout(30),
        wt_server(model=model, engine_steps_per_s=50, limits=WebTransportLimits(idle_timeout=5.0)) as server,
        chaos_clients(server, n_clients) as clients,
    ):
        # 100 to 160 tokens at 50 engine steps a second: every stream lasts 2 to 3 seconds of chaos.
        plans = [[(f"c{c} prompt {i}", rng.randint(100, 160)) for i in range(per_client)] for c in range(n_clients)]
        await asyncio.gather(*(chaos.start(plan) for chaos, plan in zip(clients, plans, strict=True)))
        assert model.calls == n_clients * per_client

        async with asyncio.TaskGroup() as tasks:  # a failure cancels the rest
            for chaos in clients:
                for prompt, _, reader in chaos.readers:
                    tasks.create_task(chaos.read(prompt, reader))
                tasks.create_task(chaos.disrupt())

        for chaos in clients:
            for prompt, n, reader in chaos.readers:
                assert chaos.results[prompt] == model.tokens(prompt, n), prompt  # exact: none lost, none twice
                assert reader.done is not None and reader.done["reason"] == "length"
                assert reader.position == n + 1
        assert model.calls == n_clients * per_client  # no generation ran twice

        # Every kind of disruption really happened, and the streams really resumed.
        done = sum((chaos.done for chaos in clients), Counter[str]())
        assert all(done[kind] > 0 for kind in CHAOS_KINDS), done
        assert sum(r.reconnects for chaos in clients for _, _, r in chaos.readers) > 0
        assert all(chaos.client.connections > 1 for chaos in clients)
        assert server.metrics.resumes_total > 0
        # And the network really was bad, both ways.
        for chaos in clients:
            relay = chaos.relay
            assert relay.up.dropped > 0 and relay.down.dropped > 0
            assert relay.up.duplicated + relay.down.duplicated > 0
