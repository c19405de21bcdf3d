"""``tokenwire serve --workers N``: N server processes on one port, and the process that supervises them.

Every worker is a whole ``tokenwire serve`` (its own event loop, hub and engine) that binds the port with
``SO_REUSEPORT``: TCP for SSE, UDP for WebTransport. The kernel hashes each TCP connection, and each UDP
4-tuple, to one of the sockets, so the load spreads without a process in the data path. A stream lives on the
worker that started it; a resume that lands on another worker finds it only through a shared storage
(``--storage redis://...``), which is why the command refuses ``--workers`` > 1 over in-memory storage.

The supervisor (this module, no event loop):

- picks the port before any worker starts, by binding it itself with ``SO_REUSEPORT`` (TCP, and UDP with
  WebTransport: port 0 becomes a number free for both), so every worker binds the same one; it holds that
  reservation (bound, not listening: it takes no connections) until all workers are up;
- with WebTransport and no ``--cert``, makes one development certificate for all workers (a client pins one
  hash, whichever worker its packets reach), in a temporary folder removed once they have read it;
- starts the workers as ``python -m tokenwire`` with the same arguments, each in its own process group (so a
  terminal's Ctrl-C reaches the supervisor alone), and waits until each reports that it is serving (a byte
  on a pipe);
- forwards SIGINT and SIGTERM to every worker (each drains its streams, as a single server does) and exits
  when they have exited: 0 if all exited cleanly. A worker that dies on its own stops the others (exit
  code 1); a process manager restarts the whole. A worker still running ``stop_grace`` seconds after it was
  told to stop is killed (exit code 1);
- holds the write end of a "lifeline" pipe whose read end every worker watches: if the supervisor dies, even
  by SIGKILL, the pipe ends and the workers shut down on their own (and exit within the same grace).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

__all__ = ["reserve_port", "supervise"]

#: Seconds the workers have to report that they serve.
START_TIMEOUT = 60.0
#: Seconds between two looks for exited workers.
_POLL = 0.05
#: Tries to find a port number free for both TCP and UDP when the port asked is 0.
_PORT_TRIES = 50


def _bound(family: int, kind: int, address: Any) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int, *, udp: bool) -> tuple[int, list[socket.socket]]:
    """Bind ``host:port`` with ``SO_REUSEPORT`` over TCP (and UDP with ``udp``) without listening: the port
    number (chosen here when ``port`` is 0) and the sockets, to close once the workers have bound it too."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]  # the workers bind every address of host: on this port number
    for _ in range(_PORT_TRIES):
        tcp = _bound(family, socket.SOCK_STREAM, address)
        chosen = int(tcp.getsockname()[1])
        if not udp:
            return chosen, [tcp]
        try:
            return chosen, [tcp, _bound(family, socket.SOCK_DGRAM, (address[0], chosen, *address[2:]))]
        except OSError:
            tcp.close()
            if port:
                raise
    raise OSError(f"no port free for both TCP and UDP on {host} after {_PORT_TRIES} tries")


