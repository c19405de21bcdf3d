"""A load generator for OpenAI Chat Completions streams: many ``stream: true`` requests on one uvloop, each
response read with httptools and tokenwire's Rust SSE parser (``_core.SseDecoder``), every chunk checked.

Per stream: ``POST {url}/chat/completions`` (``messages`` = one user message ``bench stream {i}``,
``max_tokens``, ``stream_options.include_usage``) on a connection of its own; TTFT = request sent (the
connect started) -> the first chunk with non-empty ``delta.content``; lateness of every content chunk against
the stream's own schedule (a chunk every ``1/tokens_per_s`` from its first); the content, hashed
(``_core.fnv1a64``), with the count of content chunks, the finish reason and the usage for the caller to
compare with what the upstream sent. A stream passes when its answer is 200 ``text/event-stream``, every
``data:`` is a ``chat.completion.chunk`` of one completion id (no ``error``), exactly one finish reason and
exactly one usage chunk arrive, ``[DONE]`` comes once and last, and the connection ends after it.

``--streams`` slots each run ``--rounds`` streams back to back (stream ``round * streams + slot``), the slots
started at ``--ramp`` per second (default: over one stream's time, the steady arrival rate). The measured window
runs from the moment every slot has started to the moment the first slot is done; TTFT of the requests sent in
it, lateness and counts of the chunks that arrive in it, and the CPU of the processes named by ``--pid NAME=PID``
and of the generator itself (``client``) from /proc over it. When the first slot is done before the last has
started, the window is the whole run.

    python -m benches.openai_load --url http://127.0.0.1:9000/v1 --streams 100 --tokens 100 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tokenwire import _core
from tokenwire._loop import loop_factory
from tokenwire.loadtest.report import percentiles
from tokenwire.loadtest.runner import ProcSampler
from tokenwire.loadtest.worker import _Conn as _LoadtestConn

__all__ = ["LoadConfig", "StreamResult", "default_ramp", "prompt_of", "request_body", "run_load"]


def _now_us() -> int:
    return time.time_ns() // 1000


def prompt_of(index: int) -> str:
    """The user message of stream ``index`` (the upstream's content is a function of it)."""
    return f"bench stream {index}"


def request_body(index: int, tokens: int, model: str = "bench") -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt_of(index)}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


@dataclass
class LoadConfig:
    url: str  # the base an OpenAI SDK takes: http://host:port/v1
    streams: int = 100
    tokens: int = 200  # max_tokens of each request
    tokens_per_s: float = 20.0  # the pace the upstream streams at (for lateness only; 0: no lateness)
    ramp: float = 100.0  # first streams of the slots started per second
    rounds: int = 1  # streams each slot runs back to back
    stream_timeout: float = 120.0
    connect_timeout: float = 30.0
    pids: dict[str, int] = field(default_factory=dict)  # processes whose CPU the window measures


@dataclass
class StreamResult:
    index: int
    ok: bool = False
    status: int = 0
    error: str = ""
    ttft: float | None = None
    ttfb: float | None = None  # request sent -> response headers received (diagnostics)
    sent_s: float = 0.0  # when the request was sent, seconds after the run started (diagnostics)
    content_chunks: int = 0
    content_hash: int = 0
    content_chars: int = 0
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    chunks: int = 0


