"""The browser client's own KPIs in a real browser, WebTransport and SSE side by side in one run (issue 10).

The server is what ``tokenwire serve`` runs (one hub, its SSE server on TCP and its WebTransport server on
UDP on the same port number, the FakeModel, ``tokenwire serve``'s defaults: ``retry: 1000`` ms, pacing per
request), in this process; the browser is headless Chromium (Playwright) or Firefox (Selenium), running the
real client from ``/v1/client.js`` in a page of the server's origin. On a machine with 2 cores or more, the
browser (and its driver) is started pinned to one core and this process, the server, then pins itself to
another (``sched_setaffinity``, what ``taskset`` does), so the two do not share a core.

Every sample is one ``client.generate()`` read by a lean ``for await`` loop in the page, timed with the
page's clock (benches/browser_client_page.js), over WebTransport (``transport: "auto"``, which picks it)
and over SSE (``transport: "sse"``), alternately:

- ``ttft``: time to first token from the ``generate()`` call, on a freshly loaded page with a new client
  (cold: for WebTransport this includes the certificate lookup and the session's QUIC handshake), then a
  second ``generate()`` of the same client (warm: the session is up);
- ``tput``: tokens/s delivered to the loop for an unthrottled generation of ``--tokens`` tokens on a warm client
  (the client's ``kpis.tokensPerS``, and the whole answer from ``generate()`` to the last token), with the CPU
  the server process and the browser's processes used meanwhile (which side is the limit);
- ``drop``: ``stream.drop()`` at token ``--cut-at`` of a generation paced at ``--rate`` tokens/s; the recovery
  is the time from the drop to the first token over the new connection (WebTransport: it continues over SSE;
  SSE: it reconnects, after the backoff the server's ``retry:`` sets);
- ``kill``: the same, but the server kills the connection (WebTransport: closes the QUIC connection; SSE:
  aborts the TCP connection of the stream), asked by a request the page sends without waiting;
- ``blackhole``: ``transport: "auto"`` when the certificate points at a UDP port that swallows every datagram:
  time to first token on a first page load (the connect timeout, ``--connect-timeout-ms``, then SSE) and on
  a second page load (the failure is remembered: SSE at once), beside SSE's own cold time to first token.

Each sample is checked: the text the loop received equals a clean replay of the stream from seq 0 (read by a
client of its own, parsed by the test suite's WHATWG parser) and the FakeModel's answer, the model ran once
for its prompt, the answer ended with ``length`` and every token arrived, over the expected transport. A
fast wrong answer fails the row (and the exit status).

    .venv/bin/python -m benches.browser_client --repeats 5 --out /tmp/browser_client.json
    .venv/bin/python -m benches.browser_client --repeats 5 --scenarios drop,kill --hog
    .venv/bin/python -m benches.browser_client --browser firefox --repeats 5

Prints one table a repeat (median and p95 per metric and transport, and WebTransport's median over SSE's:
the same run), then every repeat's samples together (median, p95, worst; the range of the repeats' WT/SSE
ratios; the repeat with the worst p95) and the black-hole table. p95 is the nearest rank: with 20 samples
or fewer it is the worst one. ``--out`` writes every sample as JSON. The transport that goes first flips
every sample and every repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from benches.sse_compare import hogs_on, stop_hogs
from tests.support.client_rig import silent_udp_port
from tests.support.drivers import BROWSERS, PageDriver, open_driver
from tests.support.sse_spec_parser import parse
from tokenwire import FakeModel, Hub, ServerOptions
from tokenwire.protocol.http1 import Request
from tokenwire.server import ServerConfig, SseServer
from tokenwire.server.certs import make_dev_certificate
from tokenwire.server.routes import Router
from tokenwire.server.sse import SseConnection
from tokenwire.server.webtransport import WebTransportServer

PAGE_JS = (Path(__file__).parent / "browser_client_page.js").read_text()
SCENARIOS = ("ttft", "tput", "drop", "kill", "blackhole")
TRANSPORTS = ("webtransport", "sse")
#: The client's options per transport: "auto" is the default and picks WebTransport where it works.
CLIENT = {"webtransport": {"transport": "auto"}, "sse": {"transport": "sse"}}
KILL_PATH = {"webtransport": "/bench/kill-webtransport", "sse": "/bench/kill-sse/{id}"}


# -- the server: tokenwire serve's parts, in this process -------------------------------------------------


class CountingModel(FakeModel):
    """``tokenwire serve``'s FakeModel (seed 0, no TTFT, paced per request), counting its runs per prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: Counter[str] = Counter()

    def begin(self, prompt: str, max_tokens: int) -> tuple[Any, int]:
        self.runs[prompt] += 1
        return super().begin(prompt, max_tokens)