def supervise(
    argv: Sequence[str],
    workers: int,
    *,
    host: str,
    port: int,
    webtransport: bool,
    dev_certificate: bool,
    storage: str,
    stop_grace: float,
    out: TextIO = sys.stdout,
) -> int:
    """Run ``workers`` copies of ``tokenwire ARGV`` (a ``serve`` command line) on one port until SIGINT or
    SIGTERM (see the module docstring); ``stop_grace``: seconds a worker has to exit once told to stop (its
    drain and more), then it is killed. Returns the exit code."""
    sup = _Supervisor(stop_grace)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, sup.forward)
    try:
        port, reservation = reserve_port(host, port, udp=webtransport)
    except OSError as exc:
        print(f"tokenwire serve: cannot bind {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 1
    args = [*argv, "--workers", "1", "--port", str(port), "--reuse-port"]
    cert_dir: str | None = None
    try:
        if webtransport and dev_certificate:
            from tokenwire.server.certs import make_dev_certificate

            cert = make_dev_certificate(directory="")  # one for all: a client pins one hash
            assert cert.cert_path is not None and cert.key_path is not None  # noqa: S101 - written to a folder
            cert_dir = os.fspath(cert.cert_path.parent)
            args += ["--cert", os.fspath(cert.cert_path), "--key", os.fspath(cert.key_path)]
        try:
            started = sup.start(args, workers)
        finally:
            for sock in reservation:
                sock.close()
            if cert_dir is not None:  # each worker has read it by the time it reports ready
                shutil.rmtree(cert_dir, ignore_errors=True)
        if started:
            from tokenwire import __version__

            scheme = "SSE and WebTransport (UDP)" if webtransport else "SSE"
            print(
                f"tokenwire {__version__}: {workers} workers serving {scheme} on http://{host}:{port} "
                f"(SO_REUSEPORT), storage {_redacted(storage)}; pids {', '.join(str(p.pid) for p in sup.procs)}",
                file=out,
                flush=True,
            )
        else:
            if not sup.stopping:
                print("tokenwire serve: a worker did not start; stopping the others", file=sys.stderr, flush=True)
            sup.forward(signal.SIGTERM, None)
        code = sup.wait_all()
    finally:
        sup.close()
    return code if started else 1


class _Supervisor:
    def __init__(self, stop_grace: float) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        #: A stop was asked (a signal), or a worker failed: every worker has been told to stop.
        self.stopping = False
        #: Seconds a worker has to exit after it was told to stop; then it is killed.
        self.stop_grace = stop_grace
        self._stop_asked: float | None = None
        self._life_w = -1

    def forward(self, signum: int, frame: FrameType | None = None) -> None:
        """Signal handler: pass the signal on to every worker still running."""
        self.stopping = True
        if self._stop_asked is None:
            self._stop_asked = time.monotonic()
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def start(self, args: list[str], workers: int) -> bool:
        """Start the workers and wait until each wrote its ready byte: False if one exits first, the time
        runs out, or a signal asks to stop."""
        life_r, self._life_w = os.pipe()
        ready: list[int] = []
        try:
            for index in range(workers):
                ready_r, ready_w = os.pipe()
                ready.append(ready_r)
                try:
                    self.procs.append(
                        subprocess.Popen(  # noqa: S603 - this command's own arguments, run again
                            [sys.executable, "-m", "tokenwire", *args, "--worker", f"{index},{ready_w},{life_r}"],
                            pass_fds=(ready_w, life_r),
                            process_group=0,  # a terminal's Ctrl-C reaches only the supervisor, which forwards it
                        )
                    )
                finally:
                    os.close(ready_w)
            os.close(life_r)
            life_r = -1
            deadline = time.monotonic() + START_TIMEOUT
            pending = set(ready)
            while pending:
                if self.stopping or time.monotonic() > deadline:
                    return False
                readable, _, _ = select.select(list(pending), [], [], 0.2)
                for fd in readable:
                    if not os.read(fd, 64):
                        return False  # its end closed without a word: the worker exited
                    pending.discard(fd)
            return True
        finally:
            for fd in ready:
                os.close(fd)
            if life_r >= 0:
                os.close(life_r)

    def wait_all(self) -> int:
        """Reap the workers; the first that exits while nobody asked stops the others; those still running
        ``stop_grace`` s after a stop was asked are killed. The exit code: 0 when all exited with 0 after a
        stop was asked, else 1."""
        code = 0
        by_pid = {p.pid: p for p in self.procs}
        while any(p.returncode is None for p in self.procs):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:  # none exited: look again soon (a signal cuts the sleep short and runs its handler)
                if self._stop_asked is not None and time.monotonic() - self._stop_asked > self.stop_grace:
                    code = 1
                    self._kill_stragglers()
                time.sleep(_POLL)
                continue
            proc = by_pid.get(pid)
            if proc is None:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            if not self.stopping:
                print(
                    f"tokenwire serve: worker pid {pid} exited with {proc.returncode}; stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                code = 1
                self.forward(signal.SIGTERM)
            elif proc.returncode != 0:
                code = 1
        return code

    def _kill_stragglers(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                print(
                    f"tokenwire serve: worker pid {proc.pid} still running {self.stop_grace:g} s after the stop; "
                    "killing it",
                    file=sys.stderr,
                    flush=True,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        self._stop_asked = None  # killed: only their exit statuses are left to reap

    def close(self) -> None:
        """Let the workers' lifeline end (they stop if still running) and reap them."""
        if self._life_w >= 0:
            os.close(self._life_w)
            self._life_w = -1
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)


def _redacted(url: str) -> str:
    """``url`` without a password."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
