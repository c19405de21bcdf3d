"""Both relays in a child process of their own: :class:`RelayProcess` (the parent's handle) and the child's main."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
import traceback
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Self, TypedDict, cast

from tokenwire._loop import loop_factory
from tokenwire.loadtest.impair import Impairment
from tokenwire.loadtest.relays.tcp import TcpRelay
from tokenwire.loadtest.relays.udp import UdpRelay

__all__ = ["RelayProcess", "RelayProcessError"]


class RelayProcessError(RuntimeError):
    """The relay process failed: it could not start, died, or did not answer (the child's traceback included)."""


class RelayProcess:
    """Both relays in a child process (its own uvloop), so relay work does not share the load generator's loop.

    ``start()`` returns once both listen on ``host`` (``tcp_port`` in front of ``(target_host, tcp_port)``,
    ``udp_port`` in front of ``(target_host, udp_port)``); ``stats()`` is a snapshot of both relays' counters,
    ``stop()`` the final one, and the child is gone after it. A context manager. ``impairment.rebind`` resets
    both relays' addresses on the same period. The calls block (a pipe round trip; ``start()`` spawns a Python
    process): from a running event loop, call them through ``asyncio.to_thread``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        target_host: str,
        tcp_port: int,
        udp_port: int,
        impairment: Impairment,
        *,
        seed: int = 0,
        cpus: set[int] | None = None,
    ) -> None:
        self.target_host = target_host
        self.target_tcp_port = tcp_port
        self.target_udp_port = udp_port
        self.impairment = impairment
        self.seed = seed
        self.cpus = set(cpus) if cpus else None
        self.tcp_port = 0
        self.udp_port = 0
        self.pid = 0
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._pipe: Connection | None = None
        self._final: dict[str, Any] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and self._final is None

    def start(self, timeout: float = 30.0) -> None:
        """Spawns the child and waits until both relays listen; raises :class:`RelayProcessError` if it fails."""
        if self._proc is not None:
            raise RelayProcessError("relay process already started")
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        args = (
            child,
            self.target_host,
            self.target_tcp_port,
            self.target_udp_port,
            self.impairment,
            self.seed,
            self.cpus,
        )
        self._proc = ctx.Process(target=_relay_main, args=args, name="tokenwire-relays", daemon=True)
        self._pipe = parent
        self._proc.start()
        child.close()
        try:
            ready = self._answer("ready", timeout)
        except BaseException:
            self._end_child(0.0)
            raise
        self.tcp_port, self.udp_port, self.pid = int(ready["tcp_port"]), int(ready["udp_port"]), int(ready["pid"])

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """``{"tcp": TcpRelay.snapshot(), "udp": UdpRelay.snapshot()}`` now; after ``stop()``, the final one."""
        if self._final is not None:
            return self._final
        self._send("stats")
        return self._answer("stats", timeout)

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """Stops both relays and ends the child; returns the final stats. Idempotent."""
        if self._final is not None:
            return self._final
        if self._proc is None:
            raise RelayProcessError("relay process not started")
        try:
            self._send("stop")
            self._final = self._answer("stopped", timeout)
        finally:
            self._end_child(timeout)
        return self._final

    # ----------------------------------------------------------------- the pipe

    def _send(self, command: str) -> None:
        if self._pipe is None or self._proc is None:
            raise RelayProcessError("relay process not started")
        try:
            self._pipe.send(command)
        except OSError as exc:
            raise self._gone() from exc

    def _answer(self, kind: str, timeout: float) -> dict[str, Any]:
        pipe, proc = self._pipe, self._proc
        if pipe is None or proc is None:
            raise RelayProcessError("relay process not started")
        deadline = time.monotonic() + timeout
        while True:
            try:
                if pipe.poll(0.05):
                    got, payload = pipe.recv()
                    break
            except (EOFError, OSError) as exc:
                raise self._gone() from exc
            if not proc.is_alive() and not pipe.poll(0):
                raise self._gone()
            if time.monotonic() > deadline:
                raise RelayProcessError(f"relay process {proc.pid} did not answer {kind!r} within {timeout:g} s")
        if got == "error":
            raise RelayProcessError(f"relay process failed:\n{payload}")
        if got != kind:  # pragma: no cover - one request at a time
            raise RelayProcessError(f"relay process answered {got!r} to {kind!r}")
        return cast(dict[str, Any], payload)

    def _gone(self) -> RelayProcessError:
        """The error for a child that went away (or whose pipe broke): its pid and exit code."""
        proc = self._proc
        code = proc.exitcode if proc is not None else None
        state = "still running" if code is None else f"exit code {code}"
        return RelayProcessError(f"relay process {proc.pid if proc is not None else None} is gone ({state})")

    def _end_child(self, timeout: float) -> None:
        proc, pipe = self._proc, self._pipe
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():  # it did not stop when asked: terminate, then kill
                proc.terminate()
                proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if pipe is not None:
            pipe.close()
            self._pipe = None


def _relay_main(
    pipe: Connection,
    target_host: str,
    tcp_port: int,
    udp_port: int,
    impairment: Impairment,
    seed: int,
    cpus: set[int] | None,
) -> None:
    """The child: both relays on one uvloop until the parent says stop (or goes away)."""
    try:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            final = runner.run(_serve_relays(pipe, target_host, tcp_port, udp_port, impairment, seed))
        pipe.send(("stopped", final))
    except BaseException:  # noqa: BLE001 - whatever ends the child, the parent is told why
        with contextlib.suppress(OSError):
            pipe.send(("error", traceback.format_exc()))
    finally:
        pipe.close()


class _Knobs(TypedDict):
    """The knobs both relays take alike."""

    loss: float
    delay: float
    jitter: float
    rate: float
    rebind_every: float


async def _serve_relays(
    pipe: Connection, target_host: str, tcp_port: int, udp_port: int, imp: Impairment, seed: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    shared = _Knobs(loss=imp.loss, delay=imp.delay, jitter=imp.jitter, rate=imp.rate, rebind_every=imp.rebind)
    tcp = TcpRelay((target_host, tcp_port), rto=imp.rto, link=imp.link, tls=imp.tls, seed=seed, **shared)
    udp = UdpRelay((target_host, udp_port), reorder=imp.reorder, duplicate=imp.duplicate, seed=seed, **shared)
    stopping = loop.create_future()

    def snapshot() -> dict[str, Any]:
        return {"tcp": tcp.snapshot(), "udp": udp.snapshot()}

    def on_command() -> None:
        try:
            command = pipe.recv()
        except (EOFError, OSError):  # the parent is gone
            command = "stop"
        if command == "stats":
            pipe.send(("stats", snapshot()))
        elif not stopping.done():
            stopping.set_result(None)

    async with tcp, udp:
        pipe.send(("ready", {"tcp_port": tcp.port, "udp_port": udp.port, "pid": os.getpid()}))
        loop.add_reader(pipe.fileno(), on_command)
        try:
            await stopping
        finally:
            loop.remove_reader(pipe.fileno())
    return snapshot()