class _Conn(_LoadtestConn):
    """One HTTP response, its body fed to the stream's SSE decoder as it arrives (``tokenwire loadtest``'s
    connection, which also notes the content type and whether the response ended)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.content_type = b""
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        s = self.s
        s.result.ttfb = (_now_us() - s.sent_us) / 1e6

    def on_message_complete(self) -> None:
        self.complete = True
        super().on_message_complete()


class _Stream:
    def __init__(self, gen: _Generator, index: int) -> None:
        self.g = gen
        self.index = index
        self.result = StreamResult(index)
        self.decoder = _core.SseDecoder()
        self.parts: list[str] = []
        self.completion_id: str | None = None
        self.done = False
        self.sent_us = 0
        self.first_us = 0
        self.finishes = 0
        self.usages = 0

    def fail(self, message: str) -> None:
        if not self.result.error:
            self.result.error = message

    def on_body(self, body: bytes) -> None:
        now = _now_us()
        try:
            events = self.decoder.feed(body)
        except Exception as exc:  # noqa: BLE001 - a malformed stream fails this stream only
            self.fail(f"SSE decode error: {exc!r}")
            return
        for _, _, data in events:
            if self.done:
                self.fail(f"data after [DONE]: {data[:100]!r}")
                return
            if data == "[DONE]":
                self.done = True
                continue
            self._chunk(data, now)

    def _chunk(self, data: str, now: int) -> None:
        r = self.result
        r.chunks += 1
        try:
            chunk = json.loads(data)
        except ValueError:
            self.fail(f"not JSON: {data[:100]!r}")
            return
        if "error" in chunk or chunk.get("object") != "chat.completion.chunk":
            self.fail(f"not a chat.completion.chunk: {data[:200]!r}")
            return
        cid = chunk.get("id")
        if self.completion_id is None:
            self.completion_id = cid
        elif cid != self.completion_id:
            self.fail(f"chunk of another completion: {cid!r} after {self.completion_id!r}")
        if chunk.get("usage"):
            self.usages += 1
            r.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                self.finishes += 1
                r.finish_reason = choice["finish_reason"]
            content = (choice.get("delta") or {}).get("content")
            if content:
                if not self.first_us:
                    self.first_us = now
                    r.ttft = (now - self.sent_us) / 1e6
                self.g.record_lateness(now, self.first_us, len(self.parts))
                self.parts.append(content)
                self.g.content_chunks += 1

    async def run(self) -> StreamResult:
        g, r = self.g, self.result
        cfg = g.cfg
        body = request_body(self.index, cfg.tokens)
        head = (
            f"POST {g.path}/chat/completions HTTP/1.1\r\nHost: {g.host}:{g.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        self.sent_us = _now_us()
        r.sent_s = time.monotonic() - g.started
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                transport, conn = await loop.create_connection(lambda: _Conn(self), g.host, g.port)
        except (OSError, TimeoutError) as exc:
            self.fail(f"connection error: {exc!r}")
            return r
        transport.write(head.encode() + body)
        try:
            async with asyncio.timeout(cfg.stream_timeout):
                await conn.closed
        except TimeoutError:
            self.fail("timed out")
            transport.abort()
        self._settle(conn)
        return r

    def _settle(self, conn: _Conn) -> None:
        r = self.result
        content = "".join(self.parts)
        r.content_chunks, r.content_chars, r.content_hash = len(self.parts), len(content), _core.fnv1a64(content)
        r.status = conn.status
        if r.error:
            pass
        elif r.status != 200:
            self.fail(f"HTTP {r.status}: {conn.error_body[:200].decode('utf-8', 'replace')}")
        elif not conn.content_type.startswith(b"text/event-stream"):
            self.fail(f"content type {conn.content_type!r}")
        elif not self.done:
            self.fail("no [DONE]")
        elif not conn.complete:
            self.fail("the response did not end after [DONE]")
        elif self.finishes != 1 or self.usages != 1:
            self.fail(f"{self.finishes} finish reasons and {self.usages} usage chunks (want one each)")
        r.ok = not r.error


class _Generator:
    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        u = urlsplit(cfg.url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"an http:// URL is needed, not {cfg.url!r}")
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path.rstrip("/")
        self.interval_us = int(1e6 / cfg.tokens_per_s) if cfg.tokens_per_s > 0 else 0
        #: The measured window (every slot busy): counts and lateness of the content chunks that arrive in it.
        self.measuring = False
        self.window_chunks = 0
        self.window_lateness = _core.LagHistogram()
        #: The same over the whole run.
        self.content_chunks = 0
        self.lateness = _core.LagHistogram()
        self.samplers = {name: ProcSampler(pid) for name, pid in cfg.pids.items()}
        self.samplers["client"] = ProcSampler(os.getpid())
        self.marks: dict[str, tuple[float, dict[str, float]]] = {}
        self.started = 0.0

    def mark(self, name: str) -> None:
        """Remember the time and every measured process's CPU seconds now (once per name)."""
        if name not in self.marks:
            self.marks[name] = (time.monotonic(), {**{k: s.cpu() for k, s in self.samplers.items()}, **_cores_busy()})

    def record_lateness(self, now_us: int, first_us: int, k: int) -> None:
        """How late content chunk ``k`` (0-based) is against its stream's schedule."""
        self.content_chunks += 1
        late = max(0, now_us - (first_us + k * self.interval_us)) if self.interval_us else -1
        if late >= 0:
            self.lateness.record(late)
        if self.measuring:
            self.window_chunks += 1
            if late >= 0:
                self.window_lateness.record(late)

    def _open_window(self) -> None:
        if "slot_done" not in self.marks:
            self.mark("window_start")
            self.measuring = True

    def _close_window(self) -> None:
        self.mark("slot_done")
        if self.measuring:
            self.measuring = False
            self.mark("window_end")

    async def _slot(self, slot: int, start_at: float) -> list[tuple[StreamResult, float]]:
        """Slot ``slot``: ``rounds`` streams back to back (stream index ``round * streams + slot``), the first
        at its place in the ramp; each result with the time its request was sent."""
        cfg = self.cfg
        delay = start_at + slot / cfg.ramp - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        out = []
        for k in range(cfg.rounds):
            sent = time.monotonic()
            out.append((await _Stream(self, k * cfg.streams + slot).run(), sent))
        self._close_window()  # the first slot to finish ends the window: from now on fewer streams run
        return out

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self.started = time.monotonic()
        start_at = self.started + 0.05
        self.mark("start")
        # Every slot has started (the ramp is over): the window opens, unless a slot has finished already.
        opener = loop.call_later(start_at + (cfg.streams - 1) / cfg.ramp - time.monotonic(), self._open_window)
        slots = await asyncio.gather(*(self._slot(i, start_at) for i in range(cfg.streams)))
        opener.cancel()
        self.mark("end")
        runs = sorted((x for slot in slots for x in slot), key=lambda x: x[0].index)
        steady = "window_start" in self.marks and "window_end" in self.marks
        t0, cpu0 = self.marks["window_start" if steady else "start"]
        t1, cpu1 = self.marks["window_end" if steady else "end"]
        elapsed = t1 - t0
        cpu = {name: cpu1[name] - cpu0[name] for name in cpu0 if not name.startswith("core ")}
        cores = {name: (cpu1[name] - cpu0[name]) / elapsed for name in cpu0 if name.startswith("core ") and elapsed}
        tokens = self.window_chunks if steady else self.content_chunks
        lateness = _hist(self.window_lateness if steady else self.lateness)
        ttfts = [r.ttft for r, sent in runs if r.ttft is not None and (not steady or t0 <= sent < t1)]
        return {
            "config": asdict(cfg),
            "window": {
                "kind": "steady" if steady else "whole run",
                "seconds": elapsed,
                "start_s": t0 - self.marks["start"][0],
                "streams_started": len(ttfts),
            },
            "elapsed_s": elapsed,
            "tokens": tokens,
            "tokens_per_s": tokens / elapsed if elapsed else 0.0,
            "streams_ok": sum(r.ok for r, _ in runs),
            "streams_total": len(runs),
            "ttft_s": percentiles(ttfts, (50, 90, 99, 100)),
            "lateness_s": lateness,
            "cpu_s": cpu,
            "cpu_s_per_100k_tokens": {name: c / tokens * 1e5 if tokens else None for name, c in cpu.items()},
            "cpu_utilisation": {name: c / elapsed if elapsed else 0.0 for name, c in cpu.items()},
            #: How busy each core was in the window, whoever used it (this run's processes and any other).
            "core_utilisation": cores,
            "streams": [asdict(r) for r, _ in runs],
        }


