"""A TCP proxy that cuts responses: what a network cut looks like to a client, on 127.0.0.1.

Each accepted connection is forwarded to the target; the client's bytes go through whole, the server's go
through up to a budget of that connection, and then the proxy ends the client's side: with a FIN
(``reset=False``, an orderly close, the case a client can mistake for the end of the answer) or a RST.

``cut`` is the budget of every connection (``None``: forward everything, a transparent proxy), or a function
of the connection's index (0, 1, ...) giving each its own. ``body_only``: the budget counts response-body bytes,
after the response head (which always goes through). ``cuts`` records where each cut connection was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable

__all__ = ["CutProxy", "cut_proxy"]

Cut = int | None | Callable[[int], int | None]


class CutProxy:
    def __init__(self, target_port: int, cut: Cut, *, reset: bool = False, body_only: bool = False) -> None:
        self.target_port = target_port
        self.cut = cut
        self.reset = reset
        self.body_only = body_only
        self.connections = 0
        self.cuts: list[int] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _budget(self) -> int | None:
        k = self.connections
        self.connections += 1
        return self.cut(k) if callable(self.cut) else self.cut

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        budget = self._budget()
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        upstream = asyncio.create_task(self._pipe(client_r, server_w))
        try:
            await self._downstream(server_r, client_w, budget)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await upstream
            server_w.close()
            client_w.close()
            self._tasks.discard(task)

    async def _downstream(
        self, server_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, budget: int | None
    ) -> None:
        data = b""
        if self.body_only:  # the head goes through whole; the budget starts with the body
            while b"\r\n\r\n" not in data:
                more = await server_r.read(65536)
                if not more:
                    break
                data += more
            head, sep, data = data.partition(b"\r\n\r\n")
            client_w.write(head + sep)
        sent = 0
        while data or (data := await server_r.read(65536)):
            if budget is not None and sent + len(data) >= budget:
                client_w.write(data[: budget - sent])
                await client_w.drain()
                self.cuts.append(budget)
                if self.reset:
                    sock = client_w.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                    client_w.transport.abort()
                else:
                    client_w.write_eof()
                return
            client_w.write(data)
            await client_w.drain()
            sent += len(data)
            data = b""
        client_w.write_eof()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


@contextlib.asynccontextmanager
async def cut_proxy(
    target_port: int, cut: Cut, *, reset: bool = False, body_only: bool = False
) -> AsyncIterator[CutProxy]:
    """A :class:`CutProxy` to ``127.0.0.1:target_port``, listening on a free port until the block ends."""
    proxy = CutProxy(target_port, cut, reset=reset, body_only=body_only)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