class BenchRouter(Router):
    """The SSE server's routes, plus what the bench's page asks for a server-side cut:
    ``POST /bench/kill-webtransport`` closes every QUIC connection of the WebTransport server (answers the
    number of sessions they carried); ``POST /bench/kill-sse/{id}`` aborts the TCP connections serving the
    stream ``id`` (answers how many)."""

    def __init__(self, server: SseServer, wt: WebTransportServer | None) -> None:
        super().__init__(server)
        self.wt = wt

    def handle(self, conn: SseConnection, req: Request) -> None:
        if req.method == "POST" and req.path == KILL_PATH["webtransport"] and self.wt is not None:
            quic = list(self.wt.connections)
            sessions = sum(len(q.sessions) for q in quic)
            for q in quic:
                q.close(error_code=0x0, reason_phrase="killed by the bench")
            conn.respond_json(200, {"killed": sessions}, req.keep_alive)
        elif req.method == "POST" and req.path.startswith("/bench/kill-sse/"):
            stream_id = req.path.rsplit("/", 1)[1]
            victims = [c for c in self.server.connections if c.stream is not None and c.stream.id == stream_id]
            for victim in victims:
                if victim.transport is not None:
                    victim.transport.abort()
            conn.respond_json(200, {"killed": len(victims)}, req.keep_alive)
        else:
            super().handle(conn, req)


class _BlackHoled:
    """Stands in for the WebTransport server in ``/v1/webtransport/certificate``: a real certificate's hash,
    and a URL at a UDP port that takes every datagram and answers none (a network that drops QUIC)."""

    def __init__(self, port: int) -> None:
        self._info = {
            "url": f"https://127.0.0.1:{port}/v1/webtransport",
            "sha256": make_dev_certificate().sha256_hex,
            "algorithm": "sha-256",
            "self_signed": True,
        }

    def certificate_info(self) -> dict[str, Any]:
        return self._info


@dataclass
class Servers:
    """One hub and model; ``main``: ``tokenwire serve`` (SSE + WebTransport on one port number); ``holed``: a
    second SSE server on the same hub (another origin) whose WebTransport is black-holed."""

    hub: Hub
    model: CountingModel
    main: SseServer
    wt: WebTransportServer
    holed: SseServer
    datagrams: Callable[[], int]

    def origin(self, server: SseServer) -> str:
        return f"http://127.0.0.1:{server.port}"


@contextlib.asynccontextmanager
async def serve(retry_ms: int) -> AsyncIterator[Servers]:
    hub = Hub()
    model = CountingModel()
    config = ServerConfig(host="127.0.0.1", port=0, retry_ms=retry_ms)
    main = SseServer(hub, ServerOptions(config, model))
    holed = SseServer(hub, ServerOptions(config, model))
    wt: WebTransportServer | None = None
    with silent_udp_port() as (port, datagrams):
        try:
            await main.start()
            await holed.start()
            # As `tokenwire serve` does: the same port number over UDP, the same hub, model and engine.
            wt = WebTransportServer(hub, ServerOptions(replace(config, port=main.port), model))
            await wt.start()
            main.webtransport = wt
            main.metrics.include(wt.metrics)
            main.router = BenchRouter(main, wt)
            holed.webtransport = _BlackHoled(port)
            yield Servers(hub, model, main, wt, holed, datagrams)
        finally:
            if wt is not None:
                await wt.shutdown(drain_timeout=0, close_hub=False)
            await holed.shutdown(drain_timeout=0)
            await main.shutdown(drain_timeout=0)


