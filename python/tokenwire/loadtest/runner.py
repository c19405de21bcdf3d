"""The load-test driver: spreads streams over worker processes, prints progress, aggregates a report."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import queue
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

from tokenwire.loadtest.report import build_report, build_run_detail, format_report
from tokenwire.loadtest.worker import WorkerConfig, run_worker
from tokenwire.loadtest.wt_worker import WtWorkerConfig, run_wt_worker

__all__ = ["LoadTestConfig", "ProcSampler", "run_loadtest"]


@dataclass
class LoadTestConfig:
    url: str = "http://127.0.0.1:8000"
    #: Several servers (nodes, or ports of one): stream i starts on ``urls[i % len(urls)]`` and a cut stream
    #: resumes on another of them, chosen at random. Empty: ``[url]``.
    urls: list[str] = field(default_factory=list)
    streams: int = 100
    ramp: float = 1000.0  # new streams per second
    max_tokens: int = 200
    tokens_per_s: float = 20.0
    disconnect_rate: float = 0.0
    procs: int = 1
    seed: int = 0
    model_seed: int = 0
    resumable: bool = True
    server_pid: int | None = None
    stream_timeout: float = 600.0
    quiet: bool = False
    protocol: str = "sse"  # or "webtransport"
    sessions: int = 0  # webtransport: sessions (QUIC connections) the streams share; 0 = one per stream
    wt_cert_hash: str = ""  # webtransport: hex sha-256 to pin; "" = GET {url}/v1/webtransport/certificate
    wt_batch_transmit: bool = True  # webtransport: the client's one transmit per loop iteration
    wt_ack_delay_ms: float = 0.0  # webtransport: the client's ACK delay (0: aioquic's 1 ms)
    wt_keepalive: float = 1.0  # webtransport: PING after this long without a datagram from the server (0: never)
    #: webtransport: connect here (``https://host:port/path``, a relay in front of the server, say) instead of
    #: the URL the server names; the certificate hash still comes from ``url`` (or ``wt_cert_hash``).
    wt_url: str = ""
    #: webtransport: the generator's QUIC engine: native (the default: tokenwire's Rust engine, one engine and
    #: socket per generator process for all its sessions) or aioquic (a connection and socket per session).
    wt_engine: str = "native"
    #: Seconds per bucket of the report's time series; 0: from the expected duration (0.25 s for runs up to 15 s,
    #: 0.5 s up to 30 s, then 1 s; coarser past 20 minutes, to stay within 1,200 buckets).
    series_interval: float = 0.0
    #: The report of a comparison (``tokenwire.loadtest.compare``): time series, events, per-stream timeline,
    #: recovery, bytes on the wire, client CPU and the lag curves, besides the summary.
    detail: bool = False
    #: Names the run in the live status line (the protocol, in a comparison).
    label: str = ""

    def expected_duration(self) -> float:
        """Seconds the scenario should take: the ramp, then one stream's tokens at its pace."""
        ramp = self.streams / self.ramp if self.ramp > 0 else 0.0
        return ramp + (self.max_tokens / self.tokens_per_s if self.tokens_per_s > 0 else 0.0)

    def bucket_seconds(self) -> float:
        """``series_interval``, or one chosen from the expected duration (see ``series_interval``)."""
        if self.series_interval > 0:
            return self.series_interval
        expected = self.expected_duration()
        if expected <= 15:
            return 0.25
        if expected <= 30:
            return 0.5
        return float(max(1, math.ceil(expected / 1200)))


class ProcSampler:
    """CPU seconds and memory of a process from /proc (the server under test)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._tick = os.sysconf("SC_CLK_TCK")
        self.cpu0 = self.cpu()
        self.rss0 = self.memory()["rss_bytes"]

    def cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick

    def memory(self) -> dict[str, int]:
        out = {"rss_bytes": 0, "peak_rss_bytes": 0}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_bytes"] = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    out["peak_rss_bytes"] = int(line.split()[1]) * 1024
        return out


def _run_config(cfg: WorkerConfig | WtWorkerConfig, progress: Any) -> dict[str, Any]:
    """One worker's streams, SSE or WebTransport by its config, on a fresh loop in this process."""
    return run_wt_worker(cfg, progress) if isinstance(cfg, WtWorkerConfig) else run_worker(cfg, progress)


