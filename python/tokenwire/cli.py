"""The ``tokenwire`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tokenwire import __version__
from tokenwire._loop import loop_factory
from tokenwire.auth import ApiKeys, read_key_file
from tokenwire.errors import TokenwireError
from tokenwire.fake_model import FakeEngine, FakeModel
from tokenwire.generation import Engine, Generator, load_generator
from tokenwire.hub import FrameKind, Hub
from tokenwire.loadtest.presets import PRESETS, preset_defaults
from tokenwire.server.config import WT_ENGINES

if TYPE_CHECKING:
    from tokenwire.loadtest.impair import Impairment
    from tokenwire.server import SseServer
    from tokenwire.server.wt_host import WtServerBase

__all__ = ["main"]


async def _demo(args: argparse.Namespace) -> int:
    """Stream a fake completion, drop the subscriber mid-answer, resume, and prove nothing was lost."""
    model = FakeModel(seed=args.seed, ttft=args.ttft, tokens_per_s=args.rate)
    expected = model.tokens(args.prompt, args.max_tokens)
    out = sys.stdout
    async with Hub() as hub:
        stream = hub.start(model.generate(args.prompt, args.max_tokens))
        print(f"tokenwire {__version__}: stream {stream.id} (epoch {hub.epoch}), {args.max_tokens} tokens", file=out)
        print("--- live ---", file=out)
        received: list[str] = []
        sub = hub.subscribe(stream.id)
        async for batch in sub:
            for frame in batch:
                if frame.kind is FrameKind.TOKEN:
                    received.append(frame.text)
                    out.write(frame.text)
            if len(received) >= args.drop_after:
                break
        sub.close()
        last_event_id = f"{stream.id}:{hub.epoch}:{sub.position}"
        out.write(f"\n--- connection dropped at seq {sub.position}; generation goes on ---\n")
        out.flush()
        await asyncio.sleep(args.away)
        print(f"--- resuming with Last-Event-ID {last_event_id} ---", file=out)
        started = time.perf_counter()
        async with hub.resume(last_event_id) as again:
            first = True
            async for batch in again:
                if first:
                    print(f"[{len(batch)} frames replayed in {1e3 * (time.perf_counter() - started):.2f} ms]", file=out)
                    first = False
                for frame in batch:
                    if frame.kind is FrameKind.TOKEN:
                        received.append(frame.text)
                        out.write(frame.text)
                    else:
                        out.write(f"\n--- {frame.kind.name.lower()}: {frame.text} ---\n")
        ok = received == expected
        print(
            f"tokens received {len(received)}/{len(expected)}, in order and exactly once: {ok}; "
            f"model runs: {model.calls}",
            file=out,
        )
        return 0 if ok and model.calls == 1 else 1


async def _serve(args: argparse.Namespace) -> int:
    from tokenwire.server import ServerConfig, ServerOptions, SseServer
    from tokenwire.storage import open_storage

    config = ServerConfig(
        host=args.host,
        port=args.port,
        reuse_port=args.reuse_port,
        max_delay_ms=args.max_delay_ms,
        flush_max_wait_ms=args.flush_max_wait_ms,
        heartbeat_interval=args.heartbeat,
        retry_ms=args.retry_ms,
        drain_timeout=args.drain_timeout,
        max_connections=args.max_connections,
        max_tokens_limit=args.max_tokens_limit,
        allow_origins=tuple(args.allow_origin or ()),
    )
    try:
        auth = _api_keys(args)
        generator, mode = _generator(args)
    except (TokenwireError, ValueError, OSError, ImportError) as exc:
        print(f"tokenwire serve: {exc}", file=sys.stderr, flush=True)
        return 2
    if auth is not None:
        mode += f", {len(auth)} API key{'s' if len(auth) > 1 else ''}"
    hub = Hub(open_storage(args.storage), abandon_after=args.abandon_after)
    server = SseServer(hub, ServerOptions(config, generator, auth))
    await server.start()
    storage_note = await _storage_note(hub)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = _WorkerFds.parse(args.worker) if args.worker else None
    prefix = f"worker {worker.index} (pid {os.getpid()}): " if worker else ""
    _say(
        f"{prefix}tokenwire {__version__} serving SSE on http://{args.host}:{server.port} "
        f"(epoch {server.hub.epoch}, {type(loop).__module__.split('.')[0]} loop, {mode}{storage_note})"
    )
    wt = await _start_webtransport(args, server, prefix) if args.webtransport else None
    if worker is not None:
        worker.serving(loop, stop.set, _stop_grace(args))
    await stop.wait()
    _say(f"{prefix}shutting down: draining streams")
    if wt is not None:
        await wt.shutdown(close_hub=False)
    await server.shutdown()
    aclose = getattr(generator, "aclose", None)  # the upstream proxy's connection pool, say
    if aclose is not None:
        await aclose()
    return 0


def _api_keys(args: argparse.Namespace) -> ApiKeys | None:
    """The keys of ``--api-key`` and ``--api-key-file`` (``None``: neither given, auth is off); ``ValueError`` for a
    key that is not one, ``OSError`` for a file that cannot be read."""
    keys = list(args.api_key or ())
    if args.api_key_file:
        keys += read_key_file(args.api_key_file)
    return ApiKeys(keys) if keys else None


def _upstream(args: argparse.Namespace) -> tuple[Generator, str]:
    """``--upstream URL``: the resumable proxy to an OpenAI-compatible server (docs/proxy.md)."""
    from tokenwire.proxy import UpstreamOptions, UpstreamProxy  # aiohttp: the proxy extra

    options = UpstreamOptions(
        args.upstream,
        api_key=args.upstream_api_key or os.environ.get(UPSTREAM_KEY_ENV) or None,
        pass_authorization=args.upstream_pass_authorization,
        model=args.upstream_model,
        connect_timeout=args.upstream_timeout_connect or None,
        first_token_timeout=args.upstream_timeout_first_token or None,
        token_timeout=args.upstream_timeout_token or None,
        max_connections=args.upstream_max_connections,
    )
    proxy = UpstreamProxy(options)
    credentials = "own key" if options.api_key else "client's Authorization" if options.pass_authorization else "none"
    return proxy, f"upstream {proxy.url} (credentials: {credentials})"


def _generator(args: argparse.Namespace) -> tuple[Generator | Engine, str]:
    """What ``serve`` generates with, and how the banner names it: ``--model``'s, else the FakeModel (paced per
    request, or by a batching engine with ``--engine-steps-per-s``)."""
    if args.upstream:
        if args.model:
            raise ValueError("--upstream and --model exclude each other: the proxy is the generator")
        return _upstream(args)
    if args.model:
        if os.getcwd() not in sys.path:  # as ``python -m`` would: a module beside the caller loads
            sys.path.insert(0, os.getcwd())
        return load_generator(args.model), f"model {args.model}"
    model = FakeModel(seed=args.seed, ttft=args.ttft, tokens_per_s=args.tokens_per_s or None)
    if args.engine_steps_per_s:
        return FakeEngine(
            model, steps_per_s=args.engine_steps_per_s
        ), f"FakeModel engine {args.engine_steps_per_s:g} steps/s"
    return model, "FakeModel per-request pacing"


def _say(line: str) -> None:
    """One line on stdout in one write: the ``--workers`` processes share it, and their lines must not mix. A
    reader gone (a worker's supervisor killed along with its pipe) must not stop a shutdown."""
    with contextlib.suppress(OSError):
        sys.stdout.write(f"{line}\n")
        sys.stdout.flush()


class _WorkerFds:
    """A ``--workers`` worker's end of its supervisor's pipes (``--worker INDEX,READY_FD,LIFELINE_FD``)."""

    def __init__(self, index: int, ready_fd: int, lifeline_fd: int) -> None:
        self.index, self.ready_fd, self.lifeline_fd = index, ready_fd, lifeline_fd

    @classmethod
    def parse(cls, text: str) -> _WorkerFds:
        index, ready_fd, lifeline_fd = (int(part) for part in text.split(","))
        return cls(index, ready_fd, lifeline_fd)

    def serving(self, loop: asyncio.AbstractEventLoop, stop: Callable[[], None], grace: float) -> None:
        """Tell the supervisor this worker serves; stop when the supervisor is gone (its lifeline ends), and
        exit after ``grace`` s if the graceful stop has not ended the process by then (nobody else will)."""
        os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)

        def supervisor_gone() -> None:
            loop.remove_reader(self.lifeline_fd)  # readable only at its end: the supervisor never writes
            print(f"worker {self.index} (pid {os.getpid()}): the supervisor is gone; stopping", file=sys.stderr)
            deadline = threading.Timer(grace, os._exit, (1,))  # a thread: a stuck loop cannot hold it back
            deadline.daemon = True
            deadline.start()
            stop()

        loop.add_reader(self.lifeline_fd, supervisor_gone)