# -- samples --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every sample needs: the page, the servers, the options, and the failures seen so far."""

    driver: PageDriver
    servers: Servers
    args: argparse.Namespace
    hogs: set[int] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    #: Each drop and kill sample as the page saw it (its reconnect attempts, the kill's answer): the tails' story.
    cuts: list[dict[str, Any]] = field(default_factory=list)
    n: int = 0

    def browser_pids(self) -> list[int]:
        """The processes this one started, and theirs (the browser, its driver), less the competing load."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(stat.parent.name))
        found, todo = [], [p for p in children.get(os.getpid(), []) if p not in self.hogs]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def prompt(self, what: str) -> str:
        self.n += 1
        return f"browser bench {self.n}: {what}"

    async def page(self, server: SseServer) -> dict[str, Any]:
        """A freshly loaded page of ``server``'s origin, the bench's script in it."""
        await self.driver.goto(f"{self.servers.origin(server)}/healthz")
        loaded: dict[str, Any] = await self.driver.run(PAGE_JS, {})
        return loaded

    async def call(self, method: str, *args: Any) -> Any:
        async with asyncio.timeout(self.args.sample_timeout):
            return await self.driver.run(f"(args) => twb.{method}(...args)", list(args))

    async def check(self, what: str, prompt: str, tokens: int, run: dict[str, Any], **expect: Any) -> bool:
        """The run is right: no error, every token once (the text equals a clean replay from seq 0 and the
        model's answer), ended with ``length``, the model ran once; and each of ``expect`` (a field of the run
        or its KPIs) as given. A failure is recorded with its reason."""
        problems = [f"{k} {run.get(k, run.get('kpis', {}).get(k))!r} != {v!r}" for k, v in expect.items()
                    if run.get(k, run.get("kpis", {}).get(k)) != v]  # fmt: skip
        if run.get("error") is not None:
            problems.append(f"error {run['error']}")
        else:
            expected = "".join(self.servers.model.tokens(prompt, tokens))
            replayed = await self.replay(self.servers.main, run["id"])
            if replayed.startswith("<bad replay"):
                problems.append(replayed)
            elif run["text"] != expected or replayed != expected:
                problems.append("text differs from " + ("the model's" if run["text"] != expected else "the replay"))
            if run["tokens"] != tokens or (run["final"] or {}).get("reason") != "length":
                problems.append(f"{run['tokens']} tokens, final {run['final']}")
        if self.servers.model.runs[prompt] != 1:
            problems.append(f"the model ran {self.servers.model.runs[prompt]} times")
        if problems:
            self.failures.append(f"{what}: {'; '.join(problems)}")
        return not problems

    async def replay(self, server: SseServer, stream_id: str) -> str:
        """The stream's text as a clean replay from seq 0 gives it (every seq once, in order)."""
        async with httpx.AsyncClient(base_url=self.servers.origin(server), timeout=30) as http:
            response = await http.get(f"/v1/streams/{stream_id}/events")
        events, _ = parse(response.content)
        tokens = [e.data for e in events if e.type == "token"]
        ids = [e.last_event_id.rsplit(":", 1)[-1] for e in events[1:]]
        if response.status_code != 200 or ids != [str(s) for s in range(1, len(tokens) + 2)]:
            return f"<bad replay: HTTP {response.status_code}, seqs {ids[:3]}...>"
        return "".join(tokens)


async def sample_ttft(b: Bench, transport: str) -> dict[str, float | None]:
    """A fresh page and client: a cold ``generate()``, then a warm one on the same client."""
    await b.page(b.servers.main)
    await b.call("newClient", "c", CLIENT[transport])
    out: dict[str, float | None] = {}
    for kind in ("cold", "warm"):
        prompt = b.prompt(f"ttft {kind} {transport}")
        run = await b.call("run", _ask("c", prompt, b.args.ttft_tokens))
        ok = await b.check(
            f"ttft {kind} {transport}", prompt, b.args.ttft_tokens, run, startTransport=transport, transport=transport
        )
        out[f"ttft_{kind}_ms"] = run["ttftMs"] if ok else None
    await b.call("closeClient", "c")
    return out


async def sample_tput(b: Bench, transport: str) -> dict[str, float | None]:
    """An unthrottled generation of ``--tokens`` tokens on a warm client (its session already up)."""
    await b.call("newClient", "t", CLIENT[transport])
    warmup = b.prompt(f"warm-up {transport}")
    await b.check(f"tput warm-up {transport}", warmup, 5, await b.call("run", _ask("t", warmup, 5)))
    prompt = b.prompt(f"tput {transport}")
    before = _cpu(b.browser_pids())
    run = await b.call("run", _ask("t", prompt, b.args.tokens))
    server_cpu, browser_cpu, wall = (a - z for a, z in zip(_cpu(b.browser_pids()), before, strict=True))
    ok = await b.check(f"tput {transport}", prompt, b.args.tokens, run, startTransport=transport, transport=transport)
    await b.call("closeClient", "t")
    if not ok:
        return dict.fromkeys(("tokens_per_s", "answer_tokens_per_s", "tput_server_cpu", "tput_browser_cpu"))
    return {
        "tokens_per_s": run["kpis"]["tokensPerS"],  # the client's KPI: (tokens - 1) / time since the first token
        "answer_tokens_per_s": run["tokens"] * 1000 / run["totalMs"],  # generate() to the last token
        # Which side was busy: CPU seconds per second of the page call, in % of one core.
        "tput_server_cpu": 100 * server_cpu / wall,
        "tput_browser_cpu": 100 * browser_cpu / wall,
    }


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(browser: Iterable[int]) -> tuple[float, float, float]:
    """CPU seconds of this process (the server) and of the ``browser`` processes so far, and the clock."""
    browser_s = 0.0
    for pid in browser:
        with contextlib.suppress(OSError):  # a process that has gone since it was listed
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            browser_s += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return time.process_time(), browser_s, time.monotonic()


def _ask(client: str, prompt: str, tokens: int, rate: float = 0, cut: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"client": client, "request": {"prompt": prompt, "max_tokens": tokens, "tokens_per_s": rate}, "cut": cut}


async def sample_cut(b: Bench, transport: str, how: str) -> dict[str, float | None]:
    """A paced generation cut at token ``--cut-at`` (``how``: the page drops it, or the server kills it)."""
    await b.call("newClient", "r", CLIENT[transport])
    cut = {"at": b.args.cut_at, "how": how, "path": KILL_PATH[transport]}
    prompt = b.prompt(f"{how} {transport}")
    run = await b.call("run", _ask("r", prompt, b.args.cut_tokens, b.args.rate, cut))
    # WebTransport continues over SSE (one fallback); SSE reconnects over SSE.
    ok = await b.check(f"{how} {transport}", prompt, b.args.cut_tokens, run, startTransport=transport,
                       transport="sse", fallbacks=int(transport == "webtransport"))  # fmt: skip
    if ok and (run["recoveryMs"] is None or run["kpis"]["reconnects"] < 1):
        b.failures.append(f"{how} {transport}: no token came over a new connection after the cut ({run['kpis']})")
        ok = False
    if ok and how == "kill" and (run["kill"] or {}).get("body", {}).get("killed", 0) < 1:
        b.failures.append(f"kill {transport}: the server killed nothing ({run['kill']})")
        ok = False
    await b.call("closeClient", "r")
    b.cuts.append({k: run.get(k) for k in ("startTransport", "recoveryMs", "waitMs", "reconnects", "kill", "kpis")})
    b.cuts[-1]["how"] = how
    if not ok:
        return dict.fromkeys((f"{how}_recovery_ms", f"{how}_wait_ms", f"{how}_net_ms", f"{how}_client_recovery_ms"))
    return {
        f"{how}_recovery_ms": run["recoveryMs"],
        f"{how}_wait_ms": run["waitMs"],
        f"{how}_net_ms": run["recoveryMs"] - run["waitMs"],
        f"{how}_client_recovery_ms": run["kpis"]["recoveryMs"],  # the client's KPI
    }


async def sample_blackhole(b: Bench) -> dict[str, float | None]:
    """``auto`` with WebTransport black-holed: a first page load (connect timeout, then SSE), a second page
    load (remembered: SSE at once, no datagram sent), and SSE alone (cold) for scale, same origin."""
    holed = b.servers.holed
    await b.page(holed)
    await b.call("clearStorage")
    out: dict[str, float | None] = {}
    for load, options in (("first", {"transport": "auto"}), ("second", {"transport": "auto"}),
                          ("sse", {"transport": "sse"})):  # fmt: skip
        if load != "first":
            await b.page(holed)  # a new document: only what localStorage kept survives
        await b.call("newClient", "h", {**options, "connectTimeoutMs": b.args.connect_timeout_ms})
        sent = b.servers.datagrams()
        prompt = b.prompt(f"blackhole {load}")
        run = await b.call("run", _ask("h", prompt, b.args.ttft_tokens))
        ok = await b.check(f"blackhole {load}", prompt, b.args.ttft_tokens, run, transport="sse")
        datagrams = b.servers.datagrams() - sent
        if ok and (datagrams > 0) != (load == "first"):
            b.failures.append(f"blackhole {load}: {datagrams} QUIC datagrams sent")
            ok = False
        out[f"blackhole_{load}_ttft_ms"] = run["ttftMs"] if ok else None
        await b.call("closeClient", "h")
    return out


# -- statistics and the tables ---------------------------------------------------------------------------

#: Metric: its label and unit; the rows of the tables, in order. ``blackhole_*`` go in a table of their own.
METRICS: dict[str, tuple[str, str]] = {
    "ttft_cold_ms": ("TTFT, fresh page and client (cold)", "ms"),
    "ttft_warm_ms": ("TTFT, second generate() of the client (warm)", "ms"),
    "tokens_per_s": ("tokens/s, unthrottled (client's kpis.tokensPerS)", "tok/s"),
    "answer_tokens_per_s": ("tokens/s, unthrottled, generate() to last token", "tok/s"),
    "tput_server_cpu": ("· server process busy meanwhile", "% of a core"),
    "tput_browser_cpu": ("· browser processes busy meanwhile", "% of a core"),
    "drop_recovery_ms": ("recovery after stream.drop(): cut to next token", "ms"),
    "drop_wait_ms": ("· of which the client's backoff wait", "ms"),
    "drop_net_ms": ("· cut to next token less that wait", "ms"),
    "drop_client_recovery_ms": ("· the client's kpis.recoveryMs (loss seen to new connection)", "ms"),
    "kill_recovery_ms": ("recovery after a server-side kill: cut to next token", "ms"),
    "kill_wait_ms": ("· of which the client's backoff wait", "ms"),
    "kill_net_ms": ("· cut to next token less that wait", "ms"),
    "kill_client_recovery_ms": ("· the client's kpis.recoveryMs (loss seen to new connection)", "ms"),
    "blackhole_first_ttft_ms": ("auto, UDP black-holed, 1st page load: TTFT", "ms"),
    "blackhole_second_ttft_ms": ("auto, UDP black-holed, 2nd page load (remembered): TTFT", "ms"),
    "blackhole_sse_ttft_ms": ("SSE alone, same origin, fresh client: TTFT", "ms"),
}
HIGHER_IS_BETTER = {"tokens_per_s", "answer_tokens_per_s"}
BLACKHOLE = tuple(m for m in METRICS if m.startswith("blackhole_"))
SIDE_BY_SIDE = tuple(m for m in METRICS if m not in BLACKHOLE)

Samples = dict[str, dict[str, list[float | None]]]  # metric -> transport -> values (None: a failed sample)
Stats = dict[str, dict[str, dict[str, Any]]]  # metric -> transport -> median, p95, worst, n, failed


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarise(values: Sequence[float | None], metric: str) -> dict[str, Any]:
    """Median, p95 and worst of ``values`` (None: a failed sample, counted); p95 and worst on the bad side
    (the low end for tokens/s)."""
    ok = [v for v in values if v is not None]
    if not ok:
        return {"n": 0, "failed": len(values)}
    high = metric in HIGHER_IS_BETTER
    return {
        "n": len(ok),
        "failed": len(values) - len(ok),
        "median": statistics.median(ok),
        "p95": percentile(ok, 5 if high else 95),
        "worst": min(ok) if high else max(ok),
    }


