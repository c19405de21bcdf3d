"""A benchmark run as a test: in a session of its own, so that whatever it started (servers, load generators,
browsers) goes with it if it overruns."""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["run_module"]


def run_module(args: list[str], timeout: float) -> tuple[subprocess.Popen[str], str, str]:
    """``python -m ARGS`` in a new session; the finished process (its ``pid`` names the session), its stdout
    and its stderr. Past ``timeout`` seconds the whole session is killed and ``TimeoutExpired`` raised."""
    proc = subprocess.Popen(  # noqa: S603 - our own modules
        [sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)  # its own session: the module and whatever it started
            proc.wait()
    return proc, stdout, stderr