async def _start_webtransport(args: argparse.Namespace, sse: SseServer, prefix: str = "") -> WtServerBase | None:
    """The WebTransport server on the SSE server's hub, on the same port number over UDP."""
    from dataclasses import replace

    from tokenwire.server import webtransport_server
    from tokenwire.server.certs import load_certificate

    if bool(args.cert) != bool(args.key):
        print("--cert and --key go together; WebTransport not started", file=sys.stderr, flush=True)
        return None
    certificate = load_certificate(args.cert, args.key) if args.cert else None
    config = replace(
        sse.config,
        port=sse.port,
        webtransport=replace(sse.config.webtransport, datagram_previews=args.datagram_previews),
        wt_engine=args.wt_engine,
    )
    # The same generator (one engine steps every stream, whichever protocol started it).
    wt = webtransport_server(sse.hub, replace(sse.options, config=config), certificate=certificate)
    try:
        await wt.start()
    except OSError as exc:
        print(f"WebTransport not started: UDP port {sse.port}: {exc}", file=sys.stderr, flush=True)
        return None
    sse.webtransport = wt
    sse.metrics.include(wt.metrics)  # one /metrics for the process: the SSE server's shows both protocols
    kind = "certificate from files" if certificate else "development certificate (ECDSA P-256, < 14 days)"
    _say(
        f"{prefix}serving WebTransport on {wt.url} (UDP); {args.wt_engine} engine, {kind}, "
        f"sha-256 {wt.certificate.sha256_hex}"
    )
    return wt


def _loadtest(args: argparse.Namespace) -> int:
    from tokenwire.loadtest import LoadTestConfig, run_loadtest
    from tokenwire.loadtest.runner import write_json

    write_html = _report_writer() if args.report else None
    if write_html is None and args.report:
        return 2

    max_tokens = args.max_tokens
    if args.duration is not None:
        max_tokens = max(1, round(args.duration * args.tokens_per_s)) if args.tokens_per_s > 0 else max_tokens
    urls = args.url or ["http://127.0.0.1:8000"]
    cfg = LoadTestConfig(
        url=urls[0],
        urls=urls,
        streams=args.streams,
        ramp=args.ramp,
        max_tokens=max_tokens,
        tokens_per_s=args.tokens_per_s,
        disconnect_rate=args.disconnect_rate,
        procs=args.procs,
        seed=args.seed,
        model_seed=args.model_seed,
        resumable=not args.no_resume,
        server_pid=args.server_pid,
        stream_timeout=args.stream_timeout,
        quiet=args.quiet,
        protocol=args.protocol,
        sessions=args.sessions,
        wt_cert_hash=args.wt_cert_hash or "",
        wt_batch_transmit=args.wt_batch_transmit,
        wt_ack_delay_ms=args.wt_ack_delay_ms,
        wt_keepalive=args.wt_keepalive,
        wt_engine=args.wt_engine,
    )
    if args.compare or args.impair is not None or args.report:
        # The comparison's report (one run per protocol; one run of --protocol without --compare).
        from tokenwire.loadtest.compare import run_compare

        try:
            report = run_compare(cfg, args.compare or [args.protocol], impairment=args.impair, preset=args.preset)
        except ValueError as exc:
            print(f"tokenwire loadtest: {exc}", file=sys.stderr, flush=True)
            return 2
        except (OSError, RuntimeError) as exc:  # the server unreachable, a relay or worker process failed
            print(f"tokenwire loadtest: {exc!r}", file=sys.stderr, flush=True)
            return 1
    else:
        report = run_loadtest(cfg)
    if args.json:
        write_json(report, args.json)
    if write_html is not None:
        write_html(report, args.report)
        if not args.quiet:
            print(f"report written to {args.report}", file=sys.stderr, flush=True)
    return 0 if report["passed"] else 1