def _worker_main(cfg: WorkerConfig | WtWorkerConfig, q: Any) -> None:
    def progress(p: dict[str, int]) -> None:
        q.put(("progress", os.getpid(), p))

    q.put(("result", os.getpid(), _run_config(cfg, progress)))


def run_loadtest(cfg: LoadTestConfig, out: TextIO = sys.stderr) -> dict[str, Any]:  # noqa: C901 - one linear driver
    """Run the load test to the end and return the report (also printed to ``out`` unless quiet)."""
    urls = cfg.urls or [cfg.url]
    for url in urls:
        parts = urlsplit(url)
        if (
            parts.scheme != "http" and not (cfg.protocol == "webtransport" and parts.scheme == "https")
        ) or not parts.hostname:
            raise ValueError(f"--url must be http://host:port, got {url!r}")
    if len(urls) > 1 and cfg.protocol != "sse":
        raise ValueError("several --url are supported with --protocol sse only")
    targets = [(p.hostname or "", p.port or 80, p.path.rstrip("/")) for p in map(urlsplit, urls)]
    procs = max(1, min(cfg.procs, cfg.streams))
    start_at = time.time() + (0.5 if procs > 1 else 0.05)
    configs: list[WorkerConfig | WtWorkerConfig] = []
    if cfg.protocol == "webtransport":
        configs = _wt_configs(cfg, procs, start_at)
        procs = len(configs)
    elif cfg.protocol != "sse":
        raise ValueError(f"--protocol must be sse or webtransport, got {cfg.protocol!r}")
    for k in range(procs if cfg.protocol == "sse" else 0):
        indices = list(range(k, cfg.streams, procs))
        configs.append(
            WorkerConfig(
                host=targets[0][0],
                port=targets[0][1],
                path_prefix=targets[0][2],
                targets=targets,
                stream_indices=indices,
                start_offsets=[i / cfg.ramp if cfg.ramp > 0 else 0.0 for i in indices],
                max_tokens=cfg.max_tokens,
                tokens_per_s=cfg.tokens_per_s,
                disconnect_rate=cfg.disconnect_rate,
                seed=cfg.seed * 1000 + k,
                model_seed=cfg.model_seed,
                resumable=cfg.resumable,
                start_at=start_at,
                stream_timeout=cfg.stream_timeout,
                series_interval=cfg.bucket_seconds(),
                max_events=_MAX_EVENTS // procs,
            )
        )
    sampler = ProcSampler(cfg.server_pid) if cfg.server_pid else None
    progress: dict[int, dict[str, int]] = {}
    t0 = time.monotonic()
    last_print = [t0]
    # On a terminal the status is one line rewritten in place; elsewhere (a log, a pipe) a line a second.
    live = not cfg.quiet and out.isatty()
    label = f"{cfg.label:<12} " if cfg.label else ""

    def show(pid: int, p: dict[str, int]) -> None:
        progress[pid] = p
        now = time.monotonic()
        if cfg.quiet or now - last_print[0] < 0.95:
            return
        last_print[0] = now
        tot = {k: sum(v[k] for v in progress.values()) for k in ("tokens", "active", "finished", "failed")}
        elapsed = now - t0
        line = (
            f"{label}[{elapsed:6.1f}s] streams active {tot['active']:>6}  finished {tot['finished']:>6}/{cfg.streams}"
            f"  failed {tot['failed']:>4}  tokens {tot['tokens']:>10,}  ({tot['tokens'] / max(elapsed, 1e-9):,.0f}/s)"
        )
        print(f"\r{line}\x1b[K" if live else line, end="" if live else "\n", file=out, flush=True)

    raw: list[dict[str, Any]] = []
    if procs == 1:
        raw.append(_run_config(configs[0], lambda p: show(0, p)))
    else:
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        workers = [ctx.Process(target=_worker_main, args=(c, q), daemon=True) for c in configs]
        for w in workers:
            w.start()
        while len(raw) < procs:
            try:
                kind, pid, payload = q.get(timeout=1.0)
            except queue.Empty:
                if not any(w.is_alive() for w in workers) and q.empty():
                    raise RuntimeError("a load-test worker process died") from None
                continue
            if kind == "progress":
                show(pid, payload)
            else:
                raw.append(payload)
        for w in workers:
            w.join(timeout=10)
    if live:
        print(file=out, flush=True)  # end the live line
    server = None
    if sampler is not None:
        server = {"cpu_seconds": sampler.cpu() - sampler.cpu0, **sampler.memory(), "rss_before_bytes": sampler.rss0}
    report = build_report(asdict(cfg), raw, elapsed=time.monotonic() - t0, server=server)
    if cfg.detail:
        report.update(build_run_detail(raw, started_at=start_at, tokens=report["tokens"]["total"], procs=procs))
    if not cfg.quiet:
        print(format_report(report), file=out, flush=True)
    return report


