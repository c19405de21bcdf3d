"""The SSE server's accept path: connections are accepted here, so that running out of file descriptors is
answered, logged and counted instead of silent.

asyncio's own accept path logs EMFILE and stops accepting for a second (the backlog waits); uvloop's (libuv)
accepts the waiting connections and resets them, with nothing logged. Here a reserve descriptor is held open;
at EMFILE/ENFILE it is closed, one waiting connection accepted, answered with a ready-made 503 (``Retry-After``)
and closed, and the reserve reopened -- the classic trick (libuv, nginx) -- for as long as the backlog holds
connections. Each refusal is counted (``tokenwire_fd_limit_refusals_total``); a warning is logged at most
every :data:`LOG_INTERVAL` seconds. Accepted sockets become transports through
``loop.connect_accepted_socket``, on asyncio and uvloop alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable

__all__ = ["LOG_INTERVAL", "Listener", "listening_sockets"]

log = logging.getLogger("tokenwire.server")

#: Connections accepted per readiness callback, at most (then the loop runs other work).
ACCEPT_BATCH = 128
#: Seconds between two warnings about the descriptor limit.
LOG_INTERVAL = 10.0
#: Seconds accepting pauses when the kernel is short of memory for sockets (asyncio's own delay).
RETRY_DELAY = 1.0

_FD_LIMIT = frozenset({errno.EMFILE, errno.ENFILE})
_NO_MEMORY = frozenset({errno.ENOBUFS, errno.ENOMEM})


class Listener:
    """One listening socket whose connections get ``factory()`` protocols; see the module docstring."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        refusal: bytes,
        on_refused: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._refusal = refusal
        self._on_refused = on_refused
        self._reserve = -1
        self._pending: set[asyncio.Task[object]] = set()
        self._closed = loop.create_future()
        self._refused_unlogged = 0
        self._last_log = -LOG_INTERVAL
        self._resume: asyncio.TimerHandle | None = None

    @property
    def sockets(self) -> list[socket.socket]:
        return [] if self._closed.done() else [self._sock]

    def start(self) -> None:
        self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop accepting and close the listening socket (new connections are refused by the kernel)."""
        if self._closed.done():
            return
        if self._resume is not None:
            self._resume.cancel()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Until closed and every accepted connection has its transport."""
        await asyncio.shield(self._closed)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    # -- accepting -------------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _FD_LIMIT:
                    if not self._refuse_one(exc):
                        return
                    continue
                if exc.errno in _NO_MEMORY:
                    log.warning("accept failed (%s); pausing accepts for %.0f s", exc, RETRY_DELAY)
                    self._pause()
                    return
                continue  # the peer gave up before accept (ECONNABORTED, ...): nothing to answer
            conn.setblocking(False)
            task: asyncio.Task[object] = self._loop.create_task(self._connect(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket) -> object:
        try:
            return await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:
            conn.close()  # reset before its transport existed: nothing to serve
            return None

    def _refuse_one(self, exc: OSError) -> bool:
        """Out of descriptors: free the reserve, accept one waiting connection, answer it 503, close it, take
        the reserve back. False when nothing was waiting (or the reserve did not help)."""
        if self._reserve < 0:
            self._pause()
            return False
        os.close(self._reserve)
        self._reserve = -1
        try:
            conn, _ = self._sock.accept()
        except OSError:
            conn = None
        if conn is not None:
            with conn:
                conn.setblocking(False)
                with contextlib.suppress(OSError):
                    conn.recv(65536)  # what the request sent already: closing with it unread would reset
                with contextlib.suppress(OSError):
                    conn.send(self._refusal)
                    conn.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if self._reserve < 0:
            self._pause()  # the descriptor went elsewhere: try again later
            return False
        if conn is None:
            return False
        self._on_refused()
        self._refused_unlogged += 1
        now = self._loop.time()
        if now - self._last_log >= LOG_INTERVAL:
            log.warning(
                "out of file descriptors (%s): %d connection(s) answered 503 since the last warning; raise the "
                "descriptor limit (ulimit -n) or lower max_connections",
                exc.strerror,
                self._refused_unlogged,
            )
            self._last_log = now
            self._refused_unlogged = 0
        return True

    def _pause(self) -> None:
        """Stop accepting for :data:`RETRY_DELAY`; the backlog waits."""
        if self._closed.done() or self._resume is not None:
            return
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(RETRY_DELAY, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._closed.done():
            return
        if self._reserve < 0:
            with contextlib.suppress(OSError):
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._loop.add_reader(self._sock.fileno(), self._on_readable)


async def listening_sockets(
    loop: asyncio.AbstractEventLoop, host: str, port: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host`` (every address it resolves to), as
    ``loop.create_server`` makes them; ``reuse_port``: with ``SO_REUSEPORT``, to share the port with other
    processes (the kernel hashes each connection to one of the listeners)."""
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(4096)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks
