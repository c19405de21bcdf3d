"""Redis Streams storage benchmarks (issue 9): CPU per token against in-memory, cross-node resume, ``--workers``.

The script starts its own ``redis-server`` (persistence off, a free port on 127.0.0.1, its own temporary folder:
``tests/support/redis_server.py``), the ``tokenwire serve`` processes and ``tokenwire loadtest``, each pinned with
``taskset`` where asked, and stops every one of them by its PID. Three benchmarks, chosen with ``--bench``:

- ``cpu``: one ``tokenwire serve`` in engine mode (``--engine-steps-per-s``), ``--storage memory://`` and
  ``--storage redis://...`` alternating in one run (the order flips every repeat), server on ``--server-cores``,
  generator on ``--client-cores``, redis-server on ``--redis-cores``. Per run: the server's CPU per 100k tokens
  delivered (``loadtest --server-pid``), redis-server's own CPU (``/proc/PID/stat`` around the load test), Redis
  commands per token (``INFO stats`` ``total_commands_processed``; in Redis 7 it counts every command a Lua
  script runs too) with a per-command breakdown (``INFO commandstats``), and the server's own round trips and
  ship calls (``tokenwire_storage_redis_round_trips`` / ``_ship_calls`` from ``/metrics``).
- ``resume``: two nodes (``--storage redis://...``; ``--node-cores``, default A on core 0 and B on core 1) on one
  Redis; ``tokenwire loadtest --url A --url B`` with forced disconnects, each cut stream resuming on the other node. Per repeat: ``resume_cross_node_s``
  p50 / p99 / max and the load test's exactly-once verdict. ``--hog``: also one busy loop on each core.
- ``workers``: ``tokenwire serve --workers N --storage redis://...`` for each N of ``--workers`` at saturation
  (unthrottled streams: ``--engine-steps-per-s 0``, ``loadtest --tokens-per-s 0``): tokens/s delivered, and
  the CPU of every worker and of redis-server.

    .venv/bin/python -m benches.redis_storage --bench cpu --streams 1000 --duration 10 --repeats 3
    .venv/bin/python -m benches.redis_storage --bench resume --streams 300 --duration 8 --disconnect-rate 0.25 \\
        --client-cores "" --repeats 5 [--hog]          # --nodes 1 [--resume-storage memory]: same-node baseline
    .venv/bin/python -m benches.redis_storage --bench workers --server-cores "" --client-cores "" \\
        --redis-cores "" --repeats 3 --sat-streams 32 --sat-tokens 300000

Prints progress and a markdown table per benchmark (the ones in BENCHMARKS.md) and writes every row, with the
full load-test reports, as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benches.sse_compare import TASKSET, TOKENWIRE, hogs_on, ms, ms3, stop_hogs
from tests.support.redis_server import RedisProcess, free_port

_TICK = os.sysconf("SC_CLK_TCK")


def _pin(cores: str) -> list[str]:
    """``taskset -c CORES`` before a command; nothing for ``""`` (unpinned)."""
    return [TASKSET, "-c", cores] if cores else []


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its own threads; not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Server:
    """``tokenwire serve ...`` pinned to ``cores``, its output in a file; ready once it prints that it serves.
    With ``--workers N`` the ready line lists the workers' PIDs (:attr:`pids`)."""

    def __init__(self, args: list[str], cores: str, log_dir: Path, name: str, timeout: float = 60.0) -> None:
        self.port = free_port()
        self.name = name
        self.log_path = log_dir / f"{name}-{self.port}.log"
        cmd = [*_pin(cores), *TOKENWIRE, "serve", "--port", str(self.port), "--no-webtransport", *args]
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # noqa: S603
        self.pids = [self.proc.pid]
        supervised = "--workers" in args and int(args[args.index("--workers") + 1]) > 1
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_path.read_text(errors="replace")
            m = re.search(r"workers serving .*; pids ([\d, ]+)", text)
            if m:
                self.pids = [int(p) for p in m.group(1).split(",")]
                return
            if "serving SSE on" in text and not supervised:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start: {self.log()}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def metrics(self) -> dict[str, float]:
        """The ``tokenwire_storage_redis_*`` gauges of ``/metrics`` (one worker's, with ``--workers``)."""
        out: dict[str, float] = {}
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:  # noqa: S310
            for line in resp.read().decode().splitlines():
                if line.startswith("tokenwire_storage_redis_"):
                    name, _, value = line.rpartition(" ")
                    out[name.split("{")[0].removeprefix("tokenwire_storage_")] = float(value)
        return out

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        """SIGTERM (it drains), SIGKILL after 20 s; only this process (the supervisor stops its workers)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _log(f"{self.name} (pid {self.proc.pid}) did not stop in 20 s: SIGKILL")
                self.proc.kill()
                self.proc.wait()
                for pid in self.pids[1:] if len(self.pids) > 1 else ():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


class RedisWatch:
    """redis-server's CPU and command counters, before and after a run."""

    def __init__(self, redis: RedisProcess) -> None:
        self.redis = redis

    def snapshot(self) -> dict[str, Any]:
        assert self.redis.pid is not None
        with self.redis.client() as c:
            stats = c.info("stats")
            by_command = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in c.info("commandstats").items()}
        return {
            "cpu": cpu_seconds(self.redis.pid),
            "commands": float(stats["total_commands_processed"]),
            "by_command": by_command,
        }

    @staticmethod
    def per_token(before: dict[str, Any], after: dict[str, Any], tokens: int) -> dict[str, float]:
        """Commands Redis ran per token, by command (a script's own commands included), largest first."""
        b, a = before["by_command"], after["by_command"]
        per = {k: (n - b.get(k, 0)) / max(tokens, 1) for k, n in a.items() if n > b.get(k, 0)}
        return dict(sorted(per.items(), key=lambda kv: -kv[1]))

    def flush(self) -> None:
        with self.redis.client() as c:
            c.flushall()