def fetch_wt_certificate(url: str, timeout: float = 10.0) -> tuple[str, str]:
    """``(webtransport url, sha-256 hex)`` from ``GET {url}/v1/webtransport/certificate`` of the SSE server."""
    import urllib.request

    with urllib.request.urlopen(f"{url.rstrip('/')}/v1/webtransport/certificate", timeout=timeout) as resp:  # noqa: S310 - http(s) URL checked by the caller
        body = json.load(resp)
    return str(body["url"]), str(body["sha256"])


#: Events a run keeps in all (shared out among its worker processes); the rest are counted as dropped.
_MAX_EVENTS = 20_000


def _wt_configs(cfg: LoadTestConfig, procs: int, start_at: float) -> list[WorkerConfig | WtWorkerConfig]:
    """WebTransport workers: stream i rides session ``i % sessions``; a session's streams stay in one process."""
    parts = urlsplit(cfg.url)
    if cfg.wt_cert_hash:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url must be http(s)://host:port, got {cfg.url!r}")
        # The WebTransport endpoint has the SSE server's port number (UDP), or the https URL given.
        path = parts.path if parts.scheme == "https" and parts.path not in ("", "/") else "/v1/webtransport"
        wt_url, cert_hex = f"https://{parts.hostname}:{parts.port or 443}{path}", cfg.wt_cert_hash
    else:
        wt_url, cert_hex = fetch_wt_certificate(cfg.url)
    if cfg.wt_url:
        wt_url = cfg.wt_url
    cert_hash = bytes.fromhex(cert_hex.replace(":", ""))
    sessions = cfg.sessions if cfg.sessions > 0 else cfg.streams
    sessions = min(sessions, cfg.streams)
    procs = min(procs, sessions)
    out: list[WorkerConfig | WtWorkerConfig] = []
    for k in range(procs):
        indices = [i for i in range(cfg.streams) if (i % sessions) % procs == k]
        out.append(
            WtWorkerConfig(
                url=wt_url,
                cert_hash=cert_hash,
                stream_indices=indices,
                start_offsets=[i / cfg.ramp if cfg.ramp > 0 else 0.0 for i in indices],
                session_of=[i % sessions for i in indices],
                max_tokens=cfg.max_tokens,
                tokens_per_s=cfg.tokens_per_s,
                seed=cfg.seed * 1000 + k,
                model_seed=cfg.model_seed,
                start_at=start_at,
                stream_timeout=cfg.stream_timeout,
                disconnect_rate=cfg.disconnect_rate,
                batch_transmit=cfg.wt_batch_transmit,
                ack_delay=cfg.wt_ack_delay_ms / 1000 if cfg.wt_ack_delay_ms > 0 else None,
                keepalive=cfg.wt_keepalive if cfg.wt_keepalive > 0 else None,
                engine=cfg.wt_engine,
                series_interval=cfg.bucket_seconds(),
                max_events=_MAX_EVENTS // procs,
            )
        )
    return out


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