def _cores_busy() -> dict[str, float]:
    """Busy seconds of every core since boot (/proc/stat: all but idle and iowait), as ``{"core N": s}``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(x) for x in fields]
                out[f"core {name[3:]}"] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / tick
    return out


def _hist(h: Any) -> dict[str, float]:
    if not h.count:
        return {"count": 0}
    p50, p99, p999 = h.percentiles([50.0, 99.0, 99.9])
    return {"count": h.count, "p50": p50, "p99": p99, "p99_9": p999, "max": h.max}


def run_load(cfg: LoadConfig) -> dict[str, Any]:
    """Run every stream to its end on a fresh (uv)loop; the report (per-stream results under ``streams``)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_Generator(cfg).run())


def default_ramp(streams: int, tokens: int, tokens_per_s: float) -> float:
    """Slots started per second so that the first round spreads over one stream's time (the steady state's
    arrival rate, ``streams / (tokens / tokens_per_s)``); unpaced streams: all at once."""
    return streams * tokens_per_s / tokens if tokens_per_s > 0 and tokens > 0 else 1e9


def _pid(text: str) -> tuple[str, int]:
    name, _, pid = text.partition("=")
    if not name or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"NAME=PID, not {text!r}")
    return name, int(pid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="base URL, as an OpenAI SDK takes it: http://host:port/v1")
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--tokens", type=int, default=200, help="max_tokens of each request")
    p.add_argument("--tokens-per-s", type=float, default=20.0, help="the upstream's pace (lateness schedule)")
    p.add_argument("--ramp", type=float, help="slots started per second (default: streams over one stream's time)")
    p.add_argument("--rounds", type=int, default=1, help="streams each slot runs back to back")
    p.add_argument("--stream-timeout", type=float, default=120.0)
    p.add_argument("--pid", type=_pid, action="append", default=[], help="NAME=PID: measure this process's CPU")
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    cfg = LoadConfig(
        url=args.url, streams=args.streams, tokens=args.tokens, tokens_per_s=args.tokens_per_s,
        ramp=args.ramp or default_ramp(args.streams, args.tokens, args.tokens_per_s), rounds=args.rounds, stream_timeout=args.stream_timeout, pids=dict(args.pid),
    )  # fmt: skip
    report = run_load(cfg)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f)
    failed = [r for r in report["streams"] if not r["ok"]]
    print(
        f"{report['streams_ok']}/{report['streams_total']} streams ok, {report['tokens']} content chunks in "
        f"{report['elapsed_s']:.1f} s, TTFT {report['ttft_s']}",
        *(f"stream {r['index']}: {r['error']}" for r in failed[:5]),
        sep="\n",
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