def stats_of(samples: Samples) -> Stats:
    return {m: {t: summarise(samples[m][t], m) for t in samples[m]} for m in METRICS if m in samples}


def pooled(repeats: list[Samples]) -> Samples:
    """Every repeat's samples together."""
    out: Samples = {}
    for samples in repeats:
        for metric, per in samples.items():
            for transport, values in per.items():
                out.setdefault(metric, {}).setdefault(transport, []).extend(values)
    return out


def fmt(x: float | None, metric: str) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if metric in HIGHER_IS_BETTER or x >= 100 else f"{x:.1f}"


def wt_over_sse(stats: Stats, metric: str) -> float | None:
    """WebTransport's median over SSE's, of one run."""
    wt, sse = stats.get(metric, {}).get("webtransport", {}), stats.get(metric, {}).get("sse", {})
    return wt["median"] / sse["median"] if wt.get("n") and sse.get("n") and sse["median"] else None


def _count(s: dict[str, Any]) -> str:
    return f"{s.get('n', 0)}" + (f" ({s['failed']} FAILED)" if s.get("failed") else "")


def repeat_table(stats: Stats) -> list[str]:
    """One repeat: per metric, WebTransport and SSE side by side and their ratio (same run)."""
    lines = [
        "| metric | unit | WT median | WT p95 | SSE median | SSE p95 | WT/SSE | samples WT / SSE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for metric in SIDE_BY_SIDE:
        if metric not in stats:
            continue
        wt, sse = stats[metric].get("webtransport", {}), stats[metric].get("sse", {})
        r = wt_over_sse(stats, metric)
        cells = [fmt(wt.get("median"), metric), fmt(wt.get("p95"), metric)]
        cells += [fmt(sse.get("median"), metric), fmt(sse.get("p95"), metric)]
        cells += [f"{r:.2f}x" if r is not None else "n/a", f"{_count(wt)} / {_count(sse)}"]
        lines.append(f"| {METRICS[metric][0]} | {METRICS[metric][1]} | {' | '.join(cells)} |")
    return lines


def summary_table(repeats: list[Samples]) -> list[str]:
    """Every repeat's samples together: median, p95 and worst sample per transport; the WT/SSE ratio of the
    medians in each repeat (same run: their range), and the repeat with the worst p95 per transport."""
    everything = stats_of(pooled(repeats))
    per_repeat = [stats_of(s) for s in repeats]
    head = "metric | unit | WT median | WT p95 | WT worst | SSE median | SSE p95 | SSE worst | WT/SSE of medians, "
    lines = [f"| {head}per repeat | worst repeat WT / SSE | samples WT / SSE |", "|---" * 11 + "|"]
    for metric in SIDE_BY_SIDE:
        if metric not in everything:
            continue
        cells = []
        for t in TRANSPORTS:
            s = everything[metric].get(t, {})
            cells += [fmt(s.get("median"), metric), fmt(s.get("p95"), metric), fmt(s.get("worst"), metric)]
        ratios = [r for r in (wt_over_sse(st, metric) for st in per_repeat) if r is not None]
        cells.append(f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "n/a")
        cells.append(" / ".join(_worst_repeat(per_repeat, metric, t) for t in TRANSPORTS))
        cells.append(" / ".join(_count(everything[metric].get(t, {})) for t in TRANSPORTS))
        lines.append(f"| {METRICS[metric][0]} | {METRICS[metric][1]} | {' | '.join(cells)} |")
    return lines


def _worst_repeat(per_repeat: list[Stats], metric: str, transport: str) -> str:
    p95s = [(s[metric][transport]["p95"], i + 1) for i, s in enumerate(per_repeat)
            if s.get(metric, {}).get(transport, {}).get("n")]  # fmt: skip
    if not p95s:
        return "n/a"
    value, repeat = (min if metric in HIGHER_IS_BETTER else max)(p95s)
    return f"{repeat} ({fmt(value, metric)})"


def blackhole_table(repeats: list[Samples]) -> list[str]:
    """``auto`` against black-holed UDP, per repeat and over all: TTFT on the first and the second page load
    beside SSE's own, and what the fallback cost on top of SSE (first load median - SSE median)."""
    head = "repeats | auto 1st load TTFT median / worst ms | auto 2nd load TTFT median / worst ms | SSE alone TTFT "
    lines = [f"| {head}median / worst ms | fallback cost (1st - SSE, medians) ms | samples |", "|---" * 6 + "|"]
    rows = [(str(i + 1), s) for i, s in enumerate(repeats)] + [("all", pooled(repeats))]
    for name, samples in rows:
        st = stats_of(samples)
        got = [st.get(m, {}).get("sse" if m == "blackhole_sse_ttft_ms" else "auto", {}) for m in BLACKHOLE]
        if not any(g.get("n") for g in got):
            continue
        cells = [f"{fmt(g.get('median'), '')} / {fmt(g.get('worst'), '')}" for g in got]
        cost = got[0]["median"] - got[2]["median"] if got[0].get("n") and got[2].get("n") else None
        cells += [fmt(cost, ""), " / ".join(_count(g) for g in got)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


# -- the run -------------------------------------------------------------------------------------------


async def run_repeat(b: Bench, repeat: int, deadline: float) -> Samples:
    """Every scenario asked, ``--samples`` times each (``--blackhole-samples``); the samples per metric and
    transport."""
    samples: Samples = {}
    for scenario in (s for s in SCENARIOS if s in b.args.scenarios):
        count = b.args.blackhole_samples if scenario == "blackhole" else b.args.samples
        if scenario != "ttft":  # ttft loads a page per sample; the others share one
            await b.page(b.servers.main)
        for i in range(count):
            if time.monotonic() > deadline:
                print(f"  --max-seconds reached: repeat {repeat} stops in {scenario} after {i} samples", flush=True)
                return samples
            for transport, metric, value in await one_sample(b, scenario, (i + repeat) % 2 == 0):
                samples.setdefault(metric, {}).setdefault(transport, []).append(value)
        print(f"  repeat {repeat}: {scenario}, {count} samples per transport", flush=True)
    return samples


async def one_sample(b: Bench, scenario: str, sse_first: bool) -> list[tuple[str, str, float | None]]:
    """One sample of ``scenario`` over each transport (``sse_first``: SSE before WebTransport; it flips every
    sample and every repeat): (transport, metric, value) each."""
    if scenario == "blackhole":
        values = await sample_blackhole(b)
        return [("sse" if m == "blackhole_sse_ttft_ms" else "auto", m, v) for m, v in values.items()]
    out = []
    for transport in TRANSPORTS[::-1] if sse_first else TRANSPORTS:
        if scenario == "ttft":
            values = await sample_ttft(b, transport)
        elif scenario == "tput":
            values = await sample_tput(b, transport)
        else:
            values = await sample_cut(b, transport, scenario)
        out += [(transport, m, v) for m, v in values.items()]
    return out


def pin(cores: str) -> None:
    """Pin every thread of this process to ``cores`` ("0", "1", "0-1"; "" leaves them as they are)."""
    if not cores:
        return
    wanted = set(_cores(cores))
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), wanted)


