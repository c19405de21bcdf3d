"""Real processes for the proxy's end-to-end tests: the upstream (tests/support/upstream.py) and ``tokenwire serve
--upstream`` in front of it, both started once per module (sync, so module-scoped fixtures can hold them while each
test runs on its own loop)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[2]


class Serve:
    """``tokenwire serve --port 0 ARGS`` as a child process: ``base`` (``http://127.0.0.1:PORT``), and with
    WebTransport on, ``wt_url`` and ``wt_hash`` (the development certificate's SHA-256). Its stderr (logs) is
    kept in ``log`` (read by a thread; ``verbose`` 2: debug logging), its exit status must be 0 after SIGTERM."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, webtransport: bool = True, verbose: int = 0
    ) -> None:
        self.args = args
        self.verbose = verbose
        self.env = env
        self.webtransport = webtransport
        self.proc: subprocess.Popen[str] | None = None
        self.base = self.wt_url = ""
        self.wt_hash = b""
        self._log: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def log(self) -> str:
        return "".join(self._log)

    def start(self) -> None:
        args = [
            *(["-" + "v" * self.verbose] if self.verbose else []),
            "serve",
            "--port",
            "0",
            *self.args,
            *(() if self.webtransport else ("--no-webtransport",)),
        ]
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "tokenwire", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **(self.env or {})},
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._reader = threading.Thread(target=self._read_log, args=(self.proc.stderr,), daemon=True)
        self._reader.start()
        line = self.proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+) ", line)
        if found is None:
            self.close()
            raise RuntimeError(f"tokenwire serve did not start: {line!r} {self.log}")
        self.base = found[1]
        if self.webtransport:
            wt_line = self.proc.stdout.readline()
            pinned = re.search(r"(https://\S+) \(UDP\).* sha-256 ([0-9a-f]{64})", wt_line)
            assert pinned, wt_line
            self.wt_url, self.wt_hash = pinned[1], bytes.fromhex(pinned[2])

    def _read_log(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._log.append(line)

    def close(self) -> int:
        code = 0
        if self.proc is not None:
            self.proc.terminate()
            try:
                code = self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
            if self._reader is not None:
                self._reader.join(5)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
            self.proc = None
        return code

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.close() == 0, self.log