def _report_writer() -> Callable[[dict[str, Any], str], None] | None:
    """``tokenwire.loadtest.html.write_html``, or ``None`` (said on stderr) when it cannot be imported: checked
    before the load test runs, not after."""
    import importlib

    try:
        html = importlib.import_module("tokenwire.loadtest.html")  # the report's own dependencies load with it
    except ModuleNotFoundError as exc:
        if exc.name == "tokenwire.loadtest.html":
            why = "this tokenwire has no HTML report (tokenwire.loadtest.html is missing)"
        else:
            why = f"the HTML report needs {exc.name}: pip install 'tokenwire[report]'"
        print(f"tokenwire loadtest: --report: {why}", file=sys.stderr, flush=True)
        return None
    write_html: Callable[[dict[str, Any], str], None] = html.write_html
    return write_html


def _protocol_list(text: str) -> list[str]:
    from tokenwire.loadtest.compare import parse_protocols

    try:
        return parse_protocols(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _impairment(text: str) -> Impairment:
    from tokenwire.loadtest.impair import Impairment, ImpairmentError

    try:
        return Impairment.parse(text)
    except ImpairmentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stop_grace(args: argparse.Namespace) -> float:
    """Seconds a ``--workers`` worker has to exit once told to stop: its drain, and time to close."""
    return float(args.drain_timeout) + 10.0


def _int_from(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number, ``low`` or more."""

    def whole_number(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {text}")
        return value

    return whole_number


async def _storage_note(hub: Hub) -> str:
    """For the startup line: where history lives; a shared storage is given a few seconds to answer first
    (its epoch is the store's). Serving starts either way: until Redis answers, starts and resumes of other
    nodes' streams are 503."""
    storage = hub.storage
    if not storage.shared:
        return ""
    from tokenwire.redis_storage import RedisStorage  # the redis extra: only a shared storage needs it

    if not isinstance(storage, RedisStorage):
        return ""
    if await storage.wait_connected(5.0):
        return f", storage {storage.url}"
    return f", storage {storage.url} NOT REACHABLE ({storage.last_error}): starts answer 503 until it is"


def _serve_storage_refusal(args: argparse.Namespace) -> str | None:
    """Why ``serve`` cannot run with this ``--storage`` and ``--workers`` (``None``: it can)."""
    from tokenwire.storage import open_storage

    try:
        storage = open_storage(args.storage)
    except (ValueError, ImportError) as exc:
        return f"--storage {args.storage}: {exc}"
    if args.workers > 1 and not getattr(storage, "shared", False):
        return (
            f"--workers {args.workers} needs a storage that every worker shares; {args.storage} keeps each stream "
            "in the process that started it, and a resume would land on another worker, which does not hold the "
            "stream (404). Use --storage redis://HOST:PORT/DB, or --workers 1."
        )
    return None


def _origin(text: str) -> str:
    from tokenwire.server.config import normalize_origin

    try:
        return normalize_origin(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ack_delay_ms(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1000 ms, got {text}")
    return value


#: Where ``serve --upstream`` reads the upstream's API key from when ``--upstream-api-key`` is not given.
UPSTREAM_KEY_ENV = "TOKENWIRE_UPSTREAM_API_KEY"


def _upstream_arguments(serve: argparse.ArgumentParser) -> None:
    up = serve.add_argument_group("resumable OpenAI-compatible proxy (docs/proxy.md)")
    up.add_argument(
        "--upstream",
        metavar="URL",
        help="proxy chat completions to this OpenAI-compatible server, the base URL an OpenAI SDK takes (e.g. "
        "http://127.0.0.1:9000/v1): each request calls it once, and clients resume from tokenwire",
    )
    up.add_argument(
        "--upstream-api-key",
        metavar="KEY",
        help=f"send Authorization: Bearer KEY upstream (default: the environment variable {UPSTREAM_KEY_ENV}, "
        "which keeps it out of the process list); never logged",
    )
    up.add_argument(
        "--upstream-pass-authorization",
        action="store_true",
        help="without an upstream key: forward each client's own Authorization header upstream",
    )
    up.add_argument("--upstream-model", metavar="NAME", help="the model of requests that name none")
    up.add_argument("--upstream-timeout-connect", type=float, default=10.0, help="seconds to connect (0: no limit)")
    up.add_argument(
        "--upstream-timeout-first-token",
        type=float,
        default=60.0,
        help="seconds from the request to the upstream's first chunk (0: no limit)",
    )
    up.add_argument(
        "--upstream-timeout-token", type=float, default=60.0, help="seconds between two chunks (0: no limit)"
    )
    up.add_argument(
        "--upstream-max-connections", type=_int_from(1), default=1000, help="upstream connections open at once"
    )


def _parser(loadtest_defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenwire", description="Resumable LLM token streaming.")
    p.add_argument("--version", action="version", version=f"tokenwire {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="stream, drop the connection mid-answer, resume, verify")
    demo.add_argument("--prompt", default="Explain resumable streams.")
    demo.add_argument("--max-tokens", type=int, default=80)
    demo.add_argument("--rate", type=float, default=80.0, help="tokens per second")
    demo.add_argument("--ttft", type=float, default=0.2, help="time to first token, seconds")
    demo.add_argument("--drop-after", type=int, default=25, help="drop the subscriber after this many tokens")
    demo.add_argument("--away", type=float, default=0.3, help="seconds spent disconnected")
    demo.add_argument("--seed", type=int, default=0)

    serve = sub.add_parser(
        "serve", help="run the SSE (and WebTransport) server with the FakeModel, history in memory or Redis"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="generate with a model of yours: package.module:factory names a Generator or Engine, or what makes one "
        "(tokenwire.generation; the current directory is importable). Default: the FakeModel",
    )
    _upstream_arguments(serve)
    serve.add_argument("--tokens-per-s", type=float, default=50.0, help="FakeModel pace per request (0: unthrottled)")
    serve.add_argument("--ttft", type=float, default=0.0, help="FakeModel time to first token, seconds")
    serve.add_argument(
        "--engine-steps-per-s",
        type=float,
        default=0.0,
        help="batching-engine mode: one token for every active stream per step (0: off, pace per request)",
    )
    serve.add_argument("--max-delay-ms", type=float, default=0.0, help="wait this long to coalesce writes")
    serve.add_argument(
        "--flush-max-wait-ms",
        type=float,
        default=0.05,
        help="with --max-delay-ms 0: flush at once when the oldest waiting write is this old (0: next loop "
        "iteration only)",
    )
    serve.add_argument("--heartbeat", type=float, default=15.0, help="seconds between heartbeats on idle streams")
    serve.add_argument(
        "--retry-ms",
        type=_int_from(0),
        default=1000,
        help="the retry: an SSE answer starts with: how long a client waits before it reconnects (the browser "
        "client waits half to all of it after a drop)",
    )
    serve.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to let streams finish on shutdown")
    serve.add_argument("--max-connections", type=int, default=20_000)
    serve.add_argument("--max-tokens-limit", type=int, default=100_000, help="largest max_tokens a request may ask")
    serve.add_argument(
        "--allow-origin",
        "--cors-origin",
        dest="allow_origin",
        action="append",
        type=_origin,
        metavar="ORIGIN",
        help="CORS: let pages of ORIGIN (https://app.example, or * for any) call the endpoints and open WebTransport "
        "sessions; repeatable; off by default",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="auth: accept KEY as a bearer token (Authorization: Bearer KEY; ?access_token=KEY on a WebTransport "
        "CONNECT); repeatable. Other users of this machine can read a command line: prefer --api-key-file",
    )
    serve.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="auth: accept the keys of FILE (one a line; lines starting with # skipped)",
    )
    serve.add_argument(
        "--abandon-after", type=float, default=30.0, help="cancel a generation nobody watched for this long"
    )
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument(
        "--storage",
        default="memory://",
        help="where stream history lives: memory:// (this process) or redis://HOST:PORT/DB (shared by every "
        "worker and node, so a stream resumes on any of them)",
    )
    serve.add_argument(
        "--workers",
        type=_int_from(1),
        default=1,
        help="server processes sharing the port (SO_REUSEPORT), supervised by this one; above 1 needs a shared "
        "--storage",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT, so that other processes may share the port (--workers does it)",
    )
    serve.add_argument("--worker", help=argparse.SUPPRESS)  # INDEX,READY_FD,LIFELINE_FD: set by --workers
    serve.add_argument(
        "--webtransport",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also serve WebTransport (HTTP/3, UDP) on the same port number and hub",
    )
    serve.add_argument("--cert", help="WebTransport certificate (chain) PEM file; default: a development one")
    serve.add_argument("--key", help="private key PEM file of --cert")
    serve.add_argument(
        "--wt-engine",
        choices=WT_ENGINES,
        default="native",
        help="WebTransport's QUIC engine: native (the default: quinn-proto in the Rust extension, driven in batches; "
        "webtransport-go 0.12+ clients refuse it: no reset_stream_at) or aioquic (pure Python, the reference)",
    )
    serve.add_argument(
        "--datagram-previews",
        action="store_true",
        help="WebTransport: send unreliable datagram previews of new tokens to streams that ask (off by default)",
    )

    lt = sub.add_parser("loadtest", help="many concurrent SSE clients: exactly-once checks and latency figures")
    lt.add_argument(
        "--url",
        action="append",
        help="server base URL (default http://127.0.0.1:8000); repeat it for several servers: streams start on "
        "them round robin, and each cut stream resumes on another one, at random",
    )
    lt.add_argument("--streams", type=int, default=100, help="concurrent streams in all")
    lt.add_argument("--ramp", type=float, default=1000.0, help="new streams per second while ramping up")
    lt.add_argument("--max-tokens", type=int, default=200, help="tokens per stream")
    lt.add_argument("--duration", type=float, help="seconds per stream (sets --max-tokens from --tokens-per-s)")
    lt.add_argument("--tokens-per-s", type=float, default=20.0, help="per-stream pace asked of the server (0: max)")
    lt.add_argument("--disconnect-rate", type=float, default=0.0, help="forced disconnects per stream per second")
    lt.add_argument("--procs", type=int, default=1, help="client processes (to use more cores)")
    lt.add_argument("--seed", type=int, default=0, help="seed of the disconnect schedule")
    lt.add_argument("--model-seed", type=int, default=0, help="the server FakeModel's seed (content check)")
    lt.add_argument("--no-resume", action="store_true", help="target cannot resume (a peer server)")
    lt.add_argument("--server-pid", type=int, help="measure this process's CPU and memory (the server)")
    lt.add_argument("--stream-timeout", type=float, default=600.0, help="give up on a stream after this long")
    lt.add_argument("--json", help="write the full report here")
    lt.add_argument("--quiet", action="store_true", help="no progress or summary output")
    lt.add_argument(
        "--protocol", choices=("sse", "webtransport"), default="sse", help="SSE over HTTP/1.1, or WebTransport"
    )
    lt.add_argument(
        "--sessions", type=int, default=0, help="webtransport: sessions the streams share (0: one per stream)"
    )
    lt.add_argument(
        "--wt-cert-hash",
        help="webtransport: sha-256 (hex) of the server certificate; default: GET {url}/v1/webtransport/certificate",
    )
    lt.add_argument(
        "--wt-batch-transmit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="webtransport, aioquic engine: clients transmit once per loop iteration (no: after every datagram, as aioquic)",
    )
    lt.add_argument(
        "--wt-ack-delay-ms",
        type=_ack_delay_ms,
        default=0.0,
        help="webtransport, aioquic engine: clients acknowledge at most this late, announced as max_ack_delay (0: aioquic's 1 ms)",
    )
    lt.add_argument(
        "--wt-keepalive",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="webtransport: a client that heard nothing for this long sends a PING (0: never); after a NAT "
        "rebinding the server reaches the client only once it sends (the migration preset's recovery)",
    )
    lt.add_argument(
        "--wt-engine",
        choices=("aioquic", "native"),
        default="native",
        help="webtransport: the generator's QUIC engine: native (the default: tokenwire's Rust engine, one engine and "
        "UDP socket per generator process carries all its sessions) or aioquic (Python, a socket per session)",
    )
    cmp = lt.add_argument_group("comparison, impairment and report (README: Compare the transports)")
    cmp.add_argument(
        "--compare",
        type=_protocol_list,
        metavar="LIST",
        help="run the scenario over each protocol in turn (sse,webtransport) and print them side by side",
    )
    cmp.add_argument(
        "--impair",
        type=_impairment,
        metavar="SPEC",
        help="put a relay with this network in front of the server, e.g. loss=5%%,delay=50ms,jitter=10ms,rebind=30s,tls=on "
        "(docs/impairment.md)",
    )
    cmp.add_argument("--report", metavar="PATH", help="write a self-contained HTML report (tables and plots) here")
    cmp.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named comparison (latency, recovery, hol, hol-h1, lossy, migration): sets --compare, --impair and the "
        "scenario; options given explicitly win (BENCHMARKS.md: SSE vs WebTransport)",
    )
    if loadtest_defaults:
        lt.set_defaults(**loadtest_defaults)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "loadtest" and args.preset:
        # The preset's values become the defaults; what the command line gives still wins.
        args = _parser(preset_defaults(args.preset)).parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "loadtest":
        return _loadtest(args)
    if args.command == "serve" and args.worker is None:
        refusal = _serve_storage_refusal(args)
        if refusal is not None:
            print(f"tokenwire serve: {refusal}", file=sys.stderr, flush=True)
            return 2
        if args.workers > 1:
            from tokenwire.workers import supervise

            return supervise(
                argv,
                args.workers,
                host=args.host,
                port=args.port,
                webtransport=args.webtransport,
                dev_certificate=not args.cert,
                storage=args.storage,
                stop_grace=_stop_grace(args),
            )
    factory = loop_factory()
    logging.getLogger("tokenwire").info("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        if args.command == "demo":
            return runner.run(_demo(args))
        if args.command == "serve":
            return runner.run(_serve(args))
    raise AssertionError(args.command)  # argparse rejects unknown commands