def start_redis(cores: str) -> RedisProcess:
    redis = RedisProcess()
    redis.start()
    assert redis.pid is not None
    if cores:
        os.sched_setaffinity(redis.pid, {int(c) for c in cores.split(",")})
    _log(f"redis-server pid {redis.pid} on {redis.url}, cores {cores or 'any'}")
    return redis


def run_loadtest(
    args: argparse.Namespace, urls: list[str], extra: list[str], *, server_pid: int | None, cores: str, procs: int
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        report_path = Path(f.name)
    cmd = [*_pin(cores), *TOKENWIRE, "loadtest", *(a for u in urls for a in ("--url", u)), *extra,
           "--ramp", str(args.ramp), "--json", str(report_path), "--quiet", "--procs", str(procs),
           "--stream-timeout", str(args.stream_timeout)]  # fmt: skip
    if server_pid is not None:
        cmd += ["--server-pid", str(server_pid)]
    try:
        proc = subprocess.run(cmd, check=False, timeout=args.timeout, capture_output=True, text=True)  # noqa: S603
        if proc.returncode not in (0, 1):  # 1: the verdict failed, and the report says why
            raise RuntimeError(f"loadtest exited {proc.returncode}: {proc.stderr[-2000:]}")
        report: dict[str, Any] = json.loads(report_path.read_text())
    finally:
        report_path.unlink(missing_ok=True)
    return report


def _verdict(r: dict[str, Any]) -> str:
    c = r["correctness"]
    return f"{r['streams']['ok']}/{r['streams']['total']} ok, lost {c['lost']}, dup {c['duplicated']}" + (
        " PASS" if r["passed"] else " FAIL"
    )


# -- 1. CPU per token, Redis storage vs in memory ------------------------------------------------------------


def bench_cpu(args: argparse.Namespace, redis: RedisProcess, log_dir: Path) -> list[dict[str, Any]]:
    watch = RedisWatch(redis)
    rows = []
    max_tokens = max(1, round(args.duration * args.steps))
    for rep in range(1, args.repeats + 1):
        order = ["memory", "redis"] if rep % 2 else ["redis", "memory"]
        for storage in order:
            watch.flush()  # no earlier run's streams in Redis (no server runs now)
            url = "memory://" if storage == "memory" else redis.url
            server = Server(
                ["--engine-steps-per-s", f"{args.steps:g}", "--storage", url, "--max-tokens-limit", "10000000"],
                args.server_cores, log_dir, f"cpu-{storage}",
            )  # fmt: skip
            _log(f"cpu repeat {rep}: {storage} (pid {server.proc.pid}), {args.streams} streams x {max_tokens} tokens")
            try:
                before = watch.snapshot()
                report = run_loadtest(
                    args, [server.url],
                    ["--streams", str(args.streams), "--max-tokens", str(max_tokens), "--tokens-per-s", f"{args.steps:g}"],
                    server_pid=server.proc.pid, cores=args.client_cores, procs=args.procs,
                )  # fmt: skip
                after = watch.snapshot()
                metrics = server.metrics()
            finally:
                server.stop()
            tokens = report["tokens"]["total"]
            row = {
                "bench": "cpu",
                "repeat": rep,
                "storage": storage,
                "tokens": tokens,
                "tokens_per_s": report["tokens"]["per_s"],
                "tw_cpu_per_100k": report["server"]["cpu_seconds_per_100k_tokens"],
                "redis_cpu_s": after["cpu"] - before["cpu"],
                "redis_cpu_per_100k": (after["cpu"] - before["cpu"]) / tokens * 1e5 if tokens else None,
                "redis_commands_per_token": (after["commands"] - before["commands"]) / tokens if tokens else None,
                "redis_commands_by_command_per_token": RedisWatch.per_token(before, after, tokens),
                "ship_calls": metrics.get("redis_ship_calls"),
                "round_trips": metrics.get("redis_round_trips"),
                "round_trips_per_token": metrics["redis_round_trips"] / tokens if metrics and tokens else None,
                "passed": report["passed"],
                "verdict": _verdict(report),
                "report": report,
            }
            rows.append(row)
            _log(
                f"  {storage}: {tokens:,} tokens, tokenwire {row['tw_cpu_per_100k']:.2f} cpu-s/100k, redis-server "
                f"{row['redis_cpu_s']:.2f} cpu-s, {row['redis_commands_per_token']:.4f} commands/token; "
                f"{row['verdict']}"
            )
            if storage == "redis":
                top = list(row["redis_commands_by_command_per_token"].items())[:7]
                _log("  per token: " + ", ".join(f"{k} {v:.4f}" for k, v in top))
    print("\n| repeat | storage | tokens/s | tokenwire CPU-s / 100k tok | redis-server CPU-s / 100k tok "
          "| Redis commands / token (scripts' own included) | round trips / token | ship calls | lag p99 ms "
          "| streams / lost / dup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rep, rt = r["report"], r["round_trips_per_token"]
        print(
            f"| {r['repeat']} | {r['storage']} | {r['tokens_per_s']:,.0f} | {r['tw_cpu_per_100k']:.2f} "
            f"| {r['redis_cpu_per_100k']:.3f} | {r['redis_commands_per_token']:.4f} "
            f"| {f'{rt:.5f}' if rt is not None else 'n/a'} | {r['ship_calls'] if r['ship_calls'] is not None else 'n/a'} "
            f"| {ms(rep['delivery_lag_s'], 'p99')} | {r['verdict']} |"
        )
    print("\n| repeat | redis / memory, tokenwire CPU per token |")
    print("|---|---|")
    for rep in range(1, args.repeats + 1):
        by = {r["storage"]: r for r in rows if r["repeat"] == rep}
        memory, redis_cpu = by["memory"]["tw_cpu_per_100k"], by["redis"]["tw_cpu_per_100k"]
        # 0 in a run shorter than a clock tick (the tests' tiny runs): no ratio to give.
        print(f"| {rep} | {f'{redis_cpu / memory:.2f}x' if memory else 'n/a'} |")
    return rows


# -- 2. Cross-node resume latency ------------------------------------------------------------------------------


def bench_resume(args: argparse.Namespace, redis: RedisProcess, log_dir: Path) -> list[dict[str, Any]]:
    watch = RedisWatch(redis)
    rows = []
    max_tokens = max(1, round(args.duration * args.steps))
    cores = args.node_cores.split(":") if args.node_cores else ["", ""]
    for rep in range(1, args.repeats + 1):
        watch.flush()
        storage = redis.url if args.resume_storage == "redis" else "memory://"
        serve = ["--engine-steps-per-s", f"{args.steps:g}", "--storage", storage]
        nodes = [Server(serve, cores[i % len(cores)], log_dir, f"node{i}") for i in range(args.nodes)]
        hogs = hogs_on(("0", "1")) if args.hog else []
        _log(
            f"resume repeat {rep}: nodes {[n.proc.pid for n in nodes]}, {args.streams} streams x {max_tokens} tokens, "
            f"{args.disconnect_rate}/s cuts per stream{', competing load' if args.hog else ''}"
        )
        try:
            report = run_loadtest(
                args, [n.url for n in nodes],
                ["--streams", str(args.streams), "--max-tokens", str(max_tokens), "--tokens-per-s", f"{args.steps:g}",
                 "--disconnect-rate", str(args.disconnect_rate), "--seed", str(rep)],
                server_pid=None, cores=args.client_cores, procs=args.procs,
            )  # fmt: skip
            metrics = [n.metrics() for n in nodes]
        finally:
            stop_hogs(hogs)
            for n in nodes:
                n.stop()
        d = report["disconnects"]
        row = {
            "bench": "resume",
            "repeat": rep,
            "hog": args.hog,
            "nodes": args.nodes,
            "storage": args.resume_storage,
            "cross_node": report["resume_cross_node_s"],
            "resume": report["resume_s"],
            "cuts": d["forced"],
            "resumes": d["resumes"],
            "cross_node_resumes": d["cross_node_resumes"],
            "restores": sum(m.get("redis_restores", 0) for m in metrics),
            "passed": report["passed"],
            "verdict": _verdict(report),
            "report": report,
        }
        rows.append(row)
        _log(
            f"  cross-node resume p50 {ms3(row['cross_node'], 'p50')} ms, p99 {ms3(row['cross_node'], 'p99')} ms "
            f"({d['cross_node_resumes']} of {d['resumes']} resumes); {row['verdict']}"
        )
    print("\n| repeat | nodes, storage | competing load | cuts | resumes (cross-node) | cross-node resume p50 ms | p99 ms | max ms "
          "| all resumes p99 ms | restores | streams / lost / dup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["cross_node"]
        print(
            f"| {r['repeat']} | {r['nodes']}, {r['storage']} | {'yes' if r['hog'] else 'no'} | {r['cuts']:,} | {r['resumes']:,} "
            f"({r['cross_node_resumes']:,}) | {ms3(c, 'p50')} | {ms3(c, 'p99')} | {ms3(c, 'max')} "
            f"| {ms3(r['resume'], 'p99')} | {r['restores']:.0f} | {r['verdict']} |"
        )
    worst = max(rows, key=lambda r: r["cross_node"].get("p99", float("inf")))
    print(f"\nworst repeat: {worst['repeat']}, cross-node resume p99 {ms3(worst['cross_node'], 'p99')} ms; "
          f"all exactly once: {all(r['passed'] for r in rows)}")  # fmt: skip
    return rows


# -- 3. --workers N at saturation --------------------------------------------------------------------------------


def bench_workers(args: argparse.Namespace, redis: RedisProcess, log_dir: Path) -> list[dict[str, Any]]:
    watch = RedisWatch(redis)
    rows = []
    counts = [int(x) for x in args.workers.split(",")]
    if args.sat_mode == "unthrottled":  # each request's generation as fast as the server goes
        serve = ["--engine-steps-per-s", "0", "--tokens-per-s", "0"]
        load = ["--streams", str(args.sat_streams), "--max-tokens", str(args.sat_tokens), "--tokens-per-s", "0"]
        shape = f"{args.sat_streams} unthrottled streams x {args.sat_tokens:,} tokens"
    else:  # the engine shape of the cpu bench, with more streams than the server keeps up with
        max_tokens = max(1, round(args.duration * args.steps))
        serve = ["--engine-steps-per-s", f"{args.steps:g}"]
        load = [
            "--streams",
            str(args.sat_streams),
            "--max-tokens",
            str(max_tokens),
            "--tokens-per-s",
            f"{args.steps:g}",
        ]
        shape = f"engine, {args.sat_streams} streams x {max_tokens} tokens at {args.steps:g}/s"
    for rep in range(1, args.repeats + 1):
        for n in counts if rep % 2 else counts[::-1]:
            watch.flush()
            cmd = ["--workers", str(n), *serve, "--storage", redis.url, "--max-tokens-limit", "10000000"]
            server = Server(cmd, args.server_cores, log_dir, f"workers{n}")
            _log(f"workers repeat {rep}: --workers {n} (pids {server.pids}), {shape}")
            try:
                cpu0, before = {p: cpu_seconds(p) for p in server.pids}, watch.snapshot()
                gen0 = _children_cpu()
                report = run_loadtest(
                    args, [server.url], load, server_pid=None, cores=args.client_cores, procs=args.sat_procs
                )
                gen = _children_cpu() - gen0  # the load test and its worker processes (waited for)
                cpu = {p: cpu_seconds(p) - cpu0[p] for p in server.pids}
                after = watch.snapshot()
            finally:
                server.stop()
            tokens = report["tokens"]["total"]
            row = {
                "bench": "workers",
                "mode": args.sat_mode,
                "repeat": rep,
                "workers": n,
                "tokens": tokens,
                "tokens_per_s": report["tokens"]["per_s"],
                "elapsed_s": report["elapsed_s"],
                "worker_cpu_s": list(cpu.values()),
                "generator_cpu_s": gen,
                "redis_cpu_s": after["cpu"] - before["cpu"],
                "tokens_per_worker_cpu_s": tokens / max(sum(cpu.values()), 1e-9),
                "passed": report["passed"],
                "verdict": _verdict(report),
                "report": report,
            }
            rows.append(row)
            _log(f"  --workers {n}: {row['tokens_per_s']:,.0f} tokens/s; worker CPU-s "
                 f"{', '.join(f'{c:.1f}' for c in row['worker_cpu_s'])}; generator {gen:.1f}, redis-server "
                 f"{row['redis_cpu_s']:.1f} cpu-s; {row['verdict']}")  # fmt: skip
    print("\n| repeat | workers | tokens/s | elapsed s | CPU-s per worker | generator CPU-s | redis-server CPU-s "
          "| all CPU / elapsed (cores) | tokens per worker CPU-s | streams / lost / dup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        busy = (sum(r["worker_cpu_s"]) + r["generator_cpu_s"] + r["redis_cpu_s"]) / r["elapsed_s"]
        print(
            f"| {r['repeat']} | {r['workers']} | {r['tokens_per_s']:,.0f} | {r['elapsed_s']:.1f} "
            f"| {' + '.join(f'{c:.1f}' for c in r['worker_cpu_s'])} | {r['generator_cpu_s']:.1f} "
            f"| {r['redis_cpu_s']:.1f} | {busy:.2f} | {r['tokens_per_worker_cpu_s']:,.0f} | {r['verdict']} |"
        )
    if len(counts) > 1:
        print(f"\n| repeat | --workers {counts[-1]} / --workers {counts[0]}, tokens/s |")
        print("|---|---|")
        for rep in range(1, args.repeats + 1):
            by = {r["workers"]: r for r in rows if r["repeat"] == rep}
            print(f"| {rep} | {by[counts[-1]]['tokens_per_s'] / by[counts[0]]['tokens_per_s']:.2f}x |")
    return rows


def _children_cpu() -> float:
    """CPU seconds of this process's children that were waited for (the load test and its workers)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


BENCHES = {"cpu": bench_cpu, "resume": bench_resume, "workers": bench_workers}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", default="cpu,resume,workers", help=f"comma-separated, from {', '.join(BENCHES)}")
    p.add_argument("--repeats", type=int, default=3, help="runs of each benchmark (alternating where it compares)")
    p.add_argument("--streams", type=int, default=1000, help="cpu, resume: concurrent streams")
    p.add_argument("--duration", type=float, default=10.0, help="cpu, resume: seconds of tokens per stream")
    p.add_argument("--steps", type=float, default=20.0, help="cpu, resume: engine steps (tokens per stream) per s")
    p.add_argument("--ramp", type=float, default=1000.0, help="new streams per second")
    p.add_argument("--procs", type=int, default=1, help="cpu, resume: load-generator processes")
    p.add_argument("--server-cores", default="0", help="cpu, workers: the server's cores ('' = unpinned)")
    p.add_argument("--client-cores", default="1", help="the load generator's cores ('' = unpinned)")
    p.add_argument("--redis-cores", default="1", help="redis-server's cores ('' = unpinned)")
    p.add_argument("--node-cores", default="0:1", help="resume: node A's and node B's cores, ':'-separated")
    p.add_argument("--disconnect-rate", type=float, default=0.25, help="resume: forced cuts per stream per second")
    p.add_argument("--hog", action="store_true", help="resume: one busy loop on each core (competing load)")
    p.add_argument("--nodes", type=int, choices=(1, 2), default=2, help="resume: 1 = the same-node baseline")
    p.add_argument("--resume-storage", choices=("redis", "memory"), default="redis", help="resume: the nodes' storage")
    p.add_argument("--workers", default="1,2", help="workers: the --workers values compared")
    p.add_argument("--sat-streams", type=int, default=32, help="workers: concurrent unthrottled streams")
    p.add_argument("--sat-tokens", type=int, default=40000, help="workers: tokens per unthrottled stream")
    p.add_argument("--sat-procs", type=int, default=2, help="workers: load-generator processes")
    p.add_argument(
        "--sat-mode",
        choices=("unthrottled", "engine"),
        default="unthrottled",
        help="workers: unthrottled streams (--sat-streams x --sat-tokens), or the engine shape (--sat-streams "
        "x --duration at --steps)",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds one load test may take")
    p.add_argument("--stream-timeout", type=float, default=120, help="a stream slower than this counts as failed")
    p.add_argument("--out", default="redis_storage.json")
    args = p.parse_args()
    benches = [b for b in args.bench.split(",") if b]
    for b in benches:
        if b not in BENCHES:
            p.error(f"unknown --bench {b!r}")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tw-redis-bench-") as tmp:
        redis = start_redis(args.redis_cores)
        try:
            for b in benches:
                print(f"\n## {b}", flush=True)
                results += BENCHES[b](args, redis, Path(tmp))
                sys.stdout.flush()
        finally:
            redis.close()
    Path(args.out).write_text(json.dumps(results, indent=2))
    failed = [r for r in results if not r["passed"]]
    if failed:
        print(f"\n{len(failed)} run(s) did not deliver every stream exactly once: see {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
