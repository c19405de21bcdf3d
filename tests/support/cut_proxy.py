"""A TCP proxy that cuts responses: what a network cut looks like to a client, on 127.0.0.1.

Each accepted connection is forwarded to the target; the client's bytes go through whole, the server's go
through up to ``cut_after`` bytes (of that connection), and then the proxy ends the client's side: with a
FIN (``reset=False``, an orderly close, the case a client can mistake for the end of the answer) or a RST.
``cut_after=None`` forwards everything (a transparent proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

__all__ = ["CutProxy", "cut_proxy"]


class CutProxy:
    def __init__(self, target_port: int, cut_after: int | None, *, reset: bool = False) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.reset = reset
        self.cuts = 0
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

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        upstream = asyncio.create_task(self._pipe(client_r, server_w))
        try:
            await self._downstream(server_r, client_w)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await upstream
            server_w.close()
            client_w.close()
            self._tasks.discard(task)

    async def _downstream(self, server_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        sent = 0
        while data := await server_r.read(65536):
            if self.cut_after is not None and sent + len(data) >= self.cut_after:
                client_w.write(data[: self.cut_after - sent])
                await client_w.drain()
                self.cuts += 1
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
        client_w.write_eof()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


@contextlib.asynccontextmanager
async def cut_proxy(target_port: int, cut_after: int | None, *, reset: bool = False) -> AsyncIterator[CutProxy]:
    """A :class:`CutProxy` to ``127.0.0.1:target_port``, listening on a free port until the block ends."""
    proxy = CutProxy(target_port, cut_after, reset=reset)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