def _cores(text: str) -> Iterable[int]:
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        yield from range(int(lo), int(hi or lo) + 1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.max_seconds
    pin(args.browser_cores)  # the browser and its driver, started now, inherit this
    async with open_driver(args.browser) as driver:
        pin(args.server_cores)  # this process, from now on: the server
        hogs = hogs_on(args.hog_cores.split(",")) if args.hog else []
        try:
            async with serve(args.retry_ms) as servers:
                b = Bench(driver, servers, args, {h.pid for h in hogs})
                if not (await b.page(servers.main))["hasWebTransport"]:
                    raise SystemExit(f"{args.browser} has no WebTransport in a page of the server's origin")
                repeats: list[Samples] = []
                for repeat in range(1, args.repeats + 1):
                    if time.monotonic() > deadline:
                        print(f"--max-seconds ({args.max_seconds:g}) reached before repeat {repeat}", flush=True)
                        break
                    repeats.append(await run_repeat(b, repeat, deadline))
                    print(f"\nrepeat {repeat} ({args.browser}; competing load: {'yes' if args.hog else 'no'})")
                    print("\n".join(repeat_table(stats_of(repeats[-1]))), flush=True)
        finally:
            stop_hogs(hogs)
    return {"repeats": repeats, "failures": b.failures, "cuts": b.cuts, "seconds": time.monotonic() - started}


def default_cores() -> tuple[str, str]:
    """Server on the first core this process may use, the browser on the second; no pinning on one core."""
    mine = sorted(os.sched_getaffinity(0))
    return (str(mine[0]), str(mine[1])) if len(mine) >= 2 else ("", "")


def parser() -> argparse.ArgumentParser:
    server_core, browser_core = default_cores()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--browser", choices=BROWSERS, default="chromium")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from {', '.join(SCENARIOS)}")
    p.add_argument("--repeats", type=int, default=5, help="repeats of the whole run (one table each)")
    p.add_argument("--samples", type=int, default=8, help="samples per scenario and transport in a repeat")
    p.add_argument("--blackhole-samples", type=int, default=2, help="blackhole samples per repeat (each waits "
                   "the connect timeout)")  # fmt: skip
    p.add_argument("--tokens", type=int, default=50_000, help="tokens of the unthrottled generation (tput; at most "
                   "the 65,536 frames a stream's ring holds, or the clean replay that checks it fails)")  # fmt: skip
    p.add_argument("--ttft-tokens", type=int, default=20, help="tokens of the ttft and blackhole generations")
    p.add_argument("--cut-tokens", type=int, default=600, help="tokens of the drop and kill generations")
    p.add_argument("--rate", type=float, default=500.0, help="tokens/s of the drop and kill generations")
    p.add_argument("--cut-at", type=int, default=100, help="the token at which drop and kill cut")
    p.add_argument("--connect-timeout-ms", type=int, default=3000, help="the client's WebTransport connect "
                   "timeout in the blackhole scenario (the client's default: 3000)")  # fmt: skip
    p.add_argument("--retry-ms", type=int, default=1000, help="the server's SSE retry: field (tokenwire serve: 1000)")
    p.add_argument("--server-cores", default=server_core, help='this process (the server) is pinned here ("": not)')
    p.add_argument("--browser-cores", default=browser_core, help='the browser is pinned here ("": not)')
    p.add_argument("--hog", action="store_true", help="a competing load: one busy loop on each of --hog-cores")
    p.add_argument("--hog-cores", default=browser_core or "0", help="where --hog's busy loops run (comma-separated)")
    p.add_argument("--sample-timeout", type=float, default=60.0, help="seconds one page call may take")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="start no new sample after this long")
    p.add_argument("--out", help="write every sample and the summary as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    print(f"browser: {args.browser}; server cores: {args.server_cores or 'any'}; browser cores: "
          f"{args.browser_cores or 'any'}; competing load: {args.hog_cores if args.hog else 'no'}", flush=True)  # fmt: skip
    load_before = os.getloadavg()
    result = asyncio.run(run(args))
    repeats = result["repeats"]
    print(f"\nall {len(repeats)} repeats together ({args.browser}; competing load: {'yes' if args.hog else 'no'})")
    print("\n".join(summary_table(repeats)))
    if any(m in s for s in repeats for m in BLACKHOLE):
        print(f"\nauto with UDP black-holed (connect timeout {args.connect_timeout_ms} ms)")
        print("\n".join(blackhole_table(repeats)))
    for failure in result["failures"]:
        print(f"FAIL {failure}")
    load_after = os.getloadavg()
    print(f"\ncorrectness: {'PASS' if not result['failures'] else 'FAIL'} ({len(result['failures'])} failures); "
          f"{result['seconds']:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")  # fmt: skip
    result["summary"] = stats_of(pooled(repeats))
    result["load_average"] = {"before": load_before, "after": load_after}
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), **result}, indent=2))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
