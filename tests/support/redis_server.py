"""A real ``redis-server`` for tests: its own temporary folder, persistence off, stopped by its PID.

:class:`RedisProcess` listens on 127.0.0.1 and a free TCP port (``redis://127.0.0.1:PORT/0``) or, with
``unix_socket=True``, only on a unix socket in its folder (``unix:///tmp/tw-redis-.../redis.sock?db=0``).
It keeps its address across :meth:`RedisProcess.restart`, so clients and servers holding its URL reconnect
to the new process: ``restart(keep_data=True)`` saves a snapshot (``SAVE`` to ``dump.rdb`` in its folder)
and the new process loads it; ``restart(keep_data=False)`` starts empty, as a Redis that lost its history.

The fixtures ``redis_server`` (a process of its own per test, for restarts) and ``redis_url`` (one process
for the session, flushed before each test) live in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

__all__ = ["REDIS_SERVER", "RedisProcess"]

#: The ``redis-server`` binary (``make system-deps`` installs it); ``None`` where it is missing.
REDIS_SERVER = shutil.which("redis-server")

_DUMP = "dump.rdb"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """One ``redis-server`` process (see the module docstring). Use it as a context manager, or call
    :meth:`start` and :meth:`close`."""

    def __init__(self, *, unix_socket: bool = False, start_timeout: float = 10.0) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (make system-deps)")
        # Under /tmp, not pytest's tmp_path: a unix socket path must stay under 108 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="tw-redis-"))
        self.unix_socket = self.directory / "redis.sock" if unix_socket else None
        self.port = 0 if unix_socket else free_port()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The address clients use; the same across restarts."""
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def client(self) -> redis.Redis:
        """A synchronous client (close it after use)."""
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        """Start the process (loading ``dump.rdb`` from its folder if one is there) and wait until it answers
        ``PING``."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        args = [
            REDIS_SERVER or "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",  # no snapshots but the ones SAVE asks for (restart(keep_data=True))
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--dbfilename", _DUMP,
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.unix_socket is not None:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)  # noqa: S603 - fixed arguments
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {self.start_timeout} s: {self.log()}")
            time.sleep(0.01)

    def stop(self, *, save: bool = False) -> None:
        """Stop the process by its PID (SIGTERM, then SIGKILL). ``save``: snapshot the data first, so the next
        :meth:`start` loads it; otherwise any earlier snapshot is removed and the next start is empty."""
        proc = self.proc
        if proc is None:
            return
        if save and proc.poll() is None:
            with self.client() as client:
                client.save()
        elif not save:
            (self.directory / _DUMP).unlink(missing_ok=True)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # with --save "" the shutdown writes nothing
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None
        if self.unix_socket is not None:
            self.unix_socket.unlink(missing_ok=True)

    def restart(self, *, keep_data: bool) -> None:
        """Stop and start again on the same address, with the data (``keep_data``) or empty."""
        self.stop(save=keep_data)
        self.start()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        return ""

    def close(self) -> None:
        """Stop the process and remove its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisProcess {self.url} pid={self.pid} dir={os.fspath(self.directory)}>"
